"""The demo world in the standard CZSL layout, so TRIDENT trains on it like on MIT-States.

Splits: train = the world's training images (common pairs only, what the demo mini-CLIP saw);
val and test = half of the held-out common-pair images each (seen pairs) plus the rare pairs
cut in two halves *by pair* (unseen pairs: a rare pair is in val or in test, never both).
Names are CZSL names (``crescent_moon``); images go to ``images/<attr>_<obj>/<key>.jpg``.
``pairs.parquet`` holds the caption corpus' co-occurrence counts (from the world's
``captions_ground_truth.json``) for the open-world feasibility.

``curate train trident --data WORLD`` (and ``curate eval czsl``) accept a world folder: it is
exported once into the cache (:func:`czsl_root_for`) and its backbone defaults to the world's
demo mini-CLIP.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.fsutil import write_json
from curate.shards import image_of, iter_shard, list_shards
from curate.world import HELDOUT, RARE, SPLITS, TRAIN, World, identity, is_world, split_dir

from .data import czsl_name, write_czsl_root

DONE = "export.json"


def _read(folder: Path) -> list[tuple[str, str, str, bytes]]:
    out = []
    for shard in list_shards(folder):
        for s in iter_shard(shard):
            meta = json.loads(s["json"]) if "json" in s else {}
            img = image_of(s)
            if img and meta.get("attr") and meta.get("obj"):
                out.append((s["__key__"], czsl_name(meta["attr"]), czsl_name(meta["obj"]), img[1]))
    return out


def world_to_czsl(world: Path, out: Path, seed: int = 0) -> Path:
    """Write ``out`` (a CZSL root) from ``world/{train,heldout,rare}``; returns ``out``."""
    for split in SPLITS:
        if not split_dir(world, split).is_dir():
            raise CurateError(f"the world has no {split}/ shards", where=str(world),
                              fix="make one with `curate demo world --out DIR`")
    rows: list[dict[str, Any]] = []
    images: dict[str, bytes] = {}

    def add(key: str, attr: str, obj: str, data: bytes, kind: str) -> None:
        rel = f"{attr}_{obj}/{key}.jpg"
        images[rel] = data
        rows.append({"image": rel, "attr": attr, "obj": obj, "set": kind})

    for key, a, o, data in _read(split_dir(world, TRAIN)):
        add(key, a, o, data, "train")
    by_pair: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for key, a, o, data in _read(split_dir(world, HELDOUT)):
        by_pair.setdefault((a, o), []).append((key, data))
    for (a, o), imgs in sorted(by_pair.items()):
        for i, (key, data) in enumerate(sorted(imgs)):
            add(key, a, o, data, "val" if i % 2 == 0 else "test")
    rare: dict[tuple[str, str], list[tuple[str, bytes]]] = {}
    for key, a, o, data in _read(split_dir(world, RARE)):
        rare.setdefault((a, o), []).append((key, data))
    pairs = sorted(rare)
    random.Random(seed).shuffle(pairs)
    val_pairs = set(pairs[: len(pairs) // 2])
    for p in sorted(rare):
        for key, data in sorted(rare[p]):
            add(key, p[0], p[1], data, "val" if p in val_pairs else "test")
    write_czsl_root(out, rows, images)
    _write_cooccurrence(world, out)
    write_json(out / DONE, {"world": str(world.resolve()), "images": len(rows)})
    return out


def _write_cooccurrence(world: Path, out: Path) -> None:
    import polars as pl

    from curate.fsutil import write_parquet

    rows = [{"attr": czsl_name(p["attr"]), "obj": czsl_name(p["obj"]), "cooccurrence": int(p["count"])}
            for p in World.load(world).ground_truth().get("pairs", [])]
    if rows:
        write_parquet(pl.DataFrame(rows), out / "pairs.parquet")


def czsl_root_for(path: Path) -> Path:
    """``path`` itself, or for a demo world its CZSL export (made once, in the cache)."""
    import hashlib

    from curate.paths import cache_dir

    if not is_world(path):
        return path
    digest = hashlib.sha256(identity(path) + str(path.resolve()).encode()).hexdigest()[:16]
    out = cache_dir() / "trident-world" / digest
    if not (out / DONE).exists():
        world_to_czsl(path, out)
    return out


def world_backbone(path: Path) -> str | None:
    """The demo mini-CLIP of a world (trained once, cached), as its backbone spec."""
    from curate.embed.backends import demo_model_spec

    return demo_model_spec(path) if is_world(path) else None
