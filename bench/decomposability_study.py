"""Does lower attribute/object dependence in the training captions make a CLIP better on rare compositions?
(issue 22 point 3: the ImageNet-AO paper's NMI finding, reproduced on the demo world.)

One knob, the **dependence** ``d`` in [0, 1], makes a training world (``curate demo world`` knobs):
``--typical-share`` = s0 + d (1 - s0), where s0 = typical pairs / common pairs (about 0.22, every common
pair of an object equally often), and ``--typical-colour-p`` = d (the render's shortcut: how often a
non-colour image shows the object's typical colour). d = 1: every lemon is yellow and every caption of a
lemon names a typical attribute; d = 0: no dependence beyond the absent rare pairs (NMI floor).

- **NMI sweep**: ``--levels`` (>= 5) worlds of ``--train-images`` images each;
- **size sweep**: ``--sizes`` at the fixed knob ``--size-level`` (the size equal to ``--train-images``
  is the NMI sweep's own world, not made twice);
- a mini-CLIP per world x ``--seeds`` (same budget: ``--samples`` images seen, whatever the world's size);
- one ``curate eval study`` (training/study) scores them all on the same rare set and reference, the
  ``rare/`` and ``heldout/`` of one fixed evaluation world (the default ``medium`` world, seed 0, whose
  rare pairs are every training world's rare pairs: same seed), with the **supervised group**: the CNN
  from scratch on object labels (3 seeds) and a linear probe on each world's seed-0 tower, both trained
  on the size sweep's smallest world's images; the effective-robustness line is fitted over that group.

NMI and the number of atypical-pair images: in the NMI sweep they change together (a lower share of
typical pairs is more images of the other pairs). The size sweep holds NMI fixed while the
atypical-pair count grows with size, and its sizes are chosen so one of its worlds has as many
atypical-pair images as an NMI-sweep world (the defaults: d = 0.5 at 1,500 images and d = 0.75 at
3,000 images both have 585): at equal atypical count, the two differ in NMI (and the second has twice
the images). The table lists the atypical-pair count of every world.

- **fixed-atypical sweep** (``--iso-sizes`` x ``--iso-product`` P): worlds of N images at d = 1 - P/N, so
  N (1 - d), and with it the number of atypical-pair images N (1 - s0)(1 - d), is the same in each
  (defaults: 1,000 / 1,500 / 3,000 / 6,000 images at d = 0.25 / 0.5 / 0.75 / 0.875, 585 atypical-pair
  images each); NMI and size grow together. The size sweep says what size alone does at fixed NMI: if
  rare accuracy still falls as NMI rises here, the dependence itself costs something beyond the count of
  atypical images; if it stays flat or rises, the count (and size) is what matters on the demo.

Caches: worlds (resumable builds), mini-CLIPs (``OUT/models/WORLD-sSEED``, a complete folder is not
retrained), study scores (per model): a rerun only trains and scores what is missing.

    .venv/bin/python bench/decomposability_study.py [--out demo-out/decomposability] [--samples 16384]
    .venv/bin/python bench/decomposability_study.py --tiny --out /tmp/dz    # seconds: the structure only

Writes bench/results/decomposability_study.{json,md} and decomposability_{ood_vs_nmi,ood_vs_size,
effective_robustness}.png (``--results`` elsewhere, e.g. a test's folder).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import load_average, save  # noqa: E402

LEVELS = (1.0, 0.75, 0.5, 0.25, 0.0)
SIZES = (750, 1500, 3000)


def _cpu() -> float:
    """User + sys CPU seconds of this process and its finished children (world builds run in workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Clock:
    """Wall and CPU seconds per named step (summed over calls), with the load at each step's end."""

    def __init__(self) -> None:
        self.steps: dict[str, dict[str, Any]] = {}

    def timed(self, name: str, fn, *args, **kw):
        t0, c0 = time.perf_counter(), _cpu()
        out = fn(*args, **kw)
        s = self.steps.setdefault(name, {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0, "load": []})
        s["wall_s"] += time.perf_counter() - t0
        s["cpu_s"] += _cpu() - c0
        s["calls"] += 1
        s["load"].append(load_average()[0])
        return out


def world_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The training worlds: the NMI sweep's (one per level, ``--train-images`` each) and the size sweep's."""
    worlds: dict[tuple[float, int], dict[str, Any]] = {}
    for d in args.levels:
        worlds[(d, args.train_images)] = {"knob": d, "train_images": args.train_images, "sweep": ["nmi"]}
    for n in args.sizes:
        worlds.setdefault((args.size_level, n), {"knob": args.size_level, "train_images": n, "sweep": []})["sweep"].append("size")
    for n in args.iso_sizes if args.iso_product else []:
        d = 1 - args.iso_product / n  # n (1 - d) fixed: the same number of atypical-pair images in each
        worlds.setdefault((d, n), {"knob": d, "train_images": n, "sweep": []})["sweep"].append("atypical")
    for w in worlds.values():
        w["name"] = f"d{w['knob']:.{2 if round(w['knob'], 2) == w['knob'] else 3}f}-n{w['train_images']}"
    return list(worlds.values())


def build_worlds(args: argparse.Namespace, clock: Clock) -> tuple[Path, dict[str, Path]]:
    from builders.synthetic.world import build_world
    from curate.executor import LocalExecutor
    from curate.world import World

    ex = LocalExecutor(args.workers)
    eval_dir = args.out / "worlds" / "eval"
    clock.timed("evaluation world", build_world, eval_dir, args.eval_scale, args.world_seed, args.image_size, executor=ex)
    ev = World.load(eval_dir)
    s0 = len(ev.typical_pairs) / len(ev.common_pairs)
    paths = {}
    for w in world_specs(args):
        knobs = {"typical_share": round(s0 + w["knob"] * (1 - s0), 6), "train_images": w["train_images"],
                 "typical_colour_p": w["knob"]}
        paths[w["name"]] = args.out / "worlds" / w["name"]
        clock.timed("training worlds", build_world, paths[w["name"]], args.scale, args.world_seed, args.image_size,
                    executor=ex, knobs=knobs)
    return eval_dir, paths


def train_labels(world: Path) -> list[tuple[str, str]]:
    """(attr, obj) of every train image (its caption names exactly these two)."""
    from curate.shards import iter_shard
    from curate.world import TRAIN, shards

    out = []
    for shard in shards(world, TRAIN):
        for s in iter_shard(shard, exts=("json",)):
            m = json.loads(s["json"])
            out.append((m["attr"], m["obj"]))
    return out


def _train_one(job: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one mini-CLIP; runs in a worker process. Its wall and CPU seconds and the load are kept
    in ``FOLDER/timing.json``, so a later run that finds the model complete still reports them."""
    from curate.fsutil import read_json, write_json
    from training.models.mini_clip import MiniClipConfig, ensure_mini_clip, is_complete, read_report

    folder = Path(job["folder"])
    cached = is_complete(folder)
    t0, c0 = time.perf_counter(), _cpu()
    ensure_mini_clip(job["world"], MiniClipConfig(**job["cfg"]), out=folder, evaluate=False)
    if not cached:
        write_json(folder / "timing.json", {"wall_s": round(time.perf_counter() - t0, 1),
                                            "cpu_s": round(_cpu() - c0, 1), "load": load_average()})
    timing = read_json(folder / "timing.json") if (folder / "timing.json").is_file() else {}
    return {"world": job["name"], "seed": job["seed"], "folder": str(folder), "cached": cached,
            "training": read_report(folder)["training"], **timing}


def train_models(args: argparse.Namespace, paths: dict[str, Path],
                 clock: Clock) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """A mini-CLIP per (world, seed), ``--jobs`` at a time (``--threads`` each): the NMI sweep's worlds first,
    seed-major (every world's seed 0 first), then the size sweep's others, so a run cut short by
    ``--train-minutes`` (no new training starts after it) stays balanced; a complete model folder is reused.
    Returns label -> {world, seed, folder, training stats, timing}, and the labels left untrained."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    sweeps = {w["name"]: w["sweep"] for w in world_specs(args)}
    cfg = {"samples": args.samples, "batch_size": args.batch, "image_size": args.model_size, "threads": args.threads,
           "max_seconds": args.max_seconds}
    jobs = [{"name": name, "seed": seed, "world": str(paths[name]), "folder": str(args.out / f"models{args.tag}" / f"{name}-s{seed}"),
             "cfg": {**cfg, "seed": seed}}
            for nmi_first in (True, False) for seed in args.seeds for name in paths if ("nmi" in sweeps[name]) == nmi_first]
    models, skipped, running = {}, [], {}
    start, c0 = time.perf_counter(), _cpu()
    if args.jobs == 1:  # in this process: no worker to start (tests, a quiet machine)
        for job in jobs:
            if args.train_minutes and time.perf_counter() - start > 60 * args.train_minutes:
                skipped.append(f"{job['name']}-s{job['seed']}")
                continue
            models[f"{job['name']}-s{job['seed']}"] = _train_one(job)
        jobs = []
    with ProcessPoolExecutor(max(1, args.jobs), mp_context=mp.get_context("spawn")) as pool:
        while jobs or running:
            while jobs and len(running) < args.jobs:
                if args.train_minutes and time.perf_counter() - start > 60 * args.train_minutes:
                    skipped += [f"{j['name']}-s{j['seed']}" for j in jobs]
                    jobs = []
                    break
                job = jobs.pop(0)
                running[pool.submit(_train_one, job)] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED) if running else (set(), set())
            for f in done:
                job = running.pop(f)
                models[f"{job['name']}-s{job['seed']}"] = f.result()
    step = clock.steps.setdefault("mini-CLIP training (all, in workers)", {"wall_s": 0.0, "cpu_s": 0.0, "calls": 0, "load": []})
    step.update(wall_s=time.perf_counter() - start, cpu_s=_cpu() - c0, calls=sum(not m["cached"] for m in models.values()),
                load=[load_average()[0]])
    return dict(sorted(models.items())), skipped


def study_rows(args, models: dict[str, dict[str, Any]], paths: dict[str, Path]) -> list:
    from training.study.rows import PROBE, SCRATCH, make_row

    rows = [make_row(f"mini:{m['folder']}", label, group="clip", nmi=m["training"]["caption_nmi"])
            for label, m in models.items()]
    if args.scratch:
        rows.append(make_row(SCRATCH, "CNN from scratch", method=SCRATCH))
    first = args.seeds[0]
    rows += [make_row(f"mini:{models[f'{name}-s{first}']['folder']}", f"probe {name}", method=PROBE)
             for name in paths if f"{name}-s{first}" in models]
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    from curate.world import HELDOUT, RARE, TRAIN, split_dir
    from training.study.run import StudyRequest, run_study
    from training.study.sweep import SweepWorld, aggregate, correlations, plot_sweep

    clock = Clock()
    t0, c0, load0 = time.perf_counter(), _cpu(), load_average()
    eval_dir, paths = build_worlds(args, clock)
    models, skipped = train_models(args, paths, clock)
    specs = world_specs(args)
    # the supervised group's training images: the size sweep's smallest world (the scratch CNN's cost grows with it)
    ref = paths[min((w for w in specs if "size" in w["sweep"]), key=lambda w: w["train_images"])["name"]]
    req = StudyRequest(dataset=split_dir(eval_dir, RARE), reference=split_dir(eval_dir, HELDOUT), out=args.out / f"study{args.tag}",
                       rows=study_rows(args, models, paths), train=split_dir(ref, TRAIN), baseline="supervised",
                       device="cpu")
    import torch

    torch.set_num_threads(args.threads)  # one thread scores faster than two on a shared machine (see the README)
    report = clock.timed("study (score, probes, scratch CNN)", run_study, req)
    worlds = []
    for w in specs:
        labels = train_labels(paths[w["name"]])
        typical = {(a, o) for o, t in _typical(eval_dir).items() for a in t.values()}
        mine = [lab for lab, m in models.items() if m["world"] == w["name"]]
        if not mine:
            continue
        worlds.append(SweepWorld(w["name"], ",".join(w["sweep"]), w["knob"], len(labels),
                                 sum(p not in typical for p in labels), models[mine[0]]["training"]["caption_nmi"], mine))
    agg = aggregate(report, worlds)
    corr = correlations(agg, n_boot=args.boot)
    args.results.mkdir(parents=True, exist_ok=True)
    plots = plot_sweep(agg, report, args.results, prefix="decomposability_")
    supervised = [r for r in report["rows"] if r["ok"] and r["group"] == "supervised"]
    timing = {"total_wall_s": round(time.perf_counter() - t0, 1), "total_cpu_s": round(_cpu() - c0, 1),
              "load_start": load0, "load_end": load_average(),
              "steps": {k: {**v, "wall_s": round(v["wall_s"], 1), "cpu_s": round(v["cpu_s"], 1)}
                        for k, v in clock.steps.items()}}
    return {"config": _config(args), "worlds": agg, "correlations": corr, "sizes": report["sizes"],
            "baseline": report["baseline"], "supervised": supervised, "models": models, "timing": timing,
            "failed": report["failed"], "untrained": skipped, "plots": [p.name for p in plots], "study": str(args.out / f"study{args.tag}")}


def _typical(world: Path) -> dict[str, dict[str, str]]:
    from curate.world import World

    return World.load(world).typical


def _config(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def markdown(result: dict[str, Any]) -> str:
    from training.study.sweep import sweep_markdown

    c, t = result["config"], result["timing"]
    timed = [m for m in result["models"].values() if "cpu_s" in m]
    per = (sum(m["wall_s"] for m in timed) / len(timed), sum(m["cpu_s"] for m in timed) / len(timed)) if timed else None
    train_s = [m["training"]["train_seconds"] for m in result["models"].values()]
    lines = ["# Decomposability study (issue 22 point 3)", "",
             f"Training worlds: knob d in {c['levels']} at {c['train_images']} train images (NMI sweep), sizes "
             f"{c['sizes']} at d = {c['size_level']} (size sweep)"
             + (f", sizes {c['iso_sizes']} at d = 1 - {c['iso_product']}/N (fixed-atypical sweep: the same number of "
                "atypical-pair images in each)" if c.get("iso_product") else "")
             + f"; {len(c['seeds'])} seeds per world; mini-CLIP budget "
             f"{c['samples']:,} images seen (batch {c['batch']}), {c['model_size']} px. Evaluation: the `{c['eval_scale']}` "
             "world's rare/ (OoD) and heldout/ (ID).", "",
             *sweep_markdown(result["worlds"], result["correlations"], result["sizes"], result["supervised"]), "",
             f"Time: {t['total_wall_s']:.0f} s wall, {t['total_cpu_s']:.0f} s CPU (user + sys), load {t['load_start'][0]} at "
             f"start, {t['load_end'][0]} at the end, {os.cpu_count()} cores."
             + (f" Per mini-CLIP ({len(timed)} timed, {c['jobs']} at once, {c['threads']} thread(s) each): "
                f"{per[0]:.0f} s wall, {per[1]:.0f} s CPU." if per else "")
             + (f" Training loop alone: {sum(train_s) / len(train_s):.0f} s wall per model (mean of {len(train_s)})."
                if train_s else ""), "",
             "| step | calls | wall s | CPU s | load (last) |", "|---|---:|---:|---:|---:|"]
    for k, v in t["steps"].items():
        lines.append(f"| {k} | {v['calls']} | {v['wall_s']:.0f} | {v['cpu_s']:.0f} | {v['load'][-1]} |")
    if result.get("untrained"):
        lines += ["", f"Not trained (the `--train-minutes` limit): {', '.join(result['untrained'])}"]
    if result["failed"]:
        lines += ["", f"Failed rows: {', '.join(result['failed'])}"]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out" / "decomposability")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--train-images", type=int, default=1500)
    ap.add_argument("--size-level", type=float, default=0.75)
    ap.add_argument("--iso-sizes", type=int, nargs="+", default=[1000, 1500, 3000, 6000],
                    help="the fixed-atypical sweep's sizes: worlds of N images at knob d = 1 - ISO_PRODUCT / N")
    ap.add_argument("--iso-product", type=int, default=750,
                    help="N (1 - d) of the fixed-atypical sweep (0: no such sweep); its worlds then have the same "
                         "number of atypical-pair images (N (1 - s0)(1 - d)) while NMI and size grow together")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=16384, help="images seen per mini-CLIP (the same budget for all)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model-size", type=int, default=48, help="the mini-CLIP's input side (the demo's is 64)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (worker processes)")
    ap.add_argument("--max-seconds", type=float, default=1800.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--scale", default="small", help="the training worlds' scale (their pool, captions, heldout)")
    ap.add_argument("--eval-scale", default="medium")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--tiny", action="store_true", help="tiny worlds and models: seconds, for tests")
    ap.add_argument("--clean", action="store_true", help="remove --out first")
    ap.add_argument("--train-minutes", type=float, default=0, help="start no new mini-CLIP after this (0: no limit)")
    ap.add_argument("--no-scratch", dest="scratch", action="store_false",
                    help="leave the CNN from scratch out of the supervised group (probes only)")
    ap.add_argument("--tag", default="", help="suffix of the models and study folders (another budget, same worlds)")
    ap.add_argument("--report-only", action="store_true", help="rewrite the Markdown from the saved JSON")
    args = ap.parse_args(argv)
    if args.tiny:
        args.scale = args.eval_scale = "tiny"
        args.image_size, args.model_size, args.batch, args.boot = 32, 32, 32, 200
    if len(set(args.levels)) < 3:
        ap.error("--levels: give at least 3 distinct knob values (5 for the study)")
    for v in (*args.levels, args.size_level):
        if not 0.0 <= v <= 1.0:
            ap.error(f"knob {v} is outside [0, 1]")
    if args.iso_product < 0 or any(n < args.iso_product for n in args.iso_sizes if args.iso_product):
        ap.error(f"--iso-sizes must each be at least --iso-product ({args.iso_product}): the knob 1 - P/N is in [0, 1]")
    return args


def summary(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The row bench/run_all.py puts in the README's summary table: the study's wall time vs the 30-minute goal."""
    t = result["timing"]
    trained = sum(not m["cached"] for m in result["models"].values())
    return [{"what": f"decomposability study: {len(result['worlds'])} worlds, {len(result['models'])} mini-CLIPs "
                     f"({trained} trained), supervised group", "ours": f"{t['total_wall_s'] / 60:.1f} min wall, "
                     f"{t['total_cpu_s'] / 60:.1f} min CPU", "peer": "-", "ratio": None,
             "goal": "<= 30 min on 2 cores", "load": t["load_end"]}]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    if args.report_only:  # re-render the Markdown of the saved result (no run)
        path = args.results / "decomposability_study.json"
        result = json.loads(path.read_text())
        if "summary" not in result:
            result["summary"] = summary(result)
            path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.results / "decomposability_study.md").write_text(markdown(result) + "\n")
        return result
    if args.clean and args.out.exists():
        shutil.rmtree(args.out)
    result = run(args)
    result["summary"] = summary(result)
    if args.results.resolve() == (ROOT / "bench" / "results").resolve():
        save("decomposability_study", result, markdown(result))
    else:
        (args.results / "decomposability_study.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.results / "decomposability_study.md").write_text(markdown(result) + "\n")
    return result


if __name__ == "__main__":
    main()
