"""SIGKILL at random (seeded) moments of whole commands, then rerun (test_kill_anywhere*.py).

Each command is first run once uninterrupted (the reference, and its duration T). Then up to
``KILLS`` attempts run on a second folder, each killed after a seeded random delay in (0.3 s, T/2)
(or, with ``sure``, a few attempts killed after the start-up, in the work: kill_attempts says how):
a killed attempt is resumed by the next, until one finishes; a last run completes it. The outputs
must be byte-identical to the reference's (paths of the output folder aside), every tar must read to
its end, no key may be duplicated and no temp file left.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from curate.shards import ReadReport, iter_shard

CURATE = str(Path(sys.executable).with_name("curate"))
KILLS = 10
ENV = {**os.environ, "CURATE_NO_PROGRESS": "1"}


def run(args: list[str], out: Path) -> float:
    """``curate ARGS --out OUT`` to completion (asserting success); returns its wall seconds."""
    t0 = time.perf_counter()
    r = subprocess.run([CURATE, *args, "--out", str(out)], capture_output=True, text=True, env=ENV, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return time.perf_counter() - t0


def kill_attempts(args: list[str], out: Path, duration: float, seed: int, sure: int | None = None) -> tuple[int, int]:
    """Up to KILLS attempts on ``out``, each SIGKILLed after a seeded delay unless it finished first; returns
    (kills, attempts).

    By default the delay is in (0.3 s, duration / 2) from the start. With ``sure`` (``out`` must not exist
    yet) it is the start-up (the imports, where a kill tests nothing: measured as the time the first attempt
    takes to make the output folder) plus a part of the work W (the duration less the start-up), and there
    are at most ``sure + 1`` attempts: the first ``sure`` are killed within ``W / (2 * sure)``, so each of
    them resumes with more than that left, even where the work takes half the reference's time (it was
    timed under twice today's load): they are all killed; the last within ``W / 2``."""
    rng = random.Random(seed)
    kills = attempts = 0
    startup = None
    while attempts < (KILLS if sure is None else sure + 1):
        attempts += 1
        p = subprocess.Popen([CURATE, *args, "--out", str(out)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, env=ENV)
        t0 = time.perf_counter()
        if sure is None:
            delay = rng.uniform(0.3, max(0.5 * duration, 0.6))
        else:
            if startup is None:  # the first attempt: its start-up ends when it makes the output folder
                while not out.exists() and p.poll() is None:
                    time.sleep(0.01)
                startup = time.perf_counter() - t0
            work = max(duration - startup, 1.0)
            delay = startup + rng.uniform(0.05, work / (2 * sure) if attempts <= sure else work / 2)
        try:
            p.wait(timeout=max(delay - (time.perf_counter() - t0), 0.01))
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


def leftover_processes(out: Path, grace: float = 5.0) -> list[str]:
    """Processes still running for ``out`` (its path on their command line: a killed attempt's forked decode or
    pool workers) once ``grace`` seconds have passed; they must end with their parent (curate.executor.exit_with_parent)."""
    deadline = time.time() + grace
    while True:
        left = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                zombie = "\nState:\tZ" in (proc / "status").read_text()
            except OSError:
                continue
            if str(out) in cmd and not zombie:
                left.append(f"{proc.name}: {cmd[:200]}")
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


def check_same(ref: Path, out: Path) -> int:
    """``out`` holds the same files as ``ref``, no temp file, every tar whole with unique keys, no process of a
    killed attempt left running; returns the count."""
    assert not leftover_processes(out), leftover_processes(out, grace=0)
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
