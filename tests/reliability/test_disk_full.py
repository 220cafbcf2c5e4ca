"""Writes that fail because the disk is full (RLIMIT_FSIZE: EFBIG, as ENOSPC would) end the run with a
clear error, keep finished outputs intact, and the rerun completes."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from curate.shards import ShardWriter, iter_shard

CURATE = str(Path(sys.executable).with_name("curate"))
pytestmark = pytest.mark.timeout(300)


def _limit(nbytes: int):
    def apply() -> None:  # runs in the child: files it writes cannot grow past nbytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def test_reshard_on_a_full_disk_fails_clearly_then_resumes(tmp_path):
    with ShardWriter(tmp_path / "in", prefix="src", maxcount=5) as w:
        for i in range(20):  # 4 inputs of 5 samples; the last input's samples are big
            w.write({"__key__": f"k{i:03d}", "bin": bytes([i]) * (60_000 if i >= 15 else 10_000), "json": {"i": i}})
    out = tmp_path / "out"
    args = [CURATE, "shards", "reshard", str(tmp_path / "in"), "--out", str(out), "--maxcount", "2",
            "--workers", "1"]
    r = subprocess.run(args, capture_output=True, text=True, preexec_fn=_limit(100_000))
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "File too large" in last and "Traceback" not in r.stderr
    finished = sorted((out / "shards").glob("*.tar"))
    assert finished  # the tasks before the full disk finished ...
    for shard in finished:  # ... and what they wrote is whole
        assert [s["__key__"] for s in iter_shard(shard, strict=True)]
    r = subprocess.run(args, capture_output=True, text=True)  # space freed
    assert r.returncode == 0, r.stderr
    assert pl.read_parquet(out / "manifest.parquet").height == 20
    assert not list(out.rglob("*.tmp-*"))


def test_a_global_stage_on_a_full_disk_gives_one_clear_line(tmp_path):
    # the demo world builder writes caption parquets and shards; a 20 KB limit stops it early
    r = subprocess.run([CURATE, "demo", "world", "--out", str(tmp_path / "w"), "--scale", "small", "--workers", "1"],
                       capture_output=True, text=True, preexec_fn=_limit(20_000))
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and ("disk is full" in last or "File too large" in last), last
