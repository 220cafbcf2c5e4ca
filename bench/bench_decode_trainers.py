"""The trainers' decode cost with ``--decode fast`` vs ``--decode exact`` (issue 26).

Two decode-bound steps of the trainers, each timed both ways on the same input, order alternated
between repeats, median of ``--repeats``, load recorded:

- **TRIDENT token-cache build** (``training.data.features.build_token_cache`` over an
  ``ImageStore`` of shards, a ``Backbone`` of a randomly initialised open_clip ViT at 112 px, patch
  16, width 384, 6 layers): decode, pad to a square, preprocess, the frozen tower's tokens;
- **mini-CLIP's image load** (``training.models.mini_clip.load_split``: every image decoded once
  and resized to 64 px, the only decode of its training) and, on the demo world, **a whole
  mini-CLIP training run of one epoch** (``mini_clip.train``, its load included).

Inputs: the demo world's train split (112 px JPEGs: the DCT scale that covers the mini-CLIP's
256 px decode target or the ViT's 112 px is 1, so fast and exact decode the same pixels: the
two columns measure the same work) and photo-like JPEG shards of 512 px on the short side
(``bench/bench_read.py: make_photo_shards``), where fast decodes at 1/4 (ViT) and 1/2 (mini-CLIP).

    .venv/bin/python bench/bench_decode_trainers.py [--world demo-out/world] [--images 256]

Writes bench/results/bench_decode_trainers.{json,md}.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import save, summary_row, uptime  # noqa: E402

SMALL_VIT = {"embed_dim": 256, "vision_cfg": {"image_size": 112, "layers": 6, "width": 384, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 256, "heads": 4, "layers": 2}}
MODES = ("fast", "exact")


def shard_store(shards: list[Path], limit: int = 0):
    """An ImageStore over ``shards`` and its keys (the first ``limit`` in key order; 0: all)."""
    from curate.shards import iter_shard
    from training.data.images import ImageStore

    by_key = {s["__key__"]: shard for shard in shards for s in iter_shard(shard, exts=())}
    return ImageStore(shards[0].parent, shards=by_key), sorted(by_key)[:limit or None]


def token_cache_seconds(shards: list[Path], spec: str, decode: str, work: Path, limit: int = 0) -> float:
    from training.data.features import build_token_cache
    from training.trident.backbone import Backbone

    store, keys = shard_store(shards, limit)
    backbone = Backbone(spec, "cpu", decode=decode)
    folder = work / f"cache-{decode}-{time.monotonic_ns()}"
    t0 = time.perf_counter()
    stats = build_token_cache(folder, store, keys, backbone)
    seconds = time.perf_counter() - t0
    assert stats["computed"] == len(keys), stats
    return seconds


def load_split_seconds(folder: Path, decode: str) -> float:
    from training.models.mini_clip import MiniClipConfig, load_split

    t0 = time.perf_counter()
    load_split(folder, MiniClipConfig().image_size, "bench: load", decode)
    return time.perf_counter() - t0


def train_epoch_seconds(world: Path, decode: str, work: Path) -> float:
    """``mini_clip.train`` for one epoch (its image load included) with ``load_split`` decoding as ``decode``."""
    import training.models.mini_clip as mc

    real = mc.load_split
    mc.load_split = partial(real, decode=decode)
    try:
        out = work / f"mini-{decode}-{time.monotonic_ns()}"
        t0 = time.perf_counter()
        mc.train(world, mc.MiniClipConfig(epochs=1, max_seconds=3600), out, run=out.with_name(out.name + ".run"))
        return time.perf_counter() - t0
    finally:
        mc.load_split = real


def alternated(measure, repeats: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {m: [] for m in MODES}
    for rep in range(repeats):
        for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
            out[mode].append(measure(mode))
            print(f"   [{rep + 1}/{repeats}] {mode}: {out[mode][-1]:.2f} s", flush=True)
    return out


def row(what: str, runs: dict[str, list[float]], images: int) -> dict:
    med = {m: statistics.median(v) for m, v in runs.items()}
    return {"what": what, "images": images, "runs_s": runs, "median_s": med,
            "speedup_fast_vs_exact": round(med["exact"] / med["fast"], 2), "load": uptime()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, help="a demo world (default: `curate demo world` at scale small, made here)")
    ap.add_argument("--images", type=int, default=256, help="512 px photo-like JPEGs")
    ap.add_argument("--demo-images", type=int, default=0, help="token cache: the first N demo images (0: all)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from bench.bench_read import make_photo_shards
    from curate.embed.random_models import save_random_open_clip
    from curate.shards import list_shards
    from curate.world import TRAIN, split_dir

    torch.set_num_threads(args.threads)
    print(uptime(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        work = Path(tmp)
        if args.world is None:
            args.world = work / "world"
            subprocess.run([str(Path(sys.executable).with_name("curate")), "-q", "demo", "world", "--out",
                            str(args.world), "--scale", "small"], check=True)
        world_train = split_dir(args.world, TRAIN)
        demo_shards = list_shards(world_train)
        spec = save_random_open_clip(work / "vit", "bench-vit-s16-112", config=SMALL_VIT)
        photo = make_photo_shards(work / "photo", args.images, 4, 512)
        n_demo = len(shard_store(demo_shards)[1])
        n_cache = len(shard_store(demo_shards, args.demo_images)[1])
        for label, shards, n in (("demo world 112 px", demo_shards, n_cache), ("512 px photo-like", photo, args.images)):
            print(f"token cache, {label}", flush=True)
            limit = args.demo_images if shards is demo_shards else 0
            rows.append(row(f"TRIDENT token-cache build, {label}", alternated(
                lambda m, s=shards, k=limit: token_cache_seconds(s, spec, m, work, k), args.repeats), n))
            write(rows, args)  # each row saved as soon as it is measured
        for label, folder, n in (("demo world 112 px", world_train, n_demo), ("512 px photo-like", work / "photo",
                                                                               args.images)):
            print(f"mini-CLIP load, {label}", flush=True)
            rows.append(row(f"mini-CLIP image load (load_split), {label}",
                            alternated(lambda m, f=folder: load_split_seconds(f, m), args.repeats), n))
            write(rows, args)
        print("mini-CLIP one epoch, demo world", flush=True)
        rows.append(row("mini-CLIP training, one epoch (load included), demo world 112 px",
                        alternated(lambda m: train_epoch_seconds(args.world, m, work), args.repeats), n_demo))
    write(rows, args)


def write(rows: list[dict], args: argparse.Namespace) -> None:
    table = [f"| {r['what']} | {r['images']} | {r['median_s']['fast']:.2f} | {r['median_s']['exact']:.2f} | "
             f"{r['speedup_fast_vs_exact']:.2f}x |" for r in rows]
    md = [
        "# The trainers' decode: --decode fast vs exact",
        "",
        f"CPU, {args.threads} torch threads, median of {args.repeats} (order alternated). Random open_clip ViT "
        "(112 px, patch 16, width 384, 6 layers) for the token cache; the mini-CLIP's 64 px input (decoded "
        "at >= 256 px). Load: " + rows[-1]["load"],
        "",
        "| step | images | fast s | exact s | exact / fast |",
        "|---|---:|---:|---:|---:|",
        *table,
        "",
        "On the demo world's 112 px JPEGs no DCT scale covers the target (112 px for the ViT, 256 px for the "
        "mini-CLIP), so fast decodes exactly what exact decodes: those rows time the same work twice, and any "
        "difference is noise. On 512 px photo-like JPEGs fast decodes at 1/4 (ViT) and 1/2 (mini-CLIP).",
    ]
    summary = [summary_row(f"{r['what']}: fast vs exact", f"{r['median_s']['fast']:.2f} s",
                           f"exact {r['median_s']['exact']:.2f} s", r["speedup_fast_vs_exact"])
               for r in rows]
    save("bench_decode_trainers", {"rows": rows, "summary": summary, "repeats": args.repeats,
                                   "threads": args.threads}, "\n".join(md))


if __name__ == "__main__":
    main()
