"""Writers for the formats existing CIR code reads, matched to the official loaders.

- CIRR (CLIP4Cir ``CIRRDataset``): the loader reads ``ROOT/cirr/captions/cap.rc2.{split}.json``
  and ``ROOT/cirr/image_splits/split.rc2.{split}.json`` and opens ``ROOT / relpath``. Here ROOT
  is the triplets folder: relpaths are ``./cirr/img/{train,dev,test1}/NAME.jpg``, so the
  ``cirr/`` folder is self-contained (copy it anywhere and point ``cirr_dataset`` at its parent).
- FashionIQ (CLIP4Cir ``FashionIQDataset``): ``ROOT/captions/cap.{category}.{split}.json``,
  ``ROOT/image_splits/split.{category}.{split}.json``, ``ROOT/images/NAME.jpg``; ROOT =
  ``fashioniq/``; the loader accepts only dress/shirt/toptee, so reference objects are mapped
  onto those three (``--fashioniq-categories``, recorded in ``category_map.json``).
- CIRCO (``CIRCODataset``): ``ROOT/annotations/{val,test}.json`` and COCO-style
  ``ROOT/COCO2017_unlabeled/annotations/image_info_unlabeled2017.json`` + ``unlabeled2017/
  {id:012d}.jpg``; ROOT = ``circo/``; ``image_ids.json`` maps dataset keys to the integer ids;
  ``semantic_aspects`` (the evaluation's per-aspect mAP@10) come from the edit type.
- WebDataset triplet shards: ``shards/{split}-NNNNNN.tar`` with ``ID.ref.jpg``, ``ID.tgt.jpg``,
  ``ID.json`` (every field typed in every sample), at least ``--min-shards`` per split; the
  folder's README.md header lets ``datasets.load_dataset(FOLDER)`` open them.
- GeneCIS (the released GeneCIS JSON annotations, COCO-task records; only with ``--format ...,genecis``):
  ``ROOT/{val,test}/{change_attribute,change_object,change_caption}.json``, lists of
  ``{"reference", "target", "gallery", "condition"}`` with COCO-style ``{"val_image_id": N}``
  image records; images ``ROOT/images/{N:012d}.jpg`` (the COCO loaders' image folder); ROOT =
  ``genecis/``. Each query's small gallery is its hard negatives (never a valid target), the
  target is not in it (the loader puts it first), the condition is the new word, as GeneCIS's
  one-word conditions.

Images are staged once (``.curate/images/KEY.jpg``, JPEG) and hard-linked into each export.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import polars as pl

from curate.fsutil import TMP_MARK, write_json
from curate.hub import SplitShardWriter, shard_plan
from curate.images import to_jpeg
from curate.log import track

from .config import FASHIONIQ_NAMES, parse_fashioniq_categories
from .edits import article
from .source import iter_images
from .splits import split_summary  # noqa: F401 - the pipeline records it in triplets.json and the card

logger = logging.getLogger(__name__)

CIRR_SPLIT = {"train": "train", "val": "val", "test": "test1"}
CIRR_FOLDER = {"train": "train", "val": "dev", "test": "test1"}
CIRR_SET_SIZE = 6


def stage_images(shard_of: dict[str, str], keys: Iterable[str], staged: Path) -> int:
    """Extract the images the exports need, once, as JPEG; returns how many were written now."""
    todo = sorted(k for k in set(keys) if not (staged / f"{k}.jpg").exists())
    staged.mkdir(parents=True, exist_ok=True)
    n = 0
    for key, data in track(iter_images(shard_of, todo), "stage images", total=len(todo), unit="img"):
        _write_cache_file(staged / f"{key}.jpg", to_jpeg(data))
        n += 1
    return n


def _write_cache_file(path: Path, data: bytes) -> None:
    """Temp name + rename (a kill leaves no half file under the real name), without the fsync that
    curate.fsutil pays per file: staged images are a cache re-made from the shards, and an fsync
    per image cost more than the whole rest of the export on the demo world."""
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def place(staged: Path, key: str, dest: Path) -> None:
    """Hard-link a staged image to ``dest`` (copy when links are not possible)."""
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = staged / f"{key}.jpg"
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def images_of(rows: Iterable[dict[str, Any]], with_gt: bool = True) -> set[str]:
    out: set[str] = set()
    for r in rows:
        out.update([r["reference"], r["target"], *r["negatives"]])
        if with_gt:
            out.update(r["gt"])
    return out


def _by_split(df: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    return {s: df.filter(pl.col("split") == s).to_dicts() for s in ("train", "val", "test")}


# -- CIRR --------------------------------------------------------------------------------

def export_cirr(df: pl.DataFrame, out: Path, staged: Path) -> dict[str, int]:
    root = out / "cirr"
    counts = {}
    for split, rows in _by_split(df).items():
        sets: dict[tuple[str, ...], int] = {}
        items = []
        for r in rows:
            members = _img_set(r)
            set_id = sets.setdefault(tuple(members), len(sets))
            items.append({"pairid": r["pair_id"], "reference": r["reference"], "target_hard": r["target"],
                          "target_soft": {r["target"]: 1.0}, "caption": r["edit_text"],
                          "img_set": {"id": set_id, "members": members,
                                      "reference_rank": members.index(r["reference"]),
                                      "target_rank": members.index(r["target"])}})
        names = images_of(rows) | {m for it in items for m in it["img_set"]["members"]}
        rel = {n: f"./cirr/img/{CIRR_FOLDER[split]}/{n}.jpg" for n in sorted(names)}
        for n, p in rel.items():
            place(staged, n, out / p)
        write_json(root / "captions" / f"cap.rc2.{CIRR_SPLIT[split]}.json", items)
        write_json(root / "image_splits" / f"split.rc2.{CIRR_SPLIT[split]}.json", rel)
        counts[CIRR_SPLIT[split]] = len(items)
    return counts


def _img_set(r: dict[str, Any]) -> list[str]:
    """Six look-alikes for Recall_subset: reference, target and the hardest negatives (no other valid target)."""
    members = [r["reference"], r["target"]]
    for n in r["negatives"]:
        if len(members) >= CIRR_SET_SIZE:
            break
        if n not in members:
            members.append(n)
    return sorted(members)


# -- FashionIQ ----------------------------------------------------------------------------

def _category(obj: str | None) -> str | None:
    """An object's category name (file-name safe); None when the object has no name."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", obj or "").strip("_") or None


