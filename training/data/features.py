"""The feature caches trainers read instead of images: embedding folders and frozen token features.

- :class:`FeatureTable`: precomputed features from a clip-retrieval-layout embeddings folder
  (``curate embed`` output: ``img_emb/``, ``metadata/``), looked up by key (CIR, zero-shot).
- :class:`RowCache`: features computed once and kept by name in one ``.npz`` (CIR's encoded
  images and texts, when no embeddings folder of the same backbone has them).
- :class:`TokenCache`: the token features of a frozen image tower (TRIDENT's backbone), one row
  per image key. Because the tower is frozen they never change: :func:`build_token_cache`
  computes them once into ``CACHE/part-RRR-CCCCC.{global,local}.npy`` (fp16; ``local`` is
  ``[n, T, D]``) with a ``.keys.json`` beside each chunk, written last (a chunk is done when
  its keys exist, so an interrupted extraction resumes). Images come from an
  :class:`~training.data.images.ImageStore`'s streaming pass, so under torchrun every rank
  extracts its sample range into its own parts; the reader memory-maps all of them (the cache
  may be larger than RAM) and :meth:`TokenCache.in_memory` loads rows into one tensor when they
  are small. ``features.json`` names the backbone, the fingerprint of its weights and the
  dataset: a cache is never read for another one, and one made by other weights of the same
  spec (a retrained ``mini:PATH``) is recomputed.
- :class:`TokenFeatures`: token batches of keys, from the cache or from the tower run online.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from curate.errors import CurateError
from curate.executor import worker_init
from curate.fingerprint import model_fingerprint
from curate.fsutil import atomic_open, write_json
from curate.shards import Sample, image_of

from .images import ImageStore

log = logging.getLogger(__name__)

INFO = "features.json"
CHUNK = 2048
EVAL_BATCH = 256


# -- embedding folders -----------------------------------------------------------------------
@dataclass
class FeatureTable:
    """Features of a clip-retrieval-layout folder (``img_emb/``, ``metadata/``) by key."""

    keys: list[str]
    matrix: np.ndarray
    model: str | None = None
    model_fingerprint: str | None = None  # of the weights that made them (embeddings.json), when recorded

    @classmethod
    def load(cls, folder: str | os.PathLike, kind: str = "img") -> FeatureTable:
        from curate.embed.store import embeddings_info, read_embeddings

        keys, matrix = read_embeddings(folder, kind=kind)
        try:
            info = embeddings_info(folder)
        except (CurateError, OSError, ValueError):
            info = {}
        return cls(keys, matrix, info.get("model"), info.get("model_fingerprint"))

    def made_by(self, spec: str) -> bool:
        """Made by ``spec`` as it is now (same weights), or by an unnamed model (trusted as before)."""
        from curate.embed.store import made_by

        return self.model is None or made_by({"model": self.model, "model_fingerprint": self.model_fingerprint}, spec)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1]) if self.matrix.ndim == 2 else 0

    def rows(self, keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """(the keys that have features, their float32 rows); missing keys are left out."""
        pos = {k: i for i, k in enumerate(self.keys)}
        have = [k for k in keys if k in pos]
        idx = np.array([pos[k] for k in have], dtype=np.int64)
        return have, np.asarray(self.matrix[idx], dtype=np.float32) if len(idx) else np.zeros((0, self.dim), np.float32)


# -- features computed once, by name ---------------------------------------------------------
@dataclass
class RowCache:
    """Features by name (image names, texts) in one ``.npz`` file (names + float32 rows), rewritten
    atomically when it grows; an unreadable file is recomputed (CIR's encoded images and texts)."""

    path: Path | None
    rows: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | None) -> RowCache:
        cache = cls(path)
        if path is not None and path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    cache.rows = dict(zip(z["names"].tolist(), z["matrix"], strict=True))
            except (OSError, ValueError, KeyError) as e:
                log.warning("%s: unreadable feature cache (%s); recomputing", path, e)
        return cache

    def save(self) -> None:
        if self.path is None or not self.rows:
            return
        names = list(self.rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.path) as f:
            np.savez(f, names=np.array(names), matrix=np.stack([self.rows[n] for n in names]).astype(np.float32))


