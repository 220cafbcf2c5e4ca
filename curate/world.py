"""The offline demo world as every package reads it: where its files are, and ``world.json``.

This is the one reader of a demo world (``curate demo world``; written by
``builders.synthetic.world``, the one writer). Every package may import ``curate``, so
builders, the review and the trainers all find the world's files through the names and
functions here; ``tests/test_layout_rules.py`` fails if another module names them. Layout::

    WORLD/world.json                   vocabulary, typical/rare/common pairs, scale, seed, image size, counts
    WORLD/captions/part-NNNNN.parquet  the caption corpus (url, caption, width, height)
    WORLD/captions_ground_truth.json   exact co-occurrence and marginal counts of the corpus
    WORLD/pool/images/KEY.jpg          the image pool
    WORLD/pool/pool.parquet            one row per pool image: key, path, caption, attr, obj, colour, ...
    WORLD/train|heldout|rare/SPLIT-NNNNNN.tar   labelled shards (train and heldout: common pairs; rare: rare pairs)

``world.json`` is written last, so its presence means the world is complete (:func:`is_world`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import CurateError
from .fsutil import read_json

WORLD_JSON = "world.json"
CAPTIONS = "captions"
GROUND_TRUTH = "captions_ground_truth.json"
POOL = "pool"
POOL_IMAGES = "images"
POOL_TABLE = "pool.parquet"
TRAIN, HELDOUT, RARE = "train", "heldout", "rare"
SPLITS = (TRAIN, HELDOUT, RARE)
MAKE_ONE = "make one with `curate demo world --out DIR`"
REMAKE = "regenerate it with `curate demo world --out DIR`"


def is_world(path: str | os.PathLike) -> bool:
    """Is ``path`` a complete demo world folder (it holds ``world.json``)?"""
    return (Path(path) / WORLD_JSON).is_file()


def world_dir(path: str | os.PathLike) -> Path | None:
    """The world folder ``path`` names: the folder itself or its ``world.json`` (as a build's
    vocabulary names it); None for anything else."""
    p = Path(path)
    if p.name == WORLD_JSON and p.is_file():
        return p.parent
    return p if is_world(p) else None


def meta_path(world: str | os.PathLike) -> Path:
    """``WORLD/world.json`` (for messages and for naming the world as a vocabulary file)."""
    return Path(world) / WORLD_JSON


def identity(world: str | os.PathLike) -> bytes:
    """The bytes of ``world.json``: what a cache keyed by the world hashes (another seed, scale or
    version is another world)."""
    path = meta_path(world)
    try:
        return path.read_bytes()
    except OSError as e:
        raise CurateError(f"not a (complete) demo world: cannot read {WORLD_JSON} ({e.strerror})",
                          where=str(world), fix=MAKE_ONE) from e


def split_dir(world: str | os.PathLike, split: str) -> Path:
    """``WORLD/<split>``: the shards of ``train``, ``heldout`` or ``rare``."""
    if split not in SPLITS:
        raise ValueError(f"no split {split!r} in a demo world (one of {SPLITS})")
    return Path(world) / split


def shards(world: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split, in order."""
    return sorted(split_dir(world, split).glob(f"{split}-*.tar"))


def pool_dir(world: str | os.PathLike) -> Path:
    return Path(world) / POOL


def pool_images_dir(world: str | os.PathLike) -> Path:
    """``WORLD/pool/images``: what ``curate build --pool`` takes."""
    return pool_dir(world) / POOL_IMAGES


def pool_table(world: str | os.PathLike) -> Path:
    """``WORLD/pool/pool.parquet``: one row per pool image, with what the renderer drew."""
    return pool_dir(world) / POOL_TABLE


def pool_table_in(folder: str | os.PathLike) -> Path | None:
    """The pool table of a world folder or of its ``pool/`` folder itself; None if neither holds one."""
    folder = Path(folder)
    for cand in (pool_table(folder), folder / POOL_TABLE):
        if cand.is_file():
            return cand
    return None


def captions_dir(world: str | os.PathLike) -> Path:
    """``WORLD/captions``: the caption corpus' parquet parts (what ``curate build --captions`` takes)."""
    return Path(world) / CAPTIONS


def ground_truth_path(world: str | os.PathLike) -> Path:
    return Path(world) / GROUND_TRUTH


def _names(entries: Any, what: str, where: Path) -> list[str]:
    if not isinstance(entries, list) or not entries:
        raise CurateError(f"{WORLD_JSON} has no {what} list", where=str(where), fix=REMAKE)
    names = [e.get("name") if isinstance(e, dict) else e for e in entries]
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise CurateError(f"{WORLD_JSON}: every entry of {what} needs a name", where=str(where),
                          fix=REMAKE)
    return [str(n) for n in names]


def _pairs(value: Any, what: str, where: Path) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in value):
        raise CurateError(f"{WORLD_JSON}: {what} is not a list of [attr, obj] pairs", where=str(where),
                          fix=REMAKE)
    return [(str(a), str(o)) for a, o in value]


