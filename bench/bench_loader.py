"""The training loader: ``training.data.ShardDataset`` vs a plain webdataset pipeline, vs the model step.

Same shards (a demo world's training shards: 112 px JPEGs + captions), same decode (JPEG ->
the demo mini-CLIP's 64 px tensor), same batch size and DataLoader workers:

- **ours**: ``ShardDataset(shards, decode=...)`` in a ``DataLoader`` (sample ranges over
  workers: every sample exactly once whatever the worker and shard counts);
- **webdataset**: ``wds.WebDataset(shards).map(decode)`` in the same ``DataLoader``;
- **model step**: the demo mini-CLIP's training step (forward, contrastive loss, backward,
  AdamW) on tensors already in memory, samples/s: the loader should outrun it.

Each loader runs in a fresh interpreter (peak RSS its own; the clock starts at the first
batch request), order alternated, median of ``--repeats``. Both loaders must deliver the same
keys, or the row reports the mismatch.

    .venv/bin/python bench/bench_loader.py [--shards demo-out/world/train] [--workers 2]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    alternate,
    fmt_ratio,
    load_average,
    median,
    peak_rss_mb,
    ratio_or_mismatch,
    save,
    summary_row,
    uptime,
)

SIZE = 64


def decode(sample: dict) -> tuple[str, object] | None:
    from curate.images import open_rgb
    from curate.shards import image_of
    from training.models.mini_clip import to_tensor

    img = image_of(sample)
    if img is None:
        return None
    try:
        return sample["__key__"], to_tensor(open_rgb(img[1]), SIZE)
    except Exception:  # noqa: BLE001 - a broken image is skipped by both loaders alike
        return None


def collate(rows: list) -> tuple[list[str], object]:
    import torch

    return [k for k, _ in rows], torch.stack([t for _, t in rows])


def _wds_decode(sample: dict) -> tuple[str, object]:
    out = decode(sample)
    return out if out is not None else (sample["__key__"], None)


def _not_none(row: tuple[str, object]) -> bool:
    return row[1] is not None


def child(side: str, shards: list[str], workers: int, batch: int) -> None:
    import torch

    torch.set_num_threads(1)
    if side == "ours":
        from training.data import ShardDataset

        ds = ShardDataset(shards, decode=decode, rank=0, world_size=1)
    else:
        import webdataset as wds

        ds = wds.WebDataset(shards, shardshuffle=False, empty_check=False).map(_wds_decode).select(_not_none)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate)
    keys: list[str] = []
    t0 = time.perf_counter()
    for k, _ in loader:
        keys.extend(k)
    dt = time.perf_counter() - t0
    print(json.dumps({"samples": len(keys), "keys_hash": hashlib.sha1("\n".join(sorted(keys)).encode()).hexdigest(), "seconds": dt,
                      "peak_rss_mb": peak_rss_mb()}))


def model_step_rate(batch: int, steps: int, threads: int) -> float:
    """Samples/s of the mini-CLIP training step (the demo trainer's loss) on in-memory tensors."""
    import torch
    import torch.nn.functional as F

    from training.models.mini_clip import MiniClipConfig, build_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = MiniClipConfig(image_size=SIZE)
    model = build_model(cfg, 500)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, SIZE, SIZE)
    ids = torch.randint(1, 500, (batch * 6,))
    offsets = torch.arange(0, batch * 6, 6)

    def step() -> None:
        img = F.normalize(model.visual(x), dim=-1)
        txt = F.normalize(model.text(ids, offsets), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(batch)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def isolated(side: str, shards: list[str], workers: int, batch: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", side, json.dumps(shards), str(workers), str(batch)],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", type=Path, default=REPO / "demo-out" / "world" / "train")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], json.loads(args.child[1]), int(args.child[2]), int(args.child[3]))
        return
    from curate.shards import list_shards

    folder = args.shards
    if not folder.exists():
        from builders.synthetic.world import ensure_world
        from curate.paths import cache_dir

        folder = ensure_world(cache_dir() / "bench" / "world-small", scale="small", seed=0).path / "train"
    shards = [str(p) for p in list_shards(folder)]
    print(uptime(), flush=True)
    runs = alternate({side: (lambda s=side: isolated(s, shards, args.workers, args.batch_size))
                      for side in ("ours", "webdataset")}, args.repeats)
    secs = {k: median([r["seconds"] for r in v]) for k, v in runs.items()}
    rss = {k: median([r["peak_rss_mb"] for r in v]) for k, v in runs.items()}
    n = {k: v[0]["samples"] for k, v in runs.items()}
    same = {r["keys_hash"] for v in runs.values() for r in v}
    mismatch = None if len(same) == 1 and n["ours"] == n["webdataset"] else \
        f"samples differ ({n['ours']} vs {n['webdataset']})"
    rate = {k: n[k] / secs[k] for k in secs}
    step = model_step_rate(args.batch_size, 20, args.workers)
    load = load_average()
    ratio = ratio_or_mismatch(rate["ours"], rate["webdataset"], mismatch)
    vs_step = round(rate["ours"] / step, 2)
    result = {"shards": len(shards), "workers": args.workers, "batch_size": args.batch_size, "samples": n,
              "seconds": secs, "samples_per_s": rate, "peak_rss_mb": rss, "model_step_samples_per_s": step,
              "ratio_vs_webdataset": ratio, "loader_over_model_step": vs_step, "load": load, "runs": runs,
              "summary": [summary_row("training loader vs webdataset + DataLoader", f"{rate['ours']:,.0f} samples/s",
                                      f"{rate['webdataset']:,.0f} samples/s", ratio, ">= 1.0x",
                                      peak_rss_mb={k: round(v) for k, v in rss.items()}),
                          summary_row("training loader vs the model step (mini-CLIP, CPU)",
                                      f"{rate['ours']:,.0f} samples/s", f"step {step:,.0f} samples/s", vs_step,
                                      "> 1x (not the bottleneck)")]}
    md = "\n".join([
        f"# Training loader ({n['ours']} samples in {len(shards)} shards, {args.workers} DataLoader workers, "
        f"batch {args.batch_size}, decode to {SIZE} px tensors)",
        "",
        "| side | samples/s | peak RSS MB (main process) |",
        "|---|---:|---:|",
        f"| ours: ShardDataset | {rate['ours']:,.0f} | {rss['ours']:.0f} |",
        f"| webdataset + DataLoader | {rate['webdataset']:,.0f} | {rss['webdataset']:.0f} |",
        f"| model step (mini-CLIP forward + backward + AdamW, {args.workers} threads) | {step:,.0f} | - |",
        "",
        f"Ours / webdataset: **{fmt_ratio(ratio)}**; loader / model step: **{vs_step}x**. Median of {args.repeats}, "
        f"order alternated; load {', '.join(map(str, load))}.",
    ])
    save("bench_loader", result, md)


if __name__ == "__main__":
    main()
