"""Does curation help? TRIDENT and the CIR Combiner trained on curated vs raw data, tested on ground truth.

The demo world knows the truth of every image it rendered, so the question can be answered
without human labels. Two training sets of the same size:

(a) **curated**: the demo ImageNet-AO-style dataset (``demo-out/imagenet-ao``: candidates
    retrieved from the pool or rendered by the generator, then the object, attribute,
    composition, near-duplicate and per-pair cap filters);
(b) **raw**: for every pair, the same number of images drawn uniformly from that build's
    *unfiltered* candidates (``candidates.parquet``: pool images labelled by the pair whose
    retrieval found them, generator images by the pair they were rendered for), in the same
    splits (a rare pair stays in val or test, a seen pair keeps its train/val/test counts),
    written with the builder's own layout helpers (shards, manifest, embeddings). Each seed
    draws its own raw set, so (b)'s spread includes the draw.

Both are scored on one held-out **ground-truth test set**: the world's own labelled images
that no build ever saw (``heldout/`` images of the dataset's seen pairs, ``rare/`` images of
its rare pairs), labels from the renderer.

- TRIDENT (``demo`` preset, MiniLM word vectors, auxiliary attributes from ``curate
  attributes`` for the dataset's pairs, shared by both arms): trained on the arm's train
  split, best epoch by the arm's own val split, tested on a CZSL root whose test split is the
  ground truth (the seen pairs' heldout images + the rare images of the arm's test pairs).
  Closed- and open-world Seen / Unseen / HM / AUC from the CZSL evaluator.
- The CIR Combiner (30 epochs on the frozen mini-CLIP): trained on triplets mined from the
  arm (``curate triplets``, 0.8/0.1/0.1 image split, best epoch by val), tested on triplets
  mined from the ground-truth images (CIRR Recall@K and Recall_subset@1, CIRCO mAP@10).

Also reported: each arm's label precision against the world's truth (the share of its
images that really show their attribute and object), so the training numbers can be read.
Zero-shot references (no training, same backbone) are given once.

    .venv/bin/python bench/curation_study.py [--out demo-out/curation-study] [--seeds 0 1 2] [--quick]

Writes bench/results/curation_study.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import made_once, save  # noqa: E402

DEMO = ROOT / "demo-out"
TRIDENT_SEED0 = 124  # the preset's seed; seed index i trains with 124 + i
CZSL_METRICS = (("best_seen", "Seen"), ("best_unseen", "Unseen"), ("best_hm", "HM"), ("auc", "AUC"))
CIR_METRICS = (("cirr", "recall_at1", "CIRR R@1"), ("cirr", "recall_at5", "R@5"), ("cirr", "recall_at10", "R@10"),
               ("cirr", "group_recall_at1", "Rs@1"), ("circo", "map_at10", "CIRCO mAP@10"))
FAMILIES = ("colour", "pattern", "state")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


# -- ground truth ---------------------------------------------------------------------------------
def world_truth(world: Path, dataset: Path):
    """What every image the build could have used really shows: the builder's own truth (pool.parquet,
    the demo renderer's metadata in the generated shards), the same the build's funnel is measured with."""
    from builders.imagenet_ao.truth import world_truth as load

    return load(world, dataset / "generated" / "shards")


def precision(manifest: Any, truth: Any, subset: Any = None) -> dict[str, Any]:
    """Share of images whose label is what the image shows, and how the others are wrong."""
    from builders.imagenet_ao.truth import label_precision

    return label_precision(manifest if subset is None else manifest.filter(subset), truth)


def world_images(world: Path, split: str, pairs: set[tuple[str, str]]) -> list[tuple[str, dict, bytes]]:
    """(key, metadata, image bytes) of the world's ``split`` shards whose pair is in ``pairs``."""
    from curate.shards import image_of, iter_shard, list_shards

    out = []
    for shard in list_shards(world / split):
        for s in iter_shard(shard):
            meta = json.loads(s["json"]) if "json" in s else {}
            img = image_of(s)
            if img and (meta.get("attr"), meta.get("obj")) in pairs:
                out.append((s["__key__"], meta, img[1]))
    return out


