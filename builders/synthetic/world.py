"""Materialise the demo world on disk, resumably (the one writer; ``curate.world`` is the one reader).

Layout (``WORLD/``)::

    world.json                   vocabulary, typical/rare/common pairs, scale, seed, image size, counts
    captions/part-NNNNN.parquet  url, caption, width, height (<= 100k rows a part)
    captions_ground_truth.json   exact co-occurrence and marginal counts (see .captions)
    pool/images/KEY.jpg          the image pool (95 % common pairs, typical ones first; 5 % rare pairs)
    pool/pool.parquet            key, path (relative to pool/), url, caption, attr, obj, ...
    train/train-NNNNNN.tar       common pairs only: KEY.jpg, KEY.txt (caption), KEY.json
    heldout/heldout-NNNNNN.tar   more common-pair images, none of them in train
    rare/rare-NNNNNN.tar         a few images of every rare pair

The distribution is skewed like real photos: every object has typical attributes
(``vocab.TYPICAL``: lemons are yellow), its typical pairs get most of the train and heldout
images (``Scale.train_typical`` vs ``train_per_pair`` per pair), and an image whose target
is not a colour mostly shows the object's typical colour (``render``). A model trained on
``train/`` can thus lean on colour to tell objects apart, and fails on ``rare/``, whose
pairs are never typical and are mostly objects in an atypical colour: the drop from
heldout (ordinary images) to rare is the ImageNet-AO phenomenon.

Every caption part, shard and pool chunk is one ledger task (``curate.ledger.run_stage``)
run by the executor, so a killed run resumes where it stopped and a rerun with the same
options does nothing. ``world.json`` is written last: its presence means the world is complete.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from curate.errors import CurateError
from curate.executor import Executor, LocalExecutor
from curate.fsutil import write_json, write_parquet
from curate.images import encode_jpeg
from curate.ledger import Task, run_stage
from curate.log import StageSummary
from curate.outdir import OutputDir
from curate.world import (
    CAPTIONS,
    SPLITS,
    World,
    ground_truth_path,
    is_world,
    meta_path,
    pool_images_dir,
    pool_table,
)

from . import captions as cap
from .generator import image_seed
from .render import DEFAULT_SIZE, TYPICAL_COLOUR_P, render_sample
from .vocab import (
    ATTRIBUTE_NAMES,
    ATTRIBUTES,
    FAMILIES,
    FAMILY_OF,
    OBJECT_NAMES,
    OBJECTS,
    PLURALS,
    TYPICAL,
    all_pairs,
    choose_rare_pairs,
    slug,
    typical_pairs,
)

log = logging.getLogger(__name__)

WORLD_VERSION = 2
RARE_FRACTION = 0.2
POOL_RARE_FRACTION = 0.05
SPLIT_CODES = {"train": 1, "heldout": 2, "rare": 3, "pool": 4}
TRAIN_TEMPLATES = (
    "a photo of {art} {a} {o}.", "{art} {a} {o}", "a picture of {art} {a} {o}", "an image of {art} {a} {o}",
    "a drawing of {art} {a} {o}", "{a} {o}", "a rendering of {art} {a} {o}", "a close-up photo of the {a} {o}",
    "a cropped photo of {art} {a} {o}", "there is {art} {a} {o} in the picture", "a small icon of {art} {a} {o}",
    "{art} {a} {o} on a grey background",
)


@dataclass(frozen=True)
class Scale:
    """Sizes of one world scale. Train and heldout counts are per common pair: ``*_typical``
    for an object's typical pairs, ``*_per_pair`` for the other common pairs (the skew that
    makes colour a shortcut to the object); sized so a small CNN CLIP trains in CPU minutes.

    The dependence knobs (``curate demo world --typical-share --train-images --typical-colour-p``,
    :func:`with_knobs`): with ``typical_share`` set, ``train/`` holds ``train_images`` images,
    the same number of every object, ``typical_share`` of each object's images on its typical
    pairs and the rest spread evenly over its other common pairs (1.0: every lemon is yellow;
    about 0.22: every common pair of an object equally often), instead of the per-pair counts
    above. ``typical_colour_p`` is the render's chance that a non-colour image shows the
    object's typical colour (the visual shortcut). Unset knobs leave a scale's world as it was."""

    train_typical: int
    train_per_pair: int
    heldout_typical: int
    heldout_per_pair: int
    rare_per_pair: int
    pool_images: int
    captions: int
    shard_size: int = 1000
    pool_chunk: int = 1000
    typical_share: float | None = None
    train_images: int | None = None
    typical_colour_p: float = TYPICAL_COLOUR_P

    def knobs(self) -> dict[str, float | int | None]:
        """The knobs set away from the named scale (world.json's ``knobs``; {} for a plain scale)."""
        if self.typical_share is None and self.typical_colour_p == TYPICAL_COLOUR_P:
            return {}
        return {"typical_share": self.typical_share, "train_images": self.train_images,
                "typical_colour_p": self.typical_colour_p}


SCALES: dict[str, Scale] = {
    "tiny": Scale(train_typical=2, train_per_pair=1, heldout_typical=2, heldout_per_pair=1, rare_per_pair=1,
                  pool_images=20, captions=1_000, shard_size=500, pool_chunk=20),  # tests of the sweep driver
    "small": Scale(train_typical=24, train_per_pair=2, heldout_typical=12, heldout_per_pair=1, rare_per_pair=3,
                   pool_images=400, captions=20_000, shard_size=500, pool_chunk=200),
    "medium": Scale(train_typical=60, train_per_pair=5, heldout_typical=24, heldout_per_pair=2, rare_per_pair=6,
                    pool_images=5_000, captions=200_000),
    "large": Scale(train_typical=60, train_per_pair=5, heldout_typical=24, heldout_per_pair=2, rare_per_pair=6,
                   pool_images=100_000, captions=1_000_000, pool_chunk=2000),
}


def check_scale(scale: str) -> Scale:
    if scale not in SCALES:
        raise CurateError(f"unknown scale {scale!r}", fix=f"use one of: {', '.join(SCALES)}")
    return SCALES[scale]


MAX_TRAIN_IMAGES = 1_000_000


def _unit(name: str, value: float | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0):
        raise CurateError(f"{name} {value!r} is outside [0, 1]", fix=f"give a share between 0 and 1 (e.g. {name} 0.5)")


def with_knobs(scale: Scale, typical_share: float | None = None, train_images: int | None = None,
               typical_colour_p: float | None = None) -> Scale:
    """``scale`` with the dependence knobs set (see :class:`Scale`), each checked: shares in [0, 1],
    ``train_images`` between one image per object and ``MAX_TRAIN_IMAGES``. ``train_images`` alone
    keeps the scale's own typical share; ``typical_share`` alone keeps its number of train images."""
    _unit("--typical-share", typical_share)
    _unit("--typical-colour-p", typical_colour_p)
    if train_images is not None and (isinstance(train_images, bool) or not isinstance(train_images, int)
                                     or not len(OBJECTS) <= train_images <= MAX_TRAIN_IMAGES):
        raise CurateError(f"--train-images {train_images!r} is outside [{len(OBJECTS)}, {MAX_TRAIN_IMAGES:,}]",
                          fix=f"give at least one image per object ({len(OBJECTS)}) and at most {MAX_TRAIN_IMAGES:,}")
    if typical_share is None and train_images is None:
        return scale if typical_colour_p is None else replace(scale, typical_colour_p=float(typical_colour_p))
    n_typical = len(typical_pairs())
    n_other = len(all_pairs()) - n_typical - round(RARE_FRACTION * len(all_pairs()))
    default_n = n_typical * scale.train_typical + n_other * scale.train_per_pair
    return replace(scale, typical_share=float(n_typical * scale.train_typical / default_n
                                              if typical_share is None else typical_share),
                   train_images=int(default_n if train_images is None else train_images),
                   typical_colour_p=float(scale.typical_colour_p if typical_colour_p is None else typical_colour_p))


def _spread(pairs: list[tuple[str, str]], n: int) -> dict[tuple[str, str], int]:
    """``n`` images over ``pairs`` as evenly as possible (the first ones get the remainder)."""
    return {p: n // len(pairs) + (j < n % len(pairs)) for j, p in enumerate(pairs)} if pairs else {}


def train_counts(scale: Scale, common: list, typical: list) -> dict[tuple[str, str], int]:
    """Images per common pair of a world with ``typical_share`` set: ``train_images`` split evenly over the
    objects, ``typical_share`` of each object's on its typical pairs, the rest on its other common pairs."""
    typ = {tuple(p) for p in typical}
    pairs = [(a, o) for a, o in common]
    objs = [o for o in OBJECT_NAMES if any(ob == o for _, ob in pairs)]
    counts: dict[tuple[str, str], int] = {}
    n_total = int(scale.train_images or 0)
    for i, o in enumerate(objs):
        n_o = n_total // len(objs) + (i < n_total % len(objs))
        mine = [p for p in pairs if p[1] == o]
        rest = [p for p in mine if p not in typ]
        n_t = round(float(scale.typical_share or 0.0) * n_o) if rest else n_o
        counts.update(_spread([p for p in mine if p in typ], n_t))
        counts.update(_spread(rest, n_o - n_t))
    return counts


# --- tasks (top-level functions: they run in worker processes) ---------------------------------

def _train_caption(attr: str, obj: str, rng: random.Random) -> str:
    return rng.choice(TRAIN_TEMPLATES).format(art=cap.article(attr), a=attr, o=obj)


def _shard_task(args: dict) -> dict:
    from curate.shards import write_shard

    out = Path(args["out"])
    split, size = args["split"], args["size"]
    rng = random.Random(f"{split}/{args['seed']}/{args['index']}")

    def samples():
        for attr, obj, j in args["specs"]:
            s = image_seed(args["seed"], SPLIT_CODES[split], ATTRIBUTE_NAMES.index(attr), OBJECT_NAMES.index(obj), j)
            img, vis = render_sample(attr, obj, s, size, args["colour_p"])
            key = f"{split}_{attr}_{slug(obj)}_{j:04d}"
            caption = _train_caption(attr, obj, rng)
            meta = {**vis, "key": key, "pair": f"{attr} {obj}", "family": FAMILY_OF[attr], "caption": caption,
                    "seed": s, "split": split, "source": "demo-world", "width": size, "height": size}
            yield {"__key__": key, "jpg": encode_jpeg(img), "txt": caption, "json": meta}

    rel = f"{split}/{split}-{args['index']:06d}.tar"
    st = write_shard(out / rel, samples())
    return {"outputs": [rel], "stats": {"items": st.count, "images": st.count}}


def _pool_task(args: dict) -> dict:
    import pyarrow as pa

    out = Path(args["out"])
    size, chunk = args["size"], args["index"]
    rng = random.Random(f"pool/{args['seed']}/{chunk}")
    common = [tuple(p) for p in args["common"]]
    typical = {tuple(p) for p in args["typical"]}
    maker = cap.CaptionMaker(cap.CorpusSpec(common, [tuple(p) for p in args["rare"]], args["seed"],
                                            typical=sorted(typical)), rng)
    # common pairs as often as in train/: typical ones first
    weights = [args["typical_weight"] if p in typical else 1.0 for p in common]
    rows: dict[str, list] = {k: [] for k in ("key", "path", "url", "caption", "attr", "obj", "rare",
                                             "colour", "pattern", "state", "width", "height")}
    img_dir = pool_images_dir(out)
    img_dir.mkdir(parents=True, exist_ok=True)
    for i in range(args["start"], args["stop"]):
        is_rare = bool(args["rare"]) and rng.random() < POOL_RARE_FRACTION
        attr, obj = rng.choice(args["rare"]) if is_rare else rng.choices(common, weights)[0]
        s = image_seed(args["seed"], SPLIT_CODES["pool"], i)
        img, vis = render_sample(attr, obj, s, size, args["colour_p"])
        key = f"pool_{i:07d}"
        rel = f"images/{key}.jpg"
        # plain writes: the chunk, not the image, is the unit of resumption (its parquet and
        # ledger marker come after every image), and an fsync per file would cost 10x the render
        (img_dir / f"{key}.jpg").write_bytes(encode_jpeg(img))
        # a rare pair's own caption must not name it (the corpus never pairs those words)
        caption = maker.object_caption(obj) if is_rare else maker.pair_caption(attr, obj)
        for k, v in (("key", key), ("path", rel), ("url", f"https://pool.demo-world.example/{rel}"),
                     ("caption", caption), ("attr", attr), ("obj", obj), ("rare", is_rare), ("colour", vis["colour"]),
                     ("pattern", vis["pattern"]), ("state", vis["state"]), ("width", size), ("height", size)):
            rows[k].append(v)
    rel_part = f".curate/parts/pool-{chunk:05d}.parquet"
    write_parquet(pa.table(rows), out / rel_part, statistics=True)
    return {"outputs": [rel_part], "stats": {"items": len(rows["key"]), "images": len(rows["key"])}}


def _captions_task(args: dict) -> dict:
    import pyarrow as pa

    out = Path(args["out"])
    spec = cap.CorpusSpec([tuple(p) for p in args["common"]], [tuple(p) for p in args["rare"]], args["seed"],
                          typical=[tuple(p) for p in args["typical"]])
    cols, counts = cap.part_rows(spec, args["index"], args["rows"])
    rel = f"{CAPTIONS}/part-{args['index']:05d}.parquet"
    table = pa.table({"url": pa.array(cols["url"], pa.string()), "caption": pa.array(cols["caption"], pa.string()),
                      "width": pa.array(cols["width"], pa.int32()), "height": pa.array(cols["height"], pa.int32())})
    write_parquet(table, out / rel, statistics=True)
    return {"outputs": [rel], "stats": {"items": counts.rows, "captions": counts.to_dict()}}


def run_world_task(task: Task) -> dict:
    """Dispatch one task by kind (the executor needs one picklable top-level function)."""
    kind = task.args["kind"]
    if kind == "captions":
        return _captions_task(task.args)
    if kind == "pool":
        return _pool_task(task.args)
    return _shard_task(task.args)


# --- planning -----------------------------------------------------------------------------------

def split_specs(split: str, scale: Scale, seed: int, common: list, rare: list,
                typical: list) -> list[tuple[str, str, int]]:
    """``(attr, obj, j)`` of every image of ``split``, in a seeded shuffled order."""
    typ = {tuple(p) for p in typical}
    if split == "rare":
        counts = [(a, o, scale.rare_per_pair) for a, o in rare]
    elif split == "train" and scale.typical_share is not None:
        per_pair = train_counts(scale, common, typical)
        counts = [(a, o, per_pair[(a, o)]) for a, o in common]
    else:
        many, few = ((scale.train_typical, scale.train_per_pair) if split == "train"
                     else (scale.heldout_typical, scale.heldout_per_pair))
        counts = [(a, o, many if (a, o) in typ else few) for a, o in common]
    specs = [(a, o, j) for a, o, n in counts for j in range(n)]
    random.Random(f"order/{split}/{seed}").shuffle(specs)
    return specs


def plan_tasks(out: Path, scale: Scale, seed: int, size: int, common: list, rare: list,
               typical: list) -> list[Task]:
    """Every task of a world; the slowest (caption parts, pool chunks) first for load balance."""
    base = {"out": str(out), "seed": seed, "size": size, "typical": typical, "colour_p": scale.typical_colour_p}
    tasks: list[Task] = []
    n_parts = -(-scale.captions // cap.PART_ROWS)
    for p in range(n_parts):
        rows = min(cap.PART_ROWS, scale.captions - p * cap.PART_ROWS)
        tasks.append(Task(f"captions-{p:05d}", {**base, "kind": "captions", "index": p, "rows": rows,
                                               "common": common, "rare": rare}))
    for c, start in enumerate(range(0, scale.pool_images, scale.pool_chunk)):
        stop = min(scale.pool_images, start + scale.pool_chunk)
        tasks.append(Task(f"pool-{c:05d}", {**base, "kind": "pool", "index": c, "start": start, "stop": stop,
                                           "common": common, "rare": rare,
                                           "typical_weight": scale.train_typical / max(1, scale.train_per_pair)}))
    for split in SPLITS:
        specs = split_specs(split, scale, seed, common, rare, typical)
        for k, start in enumerate(range(0, len(specs), scale.shard_size)):
            tasks.append(Task(f"{split}-{k:06d}", {**base, "kind": "shard", "split": split, "index": k,
                                                   "specs": specs[start:start + scale.shard_size]}))
    return tasks


def _merge_pool(out: Path, n_chunks: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.read_table(out / ".curate" / "parts" / f"pool-{c:05d}.parquet") for c in range(n_chunks)]
    table = pa.concat_tables(parts) if parts else pa.table({})
    write_parquet(table, pool_table(out), statistics=True)


def world_config(scale: str, seed: int, size: int, knobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"scale": scale, "seed": seed, "image_size": size, "version": WORLD_VERSION, **({"knobs": knobs} if knobs else {})}


def build_world(out: str | os.PathLike, scale: str = "small", seed: int = 0, size: int = DEFAULT_SIZE,
                executor: Executor | None = None, overwrite: bool = False,
                knobs: dict[str, Any] | None = None) -> tuple[World, list[StageSummary]]:
    """Materialise (or resume, or leave alone) the world at ``out``; returns it and the stage summaries.
    ``knobs``: :func:`with_knobs`'s keyword arguments (``typical_share``, ``train_images``, ``typical_colour_p``)."""
    spec = with_knobs(check_scale(scale), **(knobs or {}))
    if not 32 <= size <= 512:
        raise CurateError(f"image size {size} out of range", fix="use 96-128 (default 112); 32-512 is accepted")
    out = Path(out)
    with OutputDir(out, "demo world", world_config(scale, seed, size, spec.knobs()), overwrite=overwrite):
        if meta_path(out).exists():
            log.info("demo world at %s is complete (scale %s, seed %d); nothing to do", out, scale, seed)
            return World.load(out), []
        rare = [list(p) for p in choose_rare_pairs(seed, RARE_FRACTION)]
        rare_set = {tuple(p) for p in rare}
        common = [[a, o] for a, o in all_pairs() if (a, o) not in rare_set]
        typical = [list(p) for p in typical_pairs()]
        tasks = plan_tasks(out, spec, seed, size, common, rare, typical)
        result = run_stage("demo-world", run_world_task, tasks, out, executor or LocalExecutor(1), unit="tasks")
        if result.errors:
            first = next(iter(result.errors.items()))
            raise CurateError(f"{len(result.errors)} task(s) failed, e.g. {first[0]}: {first[1].splitlines()[0]}",
                              where=str(out), fix="rerun the same command to retry them (finished ones are kept)")
        caption_stats = [r["stats"]["captions"] for t, r in sorted(result.records.items()) if t.startswith("captions-")]
        write_json(ground_truth_path(out), cap.merge_counts(caption_stats, [tuple(p) for p in rare]))
        n_chunks = sum(1 for t in tasks if t.args["kind"] == "pool")
        _merge_pool(out, n_chunks)
        counts: dict[str, int] = {"captions": spec.captions, "pool": spec.pool_images,
                                  **{split: len(split_specs(split, spec, seed, common, rare, typical))
                                     for split in SPLITS},
                                  "caption_parts": sum(1 for t in tasks if t.args["kind"] == "captions")}
        write_json(meta_path(out), {
            "version": WORLD_VERSION, "scale": scale, "seed": seed, "image_size": size, "counts": counts,
            "objects": [{"name": o.name, "plural": o.plural, "typical": TYPICAL[o.name]} for o in OBJECTS],
            "attributes": [{"name": a.name, "family": a.family} for a in ATTRIBUTES],
            "families": {k: list(v) for k, v in FAMILIES.items()},
            "rare_pairs": rare, "common_pairs": common, "typical_pairs": typical,
            "rare_fraction": len(rare) / len(all_pairs()),
            **({"knobs": spec.knobs()} if spec.knobs() else {}),
        })
        return World.load(out), [result.summary]


def ensure_world(out: str | os.PathLike, scale: str = "small", seed: int = 0, workers: int | None = None) -> World:
    """The world at ``out``: loaded if complete with this scale and seed, else built (or resumed) first.

    ``workers`` processes render images (default: all cores). A folder holding a world of
    another scale or seed is refused (``CurateError``), never silently replaced.
    """
    out = Path(out)
    if is_world(out):
        world = World.load(out)
        if world.scale == scale and world.seed == seed:
            return world
    world, _ = build_world(out, scale, seed, executor=LocalExecutor(workers))
    return world


# the vocabulary as the rest of the package sees it
__all__ = ["World", "ensure_world", "build_world", "SCALES", "PLURALS", "OBJECT_NAMES", "ATTRIBUTE_NAMES"]
