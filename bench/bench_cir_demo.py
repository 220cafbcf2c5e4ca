"""The CIR trainer on the demo world: CLIP4Cir's Combiner vs three zero-shot baselines, three seeds.

Mines triplets from the demo dataset (``curate triplets demo-out/imagenet-ao`` with the GeneCIS
export and a 0.7/0.1/0.2 image split, so the held-out gallery is not tiny) into
``demo-out/cir/triplets``, then trains the Combiner on the frozen demo mini-CLIP's features
(``demo-out/imagenet-ao/embeddings``) on CPU for each seed and scores the best epoch (by
validation) and the image-only, text-only and image+text baselines on the held-out test triplets
in the benchmarks' own formats: CIRR (Recall@1/5/10/50, Recall_subset@1/2/3), CIRCO
(mAP@5/10/25/50) and GeneCIS (Recall@1/2/3, mean of its change_attribute / change_object tasks).
Then runs the MLLM path on a tiny randomly initialised LLaVA for a few steps (it runs; its
numbers mean nothing).

    .venv/bin/python bench/bench_cir_demo.py [--seeds 0 1 2] [--epochs 30]

Writes bench/results/bench_cir_demo.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import save  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo-out"
OUT = DEMO / "cir"
COLUMNS = [("cirr test1", "recall_at1", "CIRR R@1"), ("cirr test1", "recall_at5", "R@5"),
           ("cirr test1", "recall_at10", "R@10"), ("cirr test1", "recall_at50", "R@50"),
           ("cirr test1", "group_recall_at1", "Rs@1"), ("cirr test1", "group_recall_at2", "Rs@2"),
           ("cirr test1", "group_recall_at3", "Rs@3"),
           ("circo test", "map_at5", "CIRCO mAP@5"), ("circo test", "map_at10", "mAP@10"),
           ("circo test", "map_at25", "mAP@25"), ("circo test", "map_at50", "mAP@50"),
           ("genecis", "recall_at1", "GeneCIS R@1"), ("genecis", "recall_at2", "R@2"), ("genecis", "recall_at3", "R@3")]


def ensure_triplets() -> Path:
    from builders.triplets import TripletsConfig, build_triplets

    out = OUT / "triplets"
    build_triplets(TripletsConfig(dataset=str(DEMO / "imagenet-ao"), out=str(out), splits="train=0.7,val=0.1,test=0.2",
                                  formats=["shards", "cirr", "circo", "fashioniq", "genecis"]))
    return out


def values(test: dict, method: str) -> dict[str, float]:
    """The table's numbers of one method (GeneCIS: mean over its tasks)."""
    r = test[method]
    out = {}
    for split, key, _ in COLUMNS:
        if split == "genecis":
            tasks = [v["metrics"][key] for name, v in r.items() if name.startswith("genecis ")]
            out[f"{split}/{key}"] = statistics.mean(tasks)
        else:
            out[f"{split}/{key}"] = r[split]["metrics"][key]
    return out


def train_seed(trip: Path, seed: int, epochs: int) -> dict:
    from training.cir.train import CirTrainConfig, RunOptions, train_cir

    t0 = time.perf_counter()
    res = train_cir(CirTrainConfig(triplets=str(trip), out=str(OUT / f"combiner-seed{seed}"), epochs=epochs,
                                   seed=seed), RunOptions(device="cpu", overwrite=True))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def mllm_smoke(trip: Path) -> dict:
    from training.cir.random_llava import save_random_llava
    from training.cir.train import CirTrainConfig, RunOptions, train_cir

    spec = save_random_llava(OUT / "tiny-llava")
    t0 = time.perf_counter()
    res = train_cir(CirTrainConfig(triplets=str(trip), out=str(OUT / "mllm-tiny"), model="mllm", mllm=spec,
                                   stage1=str(DEMO / "world" / "train"), steps=3, epochs=1, batch_size=8),
                    RunOptions(device="cpu", overwrite=True))
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    return res


def fmt(xs: list[float]) -> str:
    m = 100 * statistics.mean(xs)
    s = 100 * statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--no-mllm", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("CURATE_NO_PROGRESS", "1")
    load = os.getloadavg()
    trip = ensure_triplets()
    runs = [train_seed(trip, s, args.epochs) for s in args.seeds]
    methods = list(runs[0]["test"])
    per_seed = {m: [values(r["test"], m) for r in runs] for m in methods}
    keys = [f"{s}/{k}" for s, k, _ in COLUMNS]
    table = {m: {k: [v[k] for v in per_seed[m]] for k in keys} for m in methods}
    ours, sizes = runs[0]["test"]["Combiner"], {}
    for name in ("cirr test1", "circo test"):
        sizes[name] = (ours[name]["queries"], ours[name]["gallery"])
    gen = [(n, v["queries"]) for n, v in ours.items() if n.startswith("genecis ")]
    lines = [f"Demo world, held-out test triplets (percent, mean ± std over seeds {args.seeds}; the baselines "
             "need no training, so their std is 0). Combiner: CLIP4Cir's, on the frozen demo mini-CLIP "
             f"(128-d), {args.epochs} epochs, best epoch by validation.", "",
             f"Test sets: CIRR-format {sizes['cirr test1'][0]} queries over a {sizes['cirr test1'][1]}-image gallery; "
             f"CIRCO-format {sizes['circo test'][0]} queries over {sizes['circo test'][1]} images (val + test images, "
             f"as the export writes); GeneCIS-format {', '.join(f'{n.split()[1]} {q}' for n, q in gen)} queries, "
             "6-image galleries (target + 5 hard negatives), one-word conditions.", "",
             "| method | " + " | ".join(label for _, _, label in COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(fmt(table[m][k]) for k in keys) + " |")
    train_s = [r["training"]["seconds"] for r in runs]
    sps = [r["training"]["samples_per_s"] for r in runs]
    lines += ["", f"Training on CPU: {runs[0]['run']['train_triplets']} train triplets, {statistics.mean(train_s):.0f} s "
              f"per run for {args.epochs} epochs including each epoch's validation ({statistics.mean(sps):.0f} "
              "triplets/s while training); the whole run with the test evaluation of 4 methods in 4 formats: "
              f"{statistics.mean(r['wall_s'] for r in runs):.0f} s. Load average at start: {load[0]:.2f} on 2 cores "
              "(other jobs were running)."]
    result = {"seeds": args.seeds, "epochs": args.epochs, "triplets": str(trip), "load_at_start": load,
              "table": table, "runs": [{k: r[k] for k in ("run", "training", "wall_s")} for r in runs],
              "sizes": sizes}
    if not args.no_mllm:
        mres = mllm_smoke(trip)
        mt = mres["test"]["MLLM embedder"]
        lines += ["", "MLLM path (InstructCIR-style, a tiny *randomly initialised* LLaVA: 2+2 layers, width 32): "
                  f"stage 1 {mres['training']['stage1']['steps']} steps on the world's captioned train shards, "
                  f"stage 2 {mres['training']['steps']} steps on the triplets, batch 8, {mres['wall_s']:.0f} s "
                  f"in all. It runs end to end; its numbers are not meaningful (random weights): CIRR R@1 "
                  f"{100 * mt['cirr test1']['metrics']['recall_at1']:.1f}, CIRCO mAP@10 "
                  f"{100 * mt['circo test']['metrics']['map_at10']:.1f}."]
        result["mllm"] = {k: mres[k] for k in ("run", "training", "wall_s")} | {"test": mt}
    save("bench_cir_demo", result, "\n".join(lines))


if __name__ == "__main__":
    main()