def build_gt(world: Path, curated: Any, backbone: str, out: Path) -> Path:
    """A dataset folder of the world's ground-truth images of the dataset's pairs (split ``test``)."""
    import polars as pl

    from curate.fsutil import write_json
    from curate.manifest import write_manifest
    from curate.shards import ShardWriter

    seen = {tuple(p) for p in curated.filter(~pl.col("rare")).select("attr", "obj").unique().iter_rows()}
    rare = {tuple(p) for p in curated.filter(pl.col("rare")).select("attr", "obj").unique().iter_rows()}
    rows = []
    with ShardWriter(out / "shards", prefix="gt", maxcount=1000) as w:
        for split, pairs, is_rare in (("heldout", seen, False), ("rare", rare, True)):
            for key, meta, data in world_images(world, split, pairs):
                shard = w.write({"__key__": key, "jpg": data, "json": meta})
                rows.append({"key": key, "shard": shard, "attr": meta["attr"], "obj": meta["obj"],
                             "pair": f"{meta['attr']} {meta['obj']}", "family": meta.get("family"),
                             "rare": is_rare, "split": "test", "source": f"world-{split}",
                             **{f: meta.get(f) for f in FAMILIES}})
    write_manifest(pl.DataFrame(rows).with_columns(pl.lit(None, dtype=pl.String).alias("review_status")), out)
    write_json(out / "dataset.json", {"name": "ground-truth", "builder": "curation-study",
                                      "config": {"model": backbone}, "counts": {"samples": len(rows)}})
    return out


# -- the raw arm ------------------------------------------------------------------------------------
def draw_raw(dataset: Path, curated: Any, backbone: str, out: Path, seed: int) -> Path:
    """Per pair and split, as many uniformly drawn unfiltered candidates as the curated set holds."""
    import polars as pl

    from builders.imagenet_ao.pipeline import sample_key, write_dataset_shards, write_embeddings
    from curate.embed.store import read_embeddings
    from curate.fsutil import write_json
    from curate.manifest import write_manifest

    cands = pl.read_parquet(dataset / "candidates.parquet")
    counts = curated.group_by("attr", "obj", "split").len().sort("attr", "obj", "split")
    rng = np.random.default_rng(seed)
    picked = []
    for (attr, obj), group in counts.group_by(["attr", "obj"], maintain_order=True):
        pool = cands.filter((pl.col("attr") == attr) & (pl.col("obj") == obj)).sort("source", "src_key")
        splits = [s for s, n in group.select("split", "len").iter_rows() for _ in range(n)]
        if len(splits) > pool.height:
            raise SystemExit(f"{attr} {obj}: {len(splits)} curated images but only {pool.height} candidates")
        rows = pool[sorted(rng.choice(pool.height, size=len(splits), replace=False).tolist())]
        order = rng.permutation(len(splits))
        picked.append(rows.with_columns(pl.Series("split", [splits[i] for i in order])))
    raw = pl.concat(picked).with_columns(
        pl.format("{} {}", "attr", "obj").alias("pair"),
        pl.struct("source", "src_key", "attr", "obj").map_elements(
            lambda r: sample_key(r["source"], r["src_key"], r["attr"], r["obj"]), return_dtype=pl.String).alias("key"),
        pl.lit(None, dtype=pl.Float64).alias("score_comp"),
    ).sort("key")
    key_shard = write_dataset_shards(raw, out)
    cols = ["key", "attr", "obj", "pair", "family", "rare", "split", "source", "score_comp", "score_retrieval",
            "src_key"]
    manifest = raw.select(cols).join(key_shard, on="key", how="inner").with_columns(
        pl.lit(None, dtype=pl.String).alias("review_status"))
    write_manifest(manifest, out)
    vectors = {}
    for src, folder in (("pool", dataset / "pool" / "embeddings"), ("generator", dataset / "generated" / "embeddings")):
        keys, mat = read_embeddings(folder)
        vectors.update({(src, k): np.asarray(mat[i], np.float32) for i, k in enumerate(keys)})
    manifest = manifest.sort("key")
    emb = np.stack([vectors[(s, k)] for s, k in manifest.select("source", "src_key").iter_rows()])
    write_embeddings(manifest, emb, out, backbone)
    write_json(out / "dataset.json", {"name": out.name, "builder": "curation-study raw draw",
                                      "config": {"model": backbone, "draw_seed": seed},
                                      "counts": {"samples": manifest.height}})
    return out


