"""Benchmark: ingest of N samples into FiftyOne, `curate review` sync vs a plain add_sample loop.

Same input for both: one dataset folder (N unique 48x48 JPEGs in shards + manifest). Timed:

* ours: ``annotations.sync.sync_dataset`` end to end (extract images from the shards, build
  documents, bulk insert, near-duplicate pass, saved views) into a fresh FiftyOne dataset;
* peer: the same extraction (``annotations.media.extract_images``, timed separately) then the
  plain loop ``dataset.add_sample(fo.Sample(...))`` with the same fields.

Prints samples/s and the ratios (end to end, and against the peer's loop alone), writes
bench/results/review_ingest.{json,md}. Uses a temporary FiftyOne database unless
FIFTYONE_DATABASE_DIR is set (FiftyOne attaches to a database service already running on the
machine, whatever the folder: the dataset names are unique and deleted afterwards). Run: ``.venv/bin/python bench/bench_review.py [--n 20000]``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_dataset(root: Path, n: int) -> Path:
    """N unique small JPEGs in 2,000-sample shards plus a manifest, like `curate build` writes."""
    import numpy as np
    import polars as pl
    from PIL import Image

    from curate.manifest import write_manifest
    from curate.shards import ShardWriter

    rng = np.random.default_rng(0)
    attrs = ["red", "blue", "green", "striped", "dotted", "wooden", "metal", "furry"]
    objs = ["circle", "square", "star", "lemon", "heart", "car", "cup", "shoe", "tree", "fish"]
    rows = []
    with ShardWriter(root / "shards", prefix="bench", maxcount=2000) as w:
        for i in range(n):
            attr, obj = attrs[i % len(attrs)], objs[(i // len(attrs)) % len(objs)]
            key = f"s{i:07d}"
            arr = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=80)
            meta = {"key": key, "attr": attr, "obj": obj, "pair": f"{attr} {obj}", "source": "bench"}
            shard = w.write({"__key__": key, "jpg": buf.getvalue(), "json": meta})
            rows.append({**meta, "shard": shard, "split": ["train", "val", "test"][i % 3],
                         "score_comp": float(rng.random()), "score_obj": float(rng.random()),
                         "score_attr": float(rng.random()), "width": 48, "height": 48,
                         "caption": f"a photo of a {attr} {obj}", "url": f"http://example.invalid/{key}.jpg"})
    write_manifest(pl.DataFrame(rows), root)
    return root


def run_ours(folder: Path, name: str, media: Path) -> dict:
    from annotations.sync import SyncConfig, sync_dataset

    t0 = time.perf_counter()
    rep = sync_dataset(SyncConfig(dataset=folder, name=name, media_dir=media))
    total = time.perf_counter() - t0
    return {"seconds": total, "samples": rep.added, "samples_per_s": rep.added / total,
            "phases": {k: round(v, 3) for k, v in rep.phases.items()}}


def run_peer(folder: Path, name: str, media: Path) -> dict:
    import fiftyone as fo

    from annotations.media import extract_images
    from curate.manifest import read_manifest

    t0 = time.perf_counter()
    df = read_manifest(folder)
    ex = extract_images(folder / "shards", dict(df.select("key", "shard").iter_rows()), media)
    t_extract = time.perf_counter() - t0
    ds = fo.Dataset(name)
    t1 = time.perf_counter()
    for r in df.iter_rows(named=True):
        ds.add_sample(fo.Sample(
            filepath=str(ex.paths[r["key"]]), key=r["key"], shard=r["shard"], split=r["split"], source=r["source"],
            attr=fo.Classification(label=r["attr"]), obj=fo.Classification(label=r["obj"]),
            pair=fo.Classification(label=r["pair"]), score_comp=r["score_comp"], score_obj=r["score_obj"],
            score_attr=r["score_attr"], width=r["width"], height=r["height"], caption=r["caption"], url=r["url"],
            metadata=fo.ImageMetadata(width=r["width"], height=r["height"])))
    t_loop = time.perf_counter() - t1
    n = len(ds)
    return {"seconds": t_extract + t_loop, "extract_seconds": t_extract, "loop_seconds": t_loop, "samples": n,
            "samples_per_s": n / (t_extract + t_loop), "loop_samples_per_s": n / t_loop}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    from curate.paths import cache_dir

    # images go where `curate review` puts them by default (the cache folder); on the measuring
    # machine /tmp created files ~14x slower than the home and work folders, so it is avoided
    cache_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-review-", dir=cache_dir()))
    load0 = f"{os.getloadavg()[0]:.1f}"
    os.environ.setdefault("FIFTYONE_DATABASE_DIR", tempfile.mkdtemp(prefix="bench-review-db-"))
    os.environ.setdefault("CURATE_NO_PROGRESS", "1")
    for k, v in {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}.items():
        os.environ.setdefault(k, v)
    try:
        t = time.perf_counter()
        folder = make_dataset(tmp / "bench-ds", args.n)
        print(f"made {args.n} samples in {time.perf_counter() - t:.1f} s", flush=True)
        from annotations.database import connect

        fo = connect()
        tag = str(int(time.time()))
        ours = run_ours(folder, f"bench-ours-{tag}", tmp / "media-ours")
        peer = run_peer(folder, f"bench-peer-{tag}", tmp / "media-peer")
        for name in (f"bench-ours-{tag}", f"bench-peer-{tag}"):
            if fo.dataset_exists(name):
                fo.load_dataset(name).delete()
    finally:  # the database folder stays: its mongod stops only after this process exits
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "review ingest into FiftyOne", "n": args.n, "fiftyone": fo.__version__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "ours": ours, "peer_add_sample_loop": peer,
        "ratio_end_to_end": ours["samples_per_s"] / peer["samples_per_s"],
        "ratio_vs_loop_only": ours["samples_per_s"] / peer["loop_samples_per_s"],
    }
    from curate.fsutil import write_json, write_text

    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "review_ingest.json", result)
    md = (f"# review ingest ({args.n} samples, {result['machine']})\n\n"
          "| run | seconds | samples/s |\n|---|---:|---:|\n"
          f"| ours: `sync_dataset` (extract + insert + dedup + views) | {ours['seconds']:.2f} | {ours['samples_per_s']:,.0f} |\n"
          f"| peer: extract + `add_sample` loop | {peer['seconds']:.2f} | {peer['samples_per_s']:,.0f} |\n"
          f"| peer: `add_sample` loop alone | {peer['loop_seconds']:.2f} | {peer['loop_samples_per_s']:,.0f} |\n\n"
          f"Ratio end to end: **{result['ratio_end_to_end']:.1f}x**; ours end to end vs the peer's loop alone: "
          f"**{result['ratio_vs_loop_only']:.1f}x**.\n\n"
          f"Our phases (s): {', '.join(f'{k} {v:.2f}' for k, v in ours['phases'].items())}. "
          f"Load average at start/end: {load0} / {os.getloadavg()[0]:.1f} (shared machine).\n")
    write_text(args.out / "review_ingest.md", md)
    print(md)


if __name__ == "__main__":
    main()