def category_of(r: dict[str, Any]) -> str:
    return _category(r["ref_obj"]) or "all"


def fashioniq_mapping(rows: list[dict[str, Any]], spec: str) -> dict[str, str]:
    """Object category -> FashionIQ category name (see ``parse_fashioniq_categories``), for the
    reference and the target objects of ``rows`` (an object without a name gets none).

    ``auto`` (and objects an explicit mapping leaves out, without ``*``) fills dress, shirt and
    toptee greedily, the object with most triplets first into the emptiest name, so the three
    galleries stay balanced; ties break by name, so the mapping is deterministic."""
    explicit = parse_fashioniq_categories(spec)
    counts: dict[str, int] = {}
    raw: dict[str, str] = {}
    for r in rows:
        for col, n in (("ref_obj", 1), ("tgt_obj", 0)):  # balanced by reference triplets; targets mapped too
            cat = _category(r.get(col))
            if cat is not None:
                counts[cat] = counts.get(cat, 0) + n
                raw.setdefault(cat, r[col])
    if explicit is None:
        return {c: c for c in sorted(counts)}
    out: dict[str, str] = {}
    for cat in sorted(counts):
        name = explicit.get(raw[cat], explicit.get(cat, explicit.get("*")))
        if name is not None:
            out[cat] = name
    load = {n: sum(counts[c] for c, m in out.items() if m == n) for n in FASHIONIQ_NAMES}
    for cat in sorted((c for c in counts if c not in out), key=lambda c: (-counts[c], c)):
        name = min(FASHIONIQ_NAMES, key=lambda n: (load[n], FASHIONIQ_NAMES.index(n)))
        out[cat] = name
        load[name] += counts[cat]
    return dict(sorted(out.items()))


def fashioniq_placement(rows: list[dict[str, Any]], mapping: dict[str, str]) -> tuple[
        dict[str, list[dict[str, Any]]], dict[str, int]]:
    """FashionIQ's rule: a triplet's reference and target are of one category. ``rows`` -> the
    triplets of each category and the dropped ones by reason: ``cross_category`` (reference and
    target mapped to different categories), ``unknown_category`` (an object without a name or
    absent from ``mapping``)."""
    kept: dict[str, list[dict[str, Any]]] = {}
    dropped = {"cross_category": 0, "unknown_category": 0}
    for r in rows:
        ref, tgt = (mapping.get(_category(r.get(c)) or "") for c in ("ref_obj", "tgt_obj"))
        if ref is None or tgt is None:
            dropped["unknown_category"] += 1
        elif ref != tgt:
            dropped["cross_category"] += 1
        else:
            kept.setdefault(ref, []).append(r)
    return kept, dropped