def _knobs(value: Any, where: Path) -> dict[str, float | int | None]:
    """world.json's ``knobs`` (numbers or null by name); {} when absent."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool))
                                              for v in value.values()):
        raise CurateError(f"{WORLD_JSON}: knobs is not an object of numbers", where=str(where), fix=REMAKE)
    return {str(k): v for k, v in value.items()}


@dataclass
class World:
    """A materialised demo world, read from its ``world.json``.

    Only ``objects`` and ``attributes`` are required there; the other fields default to empty
    (families are then taken from the attributes' own ``family`` entries).
    """

    path: Path
    objects: list[str]
    attributes: list[str]
    families: dict[str, list[str]]
    plurals: dict[str, str]
    rare_pairs: list[tuple[str, str]]
    common_pairs: list[tuple[str, str]]
    scale: str
    seed: int
    image_size: int
    counts: dict[str, Any] = field(default_factory=dict)
    typical: dict[str, dict[str, str]] = field(default_factory=dict)
    # the dependence knobs it was made with (typical_share, train_images, typical_colour_p); {}: the named scale's
    knobs: dict[str, float | int | None] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike) -> World:
        """The world at ``path`` (its folder, or its ``world.json``); a clear error if it is none."""
        path = Path(path)
        if path.is_file():
            if path.name != WORLD_JSON:
                raise CurateError(f"not a demo world's {WORLD_JSON}", where=str(path),
                                  fix=f"give a demo world folder or its {WORLD_JSON}")
            path = path.parent
        meta = meta_path(path)
        if not meta.is_file():
            raise CurateError(f"not a (complete) demo world: no {WORLD_JSON}", where=str(path),
                              fix=f"run `curate demo world --out {path}` first")
        try:
            d = read_json(meta)
        except (OSError, ValueError) as e:
            raise CurateError(f"cannot read {WORLD_JSON} ({e})", where=str(meta), fix=REMAKE) from e
        if not isinstance(d, dict):
            raise CurateError(f"{WORLD_JSON} is not a JSON object", where=str(meta), fix=REMAKE)
        objects = _names(d.get("objects"), "objects", meta)
        attributes = _names(d.get("attributes"), "attributes", meta)
        families = d.get("families")
        if not isinstance(families, dict):
            families = {}
            for a in d["attributes"]:
                if isinstance(a, dict) and a.get("family"):
                    families.setdefault(str(a["family"]), []).append(str(a["name"]))
        objs = [o for o in d["objects"] if isinstance(o, dict)]
        try:
            return cls(
                path=path,
                objects=objects,
                attributes=attributes,
                families={str(k): [str(x) for x in v] for k, v in families.items()},
                plurals={str(o["name"]): str(o["plural"]) for o in objs if o.get("plural")},
                rare_pairs=_pairs(d.get("rare_pairs"), "rare_pairs", meta),
                common_pairs=_pairs(d.get("common_pairs"), "common_pairs", meta),
                scale=str(d.get("scale", "")),
                seed=int(d.get("seed", 0)),
                image_size=int(d.get("image_size", 0)),
                counts=dict(d.get("counts") or {}),
                typical={str(o["name"]): dict(o.get("typical") or {}) for o in objs},
                knobs=_knobs(d.get("knobs"), meta),
            )
        except (TypeError, ValueError, AttributeError) as e:
            raise CurateError(f"{WORLD_JSON} is malformed ({e})", where=str(meta), fix=REMAKE) from e

    @property
    def typical_pairs(self) -> list[tuple[str, str]]:
        """Every object's typical (attribute, object) pairs (all common)."""
        return [(a, o) for o, by_family in self.typical.items() for a in by_family.values()]

    @property
    def family_of(self) -> dict[str, str]:
        return {a: fam for fam, names in self.families.items() for a in names}

    def all_pairs(self) -> list[tuple[str, str]]:
        """Every attribute x every object, sorted."""
        return sorted((a, o) for a in self.attributes for o in self.objects)

    @property
    def meta_path(self) -> Path:
        return meta_path(self.path)

    @property
    def pool_dir(self) -> Path:
        return pool_dir(self.path)

    @property
    def pool_images_dir(self) -> Path:
        return pool_images_dir(self.path)

    @property
    def pool_table(self) -> Path:
        return pool_table(self.path)

    @property
    def captions_dir(self) -> Path:
        return captions_dir(self.path)

    def caption_files(self) -> list[Path]:
        return sorted(self.captions_dir.glob("part-*.parquet"))

    def split_dir(self, split: str) -> Path:
        return split_dir(self.path, split)

    def shards(self, split: str) -> list[Path]:
        """Shards of ``train``, ``heldout`` or ``rare``."""
        return shards(self.path, split)

    def ground_truth(self) -> dict[str, Any]:
        """The caption corpus' exact counts (``captions_ground_truth.json``); {} if the world has none."""
        path = ground_truth_path(self.path)
        return read_json(path) if path.is_file() else {}