# -- TRIDENT ------------------------------------------------------------------------------------------
def czsl_root(arm: Path, gt: Path, out: Path) -> Path:
    """A CZSL root: train/val from the arm, test = the ground truth (seen pairs' heldout images +
    the rare images of the arm's test pairs)."""
    import polars as pl

    from curate.shards import image_of, iter_shard
    from training.data import dataset_samples
    from training.trident.data import czsl_name, write_czsl_root

    man = dataset_samples(arm, None, include_rejected=False)
    test_rare = set(man.filter(pl.col("rare") & (pl.col("split") == "test"))["pair"].to_list())
    gtm = dataset_samples(gt, None, include_rejected=False)
    gtm = gtm.filter(~pl.col("rare") | pl.col("pair").is_in(list(test_rare)))
    rows, images = [], {}
    for folder, df, split_col in ((arm, man.filter(pl.col("split").is_in(["train", "val"])), "split"),
                                  (gt, gtm, None)):
        want = {r["key"]: r for r in df.iter_rows(named=True)}
        for shard in sorted(set(df["shard"].to_list())):
            for s in iter_shard(folder / "shards" / shard, keys=want):
                img = image_of(s)
                if img is None:
                    continue
                r = want[s["__key__"]]
                a, o = czsl_name(r["attr"]), czsl_name(r["obj"])
                rel = f"{a}_{o}/{s['__key__']}.jpg"
                images[rel] = img[1]
                rows.append({"image": rel, "attr": a, "obj": o, "set": r[split_col] if split_col else "test"})
    write_czsl_root(out, rows, images)
    shutil.copy(DEMO / "imagenet-ao" / "pairs.parquet", out / "pairs.parquet")  # caption co-occurrences
    return out


def aux_file(dataset: Path, out: Path) -> Path | None:
    """Auxiliary attributes for the dataset's pairs (bundled SmolLM2, contradiction check on); `curate
    attributes` remakes them only when the pairs changed (a reviewed manifest), else keeps them."""
    from curate.paths import find_gguf

    path = out / "aux" / "aux_label.jsonl"
    if find_gguf() is None:
        log("no bundled GGUF: TRIDENT trains without attribute smoothing")
        return None

    pairs = out / "aux-pairs.txt"
    pairs.parent.mkdir(parents=True, exist_ok=True)
    from curate.manifest import read_manifest

    df = read_manifest(dataset, include_rejected=False).select("attr", "obj").unique().sort("attr", "obj")
    pairs.write_text("".join(f"{a},{o}\n" for a, o in df.iter_rows()))
    subprocess.run([sys.executable, "-m", "curate.cli", "-q", "attributes", "--pairs", str(pairs), "--out",
                    str(out / "aux")], check=True, env={**os.environ, "CURATE_NO_PROGRESS": "1"})
    return path


def train_trident(root: Path, out: Path, seed: int, backbone: str, aux: Path | None, epochs: int | None) -> dict:
    from training.trident.train import TrainRequest, train_trident

    t0 = time.perf_counter()
    req = TrainRequest(data=root, out=out, backbone=backbone, aux=aux, word_embeddings="minilm", device="cpu",
                       cache_dir=root.parent / f"{root.name}-features", overwrite=True, threads=1,
                       overrides={"seed": seed, "epochs": epochs, "alpha": None if aux else 0.0})
    res = train_trident(req)
    return {w: {k: float(res[w]["test"][k]) for k, _ in CZSL_METRICS} for w in ("closed", "open")} | {
        "seconds": round(time.perf_counter() - t0, 1), "best": res["training"].get("best")}


