"""A dataset folder as every command sees it (layout in README.md, "The dataset folder")::

    DATASET/
      shards/*.tar           KEY.jpg, KEY.json (attr, obj, pair, scores, source, ...), opt. KEY.npy
      manifest.parquet        one row per sample: key, shard, attr, obj, pair, split, scores,
                              source, review_status, ...
      dataset.json            how it was built: config, versions, counts, funnel
      embeddings/             clip-retrieval layout (img_emb/, text_emb/, metadata/), optional
      aux_label.jsonl         TRIDENT auxiliary attributes, optional
      exports/                czsl/, imagefolder/, ...

``Dataset`` reads it: the manifest (rejected samples dropped unless asked), images by key
(streaming the shards that hold them), and embeddings aligned to keys.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import polars as pl

from .errors import CurateError
from .fsutil import read_json
from .manifest import read_manifest
from .shards import ReadReport, image_of, iter_keys


class Dataset:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CurateError("dataset folder not found", where=str(self.path),
                              fix="pass a folder made by `curate build` (holding manifest.parquet and shards/)")
        if not (self.path / "manifest.parquet").exists():
            raise CurateError("dataset folder has no manifest.parquet", where=str(self.path),
                              fix="pass a folder made by `curate build`, or build one first")

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def shard_dir(self) -> Path:
        return self.path / "shards"

    def manifest(self, include_rejected: bool = False) -> pl.DataFrame:
        return read_manifest(self.path, include_rejected=include_rejected)

    def info(self) -> dict:
        p = self.path / "dataset.json"
        return read_json(p) if p.exists() else {}

    def iter_samples(self, keys: Iterable[str] | None = None, report: list[ReadReport] | None = None) -> Iterator[dict]:
        """Yield raw samples (``__key__``, ``jpg``, ``json`` ...) for ``keys`` (all when None), shard by shard."""
        df = self.manifest(include_rejected=True)
        if keys is not None:
            df = df.filter(pl.col("key").is_in(list(keys)))
        wanted = {key: self.shard_dir / shard for key, shard in df.select("key", "shard").iter_rows()}
        yield from iter_keys(wanted, report)

    def images(self, keys: Iterable[str] | None = None) -> Iterator[tuple[str, bytes]]:
        """``(key, image bytes)`` for samples that have an image; missing ones are simply absent."""
        for s in self.iter_samples(keys):
            img = image_of(s)
            if img:
                yield s["__key__"], img[1]

    def embeddings(self, kind: str = "img") -> tuple[list[str], np.ndarray] | None:
        """(keys, L2-normalised float32 matrix) from ``embeddings/`` if present."""
        base = self.path / "embeddings"
        if not (base / f"{kind}_emb").exists():
            return None
        from .embed.store import read_embeddings  # local import: heavy only when used

        return read_embeddings(base, kind=kind)
