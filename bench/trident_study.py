"""TRIDENT on the demo world: does the data (and attribute smoothing) help? Three seeds per variant.

Two CZSL benchmarks made from the offline demo (their sizes are printed beside every table):

- ``world``: the demo world exported in CZSL layout (``training.trident.demo.world_to_czsl``):
  train = the world's training images (177 common pairs); val/test = half of the held-out
  common-pair images each + the 44 rare pairs cut in two halves by pair;
- ``dataset``: the CZSL export of the demo ImageNet-AO-style dataset (``DEMO/imagenet-ao``: its
  24 seen pairs, capped at ``seen_images_per_pair`` and split train/val/test, 44 rare pairs in
  val/test), copied so the original stays untouched.

Variants, each trained with the ``demo`` preset on cached features of the demo mini-CLIP
(the dataset's own model, the one that filtered it), seeds 124-126 (threads pinned to 1 so
runs are reproducible):

(a) TRIDENT, auxiliary attributes from ``curate attributes`` (the bundled SmolLM2);
(b) TRIDENT without attribute smoothing (alpha 0);
(c) TRIDENT with random adjectives as auxiliaries (3 per pair from the bundled visual adjectives);
(g) TRIDENT with the truth's auxiliaries (``curate attributes --from world``: what the pair's
    training images show besides its attribute);
(d) the linear composition baseline (a linear probe) on the same frozen features;
(e) zero-shot CLIP (the filter model, the same mini-CLIP) with "a photo of {attr} {obj}" prompts;
(h) zero-shot by an independent mini-CLIP (``curate model train-mini --seed 1``: same data, another seed);
(f) TRIDENT with SmolLM2 (GGUF) last-hidden-state word embeddings instead of MiniLM (not in the default run).

``--alphas 0.2 0.5`` adds the truth's auxiliaries (g) at other smoothing strengths.
Reports test Seen, Unseen, HM, AUC (closed world, and open world with feasibility from the
caption corpus' co-occurrences, threshold chosen on val) as mean +- std over seeds.

Usage: .venv/bin/python bench/trident_study.py [--demo demo-out] [--out DEMO/trident-study] [--seeds 124 125 126]
Writes bench/results/trident_study.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import made_once, save  # noqa: E402

METRICS = (("best_seen", "Seen"), ("best_unseen", "Unseen"), ("best_hm", "HM"), ("auc", "AUC"))
VARIANTS = {
    "a": ("TRIDENT (aux from curate attributes)", {"aux": "llm"}),
    "b": ("TRIDENT without attribute smoothing", {"aux": "llm", "alpha": 0.0}),
    "c": ("TRIDENT, random adjectives as aux", {"aux": "random"}),
    "g": ("TRIDENT, true aux (world truth)", {"aux": "world"}),
    "d": ("linear composition classifier (probe)", {"aux": "llm", "model": "linear"}),
    "e": ("zero-shot CLIP (filter model)", {"zero_shot": "filter"}),
    "h": ("zero-shot CLIP (independent, seed 1)", {"zero_shot": "independent"}),
    "f": ("TRIDENT, SmolLM2 GGUF word embeddings", {"aux": "llm", "words": "gguf"}),
}
AUX_FILES = {"llm": "aux_label/aux_label.jsonl", "random": "aux_random.jsonl", "world": "aux_true/aux_label.jsonl"}


def prepare(out: Path, demo: Path, llm_cache: Path | None = None, llm: bool = True) -> dict[str, Path]:
    """The two CZSL roots, each with its pairs.parquet (caption co-occurrences) and aux files (without
    ``llm``: the truth's only, for a run of true-auxiliary variants alone)."""
    from training.trident.demo import world_to_czsl

    export = demo / "imagenet-ao" / "exports" / "czsl"
    # each root is remade when what it is made of changed (a regenerated world, a rebuilt or reviewed dataset)
    roots = {"world": made_once(out, "world-czsl", [Path(demo / "world" / "world.json")],
                                lambda f: world_to_czsl(demo / "world", f)),
             "dataset": made_once(out, "dataset-czsl", [export, Path(demo / "imagenet-ao" / "pairs.parquet")],
                                  lambda f: shutil.copytree(export, f))}
    # the dataset's rarity scan of the world's captions (the world export has the world's own counts)
    shutil.copy(demo / "imagenet-ao" / "pairs.parquet", roots["dataset"] / "pairs.parquet")
    truth_of = {"world": demo / "world", "dataset": demo / "imagenet-ao"}
    for name, root in roots.items():  # TRIDENT's place, its keys; `curate attributes` keeps them while the pairs are the same
        if llm:
            cmd = [sys.executable, "-m", "curate.cli", "attributes", str(root)]
            subprocess.run(cmd + (["--cache", str(llm_cache)] if llm_cache else []), check=True)
            write_random_aux(root)
        subprocess.run([sys.executable, "-m", "curate.cli", "attributes", str(truth_of[name]), "--from", "world",
                        "--out", str(root / "aux_true")], check=True)
    return roots


def benchmark_size(root: Path) -> dict:
    """Images and pairs of every split, val/test cut into seen (a training pair) and unseen."""
    from training.trident.data import load_czsl

    data = load_czsl(root)
    seen = set(data.train_pairs)
    size = {"train": {"images": len(data.items["train"]), "pairs": len(seen)}}
    for split in ("val", "test"):
        for part, keep in (("seen", True), ("unseen", False)):
            items = [it for it in data.items[split] if ((it.attr, it.obj) in seen) == keep]
            size[f"{split}_{part}"] = {"images": len(items), "pairs": len({(it.attr, it.obj) for it in items})}
    return size


def aux_reach(root: Path) -> dict[str, dict]:
    """Per auxiliary file: words per training pair, the share that are attributes of the benchmark (words it
    can score at test), and the share of unseen test pairs (a, o) whose attribute is an auxiliary of a seen
    pair of the same object (the pairs smoothing can point a seen image towards)."""
    from curate.aux_labels import read_aux_labels
    from training.trident.data import display_name, load_czsl

    data = load_czsl(root)
    seen = set(data.train_pairs)
    attrs = {display_name(a) for a in data.attrs}
    unseen = {(display_name(it.attr), display_name(it.obj)) for it in data.items["test"] if (it.attr, it.obj) not in seen}
    out = {}
    for name, rel in AUX_FILES.items():
        if not (root / rel).is_file():
            continue
        table = {tuple(display_name(x) for x in k.split(" ", 1)): v for k, v in read_aux_labels(root / rel).items()}
        train = {(display_name(a), display_name(o)) for a, o in seen}  # attributes are one word: split at the first space
        words = [(p, display_name(w)) for p, ws in table.items() if p in train for w in ws]
        reach = {(w, p[1]) for p, w in words}
        out[name] = {"words_per_pair": len(words) / max(len(seen), 1),
                     "in_vocabulary": sum(w in attrs for _, w in words) / max(len(words), 1),
                     "unseen_reached": len(unseen & reach) / max(len(unseen), 1), "unseen_pairs": len(unseen)}
    return out


def reach_lines(reach: dict[str, dict]) -> list[str]:
    lines = ["| auxiliaries | words per train pair | attributes of the benchmark | unseen test pairs reached |",
             "|---|---:|---:|---:|"]
    for name, r in reach.items():
        lines.append(f"| {name} | {r['words_per_pair']:.2f} | {100 * r['in_vocabulary']:.0f} % | "
                     f"{100 * r['unseen_reached']:.0f} % of {r['unseen_pairs']} |")
    return lines


def size_line(size: dict) -> str:
    per_pair = size["train"]["images"] / max(size["train"]["pairs"], 1)
    parts = [f"train {size['train']['images']} images / {size['train']['pairs']} pairs ({per_pair:.0f} per pair)"]
    parts += [f"{k.replace('_', ' ')} {v['images']} / {v['pairs']}" for k, v in size.items() if k != "train"]
    return "Benchmark size (images / pairs): " + "; ".join(parts) + "."


def independent_backbone(demo: Path, seed: int = 1) -> str:
    """``mini:`` spec of the demo mini-CLIP trained with another seed (cached; trained on first use)."""
    from training.models.mini_clip import MiniClipConfig, ensure_mini_clip

    cfg = MiniClipConfig()
    cfg.seed, cfg.threads = seed, 1
    return f"mini:{ensure_mini_clip(demo / 'world', config=cfg)}"


def write_random_aux(root: Path, seed: int = 0) -> Path:
    """Three random visual adjectives per pair (never the pair's attribute), same keys as the LLM file."""
    words = [w.strip() for w in (ROOT / "builders" / "aux_attributes" / "visual_adjectives.txt").read_text()
             .splitlines() if w.strip() and not w.startswith("#")]
    rng = random.Random(seed)
    lines = []
    for line in (root / "aux_label" / "aux_label.jsonl").read_text().splitlines():
        key = next(iter(json.loads(line)))
        attr = key.split(" ")[0]
        lines.append(json.dumps({key: rng.sample([w for w in words if w != attr], 3)}))
    path = root / "aux_random.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_variant(root: Path, name: str, opts: dict, seed: int, runs: Path, backbones: dict[str, str],
                epochs: int | None = None, reuse: bool = False) -> dict:
    from training.trident.results import evaluate_zero_shot
    from training.trident.train import TrainRequest, train_trident

    if opts.get("zero_shot"):
        t0 = time.perf_counter()
        res = evaluate_zero_shot(backbones[opts["zero_shot"]], root, "test", True, "cpu")
        return {"closed": res["closed"]["test"], "open": res["open"]["test"], "seconds": time.perf_counter() - t0}
    aux = root / AUX_FILES[opts["aux"]]
    out = runs / f"{name}-{seed}"
    if reuse and (out / "results.json").is_file():  # a finished run of an interrupted study
        res = json.loads((out / "results.json").read_text())
        seconds = (out / "results.json").stat().st_mtime - (out / "run.json").stat().st_mtime
        return {"closed": res["closed"]["test"], "open": res["open"]["test"], "seconds": seconds}
    req = TrainRequest(data=root, out=out, backbone=backbones["filter"], aux=aux,
                       word_embeddings=opts.get("words", "minilm"), device="cpu", cache_dir=runs / "features",
                       overwrite=True, threads=1,
                       overrides={"seed": seed, "alpha": opts.get("alpha"), "model": opts.get("model"),
                                  **schedule(epochs)})
    t0 = time.perf_counter()
    res = train_trident(req)
    return {"closed": res["closed"]["test"], "open": res["open"]["test"], "seconds": time.perf_counter() - t0,
            "best_epoch": (res["training"].get("best") or {}).get("epoch")}