def image_categories(rows: Iterable[dict[str, Any]], mapping: dict[str, str]) -> dict[str, str]:
    """The category of every image seen as a reference or a target (its object's)."""
    out: dict[str, str] = {}
    for r in rows:
        for img, col in (("reference", "ref_obj"), ("target", "tgt_obj")):
            cat = mapping.get(_category(r.get(col)) or "")
            if cat is not None:
                out.setdefault(r[img], cat)
    return out


def export_fashioniq(df: pl.DataFrame, out: Path, staged: Path, spec: str = "auto") -> dict[str, Any]:
    """``fashioniq/``: one caption and image-split file per (FashionIQ category, split).

    Our categories are objects; CLIP4Cir's FashionIQDataset accepts only dress, shirt and toptee,
    so objects are mapped onto those (``spec``, recorded in ``category_map.json`` and in
    triplets.json). As in FashionIQ, a triplet's reference and target belong to one category:
    the others are left out and counted by reason (``dropped``, see :func:`fashioniq_placement`).
    Each category's gallery (``split.CAT.SPLIT.json``) holds the images of that category its
    triplets use (references, targets, ground truths and negatives of the category; a negative of
    another category or of no known one is left out), so the galleries of a split are disjoint."""
    root = out / "fashioniq"
    all_rows = df.to_dicts()
    mapping = fashioniq_mapping(all_rows, spec)
    category = image_categories(all_rows, mapping)
    counts: dict[str, Any] = {}
    dropped: dict[str, dict[str, int]] = {}
    # CLIP4Cir opens cap./split. files of every category it is given (all three, as its scripts do):
    # a category without triplets in a split gets empty files
    always = FASHIONIQ_NAMES if parse_fashioniq_categories(spec) is not None else ()
    for split, rows in _by_split(df).items():
        placed, dropped[split] = fashioniq_placement(rows, mapping)
        cats: dict[str, list[dict[str, Any]]] = {n: [] for n in always}
        cats.update(placed)
        for cat, crs in sorted(cats.items()):
            items = [{"candidate": r["reference"], "target": r["target"],
                      "captions": [r["edit_text"], r["edit_text_2"]]} for r in crs]
            names = sorted(n for n in images_of(crs) if category.get(n) == cat)
            for n in names:
                place(staged, n, root / "images" / f"{n}.jpg")
            write_json(root / "captions" / f"cap.{cat}.{split}.json", items)
            write_json(root / "image_splits" / f"split.{cat}.{split}.json", names)
            counts[f"{cat}.{split}"] = len(items)
            counts[f"gallery.{cat}.{split}"] = len(names)
    counts["dropped"] = dropped
    lost = {why: sum(d[why] for d in dropped.values()) for why in ("cross_category", "unknown_category")}
    if any(lost.values()):
        logger.warning("fashioniq: %d of %d triplets left out: %d cross categories (reference and target in "
                    "different categories), %d with an object of no known category", sum(lost.values()),
                    len(all_rows), lost["cross_category"], lost["unknown_category"])
    write_json(root / "categories.json", sorted(set(mapping.values()) | set(always)))
    write_json(root / "category_map.json", mapping)
    counts["category_map"] = mapping
    return counts


# -- CIRCO --------------------------------------------------------------------------------

def shared_concept(r: dict[str, Any]) -> str:
    if r["mode"] == "attribute":
        return article(r["shared"])
    if r["mode"] == "object":
        return f"something {r['shared']}"
    return r["shared"]


# CIRCO's semantic aspects (its evaluation reports mAP@10 per aspect) of each edit type: an attribute
# edit changes a property of the object it names ("make the heart striped"), an object or caption
# edit swaps one thing for another ("replace the heart with a star")
SEMANTIC_ASPECTS = {"attribute": ("compare_change", "direct_addressing"), "object": ("compare_change",),
                    "caption": ("compare_change",)}


