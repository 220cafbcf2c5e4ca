"""Token features of the frozen backbone: computed once into an fp16 cache, then served by batch.

Because the image tower is frozen, its token features never change: ``--cache-features``
computes them once into ``CACHE/part-RRR-CCCCC.{global,local}.npy`` (fp16; ``local`` is
``[n, T, D]``) with a ``.keys.json`` beside each chunk, written last (a chunk is done when
its keys exist, so an interrupted extraction resumes). Under torchrun every rank extracts a
contiguous slice (``training.data`` sample ranges) into its own parts; the reader memory-maps
all of them, so the cache may be larger than RAM, and loads it into one tensor when it is
small. ``features.json`` names the backbone: a cache is never read for another one.

Training batches are *plans* made in the main process from seeded generators (so a resumed
run draws the same batches): anchor rows, their same-attribute and same-object partners
(:class:`~.data.Partners`) and masks. :class:`CachedBatches` / :class:`ImageBatches` turn a
plan into tensors (unique rows only: a partner that is also an anchor is read once), so a
``DataLoader`` with workers and pinned memory can run them ahead of the GPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fsutil import write_json

from .backbone import Backbone, ImageSource
from .data import CZSLData, Item, Partners

log = logging.getLogger(__name__)

INFO = "features.json"
CHUNK = 2048


def default_cache_dir(data: CZSLData, spec: str) -> Path:
    """``$CURATE_CACHE/trident-features/<digest of backbone, data root and image list>``."""
    from curate.paths import cache_dir

    h = hashlib.sha256(f"{spec}\n{data.root.resolve()}\n".encode())
    for split in sorted(data.items):
        for it in data.items[split]:
            h.update(f"{it.ref}\n".encode())
    return cache_dir() / "trident-features" / h.hexdigest()[:16]


@dataclass
class FeatureCache:
    folder: Path
    keys: list[str]
    chunks: list[tuple[np.ndarray, np.ndarray]]  # (global [n, Dg], local [n, T, Dl]) per chunk, memory-mapped
    info: dict[str, Any]

    @classmethod
    def open(cls, folder: Path, spec: str | None = None, root: Path | None = None) -> FeatureCache:
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


def _check_owner(folder: Path, info: dict[str, Any], spec: str | None, root: Path | None) -> None:
    """A cache holds one backbone's features of one dataset's images (keys are image paths)."""
    if spec is not None and info.get("backbone") != spec:
        raise CurateError(f"feature cache is for backbone {info.get('backbone')!r}, not {spec!r}",
                          where=str(folder), fix="use another --cache-dir, or delete this one")
    if root is not None and info.get("root") and info["root"] != str(root.resolve()):
        raise CurateError(f"feature cache holds the images of {info['root']}, not of {root.resolve()}",
                          where=str(folder), fix="use another --cache-dir (the default is one per dataset), "
                                                 "or delete this one")


def build_cache(folder: Path, data: CZSLData, backbone: Backbone, batch_size: int = 64, workers: int = 0,
                rank: int = 0, world_size: int = 1) -> dict[str, int]:
    """Compute the token features of every image of ``data`` not yet in ``folder`` (this rank's slice)."""
    import torch

    from curate.log import progress_bar

    from ..data import consumer_range

    folder.mkdir(parents=True, exist_ok=True)
    prev = folder / INFO
    done = set(FeatureCache.open(folder, backbone.spec, data.root).keys) if prev.is_file() else set()
    items = sorted({it.ref: it for v in data.items.values() for it in v}.values(), key=lambda it: it.ref)
    todo = [it for it in items if it.ref not in done]
    if world_size > 1:  # every rank has read the same `done` before any rank writes
        import torch.distributed as td

        td.barrier()
    if rank == 0 and not prev.is_file():
        write_json(prev, {"backbone": backbone.spec, "root": str(data.root.resolve()), **backbone.dims(),
                          "dtype": "float16", "format": 1})
    stats = {"cached_before": len(done), "computed": 0, "unreadable": 0}
    if not todo:
        return stats
    if data.kind == "czsl":  # files: this rank's contiguous slice
        lo, hi = consumer_range(len(todo), rank, world_size)
        dataset: Any = _FileImages(todo[lo:hi], data, backbone)
        n_batches = math.ceil((hi - lo) / batch_size)
    else:  # shards: the one loader splits them over ranks x workers by sample ranges
        from ..data import ShardDataset

        shards = sorted({data.shards[it.ref] for it in todo})
        dataset = ShardDataset(shards, keys=[it.ref for it in todo], decode=_ShardDecode(backbone),
                               rank=rank, world_size=world_size)
        n_batches = math.ceil(len(todo) / world_size / batch_size)
    chunk_id = len(list(folder.glob(f"part-{rank:03d}-*.keys.json")))
    buf_k: list[str] = []
    buf_g: list[np.ndarray] = []
    buf_l: list[np.ndarray] = []

    def flush() -> None:
        nonlocal chunk_id
        if not buf_k:
            return
        stem = folder / f"part-{rank:03d}-{chunk_id:05d}"
        _save_npy(Path(f"{stem}.global.npy"), np.concatenate(buf_g))
        _save_npy(Path(f"{stem}.local.npy"), np.concatenate(buf_l))
        write_json(Path(f"{stem}.keys.json"), list(buf_k))  # last: the chunk's done marker
        chunk_id += 1
        buf_k.clear()
        buf_g.clear()
        buf_l.clear()

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                         collate_fn=_collate_decoded,
                                         pin_memory=backbone.device.startswith("cuda"))
    with progress_bar("trident: cache features", total=n_batches, unit="batches") as advance:
        for keys, pixels, bad in loader:
            stats["unreadable"] += bad
            if keys:
                g, loc = backbone.tokens(pixels)
                buf_k.extend(keys)
                buf_g.append(g.cpu().numpy().astype(np.float16))
                buf_l.append(loc.cpu().numpy().astype(np.float16))
                stats["computed"] += len(keys)
                if len(buf_k) >= CHUNK:
                    flush()
            advance(1)
    flush()
    return stats


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def _preprocess_bytes(backbone: Backbone, raw: bytes) -> Any:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        return backbone.preprocess(im.convert("RGB"))


