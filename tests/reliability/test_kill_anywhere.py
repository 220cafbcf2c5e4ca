"""SIGKILL at random (seeded) moments of whole commands, then rerun: the outputs are byte-identical to
an uninterrupted run's (paths of the output folder aside), every tar reads to its end, no key is duplicated, no temp file is left.

Each command is first run once uninterrupted (the reference, and its duration T). Then up to 10
attempts run on a second folder, each killed after a seeded random delay in (0.3 s, T/2): a killed
attempt is resumed by the next, until one finishes; a last run completes it.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.shards import ReadReport, iter_shard

CURATE = str(Path(sys.executable).with_name("curate"))
KILLS = 10
ENV = {**os.environ, "CURATE_NO_PROGRESS": "1"}
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _run(args: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([CURATE, *args, "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0


def _kill_attempts(args: list[str], out: Path, duration: float, seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    kills = attempts = 0
    while attempts < KILLS:
        attempts += 1
        delay = rng.uniform(0.3, max(0.5 * duration, 0.6))
        p = subprocess.Popen([CURATE, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            kills += 1
            continue
        if p.returncode == 0:
            break  # this attempt finished the work: nothing left to interrupt
    return kills, attempts


def _digest(p: Path, root: Path) -> str:
    """A file's content with its own output folder's path written as ROOT (some files record where
    they were written: shard paths in parquet tables, the output folder in JSON)."""
    if p.suffix == ".parquet":
        import polars as pl

        df = pl.read_parquet(p)
        df = df.with_columns([pl.col(c).str.replace_all(str(root), "ROOT", literal=True)
                              for c, t in df.schema.items() if t == pl.String])
        return hashlib.sha256(df.write_ndjson().encode()).hexdigest()
    data = p.read_bytes()
    if p.suffix in (".json", ".md", ".txt", ".jsonl"):
        data = data.replace(str(root).encode(), b"ROOT")
    return hashlib.sha256(data).hexdigest()


def _files(root: Path) -> dict[str, str]:
    """Every output file but run bookkeeping (``.curate/``: ledger, lock, run.json)."""
    return {str(p.relative_to(root)): _digest(p, root) for p in sorted(root.rglob("*"))
            if p.is_file() and ".curate" not in p.relative_to(root).parts}


def _check_same(ref: Path, out: Path) -> int:
    a, b = _files(ref), _files(out)
    assert sorted(a) == sorted(b)
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, f"files differ after kill + rerun: {diff[:10]}"
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "orphan temp files"
    for tar in out.rglob("*.tar"):
        rep = ReadReport(tar.name)
        keys = [s["__key__"] for s in iter_shard(tar, rep)]
        assert rep.error is None and len(keys) == len(set(keys)), tar
    return len(a)


def test_build_killed_anywhere(small_build, tmp_path):
    ref = small_build  # the uninterrupted build, shared with the Ray cluster test (conftest.py)
    kills, attempts = _kill_attempts(ref.args, tmp_path / "killed" / "out", ref.seconds, seed=1)
    _run(ref.args, tmp_path / "killed" / "out")
    n = _check_same(ref.out, tmp_path / "killed" / "out")
    assert kills >= 3, (kills, attempts)
    print(f"build: {kills} kills in {attempts} attempts, {n} files identical, 0 lost")


def test_embed_killed_anywhere(small_build_embeddings, tmp_path):
    ref = small_build_embeddings  # embed of the build's pool, uninterrupted (conftest.py)
    kills, attempts = _kill_attempts(ref.args, tmp_path / "emb-killed" / "out", ref.seconds, seed=2)
    _run(ref.args, tmp_path / "emb-killed" / "out")
    _check_same(ref.out, tmp_path / "emb-killed" / "out")
    assert kills >= 1, (kills, attempts)


@pytest.fixture(scope="module")
def triplets_ref(small_build, tmp_path_factory):
    """``curate triplets`` on the build, uninterrupted: (args, output folder, seconds)."""
    args = ["triplets", str(small_build.out), "--format", "cirr,circo,fashioniq,shards"]
    out = tmp_path_factory.mktemp("trip-ref") / "out"
    return args, out, _run(args, out)


def test_triplets_killed_anywhere(triplets_ref, tmp_path):
    args, ref, duration = triplets_ref
    kills, attempts = _kill_attempts(args, tmp_path / "trip-killed" / "out", duration, seed=3)
    _run(args, tmp_path / "trip-killed" / "out")
    _check_same(ref, tmp_path / "trip-killed" / "out")
    assert kills >= 1, (kills, attempts)


def test_a_second_run_on_the_same_folder_is_refused(small_build, tmp_path):
    args = small_build.args
    out = tmp_path / "locked"
    shutil.rmtree(out, ignore_errors=True)
    first = subprocess.Popen([CURATE, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
    try:
        # the first run holds the folder once its pid is in the lock file (the options are checked before
        # that, so .curate/ existing is not enough); it is then stopped, so it holds the lock until the end
        lock = out / ".curate" / "lock"
        deadline = time.time() + 120
        while time.time() < deadline and not (lock.exists() and lock.read_text().strip() == str(first.pid)):
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)
        r = subprocess.run([CURATE, *args, "--out", str(out)], capture_output=True, text=True, env=ENV)
        assert r.returncode == 2 and "another curate run" in r.stderr, r.stderr[-2000:]
        assert f"pid {first.pid}" in r.stderr
    finally:
        first.kill()
        first.wait()


def _trained(run: Path) -> dict[str, str]:
    """What a training run must reproduce exactly: its weights and its test metrics."""
    import json

    last = (run / "checkpoints" / "latest").read_text().strip()
    out = {name: hashlib.sha256((run / name).read_bytes()).hexdigest()
           for name in (f"checkpoints/{last}/model.safetensors", "best/model.safetensors") if (run / name).exists()}
    results = json.loads((run / "results.json").read_text())
    out["test metrics"] = json.dumps({k: v for k, v in results.items() if k not in ("training", "run", "model_file")},
                                     sort_keys=True)
    return out


@pytest.mark.parametrize("trainer", ["cir", "trident"])
def test_training_killed_anywhere(small_build, triplets_ref, trainer, tmp_path):
    if trainer == "cir":
        args = ["train", "cir", "--triplets", str(triplets_ref[1]), "--epochs", "8", "--resume"]
    else:
        args = ["train", "trident", "--data", str(small_build.out), "--epochs", "8", "--resume"]
    duration = _run(args, tmp_path / f"{trainer}-ref" / "out")
    kills, attempts = _kill_attempts(args, tmp_path / f"{trainer}-killed" / "out", duration, seed=4)
    _run(args, tmp_path / f"{trainer}-killed" / "out")
    assert _trained(tmp_path / f"{trainer}-ref" / "out") == _trained(tmp_path / f"{trainer}-killed" / "out")
    assert not [p for p in (tmp_path / f"{trainer}-killed").rglob("*") if ".tmp-" in p.name]
    assert kills >= 1, (kills, attempts)
