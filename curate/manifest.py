"""The manifest: one polars parquet row per sample, the single source of truth for decisions.

Required columns are ``key`` and ``shard``; builders add theirs (attr, obj, pair, split,
scores, source, review_status ...). Filtering, review and splits change the manifest or
write an *ID list* (a text file of keys, one per line); images are never re-sharded for that.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import polars as pl

from .errors import CurateError
from .fsutil import write_parquet, write_text

REQUIRED = ("key", "shard")
MANIFEST_NAME = "manifest.parquet"


def unit_hash(seed: int, key: str) -> float:
    """A stable number in [0, 1) for (seed, key), the same on every machine and Python run: the one
    hash every split assignment uses (so a key's split never depends on row order or workers)."""
    return min(int(hashlib.sha1(f"{seed}|{key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF, 1.0 - 2.0**-40)


def manifest_path(dataset: str | os.PathLike) -> Path:
    p = Path(dataset)
    return p if p.suffix == ".parquet" else p / MANIFEST_NAME


def validate(df: pl.DataFrame, where: str = "manifest") -> pl.DataFrame:
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise CurateError(f"manifest lacks column(s) {missing}; found {df.columns}", where=where)
    dup = df.filter(pl.col("key").is_duplicated())
    if dup.height:
        keys = dup["key"].unique().sort().head(5).to_list()
        raise CurateError(f"{dup['key'].n_unique()} duplicate key(s) in manifest, e.g. {keys}", where=where,
                          fix="keys must be unique; rebuild the dataset or drop the duplicates")
    return df


def write_manifest(df: pl.DataFrame, path: str | os.PathLike) -> Path:
    """Write atomically, rows sorted by key so reruns give byte-identical files."""
    path = manifest_path(path)
    df = validate(df, str(path)).sort("key")
    write_parquet(df, path)
    return path


def read_manifest(path: str | os.PathLike, include_rejected: bool = True) -> pl.DataFrame:
    """Read a manifest (a dataset folder or its parquet, local or an s3:// / gs:// URL);
    ``include_rejected=False`` drops rows a reviewer rejected."""
    from .storage import is_remote

    if is_remote(path):
        return _read_remote(str(path), include_rejected)
    path = manifest_path(path)
    if not path.exists():
        raise CurateError("no manifest.parquet", where=str(path.parent),
                          fix="point at a dataset folder built by curate (it holds manifest.parquet)")
    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parquet failure is a corrupt manifest
        raise CurateError(f"cannot read manifest ({e})", where=str(path)) from e
    validate(df, str(path))
    if not include_rejected and "review_status" in df.columns:
        df = df.filter(pl.col("review_status").fill_null("") != "reject")
    return df


def _read_remote(url: str, include_rejected: bool) -> pl.DataFrame:
    from .storage import exists, join, open_read

    url = url if url.endswith(".parquet") else join(url, MANIFEST_NAME)
    if not exists(url):
        raise CurateError("no manifest.parquet", where=url.rsplit("/", 1)[0],
                          fix="point at a dataset folder built by curate (it holds manifest.parquet)")
    with open_read(url) as f:
        df = validate(pl.read_parquet(f), url)
    if not include_rejected and "review_status" in df.columns:
        df = df.filter(pl.col("review_status").fill_null("") != "reject")
    return df


def append_manifest(path: str | os.PathLike, rows: pl.DataFrame) -> pl.DataFrame:
    """Append rows (new columns are filled with nulls on the other side); keys stay unique."""
    path = manifest_path(path)
    if path.exists():
        old = read_manifest(path)
        df = pl.concat([old, rows], how="diagonal_relaxed")
    else:
        df = rows
    write_manifest(df, path)
    return df


def update_manifest(path: str | os.PathLike, updates: pl.DataFrame, on: str = "key") -> pl.DataFrame:
    """Set columns of existing rows from ``updates`` (matched on key); other rows are unchanged."""
    path = manifest_path(path)
    df = read_manifest(path)
    cols = [c for c in updates.columns if c != on]
    merged = df.join(updates, on=on, how="left", suffix="__new")
    for c in cols:
        new = f"{c}__new" if c in df.columns else c
        if c in df.columns:
            merged = merged.with_columns(pl.coalesce(pl.col(new), pl.col(c)).alias(c)).drop(new)
    write_manifest(merged.select(df.columns + [c for c in cols if c not in df.columns]), path)
    return merged


def write_id_list(path: str | os.PathLike, keys: Iterable[str]) -> Path:
    """An ID list: sorted unique keys, one per line — a subset without re-sharding."""
    keys = sorted(set(keys))
    write_text(path, "".join(f"{k}\n" for k in keys))
    return Path(path)


def read_id_list(path: str | os.PathLike) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise CurateError("ID list not found", where=str(p))
    return [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def filter_by_ids(df: pl.DataFrame, ids: Iterable[str] | str | os.PathLike) -> pl.DataFrame:
    if isinstance(ids, str | os.PathLike):
        ids = read_id_list(ids)
    return df.filter(pl.col("key").is_in(list(ids)))