def schedule(epochs: int | None) -> dict:
    """A shorter run of the demo preset's schedule (50 epochs, x0.1 at 30 and 40): the same shape, scaled."""
    if not epochs:
        return {}
    return {"epochs": epochs, "milestones": [round(epochs * 0.6), round(epochs * 0.8)]}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for world in ("closed", "open"):
        for key, _ in METRICS:
            vals = np.array([100 * float(r[world][key]) for r in rows])
            out[f"{world}_{key}"] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    out["seconds"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def markdown(summary: dict, seeds: list[int], load: str, sizes: dict, reach: dict, epochs: dict) -> str:
    lines = [f"# TRIDENT on the demo (test split, %, mean ± std over seeds {', '.join(map(str, seeds))})", "",
             f"Machine load when run: {load}. Zero-shot has no seed (std 0). s/run: seconds per run "
             "(training + evaluation; zero-shot: evaluation).", ""]
    for ds, variants in summary.items():
        n = epochs.get(ds) or 50
        lines += [f"## {ds}", "", size_line(sizes[ds]) + f" Training: {n} epochs (the demo preset's schedule"
                  + (f", x0.1 at {round(n * 0.6)} and {round(n * 0.8)}" if n != 50 else "") + ").", "",
                  "| variant | closed Seen | Unseen | HM | AUC | open Seen | Unseen | HM | AUC | s/run |",
                  "|---|" + "---:|" * 9]
        for key, (label, s) in variants.items():
            cells = [f"{s[f'{w}_{m}'][0]:.1f} ± {s[f'{w}_{m}'][1]:.1f}" for w in ("closed", "open") for m, _ in METRICS]
            lines.append(f"| ({key}) {label} | " + " | ".join(cells) + f" | {s['seconds']:.0f} |")
        lines.append("")
        if reach.get(ds):
            lines += ["What the auxiliaries can reach (an unseen test pair (a, o) is reached when a is an "
                      "auxiliary of a seen pair of the same object o):", "", *reach_lines(reach[ds]), ""]
    return "\n".join(lines)


def variants_to_run(keys: str, alphas: list[float]) -> dict[str, tuple[str, dict]]:
    """The chosen variants, then the truth's auxiliaries (g) at each extra alpha (keys ``g@ALPHA``)."""
    chosen = {k: VARIANTS[k] for k in keys}
    for a in alphas:
        chosen[f"g@{a:g}"] = (f"TRIDENT, true aux, alpha {a:g}", {"aux": "world", "alpha": a})
    return chosen


def merge_previous(name: str, summary: dict, raw: dict, sizes: dict, reach: dict, epochs: dict) -> None:
    """Fill in what an earlier run of the same study saved and this one did not redo (same order as VARIANTS)."""
    from bench.common import RESULTS

    path = RESULTS / f"{name}.json"
    prev = json.loads(path.read_text()) if path.is_file() else {}
    order = [*VARIANTS]
    for ds, variants in prev.get("summary", {}).items():
        summary.setdefault(ds, {})
        raw.setdefault(ds, {})
        for key, v in variants.items():
            if key not in summary[ds]:
                summary[ds][key] = (v["label"], {k: x for k, x in v.items() if k != "label"})
                raw[ds][key] = prev.get("raw", {}).get(ds, {}).get(key, [])
        summary[ds] = dict(sorted(summary[ds].items(), key=lambda kv: (order.index(kv[0][0]), kv[0])))
        sizes.setdefault(ds, prev.get("sizes", {}).get(ds))
        reach.setdefault(ds, prev.get("aux_reach", {}).get(ds))
        epochs.setdefault(ds, prev.get("epochs", {}).get(ds))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", type=Path, default=ROOT / "demo-out", help="folder with world/ and imagenet-ao/")
    ap.add_argument("--out", type=Path, help="study folder (default DEMO/trident-study)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[124, 125, 126])
    ap.add_argument("--variants", default="abcgdeh")
    ap.add_argument("--alphas", type=float, nargs="*", default=[], help="extra alphas for the truth's aux (g)")
    ap.add_argument("--datasets", nargs="+", default=["world", "dataset"])
    ap.add_argument("--llm-cache", type=Path, help="sqlite answer cache of an earlier `curate attributes` run")
    ap.add_argument("--name", default="trident_study", help="results name under bench/results/")
    ap.add_argument("--merge", action="store_true",
                    help="keep the variants and datasets of bench/results/NAME.json that this run does not redo")
    ap.add_argument("--reuse", action="store_true", help="read runs that finished (RUN/results.json) instead of "
                    "training them again (same options: resuming an interrupted study)")
    ap.add_argument("--epochs", type=int, help="train this many epochs (milestones scaled; default the preset's 50)")
    args = ap.parse_args()
    from training.trident.run import default_backbone

    out = args.out or args.demo / "trident-study"
    backbones = {"filter": default_backbone(args.demo / "imagenet-ao"), "independent": independent_backbone(args.demo)}
    chosen = variants_to_run(args.variants, args.alphas)
    roots = prepare(out, args.demo, args.llm_cache, llm=any(o.get("aux") in ("llm", "random") for _, o in chosen.values()))
    import os

    load = f"{os.getloadavg()[0]:.1f} (1-min) on {os.cpu_count()} cores"
    summary: dict = {}
    raw: dict = {}
    sizes = {ds: benchmark_size(roots[ds]) for ds in args.datasets}
    reach = {ds: aux_reach(roots[ds]) for ds in args.datasets}
    epochs = {ds: args.epochs or 50 for ds in args.datasets}
    for ds in args.datasets:
        summary[ds], raw[ds] = {}, {}
        print(ds, size_line(sizes[ds]), flush=True)
        for key, (label, opts) in chosen.items():
            seeds = [0] if opts.get("zero_shot") else args.seeds
            rows = [run_variant(roots[ds], key, opts, s, out / "runs" / ds, backbones, args.epochs, args.reuse)
                    for s in seeds]
            raw[ds][key] = rows
            summary[ds][key] = (label, summarise(rows))
            print(ds, key, label, {k: round(v[0], 1) for k, v in summary[ds][key][1].items() if k != "seconds"},
                  flush=True)
            if args.merge:  # saved after every variant: a run cut short keeps what it measured
                merge_previous(args.name, summary, raw, sizes, reach, epochs)
            write_results(args, summary, raw, sizes, reach, epochs, backbones, load)


def write_results(args, summary: dict, raw: dict, sizes: dict, reach: dict, epochs: dict, backbones: dict,
                  load: str) -> None:
    save(args.name, {"summary": {d: {k: {"label": lab, **s} for k, (lab, s) in v.items()}
                                 for d, v in summary.items()},
                     "backbones": backbones, "seeds": args.seeds, "load": load, "epochs": epochs, "sizes": sizes,
                     "aux_reach": reach,
                     "raw": {d: {k: [{w: {m: r[w][m] for m, _ in METRICS} for w in ("closed", "open")}
                                     | {"seconds": r["seconds"]} for r in rows] for k, rows in v.items()}
                             for d, v in raw.items()}},
         markdown(summary, args.seeds, load, sizes, reach, epochs))

if __name__ == "__main__":
    main()
