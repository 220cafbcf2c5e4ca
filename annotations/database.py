"""Connecting to FiftyOne's database: the embedded mongod, or a real MongoDB by URI.

FiftyOne reads ``FIFTYONE_DATABASE_URI`` when it is imported, so the URI must be in the
environment before the first ``import fiftyone``; :func:`connect` does that and turns every
start-up failure into a :class:`CurateError` that points at ``curate doctor``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from curate.errors import CurateError

log = logging.getLogger(__name__)

OFFLINE_ENV = {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}


def prepare_env(database_uri: str | None = None) -> None:
    """Set FiftyOne's environment (offline, no tracking, optional URI) before it is imported."""
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    if database_uri:
        os.environ["FIFTYONE_DATABASE_URI"] = database_uri
        if "fiftyone" in sys.modules:  # already imported in this process: set its config too
            import fiftyone as fo

            fo.config.database_uri = database_uri


def describe_database(database_uri: str | None = None) -> str:
    uri = database_uri or os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        return uri
    return "embedded database at " + os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")


def check_database_dir() -> None:
    """The embedded database's folder must be creatable and writable; checked before fiftyone starts.

    (FiftyOne checks this too, but only when it starts a new mongod: while another FiftyOne
    process on the machine runs one, it attaches to that one whatever the folder says.)
    """
    folder = Path(os.environ.get("FIFTYONE_DATABASE_DIR") or Path.home() / ".fiftyone" / "var" / "lib" / "mongo")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        ok = folder.is_dir() and os.access(folder, os.W_OK)
        reason = "is not a writable folder"
    except OSError as e:
        ok, reason = False, f"cannot be created ({e.strerror or e})"
    if not ok:
        raise CurateError(f"the FiftyOne database cannot start: its folder {reason}", where=str(folder),
                          fix="run `curate doctor`; set FIFTYONE_DATABASE_DIR to a writable folder or pass --database-uri")


def connect(database_uri: str | None = None) -> ModuleType:
    """Import fiftyone and open its database; returns the ``fiftyone`` module.

    Any failure (mongod missing or not starting, URI unreachable) becomes one clear error.
    """
    prepare_env(database_uri)
    where = describe_database(database_uri)
    if not os.environ.get("FIFTYONE_DATABASE_URI"):
        check_database_dir()
    try:
        import fiftyone as fo
        import fiftyone.core.odm.database as fodb

        fodb.get_db_conn()
        fo.list_datasets()
    except Exception as e:  # noqa: BLE001 - every start-up failure means the same to the user
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        doctor = "curate doctor" + (f" --database-uri {database_uri}" if database_uri else "")
        raise CurateError(
            f"the FiftyOne database cannot start or be reached ({type(e).__name__}: {reason})",
            where=where,
            fix=f"run `{doctor}` to see what is wrong (embedded mongod needs scripts/fix-fiftyone-mongod.sh, "
                "i.e. `make install`)",
        ) from e
    log.debug("connected to %s", where)
    return fo
