"""TRIDENT training throughput: cached token features vs the frozen backbone online, and the loader alone.

On the demo world's CZSL export (3030 training images), for each backbone:

- cache build: the one-off cost of computing every image's token features (fp16 cache);
- loader alone: batches per second of the batch builder (cached: gather fp16 rows; online:
  decode + pad + preprocess the ~3 x 128 unique images of a batch), i.e. what the model waits for;
- training step: samples/s of forward + backward + Adam (cached: from the features; online:
  the backbone runs on every image of the batch first, as the official code does);
- an epoch's time both ways, and the saving.

Backbones: the demo mini-CLIP (the demo's own) and a randomly initialised open_clip ViT
(112 px, patch 16, width 384, 6 layers) to show how the saving grows with the tower.

Usage: .venv/bin/python bench/bench_trident.py [--steps 6] [--threads 1]
Writes bench/results/bench_trident.{json,md}. The GPU check is bench/gpu_trident.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402

SMALL_VIT = {"embed_dim": 256, "vision_cfg": {"image_size": 112, "layers": 6, "width": 384, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2}}


def _spec_for(data, backbone, dims):
    from training.trident.config import preset
    from training.trident.run import RunSpec

    return RunSpec(config=preset("demo"), backbone=backbone.spec, projector=None, word_embeddings="glove",
                   attrs=data.attrs, objs=data.objs, train_pairs=list(data.train_pairs), words=data.words,
                   aux={f"{a} {o}": w for (a, o), w in data.aux.items()}, dims=dims)


def bench_backbone(root: Path, spec_name: str, steps: int, cache_dir: Path) -> dict:
    import torch

    from training.trident.backbone import Backbone
    from training.trident.data import load_czsl
    from training.trident.features import (
        CachedBatches,
        ImageBatches,
        TrainTable,
        epoch_plans,
        prepare_features,
    )
    from training.trident.model import make_model

    data = load_czsl(root)
    backbone = Backbone(spec_name, "cpu")
    t0 = time.perf_counter()
    features, _ = prepare_features(data, backbone, True, cache_dir, workers=0)
    cache = features.cache
    cache_s = time.perf_counter() - t0
    dims = {k: int(cache.info[k]) for k in ("tokens", "local_dim", "global_dim")} | {"word_dim": 64}
    spec = _spec_for(data, backbone, dims)
    items = data.items["train"]
    index = cache.index()
    table = TrainTable.build(data, rows=np.array([index[it.ref] for it in items]), items=items)
    plans = epoch_plans(table, 128, torch.Generator().manual_seed(0))[: steps + 2]
    n = sum(len(p["anchor"]) for p in plans[2:])

    def rate(fn) -> float:
        for p in plans[:2]:
            fn(p)
        t = time.perf_counter()
        for p in plans[2:]:
            fn(p)
        return n / (time.perf_counter() - t)

    cached = CachedBatches(table, cache, cache.in_memory(table.rows, 4e9))
    online = ImageBatches(table, features.store, backbone)
    vectors = np.random.default_rng(0).normal(size=(len(spec.words), 64)).astype(np.float32)
    model = make_model(spec, "cpu", vectors)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step(batch):
        out = model(batch)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def step_online(plan):
        batch = online[plan]
        batch["g"], batch["l"] = backbone.tokens(batch.pop("pixels"))
        step(batch)

    res = {"backbone": spec_name, "tokens": dims["tokens"], "token_dim": dims["local_dim"], "images": len(cache.keys),
           "cache_build_s": round(cache_s, 1), "cache_mb": round(cache.nbytes / 1e6, 1),
           "loader_cached_sps": rate(lambda p: cached[p]), "loader_online_sps": rate(lambda p: online[p]),
           "train_cached_sps": rate(lambda p: step(cached[p])), "train_online_sps": rate(step_online)}
    n_train = len(items)
    res["epoch_cached_s"] = n_train / res["train_cached_sps"]
    res["epoch_online_s"] = n_train / res["train_online_sps"]
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=ROOT / "demo-out" / "trident-bench")
    args = ap.parse_args()
    import torch

    from curate.embed.random_models import save_random_open_clip
    from training.trident.demo import world_to_czsl
    from training.trident.run import default_backbone

    torch.set_num_threads(args.threads)
    root = args.work / "world-czsl"
    if not (root / "metadata_compositional-split-natural.t7").exists():
        world_to_czsl(ROOT / "demo-out" / "world", root)
    vit = save_random_open_clip(args.work / "vit", arch="bench-vit-s16-112", config=SMALL_VIT)
    rows = [bench_backbone(root, spec, args.steps, args.work / f"cache-{i}")
            for i, spec in enumerate([default_backbone(ROOT / "demo-out" / "imagenet-ao"), vit])]
    load = os.getloadavg()[0]
    lines = [f"# TRIDENT throughput (demo preset, batch 128, {args.threads} thread(s), load {load:.1f} on "
             f"{os.cpu_count()} cores)", "",
             "| backbone | tokens x dim | cache build s (MB) | loader cached / online samples/s | "
             "train cached / online samples/s | epoch cached / online s | saving |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        name = "demo mini-CLIP" if r["backbone"].startswith("mini:") else "random ViT-S/16-112 (open_clip)"
        lines.append(f"| {name} | {r['tokens']} x {r['token_dim']} | {r['cache_build_s']} ({r['cache_mb']}) | "
                     f"{r['loader_cached_sps']:.0f} / {r['loader_online_sps']:.0f} | "
                     f"{r['train_cached_sps']:.0f} / {r['train_online_sps']:.0f} | "
                     f"{r['epoch_cached_s']:.1f} / {r['epoch_online_s']:.1f} | "
                     f"{r['epoch_online_s'] / r['epoch_cached_s']:.1f}x |")
    lines += ["", "Loader alone is the batch builder only (no model); the cached loader gathers fp16 rows already "
              "in memory, the online one decodes, pads and preprocesses every unique image of the batch "
              "(DataLoader workers parallelise it; 0 here)."]
    save("bench_trident", {"rows": rows, "threads": args.threads, "load": load}, "\n".join(lines))


if __name__ == "__main__":
    main()
