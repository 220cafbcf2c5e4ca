"""TRIDENT on the demo world: does the data (and attribute smoothing) help? Three seeds per variant.

Two CZSL datasets made from the offline demo:

- ``world``: the demo world exported in CZSL layout (``training.trident.demo.world_to_czsl``):
  train = the world's training images (177 common pairs, 3030 images); val/test = half of the
  held-out common-pair images each + the 44 rare pairs cut in two halves by pair;
- ``dataset``: the CZSL export of the demo ImageNet-AO-style dataset (``demo-out/imagenet-ao``:
  24 common pairs in train, 44 rare pairs in val/test), copied so the original stays untouched.

Variants, each trained with the ``demo`` preset on cached features of the demo mini-CLIP
(the dataset's own model), seeds 124-126 (threads pinned to 1 so runs are reproducible):

(a) TRIDENT, auxiliary attributes from ``curate attributes`` (the bundled SmolLM2);
(b) TRIDENT without attribute smoothing (alpha 0);
(c) TRIDENT with random adjectives as auxiliaries (3 per pair from the bundled visual adjectives);
(d) the linear composition baseline on the same frozen features;
(e) zero-shot CLIP (the same mini-CLIP) with "a photo of {attr} {obj}" prompts, no training;
(f) TRIDENT with SmolLM2 (GGUF) last-hidden-state word embeddings instead of MiniLM.

Reports test Seen, Unseen, HM, AUC (closed world, and open world with feasibility from the
caption corpus' co-occurrences, threshold chosen on val) as mean +- std over seeds.

Usage: .venv/bin/python bench/trident_study.py [--out demo-out/trident-study] [--seeds 124 125 126]
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
    "d": ("linear composition classifier", {"aux": "llm", "model": "linear"}),
    "e": ("zero-shot CLIP (same backbone)", {"zero_shot": True}),
    "f": ("TRIDENT, SmolLM2 GGUF word embeddings", {"aux": "llm", "words": "gguf"}),
}


def prepare(out: Path, llm_cache: Path | None = None) -> dict[str, Path]:
    """The two CZSL roots, each with its pairs.parquet (caption co-occurrences) and aux files."""
    from training.trident.demo import world_to_czsl

    demo = ROOT / "demo-out"
    export = demo / "imagenet-ao" / "exports" / "czsl"
    # each root is remade when what it is made of changed (a regenerated world, a rebuilt or reviewed dataset)
    roots = {"world": made_once(out, "world-czsl", [Path(demo / "world" / "world.json")],
                                lambda f: world_to_czsl(demo / "world", f)),
             "dataset": made_once(out, "dataset-czsl", [export, Path(demo / "imagenet-ao" / "pairs.parquet")],
                                  lambda f: shutil.copytree(export, f))}
    # the dataset's rarity scan of the world's captions (the world export has the world's own counts)
    shutil.copy(demo / "imagenet-ao" / "pairs.parquet", roots["dataset"] / "pairs.parquet")
    for root in roots.values():  # TRIDENT's place, its keys; `curate attributes` keeps them while the pairs are the same
        cmd = [sys.executable, "-m", "curate.cli", "attributes", str(root)]
        subprocess.run(cmd + (["--cache", str(llm_cache)] if llm_cache else []), check=True)
        write_random_aux(root)
    return roots


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


def run_variant(root: Path, name: str, opts: dict, seed: int, runs: Path, backbone: str) -> dict:
    from training.trident.results import evaluate_zero_shot
    from training.trident.train import TrainRequest, train_trident

    if opts.get("zero_shot"):
        res = evaluate_zero_shot(backbone, root, "test", True, "cpu")
        return {"closed": res["closed"]["test"], "open": res["open"]["test"], "seconds": 0.0}
    aux = root / ("aux_random.jsonl" if opts["aux"] == "random" else "aux_label/aux_label.jsonl")
    out = runs / f"{name}-{seed}"
    req = TrainRequest(data=root, out=out, backbone=backbone, aux=aux, word_embeddings=opts.get("words", "minilm"),
                       device="cpu", cache_dir=runs / "features", overwrite=True, threads=1,
                       overrides={"seed": seed, "alpha": opts.get("alpha"), "model": opts.get("model")})
    t0 = time.perf_counter()
    res = train_trident(req)
    return {"closed": res["closed"]["test"], "open": res["open"]["test"], "seconds": time.perf_counter() - t0,
            "best_epoch": (res["training"].get("best") or {}).get("epoch")}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for world in ("closed", "open"):
        for key, _ in METRICS:
            vals = np.array([100 * float(r[world][key]) for r in rows])
            out[f"{world}_{key}"] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    out["seconds"] = float(np.mean([r["seconds"] for r in rows]))
    return out


def markdown(summary: dict, seeds: list[int], load: str) -> str:
    lines = [f"# TRIDENT on the demo (test split, %, mean ± std over seeds {', '.join(map(str, seeds))})", "",
             f"Machine load when run: {load}. Zero-shot has no seed (std 0).", ""]
    for ds, variants in summary.items():
        lines += [f"## {ds}", "", "| variant | closed Seen | Unseen | HM | AUC | open Seen | Unseen | HM | AUC | s/run |",
                  "|---|" + "---:|" * 9]
        for key, (label, s) in variants.items():
            cells = [f"{s[f'{w}_{m}'][0]:.1f} ± {s[f'{w}_{m}'][1]:.1f}" for w in ("closed", "open") for m, _ in METRICS]
            lines.append(f"| ({key}) {label} | " + " | ".join(cells) + f" | {s['seconds']:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "demo-out" / "trident-study")
    ap.add_argument("--seeds", type=int, nargs="+", default=[124, 125, 126])
    ap.add_argument("--variants", default="abcdef")
    ap.add_argument("--datasets", nargs="+", default=["world", "dataset"])
    ap.add_argument("--llm-cache", type=Path, help="sqlite answer cache of an earlier `curate attributes` run")
    args = ap.parse_args()
    from training.trident.run import default_backbone

    backbone = default_backbone(ROOT / "demo-out" / "imagenet-ao")
    roots = prepare(args.out, args.llm_cache)
    import os

    load = f"{os.getloadavg()[0]:.1f} (1-min) on {os.cpu_count()} cores"
    summary: dict = {}
    raw: dict = {}
    for ds in args.datasets:
        summary[ds], raw[ds] = {}, {}
        for key in args.variants:
            label, opts = VARIANTS[key]
            seeds = [0] if opts.get("zero_shot") else args.seeds
            rows = [run_variant(roots[ds], key, opts, s, args.out / "runs" / ds, backbone) for s in seeds]
            raw[ds][key] = rows
            summary[ds][key] = (label, summarise(rows))
            print(ds, key, label, {k: round(v[0], 1) for k, v in summary[ds][key][1].items() if k != "seconds"},
                  flush=True)
    save("trident_study", {"summary": {d: {k: {"label": lab, **s} for k, (lab, s) in v.items()}
                                       for d, v in summary.items()},
                           "backbone": backbone, "seeds": args.seeds, "load": load,
                           "raw": {d: {k: [{w: {m: r[w][m] for m, _ in METRICS} for w in ("closed", "open")}
                                           | {"seconds": r["seconds"]} for r in rows] for k, rows in v.items()}
                                   for d, v in raw.items()}},
         markdown(summary, args.seeds, load))


if __name__ == "__main__":
    main()
