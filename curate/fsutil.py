"""Atomic file writes: every output goes to a temp name in the same folder, then is renamed."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

TMP_MARK = ".tmp-"
# mkstemp creates 0600 files; outputs get the mode a plain open() would give (0666 & ~umask)
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success fsync and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f  # type: ignore[misc]
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def dump_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys) so reruns give byte-identical files."""
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, default=str) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dump_json(obj))


def write_parquet(table: Any, path: str | os.PathLike, statistics: bool = False) -> Path:
    """Write a polars DataFrame or a pyarrow Table as parquet, atomically.

    Column statistics are off by default: they make no difference to readers here, and
    without them the bytes depend only on the data (reruns are byte-identical).
    """
    path = Path(path)
    with atomic_open(path, "wb") as f:
        if hasattr(table, "write_parquet"):
            table.write_parquet(f, statistics=statistics)
        else:
            import pyarrow.parquet as pq

            pq.write_table(table, f, write_statistics=statistics)
    return path


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def clean_temp_files(folder: str | os.PathLike) -> int:
    """Remove temp files left behind by a killed run (they are never valid outputs)."""
    n = 0
    folder = Path(folder)
    if not folder.exists():
        return 0
    for p in folder.rglob(f"*{TMP_MARK}*"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n
