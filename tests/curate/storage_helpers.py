"""What the object-storage tests against a local S3 server (test_object_storage.py) and a local GCS
emulator (test_gcs.py) share: the CLI in a subprocess, input shards, a folder's files, the outputs that
must be identical between runs, and the local ``curate shards reshard`` run they compare with."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from curate.shards import write_shard

CURATE = str(Path(sys.executable).with_name("curate"))
RESHARD = ["--maxcount", "3", "-w", "1"]


def curate(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([CURATE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})


def make_shards(folder: Path, n: int = 3, per: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_shard(folder / f"in-{i:06d}.tar",
                    [{"__key__": f"k{i}_{j}", "jpg": bytes([i, j]) * 300, "json": {"i": i, "j": j}} for j in range(per)])
    return folder


def local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and ".curate" not in p.parts}


def outputs(files: dict[str, bytes]) -> dict:
    """What must be identical between runs: the shards' bytes and the manifest's rows (its
    ``source_shard`` column names where the input was read, a local or a mirror path)."""
    import io

    import polars as pl

    out: dict = {k: v for k, v in files.items() if k.startswith("shards/")}
    if "manifest.parquet" in files:
        out["manifest.parquet"] = pl.read_parquet(io.BytesIO(files["manifest.parquet"])).drop(
            "source_shard", strict=False).to_dicts()
    return out


def reshard_reference(root: Path) -> tuple[Path, dict[str, bytes]]:
    """Input shards and the output of ``curate shards reshard`` on local folders under ``root`` (the tests
    read the input folder and compare with the output's bytes)."""
    src = make_shards(root / "in")
    r = curate(["shards", "reshard", str(src), "--out", str(root / "ref"), *RESHARD])
    assert r.returncode == 0, r.stderr
    return src, local_files(root / "ref")
