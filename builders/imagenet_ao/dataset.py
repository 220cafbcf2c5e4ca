"""Writing the dataset: splits, shards per split, the embeddings of what was written.

Used by the ``output`` step of :mod:`builders.imagenet_ao.pipeline` (and by ``bench/curation_study.py``).
"""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.fsutil import write_json
from curate.hub import SplitShardWriter, shard_plan
from curate.images import to_jpeg
from curate.manifest import unit_hash
from curate.shards import IMAGE_EXTS, image_of, iter_shard

from .config import BuildConfig


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "x"


def sample_key(source: str, src_key: str, attr: str, obj: str) -> str:
    """Stable, unique per (image, pair): an image mined for two pairs gets two keys."""
    h = hashlib.sha1(f"{attr}|{obj}".encode()).hexdigest()[:6]
    return f"{source[:1]}-{_slug(src_key)}-{h}"


def assign_splits(df: pl.DataFrame, cfg: BuildConfig) -> pl.DataFrame:
    """Unseen (rare) pairs go to val or test as whole pairs; seen pairs' images are split train/val/test."""
    rng = random.Random(cfg.seed)
    rare_pairs = sorted(set(df.filter(pl.col("rare"))["pair"].to_list()))
    rng.shuffle(rare_pairs)
    n_val = int(round(len(rare_pairs) * cfg.val_fraction))
    pair_split = {p: ("val" if i < n_val else "test") for i, p in enumerate(rare_pairs)}
    splits = []
    seen_counter: dict[str, int] = {}
    for key, pair, rare in df.sort("key").select("key", "pair", "rare").iter_rows():
        if rare:
            splits.append((key, pair_split[pair]))
            continue
        i = seen_counter.get(pair, 0)
        seen_counter[pair] = i + 1
        h = unit_hash(cfg.seed, key)
        s = "val" if h < cfg.seen_val_fraction else "test" if h < 2 * cfg.seen_val_fraction else "train"
        splits.append((key, s))
    sp = pl.DataFrame(splits, schema={"key": pl.String, "split": pl.String}, orient="row")
    return df.join(sp, on="key", how="left")


# Missing values in the shards' JSON: one type per field across all samples, so `datasets` and
# `webdataset` users never meet null-then-float. Only ``score_retrieval`` is ever missing today
# (generated images were not retrieved); the others guard columns a vocabulary may leave empty.
MISSING = {pl.Float64: -1.0, pl.Int64: -1, pl.String: "", pl.Boolean: False}


def json_value(value: Any, dtype: pl.DataType) -> Any:
    """A manifest value as written to ``KEY.json``: NaN/None become the column type's sentinel."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return MISSING.get(dtype.base_type(), "")
    return value


def write_dataset_shards(kept: pl.DataFrame, out: Path, maxcount: int = 1000, min_shards: int = 8) -> pl.DataFrame:
    """Write kept images + json into ``shards/PREFIX-SPLIT-NNNNNN.tar``; returns key -> shard.

    One set of shards per split (what ``datasets`` configs and per-split loaders want), each
    split in at least ``min_shards`` shards when it has that many samples. Streams: source shards
    in sorted order, samples in source order, one image in memory at a time (deterministic, so
    reruns give identical shards). An image kept for two pairs is written once per pair, under
    each pair's key. Every JSON field has one type in every sample (see :data:`MISSING`).
    """
    meta_cols = [c for c in kept.columns if not c.startswith("_") and c not in ("src_shard", "ok", "reason")]
    dtypes = {c: kept.schema[c] for c in meta_cols}
    by_src: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in kept.sort("key").iter_rows(named=True):
        meta = {k: json_value(rec[k], dtypes[k]) for k in meta_cols}
        by_src.setdefault(rec["src_shard"], {}).setdefault(rec["src_key"], []).append(meta)
    shard_dir = out / "shards"
    for old in shard_dir.glob("imagenet-ao-*"):
        old.unlink()
    shard_dir.mkdir(parents=True, exist_ok=True)
    # every kept sample passed the decode check, so each split's size is known before streaming
    sizes: dict[str, int] = {}
    for wanted in by_src.values():
        for metas in wanted.values():
            for meta in metas:
                sizes[meta["split"]] = sizes.get(meta["split"], 0) + 1
    writers = {s: SplitShardWriter(shard_dir, f"imagenet-ao-{s}", shard_plan(n, maxcount, min_shards))
               for s, n in sizes.items()}
    rows = []
    try:
        for src in sorted(by_src):
            wanted = by_src[src]
            for s in iter_shard(src, keys=wanted, exts=IMAGE_EXTS):
                img = image_of(s)
                if img is None:
                    continue
                data = to_jpeg(img[1])
                for meta in wanted[s["__key__"]]:
                    rows.append((meta["key"], writers[meta["split"]].write({"__key__": meta["key"], "jpg": data,
                                                                            "json": meta})))
        for w in writers.values():
            w.close()  # a split that lost an image since the decode check ends with a shorter last shard
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    return pl.DataFrame(rows, schema={"key": pl.String, "shard": pl.String}, orient="row")


def write_embeddings(manifest: pl.DataFrame, emb: np.ndarray, out: Path, model: str) -> None:
    """``embeddings/`` in the clip-retrieval layout, rows in key order: img_emb + metadata with the
    columns `curate embed` writes (key, shard, caption, image_path) plus the sample's pair and split,
    so `clip-retrieval index` and its ParquetMetadataProvider serve them."""
    from curate.embed.store import part_paths, save_npy, save_parquet

    folder = out / "embeddings"
    npy, meta = part_paths(folder, "0", "img")
    m = manifest.sort("key")
    save_npy(npy, emb.astype(np.float32))
    save_parquet(meta, m.select(
        "key", "shard", pl.format("a photo of a {} {}", "attr", "obj").alias("caption"),
        pl.col("key").alias("image_path"), "pair", "split"))
    write_json(folder / "embeddings.json", {"model": model, "dim": int(emb.shape[1]) if emb.size else 0,
                                            "counts": {"images": m.height}, "layout": "clip-retrieval",
                                            "metadata_columns": ["key", "shard", "caption", "image_path", "pair",
                                                                 "split"]})