# -- frozen token features -------------------------------------------------------------------
class TokenEncoder(Protocol):
    """A frozen image tower as the token cache uses it (``training.trident.backbone.Backbone``)."""

    spec: str
    device: str
    decode: str

    def preprocess(self, image: Any) -> Any: ...
    def pixels(self, data: bytes) -> Any: ...
    def tokens(self, pixels: Any) -> tuple[Any, Any]: ...
    def dims(self) -> dict[str, int]: ...


def token_cache_dir(spec: str, store: ImageStore, keys: Iterable[str], decode: str = "exact") -> Path:
    """``$CURATE_CACHE/trident-features/<digest of the backbone, the dataset root and its keys>``.

    The backbone is its spec and the content of its weight files (:func:`curate.fingerprint.model_fingerprint`:
    a retrained ``mini:PATH`` is another backbone), the images their shards' names and sizes (a rebuilt
    dataset is other images) and the keys (a review that rejects images is another key list); a decode
    other than ``exact`` (``curate.images.DECODE_MODES``) is other pixels, so another folder."""
    from curate.paths import cache_dir

    shards = sorted({(p.name, p.stat().st_size if p.exists() else None) for p in map(Path, store.shards.values())})
    h = hashlib.sha256(f"{model_fingerprint(spec)}\n{store.root.resolve()}\n{shards}\n".encode())
    for key in keys:
        h.update(f"{key}\n".encode())
    if decode != "exact":  # exact is how caches were made before the choice existed: they stay valid
        h.update(f"decode={decode}\n".encode())
    return cache_dir() / "trident-features" / h.hexdigest()[:16]


@dataclass
class TokenCache:
    folder: Path
    keys: list[str]
    chunks: list[tuple[np.ndarray, np.ndarray]]  # (global [n, Dg], local [n, T, Dl]) per chunk, memory-mapped
    info: dict[str, Any]

    @classmethod
    def open(cls, folder: Path, spec: str | None = None, root: Path | None = None) -> TokenCache:
        info_path = folder / INFO
        if not info_path.is_file():
            raise CurateError("not a feature cache (no features.json)", where=str(folder),
                              fix="train with --cache-features to build it")
        info = json.loads(info_path.read_text())
        _check_owner(folder, info, spec, root)
        keys: list[str] = []
        chunks = []
        for kp in sorted(folder.glob("part-*.keys.json")):
            stem = kp.name[: -len(".keys.json")]
            try:
                g = np.load(folder / f"{stem}.global.npy", mmap_mode="r")
                loc = np.load(folder / f"{stem}.local.npy", mmap_mode="r")
                k = json.loads(kp.read_text())
            except (OSError, ValueError) as e:
                raise CurateError(f"feature cache chunk {stem} is unreadable ({e})", where=str(folder),
                                  fix="delete the cache folder; it is rebuilt on the next run") from e
            if not (len(k) == len(g) == len(loc)):
                raise CurateError(f"feature cache chunk {stem} is inconsistent", where=str(folder),
                                  fix="delete the cache folder; it is rebuilt on the next run")
            keys.extend(k)
            chunks.append((g, loc))
        return cls(folder, keys, chunks, info)

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes + loc.nbytes for g, loc in self.chunks)

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fp16 ``(global, local)`` of global row ids ``rows``, in that order."""
        sizes = np.array([len(g) for g, _ in self.chunks], np.int64)
        starts = np.r_[0, np.cumsum(sizes)[:-1]]
        which = np.searchsorted(starts, rows, side="right") - 1
        g0, l0 = self.chunks[0]
        out_g = np.empty((len(rows), *g0.shape[1:]), np.float16)
        out_l = np.empty((len(rows), *l0.shape[1:]), np.float16)
        for c in np.unique(which):
            sel = np.flatnonzero(which == c)
            local_rows = rows[sel] - starts[c]
            order = np.argsort(local_rows)  # sorted reads from the memory map
            g, loc = self.chunks[c]
            out_g[sel[order]] = g[local_rows[order]]
            out_l[sel[order]] = loc[local_rows[order]]
        return out_g, out_l

    def in_memory(self, rows: np.ndarray, limit_bytes: float) -> Any:
        """The rows' features as two fp16 tensors when they fit in ``limit_bytes``, else None."""
        import torch

        if not len(rows) or not self.chunks:
            return None
        g0, l0 = self.chunks[0]
        per_row = (int(np.prod(g0.shape[1:])) + int(np.prod(l0.shape[1:]))) * 2
        if per_row * len(rows) > limit_bytes:
            return None
        g, loc = self.gather(rows)
        return torch.from_numpy(g), torch.from_numpy(loc)


