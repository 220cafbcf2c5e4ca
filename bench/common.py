"""Helpers shared by the benchmark scripts: results folder, JSON + Markdown output, load, peak memory,
alternating median-of-N runs, and the summary rows `run_all.py` gathers into bench/README.md.

Conventions every script follows (issue 15):

- ours and the peer run on the same input in one run, order alternated between repeats
  (ours first on even repeats, the peer first on odd ones), the median of ``--repeats`` (3);
- the machine's load (``uptime``) is recorded with every timing;
- when the two sides produce different outputs (sample counts, embeddings beyond cosine
  0.999, scan counts) the row reports the mismatch instead of a ratio;
- each result JSON has ``summary`` rows (what, ours, peer, ratio, goal, load) for the table.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
AGREE_COSINE = 0.999
SAMPLE_EVERY = 0.25  # seconds between memory samples of a measured process tree (each costs ~ms of CPU)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"load average: {', '.join(map(str, load_average()))}"


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cores": os.cpu_count(), "platform": platform.platform(),
            "cpu": _cpu_model(), "date": time.strftime("%Y-%m-%d %H:%M"), "load": load_average(), "uptime": uptime()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save(name: str, result: dict[str, Any], markdown: str) -> Path:
    (RESULTS / name).parent.mkdir(parents=True, exist_ok=True)
    script = Path(sys.argv[0]).resolve()
    where = script.relative_to(RESULTS.parent.parent) if script.is_relative_to(RESULTS.parent.parent) else script
    result = {"machine": machine(), "command": " ".join([f"python {where}", *sys.argv[1:]]), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    return RESULTS / f"{name}.json"


def made_once(study: Path, name: str, inputs: list[Any], make: Callable[[Path], Any]) -> Path:
    """``study/NAME`` made by ``make(folder)`` once per content of ``inputs`` (a ledger step whose marker
    records their fingerprint: a changed manifest, world, candidates or backbone remakes it from
    scratch, unchanged inputs reuse it)."""
    import shutil

    from curate.fingerprint import fingerprint
    from curate.ledger import run_global

    folder = study / name

    def run() -> None:
        if folder.exists():
            shutil.rmtree(folder)
        make(folder)

    run_global(f"study {name}", run, study, [name], inputs=fingerprint(*inputs))
    return folder


def peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` of /proc/self/status, which starts afresh at exec. (Linux's
    ``ru_maxrss`` keeps the forking parent's peak across fork + exec, so a child started by a big
    benchmark process would report the parent's memory.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (so peak RSS is its own); it must print one JSON line."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- measuring a command ------------------------------------------------------------------------------
@dataclass
class Measured:
    """One command: wall seconds, CPU seconds of it and its children, peak memory of its whole process
    tree (PSS summed over the processes alive at once, sampled every 0.25 s), the load when it ended."""

    wall: float
    cpu: float
    peak_rss_mb: float
    load: list[float]
    stdout: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall, 3), "cpu_s": round(self.cpu, 2), "peak_rss_mb": round(self.peak_rss_mb, 1),
                "load": self.load, **self.extra}


def _tree_rss(pid: int) -> int:
    """Memory of a process tree: the sum of PSS (shared pages split between the processes that map
    them, so torch's libraries are not counted once per worker), RSS where PSS is not readable."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += getattr(p.memory_full_info(), "pss", 0) or p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: Sequence[str], env: dict[str, str] | None = None, cwd: str | Path | None = None,
                 timeout: float | None = None) -> Measured:
    """Run ``cmd``; raise SystemExit with its stderr tail when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, cwd=cwd)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(p.pid))
            done.wait(SAMPLE_EVERY)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        done.set()
        t.join()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({p.returncode}):\n{err[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(wall, cpu, peak[0] / 2**20, load_average(), out)


def alternate(sides: dict[str, Callable[[], Any]], repeats: int = 3) -> dict[str, list[Any]]:
    """Run every side ``repeats`` times, in order on even repeats and reversed on odd ones."""
    results: dict[str, list[Any]] = {name: [] for name in sides}
    names = list(sides)
    for rep in range(repeats):
        for name in (names if rep % 2 == 0 else names[::-1]):
            print(f"   [{rep + 1}/{repeats}] {name} ...", flush=True)
            results[name].append(sides[name]())
    return results


def median_of(runs: list[Measured]) -> Measured:
    """The run with the median wall time (its CPU time, memory and load come with it)."""
    ordered = sorted(runs, key=lambda m: m.wall)
    return ordered[(len(ordered) - 1) // 2]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio_or_mismatch(ours_rate: float, peer_rate: float, mismatch: str | None) -> float | str:
    """ours/peer throughput, or the reason the two sides cannot be compared."""
    if mismatch:
        return f"MISMATCH: {mismatch}"
    return round(ours_rate / peer_rate, 3) if peer_rate > 0 else float("inf")


def fmt_ratio(ratio: float | str) -> str:
    return ratio if isinstance(ratio, str) else f"{ratio:.2f}x"


def summary_row(what: str, ours: str, peer: str, ratio: float | str, goal: str = "", **extra: Any) -> dict[str, Any]:
    return {"what": what, "ours": ours, "peer": peer, "ratio": ratio, "goal": goal, "load": load_average(), **extra}


def min_cosine(a: Any, b: Any) -> float:
    """Smallest row cosine between two matrices (rows zero in both count as agreeing)."""
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, 1) / np.maximum(na * nb, 1e-30)
    return float(np.min(np.where((na == 0) & (nb == 0), 1.0, cos))) if len(a) else 1.0


def growth(xs: Sequence[float], ys: Sequence[float]) -> float:
    """How ``y`` grows with ``x`` from the first point to the last, as an exponent: 1.0 is linear, 0 flat."""
    import math

    if len(xs) < 2 or xs[0] <= 0 or ys[0] <= 0 or ys[-1] <= 0:
        return float("nan")
    return round(math.log(ys[-1] / ys[0]) / math.log(xs[-1] / xs[0]), 3)