def zero_shot_czsl(root: Path, backbone: str) -> dict:
    from training.trident.results import evaluate_zero_shot

    res = evaluate_zero_shot(backbone, root, "test", True, "cpu")
    return {w: {k: float(res[w]["test"][k]) for k, _ in CZSL_METRICS} for w in ("closed", "open")}


# -- CIR ----------------------------------------------------------------------------------------------
def triplets(dataset: Path, out: Path, splits: str, formats: list[str], model: str | None = None) -> Path:
    from builders.triplets import TripletsConfig, build_triplets

    build_triplets(TripletsConfig(dataset=str(dataset), out=str(out), splits=splits, formats=formats, model=model,
                                  device="cpu"))
    return out


def cir_scores(report_by_fmt: dict[str, dict]) -> dict[str, float]:
    out = {}
    for fmt, key, _ in CIR_METRICS:
        rows = [r for r in report_by_fmt[fmt]["results"] if r["metrics"]]
        out[f"{fmt}/{key}"] = float(rows[0]["metrics"][key])
    return out


def eval_cir(run: str, gt_trip: Path, out: Path, backbone: str) -> dict[str, float]:
    from training.cir.benchmark import evaluate_cir

    reports = {fmt: evaluate_cir(run, gt_trip, fmt, "test", out=out / fmt, backbone=backbone, device="cpu")
               for fmt in ("cirr", "circo")}
    return cir_scores(reports)


def train_cir(trip: Path, out: Path, seed: int, epochs: int, gt_trip: Path, backbone: str) -> dict:
    from training.cir.train import CirTrainConfig, RunOptions, train_cir

    t0 = time.perf_counter()
    res = train_cir(CirTrainConfig(triplets=str(trip), out=str(out), epochs=epochs, seed=seed, backbone=backbone),
                    RunOptions(device="cpu", overwrite=True, baselines=False))
    scores = eval_cir(str(out), gt_trip, out / "eval-ground-truth", backbone)
    return {"gt": scores, "own_test": _own_test(res), "train_triplets": res["run"]["train_triplets"],
            "seconds": round(time.perf_counter() - t0, 1), "best": res["training"].get("best")}


def _own_test(res: dict) -> dict[str, float]:
    """The arm's own test split (its own labels), for contrast with the ground truth."""
    ours = res["test"]["Combiner"]
    name = next((n for n in ours if n.startswith("ours")), None)
    m = ours[name]["metrics"] if name else {}
    return {k: float(v) for k, v in m.items() if isinstance(v, float) and k in ("recall_at1", "recall_at5")}


# -- report --------------------------------------------------------------------------------------------
def ms(values: list[float]) -> str:
    m = 100 * statistics.mean(values)
    s = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.1f} ± {s:.1f}"