def _check_owner(folder: Path, info: dict[str, Any], spec: str | None, root: Path | None) -> None:
    """A cache holds one backbone's features of one dataset's images (keys are image keys)."""
    if spec is not None and info.get("backbone") != spec:
        raise CurateError(f"feature cache is for backbone {info.get('backbone')!r}, not {spec!r}",
                          where=str(folder), fix="use another --cache-dir, or delete this one")
    if root is not None and info.get("root") and info["root"] != str(root.resolve()):
        raise CurateError(f"feature cache holds the images of {info['root']}, not of {root.resolve()}",
                          where=str(folder), fix="use another --cache-dir (the default is one per dataset), "
                                                 "or delete this one")


def open_token_cache(folder: Path, store: ImageStore, keys: Sequence[str], encoder: TokenEncoder,
                     workers: int = 0, rank: int = 0, world_size: int = 1) -> tuple[TokenCache, dict[str, int]]:
    """Build (this rank's part of) the cache of ``keys`` in ``folder``, wait for every rank, open it."""
    stats = build_token_cache(folder, store, keys, encoder, workers=workers, rank=rank, world_size=world_size)
    if world_size > 1:
        import torch.distributed as td

        td.barrier()
    cache = TokenCache.open(folder, encoder.spec, store.root)
    log.info("feature cache %s: %d images (%.1f MB), %d computed now", folder, len(cache.keys), cache.nbytes / 1e6,
             stats.get("computed", 0))
    return cache, stats


def _drop_other_weights(folder: Path, info: Path, rank: int, world_size: int) -> None:
    """A cache made by other weights of the backbone (or by a version that did not record them): its
    rows are not this model's features. Every rank drops its own chunks, rank 0 the rest and the info."""
    if world_size > 1:  # every rank has read the old info before rank 0 removes it
        import torch.distributed as td

        td.barrier()
    log.info("%s: made by other weights of the backbone: recomputing the features", folder)
    for p in folder.glob("part-*"):
        owner = int(p.name[5:8]) if p.name[5:8].isdigit() else 0
        if owner == rank or (rank == 0 and owner >= world_size):
            p.unlink()
    if rank == 0:
        info.unlink()
    if world_size > 1:
        import torch.distributed as td

        td.barrier()


def build_token_cache(folder: Path, store: ImageStore, keys: Iterable[str], encoder: TokenEncoder,
                      batch_size: int = 64, workers: int = 0, rank: int = 0,
                      world_size: int = 1) -> dict[str, int]:
    """Compute the token features of every key not yet in ``folder`` (this rank's slice)."""
    import torch

    from curate.log import progress_bar

    folder.mkdir(parents=True, exist_ok=True)
    prev = folder / INFO
    model = model_fingerprint(encoder.spec)
    if prev.is_file() and json.loads(prev.read_text()).get("model") != model:
        _drop_other_weights(folder, prev, rank, world_size)
    done = set(TokenCache.open(folder, encoder.spec, store.root).keys) if prev.is_file() else set()
    todo = sorted(set(keys) - done)
    if world_size > 1:  # every rank has read the same `done` before any rank writes
        import torch.distributed as td

        td.barrier()
    if rank == 0 and not prev.is_file():
        write_json(prev, {"backbone": encoder.spec, "model": model, "root": str(store.root.resolve()),
                          **encoder.dims(), "dtype": "float16", "format": 1,
                          "decode": getattr(encoder, "decode", "exact")})
    stats = {"cached_before": len(done), "computed": 0, "unreadable": 0}
    if not todo:
        return stats
    writer = _ChunkWriter(folder, rank)
    loader = torch.utils.data.DataLoader(store.samples(todo, _PixelDecode(encoder), rank, world_size),
                                         batch_size=batch_size, num_workers=workers, collate_fn=_collate_decoded,
                                         pin_memory=encoder.device.startswith("cuda"),
                                         worker_init_fn=worker_init())
    n_batches = math.ceil(len(todo) / world_size / batch_size)
    with progress_bar("trident: cache features", total=n_batches, unit="batches") as advance:
        for batch_keys, pixels, bad in loader:
            stats["unreadable"] += bad
            if batch_keys:
                g, loc = encoder.tokens(pixels)
                writer.add(batch_keys, g, loc)
                stats["computed"] += len(batch_keys)
            advance(1)
    writer.flush()
    return stats


