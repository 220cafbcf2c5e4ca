"""GPU check: does `curate embed` keep a GPU fed? One prepared script for a GPU machine (a few minutes).

On shards it generates (``--images`` 256 px JPEGs + captions) and a randomly initialised
open_clip ViT-L-14 saved as a checkpoint (speed does not depend on the weights; nothing is
downloaded), it times, on ``--device`` (default cuda:0):

1. **model only**: the image forward pass on tensors already on the GPU, fp32 and fp16
   autocast, batch ``--batch-size`` (the ceiling);
2. **curate embed** (``embed_shards``, the model loaded once before the clock, as the command
   does before its first shard) with ``--decode-workers 1`` and with ``--many`` workers, fp16,
   JPEGs decoded by the CPU decode workers (``--gpu-decode off``), then with the JPEGs decoded
   on the GPU (``--gpu-decode on``: nvJPEG batches, the workers idle) and as ``auto`` picks;
3. **webdataset + DataLoader**: the plain pipeline with the same model, workers, batch and
   precision (decode in workers, pinned memory, ``.cpu()`` after every batch).

The embeddings of (2) and (3) are checked against an fp32 forward pass over the same images
(cosine >= 0.999 for fp16). The table comes last; numbers go to
``bench/results/bench_gpu_embed.{json,md}`` with the GPU, torch version and date. Goal:
curate embed >= 0.8x model-only fp16.

``--tiny`` runs the same steps small on CPU (a tiny ViT, 128 images, bf16 for the autocast
rows; results in ``bench/results/tiny/``): a check that the script works where no GPU is. No
GPU is ever required by the toolkit.

    python bench/gpu/bench_gpu_embed.py                 # on a GPU machine (~3-5 min)
    python bench/gpu/bench_gpu_embed.py --tiny          # anywhere (~1 min on CPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from bench.bench_embed import make_shards  # noqa: E402
from bench.common import min_cosine, save, uptime  # noqa: E402

TINY_VIT = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}


def sync(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def model_only(enc, n: int, batch: int, device: str, precision: str) -> float:
    """Images/s of the image forward pass alone on random tensors already on the device."""
    import torch

    from curate.embed.backends import autocast

    size = int(enc.model.visual.image_size[0] if isinstance(enc.model.visual.image_size, tuple | list)
               else enc.model.visual.image_size)
    x = torch.randn(batch, 3, size, size, device=device)
    steps = max(3, n // batch)
    with torch.inference_mode(), autocast(device, precision):
        for _ in range(2):
            enc.model.encode_image(x)
        t0 = sync(device)
        for _ in range(steps):
            enc.model.encode_image(x)
        dt = sync(device) - t0
    return steps * batch / dt


def curate_embed(shards: Path, spec: str, out: Path, device: str, decode_workers: int, precision: str,
                 batch: int, gpu_decode: str = "off") -> tuple[float, Path]:
    from curate.embed.backends import cached_model
    from curate.embed.stage import EmbedConfig, embed_shards

    cached_model(spec, device)  # loaded before the clock, as the command loads it before the first shard
    t0 = sync(device)
    info = embed_shards(shards, out, EmbedConfig(model=spec, batch_size=batch, captions=False, device=device,
                                                 decode_workers=decode_workers, precision=precision,
                                                 gpu_decode=gpu_decode),
                        workers=1, overwrite=True)
    dt = sync(device) - t0
    return info["counts"]["images"] / dt, out


def webdataset_pipeline(shards: list[Path], enc, device: str, workers: int, precision: str,
                        batch: int) -> tuple[float, list[str], np.ndarray]:
    """The plain way: webdataset decode + preprocess in DataLoader workers, pinned, autocast, .cpu() per batch."""
    import torch
    import webdataset as wds

    from curate.embed.backends import autocast

    ds = (wds.WebDataset([str(s) for s in shards], shardshuffle=False, empty_check=False)
          .decode("pil").to_tuple("__key__", "jpg").map_tuple(lambda k: k, enc.preprocess))
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         pin_memory=device.startswith("cuda"))
    keys, parts = [], []
    t0 = sync(device)
    with torch.inference_mode(), autocast(device, precision):
        for k, x in loader:
            feats = enc.model.encode_image(x.to(device, non_blocking=True)).float()
            parts.append(torch.nn.functional.normalize(feats, dim=-1).cpu().numpy())
            keys.extend(k)
    dt = sync(device) - t0
    return len(keys) / dt, keys, np.concatenate(parts)


def reference(shards: list[Path], enc, device: str, n: int) -> dict[str, np.ndarray]:
    """fp32 embeddings of the first ``n`` images, one at a time through the backend (the yardstick)."""
    from curate.images import open_rgb
    from curate.shards import iter_shard

    out = {}
    for shard in shards:
        for s in iter_shard(shard):
            if len(out) >= n:
                return out
            out[s["__key__"]] = enc.encode_images([open_rgb(s["jpg"])])[0]
    return out


def agreement(ref: dict[str, np.ndarray], keys: list[str], matrix: np.ndarray) -> float:
    pos = {k: i for i, k in enumerate(keys)}
    common = [k for k in ref if k in pos]
    return min_cosine(np.stack([ref[k] for k in common]), matrix[[pos[k] for k in common]]) if common else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=8192)
    ap.add_argument("--per-shard", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--many", type=int, default=0, help="decode workers for the 'many' rows (0: cores - 2, max 16)")
    ap.add_argument("--tiny", action="store_true", help="small, on CPU: check the script runs")
    args = ap.parse_args()
    import torch

    from curate.embed.backends import load_model
    from curate.embed.random_models import save_random_open_clip
    from curate.embed.store import read_embeddings

    if args.tiny:
        args.images, args.per_shard, args.batch_size, args.device = 128, 64, 32, "cpu"
    device = args.device
    fast = "fp16" if device.startswith("cuda") else "bf16"
    many = args.many or max(2, min(16, (os.cpu_count() or 4) - 2))
    t_start = time.perf_counter()
    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "none (CPU, --tiny)"
    print(f"{uptime()}\ndevice {device}: {gpu}, torch {torch.__version__}", flush=True)
    rows: list[tuple[str, float, str]] = []
    result: dict = {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda, "device": device,
                    "images": args.images, "batch_size": args.batch_size, "many_decode_workers": many,
                    "tiny": args.tiny}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-embed-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        shards = make_shards(root / "shards", args.images, args.per_shard)
        arch = "tiny-vit" if args.tiny else "ViT-L-14"
        spec = save_random_open_clip(root / "model", arch, config=TINY_VIT if args.tiny else None)
        print(f"shards + random {arch}: {time.perf_counter() - t:.1f} s", flush=True)
        enc = load_model(spec, device)
        for precision in ("fp32", fast):
            rate = model_only(enc, args.images, args.batch_size, device, precision)
            rows.append((f"model only, {precision}", rate, "forward on tensors already on the device"))
            print(f"   {rows[-1][0]}: {rate:,.0f} img/s", flush=True)
        ref = reference(shards, enc, device, 256)
        runs = [(1, "off"), (many, "off")] + ([(1, "on"), (many, "auto")] if device.startswith("cuda") else [])
        for workers, gpu_decode in runs:
            rate, out = curate_embed(root / "shards", spec, root / f"emb-{workers}-{gpu_decode}", device, workers,
                                     fast, args.batch_size, gpu_decode)
            keys, m = read_embeddings(out)
            cos = agreement(ref, keys, m)
            how = {"off": f"{workers} CPU decode worker(s)", "on": "GPU decode (nvJPEG)",
                   "auto": f"--gpu-decode auto, {workers} decode workers"}[gpu_decode]
            rows.append((f"curate embed, {fast}, {how}", rate, f"min cosine vs fp32 {cos:.5f}"))
            result[f"curate_min_cosine_{workers}_{gpu_decode}"] = cos
            print(f"   {rows[-1][0]}: {rate:,.0f} img/s", flush=True)
        rate, keys, m = webdataset_pipeline(shards, enc, device, many, fast, args.batch_size)
        cos = agreement(ref, keys, m)
        rows.append((f"webdataset + DataLoader, {fast}, {many} workers", rate, f"min cosine vs fp32 {cos:.5f}"))
        print(f"   {rows[-1][0]}: {rate:,.0f} img/s", flush=True)
    best_model = max(r for name, r, _ in rows if name == f"model only, {fast}")
    ours_best = max(r for name, r, _ in rows if name.startswith("curate embed"))
    result["rows"] = [{"run": n, "images_per_s": round(r, 1), "note": note} for n, r, note in rows]
    result["curate_over_model_only"] = round(ours_best / best_model, 3)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    table = ["| run | images/s | x model-only " + fast + " | note |", "|---|---:|---:|---|",
             *[f"| {n} | {r:,.0f} | {r / best_model:.2f} | {note} |" for n, r, note in rows]]
    md = "\n".join([
        f"# GPU embedding: {gpu}, torch {torch.__version__} (CUDA {torch.version.cuda}), {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"{args.images} 256 px JPEGs in {-(-args.images // args.per_shard)} shards, random open_clip {arch}, batch "
        f"{args.batch_size}, images only. curate embed: `embed_shards` with the model already loaded.",
        "",
        *table,
        "",
        f"curate embed / model only ({fast}): **{result['curate_over_model_only']:.2f}x** (goal >= 0.8x). "
        f"Whole script: {result['seconds']:.0f} s.",
    ])
    # the CPU check goes beside the results, not among them (bench/README.md lists results/*.md only)
    save("tiny/bench_gpu_embed" if args.tiny else "bench_gpu_embed", result, md)  # prints the table last


if __name__ == "__main__":
    main()
