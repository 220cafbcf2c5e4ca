"""Benchmark: how long `curate demo world` takes per scale, and its throughput.

There is no peer tool that builds this world, so the comparison is with the work itself:
images/s and captions/s of the full command (process start, executor, ledger, atomic writes
included) against the renderer alone in one process (``render + JPEG`` in a loop), which
shows what the plumbing costs. Writes bench/results/bench_world.{json,md}.

    .venv/bin/python bench/bench_world.py --scales small medium [--workers 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CURATE = str(Path(sys.executable).with_name("curate"))


def renderer_alone(n: int = 500) -> float:
    """Images/s of render + JPEG encode in this process (no files, no executor)."""
    from builders.synthetic.render import render
    from builders.synthetic.vocab import ATTRIBUTE_NAMES, OBJECT_NAMES
    from curate.images import encode_jpeg as to_jpeg

    render("red", "heart", 0)  # warm the shape cache
    t0 = time.perf_counter()
    for i in range(n):
        to_jpeg(render(ATTRIBUTE_NAMES[i % len(ATTRIBUTE_NAMES)], OBJECT_NAMES[i % len(OBJECT_NAMES)], i))
    return n / (time.perf_counter() - t0)


def run_scale(scale: str, workers: int, root: Path) -> dict:
    out = root / f"world-{scale}"
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([CURATE, "demo", "world", "--out", str(out), "--scale", scale, "-w", str(workers)],
                       capture_output=True, text=True, env=env)
    first = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"curate demo world failed:\n{r.stderr}")
    t0 = time.perf_counter()
    subprocess.run([CURATE, "demo", "world", "--out", str(out), "--scale", scale], capture_output=True, env=env,
                   check=True)
    rerun = time.perf_counter() - t0
    counts = json.loads((out / "world.json").read_text())["counts"]
    images = counts["train"] + counts["heldout"] + counts["rare"] + counts["pool"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"scale": scale, "workers": workers, "seconds": round(first, 2), "rerun_seconds": round(rerun, 2),
            "images": images, "captions": counts["captions"], "images_per_s": round(images / first, 1),
            "disk_mb": round(size / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", nargs="+", default=["small", "medium"], choices=["small", "medium", "large"])
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--keep", type=Path, help="Build the worlds here and keep them (default: a temp folder).")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-world-"))
    alone = renderer_alone()
    rows = [run_scale(s, args.workers, root) for s in args.scales]
    for r in rows:
        r["vs_renderer_alone"] = round(r["images_per_s"] / alone, 2)
    result = {"bench": "demo world", "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.1f}", "renderer_alone_images_per_s": round(alone, 1), "runs": rows}
    res_dir = REPO / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "bench_world.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# curate demo world", "", f"Machine: {result['machine']}. Renderer alone (render + JPEG, one "
             f"process): {alone:.0f} images/s.", "",
             "| scale | workers | seconds | rerun s | images | captions | images/s | x renderer alone | disk MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['scale']} | {r['workers']} | {r['seconds']} | {r['rerun_seconds']} | {r['images']} | "
                     f"{r['captions']} | {r['images_per_s']} | {r['vs_renderer_alone']} | {r['disk_mb']} |")
    (res_dir / "bench_world.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
