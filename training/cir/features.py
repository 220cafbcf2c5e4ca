"""Frozen-backbone features: image features by name, text features by string, computed once.

The Combiner and the zero-shot baselines never touch pixels while training: image features
come from a clip-retrieval embeddings folder (``curate embed`` output, read through
:class:`training.data.features.FeatureTable`) when it was made by the same backbone, and otherwise are
encoded once with the backbone (``curate.embed.backends.load_model``) and kept in a cache file
(``NAME.npz``: names + float32 rows, :class:`training.data.features.RowCache`), so the second
epoch, the second evaluation and the second run cost nothing. Every row is L2-normalised (what ``curate embed`` stores).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fingerprint import model_fingerprint
from curate.images import DEFAULT_DECODE, check_decode, decode_target
from curate.log import progress_bar

from ..data.features import RowCache
from .data import ImageSource, triplets_source

log = logging.getLogger(__name__)
ENCODE_BATCH = 64


def spec_tag(spec: str) -> str:
    """The cache files' tag: the spec and the content of its weight files (new weights under the same
    ``mini:PATH`` or checkpoint path are another model, whose features are computed again)."""
    return model_fingerprint(spec)[:12]


class FeatureBank:
    """Image and text features of one frozen backbone.

    ``backbone`` is a model spec (``open_clip:...``, ``hf:...``, ``mini:...``); the model is only
    loaded when something must be encoded. ``table`` is a FeatureTable whose rows are used for
    the image keys it holds, provided it was made by ``backbone``.
    """

    def __init__(self, backbone: str, device: str = "auto", cache_dir: Path | None = None, table: Any = None,
                 decode: str = DEFAULT_DECODE):
        self.backbone = backbone
        self.device = device
        self.decode = check_decode(decode)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.table = table if table is not None and table.made_by(backbone) else None
        if table is not None and self.table is None:
            log.warning("features in the embeddings folder were made by %s, not by %s as it is now: encoding "
                        "images with %s", getattr(table, "model", None), backbone, backbone)
        self._encoder = None
        tag = spec_tag(backbone)
        # images decoded another way are other features: exact keeps the name caches had before the choice
        images = f"images-{tag}.npz" if decode == "exact" else f"images-{tag}-{decode}.npz"
        self.image_cache = RowCache.open(self.cache_dir / images if self.cache_dir else None)
        self.text_cache = RowCache.open(self.cache_dir / f"texts-{tag}.npz" if self.cache_dir else None)
        self.missing: list[str] = []

    @property
    def encoder(self) -> Any:
        if self._encoder is None:
            from curate.embed.backends import cached_model

            self._encoder = cached_model(self.backbone, self.device)  # one load per process, shared by banks
        return self._encoder

    @property
    def dim(self) -> int:
        if self.table is not None:
            return self.table.dim
        for rows in (self.image_cache.rows, self.text_cache.rows):
            for v in rows.values():
                return int(v.shape[0])
        return int(self.encoder.dim)

    def images(self, names: Sequence[str], source: ImageSource) -> dict[str, np.ndarray]:
        """Features of every name that has an image; the others are listed in ``self.missing``."""
        names = list(dict.fromkeys(names))
        out: dict[str, np.ndarray] = {}
        if self.table is not None:
            keys = [source.key(n) for n in names]
            have, rows = self.table.rows(keys)
            by_key = dict(zip(have, rows, strict=True))
            out.update({n: by_key[source.key(n)] for n in names if source.key(n) in by_key and n not in source.crops})
        for n in names:
            if n not in out and n in self.image_cache.rows:
                out[n] = self.image_cache.rows[n]
        todo = [n for n in names if n not in out]
        if todo:
            new = self._encode_images(todo, source)
            self.image_cache.rows.update(new)
            out.update(new)
            if new:
                self.image_cache.save()
        self.missing = [n for n in names if n not in out]
        if self.missing:
            log.warning("%d image(s) have no readable image and no features (e.g. %s): skipped",
                        len(self.missing), self.missing[0])
        return out

    def _encode_images(self, names: list[str], source: ImageSource) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        batch: list[tuple[str, Any]] = []
        with progress_bar("encode images", total=len(names), unit="img") as advance:
            for item in source.load(names, decode_target(self.encoder.decode_size, self.decode)):
                batch.append(item)
                if len(batch) == ENCODE_BATCH:
                    out.update(self._encode_batch(batch))
                    advance(len(batch))
                    batch = []
            if batch:
                out.update(self._encode_batch(batch))
                advance(len(batch))
        return out

    def _encode_batch(self, batch: list[tuple[str, Any]]) -> dict[str, np.ndarray]:
        mat = self.encoder.encode_images([im for _, im in batch], batch_size=len(batch))
        return {n: row for (n, _), row in zip(batch, mat, strict=True)}

    def texts(self, texts: Iterable[str]) -> dict[str, np.ndarray]:
        texts = list(dict.fromkeys(texts))
        todo = [t for t in texts if t not in self.text_cache.rows]
        if todo:
            mat = self.encoder.encode_texts(todo, progress=len(todo) > 1024)
            self.text_cache.rows.update(zip(todo, mat, strict=True))
            self.text_cache.save()
        return {t: self.text_cache.rows[t] for t in texts}


def resolve_backbone(backbone: str | None, table: Any, where: str) -> str:
    spec = backbone or (getattr(table, "model", None) if table is not None else None)
    if not spec:
        raise CurateError("no backbone: pass --backbone SPEC (the features folder names no model)", where=where,
                          fix="e.g. --backbone open_clip:ViT-B-32/laion2b_s34b_b79k or mini:PATH")
    return spec


def load_table(folder: str | os.PathLike | None) -> Any:
    """A FeatureTable of ``folder`` (an embeddings folder or a dataset holding ``embeddings/``), or None."""
    if folder is None:
        return None
    from training.data.features import FeatureTable

    p = Path(folder)
    if (p / "embeddings" / "img_emb").is_dir():
        p = p / "embeddings"
    if not (p / "img_emb").is_dir():
        raise CurateError("not an embeddings folder (no img_emb/)", where=str(p),
                          fix="pass a folder made by `curate embed` (clip-retrieval layout)")
    return FeatureTable.load(p)


def guess_table(data: Path) -> Any:
    """The embeddings of the dataset a triplets folder (or one of its exports) was mined from."""
    for p in (data, data.parent, data.parent.parent):
        if (p / "triplets.json").exists():
            src = triplets_source(p)
            if src is not None and (src / "embeddings" / "img_emb").is_dir():
                return load_table(src)
            return None
    return None


def stack(rows: dict[str, np.ndarray], names: Sequence[str], dim: int) -> np.ndarray:
    if not names:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.stack([rows[n] for n in names]), dtype=np.float32)