class _FileImages:
    """Map-style dataset over image files: item -> (ref, tensor or None when unreadable)."""

    def __init__(self, items: list[Item], data: CZSLData, backbone: Backbone):
        self.items, self.source, self.backbone = items, ImageSource(data), backbone

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, Any]:
        it = self.items[i]
        try:
            return it.ref, self.backbone.preprocess(self.source.open(it))
        except Exception as e:  # noqa: BLE001 - an unreadable image is counted and skipped
            log.debug("unreadable image %s: %s", it.ref, e)
            return it.ref, None


class _ShardDecode:
    """``ShardDataset`` decoder: sample -> (key, tensor or None when unreadable)."""

    def __init__(self, backbone: Backbone):
        self.backbone = backbone

    def __call__(self, sample: dict[str, Any]) -> tuple[str, Any]:
        from curate.shards import image_of

        img = image_of(sample)
        try:
            return sample["__key__"], _preprocess_bytes(self.backbone, img[1]) if img else None
        except Exception as e:  # noqa: BLE001 - an unreadable image is counted and skipped
            log.debug("unreadable image %s: %s", sample["__key__"], e)
            return sample["__key__"], None


def _collate_decoded(rows: list[tuple[str, Any]]) -> tuple[list[str], Any, int]:
    import torch

    good = [(k, t) for k, t in rows if t is not None]
    pixels = torch.stack([t for _, t in good]) if good else torch.zeros(0)
    return [k for k, _ in good], pixels, len(rows) - len(good)


# -- training batches --------------------------------------------------------------------------------
@dataclass
class TrainTable:
    """The training images as arrays: cache rows (or item indices), labels, partners."""

    items: list[Item]
    rows: np.ndarray          # row of each image in the feature cache (cached mode) or its index
    pair: np.ndarray          # train-pair index
    attr_word: np.ndarray     # word index of the attribute
    obj_word: np.ndarray      # word index of the object
    partners: Partners

    @classmethod
    def build(cls, data: CZSLData, rows: np.ndarray | None = None, items: list[Item] | None = None) -> TrainTable:
        items = items if items is not None else data.items["train"]
        train_index = {p: i for i, p in enumerate(data.train_pairs)}
        a_ix = {a: i for i, a in enumerate(data.attrs)}
        o_ix = {o: j for j, o in enumerate(data.objs)}
        attr_ids = np.array([a_ix[it.attr] for it in items], np.int64).reshape(-1)
        obj_ids = np.array([o_ix[it.obj] for it in items], np.int64).reshape(-1)
        return cls(items=items, rows=rows if rows is not None else np.arange(len(items)),
                   pair=np.array([train_index[(it.attr, it.obj)] for it in items], np.int64).reshape(-1),
                   attr_word=attr_ids, obj_word=len(data.attrs) + obj_ids,  # word rows: attributes, then objects
                   partners=Partners(attr_ids, obj_ids))