class _ChunkWriter:
    """Token rows buffered into ``part-RRR-CCCCC`` chunks of :data:`CHUNK` rows; keys written last."""

    def __init__(self, folder: Path, rank: int):
        self.folder, self.rank = folder, rank
        self.chunk_id = len(list(folder.glob(f"part-{rank:03d}-*.keys.json")))
        self.keys: list[str] = []
        self.g: list[np.ndarray] = []
        self.loc: list[np.ndarray] = []

    def add(self, keys: list[str], g: Any, loc: Any) -> None:
        self.keys.extend(keys)
        self.g.append(g.cpu().numpy().astype(np.float16))
        self.loc.append(loc.cpu().numpy().astype(np.float16))
        if len(self.keys) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        if not self.keys:
            return
        stem = self.folder / f"part-{self.rank:03d}-{self.chunk_id:05d}"
        _save_npy(Path(f"{stem}.global.npy"), np.concatenate(self.g))
        _save_npy(Path(f"{stem}.local.npy"), np.concatenate(self.loc))
        write_json(Path(f"{stem}.keys.json"), list(self.keys))  # last: the chunk's done marker
        self.chunk_id += 1
        self.keys, self.g, self.loc = [], [], []


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class _PixelDecode:
    """Sample -> (key, the encoder's pixels, or None when the image is missing or unreadable)."""

    def __init__(self, encoder: TokenEncoder):
        self.encoder = encoder

    def __call__(self, sample: Sample) -> tuple[str, Any]:
        img = image_of(sample)
        try:
            if img is None:
                return sample["__key__"], None
            return sample["__key__"], self.encoder.pixels(img[1])
        except Exception as e:  # noqa: BLE001 - an unreadable image is counted and skipped
            log.debug("unreadable image %s: %s", sample["__key__"], e)
            return sample["__key__"], None


def _collate_decoded(rows: list[tuple[str, Any]]) -> tuple[list[str], Any, int]:
    import torch

    good = [(k, t) for k, t in rows if t is not None]
    pixels = torch.stack([t for _, t in good]) if good else torch.zeros(0)
    return [k for k, _ in good], pixels, len(rows) - len(good)


# -- serving token features --------------------------------------------------------------------
class TokenFeatures:
    """Token features of image keys: from the cache, or computed online by the encoder."""

    def __init__(self, store: ImageStore, encoder: TokenEncoder | None, cache: TokenCache | None):
        self.store, self.encoder, self.cache = store, encoder, cache
        self.index = cache.index() if cache is not None else {}

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """Cache rows of ``keys``."""
        return np.array([self.index[k] for k in keys], np.int64)

    def batches(self, keys: Sequence[str], size: int = EVAL_BATCH) -> Iterator[tuple[Any, Any]]:
        """``(global, local)`` token batches of ``keys``, in order."""
        import torch

        if self.cache is not None:
            rows = self.rows(keys)
            for i in range(0, len(rows), size):
                g, loc = self.cache.gather(rows[i:i + size])
                yield torch.from_numpy(g), torch.from_numpy(loc)
            return
        assert self.encoder is not None
        self.store.load(keys)
        for i in range(0, len(keys), size):
            pixels = torch.stack([self.encoder.pixels(self.store.read(k)) for k in keys[i:i + size]])
            yield self.encoder.tokens(pixels)
