"""TRIDENT's inputs: the token features of a dataset's images, and the per-epoch batch plans.

Features come from the one feature cache, ``training.data.features`` (:class:`~training.data.
features.TokenCache`, built from the dataset's :func:`image_store`), or with
``--online`` from the frozen backbone every step. :func:`prepare_features` builds (this rank's
part of) the cache for what is missing and drops from the splits the images it could not read.

Training batches are *plans* made in the main process from seeded generators (so a resumed
run draws the same batches): anchor rows, their same-attribute and same-object partners
(:class:`~.data.Partners`) and masks. :class:`CachedBatches` / :class:`ImageBatches` turn a
plan into tensors (unique rows only: a partner that is also an anchor is read once), so a
``DataLoader`` with workers and pinned memory can run them ahead of the GPU.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.features import TokenCache, TokenFeatures, open_token_cache, token_cache_dir
from ..data.images import ImageStore
from .backbone import Backbone
from .data import CZSLData, Item, Partners

log = logging.getLogger(__name__)


def image_store(data: CZSLData) -> ImageStore:
    """``data``'s images by ``Item.ref``: files under ``ROOT/images`` (standard layout) or shard samples."""
    return ImageStore(data.root, folder=data.images if data.kind == "czsl" else None, shards=data.shards)


def prepare_features(data: CZSLData, backbone: Backbone, cache: bool, cache_dir: Path | None, workers: int,
                     rank: int = 0, world_size: int = 1) -> tuple[TokenFeatures, dict[str, int]]:
    """The token features of ``data``'s images and the cache's counts. Cached: build (this
    rank's part of) the cache and open it, dropping the images it could not read; else online."""
    store = image_store(data)
    if not cache:
        return TokenFeatures(store, backbone, None), {}
    keys = [it.ref for split in sorted(data.items) for it in data.items[split]]
    folder = cache_dir or token_cache_dir(backbone.spec, store, keys, backbone.decode)
    tokens, stats = open_token_cache(folder, store, keys, backbone, workers, rank, world_size)
    index = tokens.index()
    for split in list(data.items):
        before = len(data.items[split])
        data.items[split] = [it for it in data.items[split] if it.ref in index]
        data.note("images_unreadable", before - len(data.items[split]),
                  f"{before - len(data.items[split])} {split} image(s) could not be decoded: skipped")
    return TokenFeatures(store, None, tokens), stats


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
                world_size: int = 1, partners: str = "official") -> list[dict[str, np.ndarray]]:
    """The batches of one epoch for this rank: a shuffled order (the same on every rank, each
    taking every ``world_size``-th image, padded like ``DistributedSampler``) and partners
    (``partners`` official: a partnerless anchor gets the last training image, as the official
    loader's ``self.data[-1]``; drop: the anchor itself, masked out of every loss)."""
    import torch

    n = len(table.items)
    perm = torch.randperm(n, generator=generator).numpy()
    u = torch.rand(2, n, generator=generator, dtype=torch.float64).numpy()
    if world_size > 1:
        total = math.ceil(n / world_size) * world_size
        perm = np.r_[perm, perm[: total - n]][rank::world_size]
        batch_size = max(1, batch_size // world_size)
    plans = []
    fallback = n - 1 if partners == "official" else None
    for b in range(0, len(perm), batch_size):
        idx = perm[b:b + batch_size]
        part = table.partners.sample(idx, u[0][idx], u[1][idx], fallback)
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

    def __init__(self, table: TrainTable, cache: TokenCache, in_memory: Any = None):
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

    def __init__(self, table: TrainTable, store: ImageStore, backbone: Backbone):
        self.table, self.store, self.backbone = table, store, backbone

    def __getitem__(self, plan: dict[str, np.ndarray]) -> dict[str, Any]:
        import torch

        batch = plan_labels(self.table, plan)
        uniq = batch.pop("uniq")
        batch["pixels"] = torch.stack([self.backbone.pixels(self.store.read(self.table.items[i].ref))
                                       for i in uniq.tolist()])
        return batch
