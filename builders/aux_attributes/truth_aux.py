"""Auxiliary attributes from the truth (``curate attributes --from world``): what a seen pair's
training images really show besides the pair's own attribute.

TRIDENT asks an LLM which other adjectives describe a photo of "red fish"; a demo world knows the
answer for every image it rendered (its colour, pattern and state). For each pair, the training
images' values of every attribute family are counted (the pair's own attribute left out, and the
"nothing to see" defaults ``plain`` and ``normal``, which the world's vocabulary does not hold);
the ``k`` most frequent values shown in at least ``min_share`` of the pair's images become its
auxiliary attributes (ties broken by name). A pair whose images show no other attribute that often
gets none (no smoothing for it, as in TRIDENT for a pair without auxiliaries).

Which images: a demo world's ``train/`` shards (the world's CZSL export trains on them), or a
dataset's ``train`` split (rejected rows left out) judged by the truth of the world it was built
from (``builders.imagenet_ao.truth.world_truth``: pool table and the demo renderer's metadata).
Anything else has no truth, and is refused with a clear error.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from curate.errors import CurateError

from .plausibility import IMPLAUSIBLE_BELOW

Pair = tuple[str, str]
NO_TRUTH_FIX = ("use --from llm (the default), or give a demo world folder (`curate demo world`) or a dataset "
                "built from one (`curate build imagenet-ao` with no options)")


def rank_aux(shown: dict[Pair, list[set[str]]], vocabulary: set[str], k: int = 3,
             min_share: float = IMPLAUSIBLE_BELOW) -> dict[Pair, list[str]]:
    """Per pair: the ``k`` attributes of ``vocabulary`` (not the pair's own) that its images show most
    often, each in at least ``min_share`` of them; ``shown[pair]`` holds one set of values per image."""
    out: dict[Pair, list[str]] = {}
    for pair, images in shown.items():
        counts = Counter(v for values in images for v in values if v in vocabulary and v != pair[0])
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        out[pair] = [w for w, n in ranked if n >= min_share * len(images)][:k]
    return out


def world_train_shown(world: Path) -> dict[Pair, list[set[str]]]:
    """What each of a demo world's training images shows: {pair: [{colour, pattern, state}, ...]}."""
    from curate.shards import iter_shard
    from curate.world import TRAIN, World

    w = World.load(world)
    shown: dict[Pair, list[set[str]]] = {}
    for shard in w.shards(TRAIN):
        for s in iter_shard(shard, exts={"json"}):
            meta = json.loads(s["json"])
            if isinstance(meta.get("attr"), str) and isinstance(meta.get("obj"), str):
                values = {str(meta[f]) for f in w.families if isinstance(meta.get(f), str)}
                shown.setdefault((meta["attr"], meta["obj"]), []).append(values)
    return shown


def dataset_train_shown(dataset: Path, world: Path) -> dict[Pair, list[set[str]]]:
    """What each training image of a dataset built from ``world`` shows, by the world's truth."""
    import polars as pl

    from builders.imagenet_ao.truth import world_truth
    from curate.manifest import read_manifest

    df = read_manifest(dataset, include_rejected=False)
    need = {"split", "source", "src_key", "attr", "obj"}
    if not need <= set(df.columns):
        raise CurateError(f"the manifest lacks {sorted(need - set(df.columns))}", where=str(dataset),
                          fix=NO_TRUTH_FIX)
    train = df.filter(pl.col("split") == "train").select("source", "src_key", "attr", "obj")
    generated = dataset / "generated" / "shards"
    labels = world_truth(world, generated if generated.is_dir() else None).labels
    per_image = labels.group_by("source", "key").agg(pl.col("attr").alias("shown"))
    joined = train.join(per_image, left_on=["source", "src_key"], right_on=["source", "key"], how="left")
    if joined["shown"].null_count() == joined.height:
        raise CurateError("the world's truth names none of the dataset's training images", where=str(dataset),
                          fix=NO_TRUTH_FIX)
    shown: dict[Pair, list[set[str]]] = {}
    for attr, obj, values in joined.filter(pl.col("shown").is_not_null()).select("attr", "obj", "shown").iter_rows():
        shown.setdefault((attr, obj), []).append(set(values))
    return shown


def true_aux(source: Path | None, kind: str, k: int = 3) -> dict[Pair, list[str]]:
    """The truth's auxiliary attributes of every pair with training images in ``source``."""
    from curate.world import World

    from .contradictions import source_world

    world = source_world(source, kind)
    if source is None or world is None:
        what = f"a {kind}" if kind != "file" else "a pairs file"
        raise CurateError(f"--from world needs the truth of what each image shows; {what} has none "
                          "(only a demo world, or a dataset built from one, knows it)",
                          where=str(source) if source else None, fix=NO_TRUTH_FIX)
    shown = world_train_shown(world) if kind == "world" else dataset_train_shown(source, world)
    if not shown:
        raise CurateError("no training images with truth", where=str(source), fix=NO_TRUTH_FIX)
    return rank_aux(shown, set(World.load(world).attributes), k)