def epoch_plans(table: TrainTable, batch_size: int, generator: Any, rank: int = 0,
                world_size: int = 1) -> list[dict[str, np.ndarray]]:
    """The batches of one epoch for this rank: a shuffled order (the same on every rank, each
    taking every ``world_size``-th image, padded like ``DistributedSampler``) and partners."""
    import torch

    n = len(table.items)
    perm = torch.randperm(n, generator=generator).numpy()
    u = torch.rand(2, n, generator=generator, dtype=torch.float64).numpy()
    if world_size > 1:
        total = math.ceil(n / world_size) * world_size
        perm = np.r_[perm, perm[: total - n]][rank::world_size]
        batch_size = max(1, batch_size // world_size)
    plans = []
    for b in range(0, len(perm), batch_size):
        idx = perm[b:b + batch_size]
        part = table.partners.sample(idx, u[0][idx], u[1][idx])
        plans.append({"anchor": idx, **part})
    return plans


def plan_labels(table: TrainTable, plan: dict[str, np.ndarray]) -> dict[str, Any]:
    """Unique images of a plan, the inverse map [3, B] and the labels of the three images."""
    import torch

    trio = np.stack([plan["anchor"], plan["same_attr"], plan["same_obj"]])
    uniq, inv = np.unique(trio.reshape(-1), return_inverse=True)
    return {"uniq": uniq, "inv": torch.from_numpy(inv.reshape(3, -1)),
            "pair": torch.from_numpy(table.pair[trio]), "attr": torch.from_numpy(table.attr_word[trio]),
            "obj": torch.from_numpy(table.obj_word[trio]),
            "attr_mask": torch.from_numpy(plan["attr_mask"]), "obj_mask": torch.from_numpy(plan["obj_mask"])}


class CachedBatches:
    """plan -> batch with fp16 token features of the unique images (``g``, ``l``)."""

    def __init__(self, table: TrainTable, cache: FeatureCache, in_memory: Any = None):
        self.table, self.cache, self.in_memory = table, cache, in_memory

    def __getitem__(self, plan: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        batch = plan_labels(self.table, plan)
        uniq = batch.pop("uniq")
        if self.in_memory is not None:  # features of the table's rows, in table order
            idx = torch.from_numpy(uniq)
            batch["g"], batch["l"] = self.in_memory[0][idx], self.in_memory[1][idx]
        else:
            g, loc = self.cache.gather(self.table.rows[uniq])
            batch["g"], batch["l"] = torch.from_numpy(g), torch.from_numpy(loc)
        return batch


class ImageBatches:
    """plan -> batch with preprocessed pixels of the unique images (online backbone)."""

    def __init__(self, table: TrainTable, source: ImageSource, backbone: Backbone):
        self.table, self.source, self.backbone = table, source, backbone

    def __getitem__(self, plan: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        batch = plan_labels(self.table, plan)
        uniq = batch.pop("uniq")
        batch["pixels"] = torch.stack([self.backbone.preprocess(self.source.open(self.table.items[i]))
                                       for i in uniq.tolist()])
        return batch


def load_in_memory(cache: FeatureCache, rows: np.ndarray, limit_bytes: float) -> Any:
    """The rows' features as two fp16 tensors when they fit in ``limit_bytes``, else None."""
    import torch

    if not len(rows) or not cache.chunks:
        return None
    g0, l0 = cache.chunks[0]
    per_row = (int(np.prod(g0.shape[1:])) + int(np.prod(l0.shape[1:]))) * 2
    if per_row * len(rows) > limit_bytes:
        return None
    g, loc = cache.gather(rows)
    return torch.from_numpy(g), torch.from_numpy(loc)