def markdown(res: dict) -> str:
    arms = res["arms"]
    lines = ["# Does curation help? Curated vs raw training data, one ground-truth test set", "",
             f"Demo world; {len(res['seeds'])} seeds ({', '.join(map(str, res['seeds']))}); mean ± std, percent. "
             "(a) curated = the demo dataset (`demo-out/imagenet-ao`); (b) raw = per pair and split the same "
             "number of images drawn uniformly from that build's unfiltered candidates with their retrieval labels "
             "(a fresh draw per seed). Test: the world's own labelled images that no build saw.", "",
             "## Label precision (against the world's truth)", "",
             "| arm | images | precision, all | train split (seen pairs) | rare-pair images (val/test) | "
             "wrong object | right object, wrong attribute |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, a in arms.items():
        def col(part: str, key: str) -> str:
            return ms([p[part][key] for p in a["precision"]])  # noqa: B023 - used at once

        lines.append(f"| {name} | {a['precision'][0]['all']['images']} | {col('all', 'precision')} | "
                     f"{col('train', 'precision')} ({a['precision'][0]['train']['images']} images) | "
                     f"{col('rare', 'precision')} ({a['precision'][0]['rare']['images']} images) | "
                     f"{col('all', 'wrong_object')} | {col('all', 'wrong_attribute')} |")
    t = res["trident_test"]
    lines += ["", f"## TRIDENT (demo preset), ground-truth test: {t['seen_images']} seen-pair images "
                  f"({t['seen_pairs']} pairs), {t['unseen_images']} unseen-pair images ({t['unseen_pairs']} pairs)", "",
              "| arm | closed Seen | Unseen | HM | AUC | open Seen | Unseen | HM | AUC | s/run |",
              "|---|" + "---:|" * 9]
    for name, a in arms.items():
        runs = a["trident"]
        cells = [ms([r[w][k] for r in runs]) for w in ("closed", "open") for k, _ in CZSL_METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {statistics.mean(r['seconds'] for r in runs):.0f} |")
    z = res["zero_shot_czsl"]
    lines.append("| zero-shot CLIP (no training) | " + " | ".join(
        f"{100 * z[w][k]:.1f}" for w in ("closed", "open") for k, _ in CZSL_METRICS) + " | - |")
    c = res["cir_test"]
    lines += ["", f"## CIR Combiner, ground-truth test triplets ({c['queries']} CIRR-format queries over "
                  f"{c['gallery']} images)", "",
              "| arm | train triplets | " + " | ".join(label for _, _, label in CIR_METRICS) +
              " | own test R@1 (own labels) | s/run |", "|---|---:|" + "---:|" * (len(CIR_METRICS) + 2)]
    for name, a in arms.items():
        runs = a["cir"]
        cells = [ms([r["gt"][f"{f}/{k}"] for r in runs]) for f, k, _ in CIR_METRICS]
        own = ms([r["own_test"].get("recall_at1", float("nan")) for r in runs])
        trip = statistics.mean(r["train_triplets"] for r in runs)
        lines.append(f"| {name} | {trip:.0f} | " + " | ".join(cells) + f" | {own} | "
                     f"{statistics.mean(r['seconds'] for r in runs):.0f} |")
    for label, scores in res["zero_shot_cir"].items():
        lines.append(f"| zero-shot {label} (no training) | - | " + " | ".join(
            f"{100 * scores[f'{f}/{k}']:.1f}" for f, k, _ in CIR_METRICS) + " | - | - |")
    lines += ["", "*own test R@1*: the arm's own test triplets scored with its own labels, what a user sees without "
              "ground truth. Zero-shot rows use the same frozen mini-CLIP that built and filtered the dataset.",
              "", "![curated vs raw](curation_study.png)", "", res["verdict"], "",
              f"Cost: {res['cpu_minutes']:.1f} CPU-minutes, {res['wall_minutes']:.1f} wall-minutes on "
              f"{os.cpu_count()} cores shared with other jobs; load average (1-min) {res['load_start']} at start, "
              f"{res['load_end']} at the end. Torch threads pinned to 1 for reproducibility."]
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    """Curated vs raw, mean and std over seeds: label precision, TRIDENT and CIR on the ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("label precision", [("all", lambda r: r["all"]["precision"], "precision"),
                                   ("train", lambda r: r["train"]["precision"], "precision"),
                                   ("rare pairs", lambda r: r["rare"]["precision"], "precision")]),
              ("TRIDENT (ground truth)", [(lab, lambda r, w=w, k=k: r[w][k], "trident")
                                          for w, k, lab in (("closed", "best_unseen", "Unseen"),
                                                            ("closed", "best_hm", "HM"), ("closed", "auc", "AUC"),
                                                            ("open", "auc", "open AUC"))]),
              ("CIR Combiner (ground truth)", [(lab, lambda r, f=f, k=k: r["gt"][f"{f}/{k}"], "cir")
                                               for f, k, lab in CIR_METRICS])]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), gridspec_kw={"width_ratios": [3, 4, 5]})
    for ax, (title, metrics) in zip(axes, panels, strict=True):
        x = np.arange(len(metrics))
        for j, (arm, colour) in enumerate((("curated", "#2e86c1"), ("raw", "#aab7b8"))):
            vals = [[100 * get(r) for r in res["arms"][arm][part]] for _, get, part in metrics]
            ax.bar(x + (j - 0.5) * 0.38, [np.mean(v) for v in vals], 0.38, yerr=[np.std(v, ddof=1) if len(v) > 1
                                                                                  else 0 for v in vals],
                   color=colour, label=arm, capsize=2)
        ax.set_xticks(x, [m[0] for m in metrics], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("percent (mean ± std over seeds)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
    return path


def verdict(res: dict) -> str:
    """Say plainly, from the numbers, whether the curated arm beat the raw one (difference vs spread)."""
    out = []

    def compare(label: str, a: list[float], b: list[float]) -> str:
        d = 100 * (statistics.mean(a) - statistics.mean(b))
        spread = 100 * max(statistics.stdev(a) if len(a) > 1 else 0.0, statistics.stdev(b) if len(b) > 1 else 0.0)
        if abs(d) <= max(spread, 0.5):
            return f"{label}: no clear difference (curated - raw = {d:+.1f} points, seed spread up to {spread:.1f})"
        who = "curated better" if d > 0 else "raw better"
        if abs(d) <= 2 * spread:
            return f"{label}: {who} by {abs(d):.1f} points, beyond the seed spread ({spread:.1f}) but under twice it: weak"
        return f"{label}: {who} by {abs(d):.1f} points, more than twice the seed spread ({spread:.1f})"

    cur, raw = res["arms"]["curated"], res["arms"]["raw"]
    for w, k, lab in (("closed", "auc", "TRIDENT closed AUC"), ("closed", "best_unseen", "TRIDENT closed Unseen"),
                      ("open", "auc", "TRIDENT open AUC")):
        out.append(compare(lab, [r[w][k] for r in cur["trident"]], [r[w][k] for r in raw["trident"]]))
    for f, k, lab in (("cirr", "recall_at1", "CIR CIRR R@1"), ("circo", "map_at10", "CIR CIRCO mAP@10")):
        out.append(compare(lab, [r["gt"][f"{f}/{k}"] for r in cur["cir"]], [r["gt"][f"{f}/{k}"] for r in raw["cir"]]))
    return "Verdict (computed from the table): " + "; ".join(out) + "."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEMO / "curation-study")
    ap.add_argument("--dataset", type=Path, default=DEMO / "imagenet-ao")
    ap.add_argument("--world", type=Path, default=DEMO / "world")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cir-epochs", type=int, default=30)
    ap.add_argument("--trident-epochs", type=int, default=None, help="default: the demo preset's 50")
    ap.add_argument("--quick", action="store_true", help="1 seed, few epochs: a smoke run of the whole study")
    ap.add_argument("--render", action="store_true", help="only rewrite the Markdown from the saved JSON")
    args = ap.parse_args()
    if args.render:
        from bench.common import RESULTS

        res = json.loads((RESULTS / "curation_study.json").read_text())
        res["verdict"] = verdict(res)
        plot(res, RESULTS / "curation_study.png")
        save("curation_study", {k: v for k, v in res.items() if k != "machine"}, markdown(res))
        return
    if args.quick:
        args.seeds, args.cir_epochs, args.trident_epochs = args.seeds[:1], 2, 2
    os.environ.setdefault("CURATE_NO_PROGRESS", "1")
    os.chdir(ROOT)  # candidates.parquet names its shards relative to the repository
    import polars as pl

    from curate.manifest import read_manifest
    from training.trident.run import default_backbone

    t0, cpu0, load0 = time.perf_counter(), cpu_seconds(), round(os.getloadavg()[0], 2)
    out = args.out
    backbone = default_backbone(args.dataset)
    curated = read_manifest(args.dataset, include_rejected=False)  # what the curated arm trains on
    truth = world_truth(args.world, args.dataset)
    log(f"backbone {backbone}; curated {curated.height} images, {curated['pair'].n_unique()} pairs")
    dataset = args.dataset
    gt = made_once(out, "ground-truth", [Path(args.world / "world.json"), Path(dataset / "manifest.parquet"), backbone],
                   lambda f: build_gt(args.world, curated, backbone, f))
    gt_trip = triplets(gt, out / "ground-truth-triplets", "test=1", ["cirr", "circo"], model=backbone)
    aux = aux_file(args.dataset, out)
    arms: dict[str, dict[str, Any]] = {"curated": {"trident": [], "cir": [], "precision": []},
                                       "raw": {"trident": [], "cir": [], "precision": []}}
    def czsl_inputs(arm: Path) -> list[Any]:
        return [Path(arm / "manifest.parquet"), Path(arm / "shards"), Path(gt / "manifest.parquet"), Path(gt / "shards"),
                Path(DEMO / "imagenet-ao" / "pairs.parquet")]

    cur_root = made_once(out, "curated/czsl", czsl_inputs(dataset), lambda f: czsl_root(dataset, gt, f))
    cur_trip = triplets(args.dataset, out / "curated" / "triplets", "train=0.8,val=0.1,test=0.1", [])
    for i, seed in enumerate(args.seeds):
        raw = made_once(out, f"raw-{seed}/dataset",
                        [Path(dataset / "candidates.parquet"), Path(dataset / "manifest.parquet"), Path(dataset / "pool" / "embeddings"),
                         Path(dataset / "generated" / "embeddings"), backbone, seed],
                        lambda f, seed=seed: draw_raw(dataset, curated, backbone, f, seed))
        raw_root = made_once(out, f"raw-{seed}/czsl", czsl_inputs(raw), lambda f, raw=raw: czsl_root(raw, gt, f))
        raw_trip = triplets(raw, out / f"raw-{seed}" / "triplets", "train=0.8,val=0.1,test=0.1", [])
        for name, ds, root, trip in (("curated", args.dataset, cur_root, cur_trip), ("raw", raw, raw_root, raw_trip)):
            man = pl.read_parquet(ds / "manifest.parquet")
            arms[name]["precision"].append({"all": precision(man, truth),
                                            "train": precision(man, truth, pl.col("split") == "train"),
                                            "rare": precision(man, truth, pl.col("rare"))})
            log(f"seed {seed}: TRIDENT on {name}")
            arms[name]["trident"].append(train_trident(root, out / "runs" / f"trident-{name}-{seed}",
                                                       TRIDENT_SEED0 + i, backbone, aux, args.trident_epochs))
            log(f"seed {seed}: CIR Combiner on {name}")
            arms[name]["cir"].append(train_cir(trip, out / "runs" / f"cir-{name}-{seed}", seed, args.cir_epochs,
                                               gt_trip, backbone))
    log("zero-shot references")
    from training.cir.data import read_splits
    from training.trident.data import load_czsl

    data = load_czsl(cur_root)
    test = data.items["test"]
    unseen = {p for p in data.split_pairs["test"] if p not in set(data.train_pairs)}
    gt_cirr = next(r for r in read_splits(gt_trip, "cirr", "test") if r.queries)
    res: dict[str, Any] = {
        "seeds": args.seeds, "backbone": backbone, "arms": arms, "aux": str(aux) if aux else None,
        "trident_test": {"seen_images": sum((it.attr, it.obj) not in unseen for it in test),
                         "unseen_images": sum((it.attr, it.obj) in unseen for it in test),
                         "seen_pairs": len(set(data.split_pairs["test"]) - unseen), "unseen_pairs": len(unseen)},
        "cir_test": {"queries": len(gt_cirr.queries), "gallery": len(gt_cirr.index)},
        "zero_shot_czsl": zero_shot_czsl(cur_root, backbone),
        "zero_shot_cir": {k: eval_cir(f"baseline:{k}", gt_trip, out / "runs" / f"zero-shot-{k}", backbone)
                          for k in ("text", "sum")},
        "cir_epochs": args.cir_epochs, "trident_epochs": args.trident_epochs or 50,
    }
    res["verdict"] = verdict(res)
    res.update({"cpu_minutes": round((cpu_seconds() - cpu0) / 60, 1),
                "wall_minutes": round((time.perf_counter() - t0) / 60, 1), "load_start": load0,
                "load_end": round(os.getloadavg()[0], 2)})
    if args.quick:  # a smoke run: nothing goes to bench/results
        print(markdown(res))
        return
    from bench.common import RESULTS

    plot(res, RESULTS / "curation_study.png")
    save("curation_study", res, markdown(res))


if __name__ == "__main__":
    main()