def export_circo(df: pl.DataFrame, out: Path, staged: Path, max_gts: int) -> dict[str, int]:
    """val and test only (CIRCO has no train split); gt_img_ids starts with the target;
    ``semantic_aspects`` from the edit type (:data:`SEMANTIC_ASPECTS`)."""
    root = out / "circo"
    by = _by_split(df)
    keys = sorted(images_of(by["val"] + by["test"]))
    ids = {k: i + 1 for i, k in enumerate(keys)}
    coco = root / "COCO2017_unlabeled"
    info = []
    for k in keys:
        fname = f"{ids[k]:012d}.jpg"
        place(staged, k, coco / "unlabeled2017" / fname)
        w, h = _size(staged / f"{k}.jpg")
        info.append({"id": ids[k], "file_name": fname, "width": w, "height": h, "curate_key": k})
    write_json(coco / "annotations" / "image_info_unlabeled2017.json",
               {"info": {"description": "curate triplets CIRCO export"}, "images": info})
    write_json(root / "image_ids.json", ids)
    counts = {}
    truncated = 0
    for split in ("val", "test"):
        items = []
        for q, r in enumerate(by[split]):
            gts = r["gt"][:max_gts]
            truncated += len(r["gt"]) > max_gts
            items.append({"id": q, "reference_img_id": ids[r["reference"]], "target_img_id": ids[r["target"]],
                          "relative_caption": r["edit_text"], "shared_concept": shared_concept(r),
                          "gt_img_ids": [ids[g] for g in gts], "semantic_aspects": list(SEMANTIC_ASPECTS[r["mode"]]),
                          "curate_triplet_id": r["id"]})
        write_json(root / "annotations" / f"{split}.json", items)
        counts[split] = len(items)
    if truncated:
        logger.info("CIRCO: %d queries had more than %d valid targets; gt_img_ids keeps the %d closest",
                    truncated, max_gts, max_gts)
    counts["gt_truncated"] = truncated
    return counts


def _size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


# -- WebDataset shards ----------------------------------------------------------------------

SHARD_FIELDS = ("id", "pair_id", "reference", "target", "edit_text", "edit_text_2", "edit_source", "mode", "split",
                "ref_attr", "ref_obj", "tgt_attr", "tgt_obj", "old_word", "new_word", "negatives", "gt")


def shard_meta(r: dict[str, Any]) -> dict[str, Any]:
    """A triplet's ``KEY.json``: every field in every sample with one type (missing text is "")."""
    meta = {k: r[k] for k in SHARD_FIELDS}
    for k, v in meta.items():
        if v is None:
            meta[k] = [] if k in ("negatives", "gt") else ""
    return meta


def export_shards(df: pl.DataFrame, out: Path, staged: Path, maxcount: int = 1000,
                  min_shards: int = 8) -> dict[str, int]:
    """``shards/{split}-NNNNNN.tar``: at least ``min_shards`` per split (a shard per DataLoader worker)."""
    counts = {}
    folder = out / "shards"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*-[0-9]*"):
        old.unlink()
    for split, rows in _by_split(df).items():
        w = SplitShardWriter(folder, split, shard_plan(len(rows), maxcount, min_shards))
        try:
            for r in rows:
                w.write({"__key__": r["id"], "ref.jpg": (staged / f"{r['reference']}.jpg").read_bytes(),
                         "tgt.jpg": (staged / f"{r['target']}.jpg").read_bytes(), "json": shard_meta(r)})
            w.close()
        except BaseException:
            w.abort()
            raise
        counts[split] = len(rows)
    return counts


# -- GeneCIS --------------------------------------------------------------------------------

GENECIS_TASK = {"attribute": "change_attribute", "object": "change_object", "caption": "change_caption"}


def export_genecis(df: pl.DataFrame, out: Path, staged: Path) -> dict[str, int]:
    """val and test only (GeneCIS is an evaluation benchmark); queries without negatives are left out."""
    root = out / "genecis"
    by = _by_split(df)
    rows = {s: [r for r in by[s] if r["negatives"]] for s in ("val", "test")}
    keys = sorted(images_of(rows["val"] + rows["test"], with_gt=False))
    ids = {k: i + 1 for i, k in enumerate(keys)}
    for k in keys:
        place(staged, k, root / "images" / f"{ids[k]:012d}.jpg")
    write_json(root / "image_ids.json", ids)

    def record(key: str) -> dict[str, Any]:
        return {"val_image_id": ids[key], "curate_key": key}

    counts: dict[str, int] = {}
    for split, srows in rows.items():
        tasks: dict[str, list[dict[str, Any]]] = {}
        for r in srows:
            tasks.setdefault(GENECIS_TASK[r["mode"]], []).append({
                "reference": record(r["reference"]), "target": record(r["target"]),
                "gallery": [record(n) for n in r["negatives"]], "condition": r["new_word"],
                "curate_triplet_id": r["id"], "edit_text": r["edit_text"]})
        for task, items in sorted(tasks.items()):
            write_json(root / split / f"{task}.json", items)
            counts[f"{split}.{task}"] = len(items)
        counts[f"{split}_without_negatives"] = len(by[split]) - len(srows)
    return counts
