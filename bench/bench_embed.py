"""Benchmark: `curate embed` vs `clip-retrieval inference` on the same shards and model file.

Both tools embed the same WebDataset shards (images + captions) with the same model file (a
randomly initialised open_clip ViT-B-32 saved as a checkpoint: speed does not depend on the
weights, and no weights can be downloaded here), the same batch size and the same worker
count, each as its own command (start-up included, since that is what a user waits for).
Prints samples/s of each and the ratio, checks that both produced the same vectors, and
writes bench/results/bench_embed.{json,md}.

    .venv/bin/python bench/bench_embed.py --images 512 --batch-size 64 --workers 2
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent


def make_shards(folder: Path, n: int, per_shard: int, size: int = 256, seed: int = 0) -> list[Path]:
    """Shards of varied JPEGs (gradients + noise + a coloured box) with txt captions."""
    from PIL import Image, ImageDraw

    from curate.shards import write_shard

    rng = np.random.default_rng(seed)
    paths = []
    for s in range(0, n, per_shard):
        samples = []
        for i in range(s, min(n, s + per_shard)):
            base = np.linspace(0, 255, size, dtype=np.float32)[None, :, None] * rng.random(3)
            arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            x, y = rng.integers(0, size // 2, 2)
            ImageDraw.Draw(im).rectangle((int(x), int(y), int(x) + size // 3, int(y) + size // 3),
                                         fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=90)
            samples.append({"__key__": f"img{i:06d}", "jpg": buf.getvalue(), "txt": f"a photo of box number {i}"})
        p = folder / f"bench-{s // per_shard:06d}.tar"
        write_shard(p, samples)
        paths.append(p)
    return paths


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its waited-for children: robust on a busy machine)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{r.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--per-shard", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--arch", default="ViT-B-32")
    args = ap.parse_args()

    from bench.common import save
    from curate.embed.random_models import save_random_open_clip
    from curate.embed.store import read_embeddings

    env = {**os.environ, "CURATE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        root = Path(tmp)
        shards = make_shards(root / "shards", args.images, args.per_shard)
        spec = save_random_open_clip(root / "model", args.arch)
        ours_out, peer_out = root / "curate-emb", root / "cr-emb"
        ours, ours_cpu = timed([str(BIN / "curate"), "-q", "embed", str(root / "shards"), "--model", spec, "--out", str(ours_out),
                      "--batch-size", str(args.batch_size), "--workers", str(args.workers)], env)
        pattern = str(root / "shards" / f"bench-{{000000..{len(shards) - 1:06d}}}.tar")
        peer, peer_cpu = timed([str(BIN / "clip-retrieval"), "inference", "--input_dataset", pattern,
                      "--input_format", "webdataset", "--output_folder", str(peer_out), "--clip_model", spec,
                      "--batch_size", str(args.batch_size), "--num_prepro_workers", str(args.workers),
                      "--enable_text", "True", "--enable_metadata", "False", "--use_jit", "False",
                      "--enable_wandb", "False"], env)
        k1, m1 = read_embeddings(ours_out)
        k2, m2 = read_embeddings(peer_out)
        pos = {k: i for i, k in enumerate(k2)}
        agree = float(np.min(np.sum(m1 * m2[[pos[k] for k in k1]], axis=1)))
    n = args.images
    result = {
        "task": "embed images + captions of WebDataset shards with a random open_clip checkpoint",
        "images": n, "arch": args.arch, "batch_size": args.batch_size, "workers": args.workers,
        "curate_seconds": round(ours, 2), "clip_retrieval_seconds": round(peer, 2),
        "curate_samples_per_s": round(n / ours, 2), "clip_retrieval_samples_per_s": round(n / peer, 2),
        "ratio": round(peer / ours, 3), "min_cosine_between_outputs": round(agree, 5),
        "curate_cpu_seconds": round(ours_cpu, 1), "clip_retrieval_cpu_seconds": round(peer_cpu, 1),
        "cpu_ratio": round(peer_cpu / ours_cpu, 3),
        "load_average_at_end": os.getloadavg()[0],
    }
    md = "\n".join([
        "# curate embed vs clip-retrieval inference",
        "",
        f"{n} images (256 px JPEG) + captions in {len(shards)} shards, open_clip {args.arch} (random weights, "
        f"same checkpoint file), batch {args.batch_size}, {args.workers} workers, CPU, wall time of each command.",
        "",
        "| tool | wall s | samples/s | CPU s (all processes) |",
        "|---|---:|---:|---:|",
        f"| curate embed | {ours:.1f} | {n / ours:.1f} | {ours_cpu:.1f} |",
        f"| clip-retrieval inference | {peer:.1f} | {n / peer:.1f} | {peer_cpu:.1f} |",
        "",
        f"ratio (curate / clip-retrieval throughput): **{peer / ours:.2f}x** wall, {peer_cpu / ours_cpu:.2f}x in CPU "
        "time (the fairer number when the machine is shared); the two outputs agree "
        f"(min cosine {agree:.4f}; clip-retrieval stores float16). Load average at the end: {os.getloadavg()[0]:.1f}.",
    ])
    save("bench_embed", result, md)


if __name__ == "__main__":
    main()
