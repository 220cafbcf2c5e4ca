"""What a CIR run reads: queries, a gallery, and where each image lives.

One in-memory shape for every benchmark layout, so the trainer and the evaluator never
branch on the format past the reader:

- ``ours``: a folder made by ``curate triplets`` (``triplets.parquet`` through
  :func:`training.data.triplet_samples`, so review verdicts are honoured). The gallery is every
  image the split's triplets name (references, targets, ground truths, hard negatives), the
  same gallery the CIRR export writes.
- ``cirr``: ``cirr/captions/cap.rc2.{split}.json`` + ``cirr/image_splits/split.rc2.{split}.json``
  (CLIP4Cir's ``CIRRDataset``; image paths relative to the folder holding ``cirr/``).
- ``circo``: ``annotations/{split}.json`` + ``COCO2017_unlabeled/annotations/
  image_info_unlabeled2017.json`` (the gallery) + ``COCO2017_unlabeled/unlabeled2017/``.
- ``fashioniq``: ``captions/cap.{category}.{split}.json`` + ``image_splits/split.{category}.{split}.json``
  + ``images/NAME.{png,jpg}``: one :class:`Split` per category (each has its own gallery).
- ``genecis``: ``{task}.json`` lists of ``{"reference", "target", "gallery", "condition"}`` records
  (facebookresearch/genecis); COCO-style records (``val_image_id``, images ``{id:012d}.jpg``) and
  VG-style ones (``image_id`` + ``instance_bbox``, cropped as the official loader crops). As the
  official loader, only queries whose gallery has the modal length are kept.

Bad input is data: a query whose reference or target is not in the gallery, whose target is its
reference, whose CIRR ``img_set`` is empty or not six images, a CIRCO query without ground truth, a
repeated query id: each is skipped and counted in ``Split.skipped`` (with a few example ids).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError
from curate.fsutil import read_json

log = logging.getLogger(__name__)

FORMATS = ("ours", "cirr", "circo", "fashioniq", "genecis")
CIRR_SPLITS = {"train": "train", "val": "val", "test": "test1", "test1": "test1", "dev": "val"}
CIRR_SET_SIZE = 6
FIQ_CATEGORIES = ("dress", "shirt", "toptee")
GENECIS_TASKS = ("change_attribute", "change_object", "focus_attribute", "focus_object", "change_caption")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
VG_DILATION = 0.7  # facebookresearch/genecis datasets/vaw_dataset.py


@dataclass
class Query:
    """One composed query. ``gallery`` is GeneCIS's own small gallery (target first)."""

    qid: str
    reference: str
    texts: list[str]
    target: str | None = None
    gt: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    gallery: list[str] = field(default_factory=list)
    aspects: list[str] | None = None

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""


@dataclass
class ImageSource:
    """Where the images of a split live: files, shards (by dataset key) or triplet shards.

    ``aliases`` maps a gallery name to the dataset key it stands for (CIRCO ids, GeneCIS ids),
    so features cached by key serve every export of the same images. ``crops`` holds a
    GeneCIS VG box per name. Images are read and decoded by ``training.data.images.ImageStore``.
    """

    files: dict[str, Path] = field(default_factory=dict)
    shards: dict[str, Path] = field(default_factory=dict)
    triplet_shards: list[Path] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)
    crops: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)

    def key(self, name: str) -> str:
        return self.aliases.get(name, name)

    def load(self, names: Iterable[str], size: int | None = None) -> Iterator[tuple[str, Any]]:
        """``(name, RGB PIL image)`` for every name that has a readable image; the rest are absent.
        Files first (by name), then the source dataset's shards (by key), then triplet shards, all
        through ``ImageStore.decoded``. ``size``: what the model's resize needs (``curate.images.open_rgb``:
        a JPEG may decode at a DCT scale that still covers it); a name with a GeneCIS crop box always
        decodes at full size."""
        from ..data.images import ImageStore

        todo = list(dict.fromkeys(names))
        left: set[str] = set(todo)
        files = ImageStore(Path("."), files={n: self.files[n] for n in todo if n in self.files})
        for name, img in files.decoded(list(files.files), size, full=self.crops):
            left.discard(name)
            yield name, self._crop(name, img)
        if left:
            yield from self._from_shards(left, size)

    def _from_shards(self, left: set[str], size: int | None = None) -> Iterator[tuple[str, Any]]:
        from ..data.images import ImageStore

        by_key = {self.key(n): n for n in left}
        store = ImageStore(Path("."), shards={self.key(n): self.shards[n] for n in left if n in self.shards})
        full = {k for k, n in by_key.items() if n in self.crops}
        for key, img in store.decoded(list(store.shards), size, full=full):
            name = by_key.get(key)
            if name in left:
                left.discard(name)
                yield name, self._crop(name, img)
        if left and self.triplet_shards:
            yield from self._from_triplet_shards(left, by_key, size)

    def _from_triplet_shards(self, left: set[str], by_key: dict[str, str],
                             size: int | None = None) -> Iterator[tuple[str, Any]]:
        """References and targets as stored in triplet shards (``ID.ref.jpg``, ``ID.tgt.jpg``, ``ID.json``)."""
        from ..data import ShardDataset
        from ..data.images import decode_image

        for sample in ShardDataset(self.triplet_shards, exts=("ref.jpg", "tgt.jpg", "json")):
            try:
                meta = json.loads(sample.get("json", b"{}"))
            except ValueError:
                continue
            for role, ext in (("reference", "ref.jpg"), ("target", "tgt.jpg")):
                name = by_key.get(str(meta.get(role)))
                if name in left and sample.get(ext):
                    decoded = decode_image(sample[ext], None if name in self.crops else size, what=name)
                    if decoded is not None:
                        left.discard(name)
                        yield name, self._crop(name, decoded)
            if not left:
                return

    def _crop(self, name: str, img: Any) -> Any:
        box = self.crops.get(name)
        return img if box is None else vg_crop(img, box)


def vg_crop(img: Any, box: tuple[float, float, float, float]) -> Any:
    """GeneCIS's VG crop: the box dilated by 0.7 of its size, then padded to a square with black."""
    from PIL import Image

    x, y, w, h = box
    left, top = max(0, x - VG_DILATION * w), max(0, y - VG_DILATION * h)
    right = min(img.width, left + (1 + VG_DILATION) * w)
    bottom = min(img.height, top + (1 + VG_DILATION) * h)
    img = img.crop((left, top, right, bottom))
    side = max(img.size)
    if img.width == img.height:
        return img
    out = Image.new(img.mode, (side, side), (0, 0, 0))
    out.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return out


@dataclass
class Split:
    """Queries of one split (one category for FashionIQ) with their gallery and image source."""

    format: str
    split: str
    queries: list[Query]
    index: list[str]
    images: ImageSource
    name: str = ""
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    pair_ids: list[str] = field(default_factory=list)

    @property
    def has_targets(self) -> bool:
        return any(q.target is not None for q in self.queries)

    def skip(self, reason: str, qid: str) -> None:
        self.skipped[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < 3:
            ex.append(str(qid))

    def names(self) -> list[str]:
        """Every image the split needs: gallery, references, per-query galleries."""
        out = dict.fromkeys(self.index)
        for q in self.queries:
            out.update(dict.fromkeys([q.reference, *q.gallery]))
        return list(out)

    def restrict(self, available: set[str]) -> Split:
        """Drop what has no image (counted): queries whose reference/target is absent, absent gallery names."""
        index = [n for n in self.index if n in available]
        in_index = set(index)
        kept = []
        for q in self.queries:
            if q.reference not in available:
                self.skip("reference image missing", q.qid)
                continue
            if self.format == "genecis":
                if not q.gallery or q.gallery[0] not in available:
                    self.skip("target image missing", q.qid)
                    continue
                if any(n not in available for n in q.gallery):
                    self.skip("gallery image missing", q.qid)
                    continue
                kept.append(q)
                continue
            if q.reference not in in_index and self.format in ("cirr", "ours"):
                self.skip("reference not in the gallery", q.qid)
                continue
            if q.target is not None and q.target not in in_index:
                self.skip("target image missing", q.qid)
                continue
            if self.format == "cirr" and any(m not in in_index for m in q.group):
                self.skip("img_set member missing", q.qid)
                continue
            q.gt = [g for g in q.gt if g in in_index] or ([q.target] if q.target else [])
            q.gallery = [n for n in q.gallery if n in in_index]
            kept.append(q)
        self.queries = kept
        self.index = index
        return self


def _unique_query(split: Split, seen: set[str], qid: str) -> bool:
    if qid in seen:
        split.skip("duplicate query id", qid)
        return False
    seen.add(qid)
    return True


# -- ours -------------------------------------------------------------------------------------
def triplets_source(folder: Path) -> Path | None:
    """The dataset a triplets folder was mined from (``triplets.json: source_dataset``), if it still exists."""
    info = folder / "triplets.json"
    if not info.exists():
        return None
    src = read_json(info).get("source_dataset")
    return Path(src) if src and (Path(src) / "manifest.parquet").exists() else None


def about_data(folder: Path) -> dict[str, Any]:
    """What a report says about a triplets folder: itself, its source dataset, the model that filtered
    that dataset (its build's ``model``: zero-shot scores with it are biased), the split summary
    ``curate triplets`` recorded and the seed it mined with."""
    info = read_json(folder / "triplets.json") if (folder / "triplets.json").exists() else {}
    src = info.get("source_dataset")
    built = Path(src) / "dataset.json" if src else None
    filter_model = read_json(built).get("config", {}).get("model") if built and built.exists() else None
    return {"triplets": str(folder.resolve()), "source_dataset": src, "filter_model": filter_model,
            "split": info.get("split"), "triplets_seed": info.get("config", {}).get("seed")}


def ours_images(folder: Path) -> ImageSource:
    """Images of a triplets folder: the source dataset's shards, staged JPEGs, then triplet shards."""
    src = ImageSource()
    source = triplets_source(folder)
    if source is not None:
        from curate.manifest import read_manifest

        from ..data.images import ImageStore

        src.shards = ImageStore.of_dataset(source, read_manifest(source, include_rejected=True)).shards
    staged = folder / ".curate" / "images"
    if staged.is_dir():
        src.files = {p.stem: p for p in staged.glob("*.jpg")}
    shard_dir = folder / "shards"
    if shard_dir.is_dir():
        src.triplet_shards = sorted(shard_dir.glob("*.tar"))
    return src


def read_triplet_rows(folder: str | os.PathLike, split: str | None, include_rejected: bool = False) -> pl.DataFrame:
    """``triplets.parquet`` rows of a split, review verdicts honoured (``training.data.triplet_samples``)."""
    from training.data import triplet_samples

    folder = Path(folder)
    if not (folder / "triplets.parquet").exists():
        raise CurateError("no triplets.parquet", where=str(folder),
                          fix="pass a folder made by `curate triplets` (or use --format cirr|circo|fashioniq|genecis)")
    return triplet_samples(folder, split, include_rejected=include_rejected)


def read_ours(folder: str | os.PathLike, split: str = "test", include_rejected: bool = False) -> Split:
    folder = Path(folder)
    df = read_triplet_rows(folder, split, include_rejected)
    out = Split("ours", split, [], [], ours_images(folder), name=f"ours {split}")
    seen: set[str] = set()
    names: dict[str, None] = {}
    for r in df.iter_rows(named=True):
        qid = str(r["id"])
        if not _unique_query(out, seen, qid):
            continue
        if r["target"] == r["reference"]:
            out.skip("target is the reference", qid)
            continue
        texts = [t for t in (r.get("edit_text"), r.get("edit_text_2")) if t]
        negatives = [n for n in (r.get("negatives") or []) if n not in (r["reference"], r["target"])]
        gt = [r["target"], *[g for g in (r.get("gt") or []) if g != r["target"]]]
        out.queries.append(Query(qid, r["reference"], texts, r["target"], gt=gt,
                                 group=[r["reference"], r["target"]], gallery=[r["target"], *negatives]))
        out.pair_ids.append(str(r.get("pair_id", len(out.pair_ids))))
        names.update(dict.fromkeys([r["reference"], r["target"], *gt, *negatives]))
    out.index = sorted(names)
    return out


# -- CIRR ------------------------------------------------------------------------------------
def cirr_root(data: Path) -> Path:
    """The folder holding ``cirr/`` (CLIP4Cir's ``cirr_dataset``): ``data`` itself, or its parent."""
    if (data / "cirr" / "captions").is_dir():
        return data
    if (data / "captions").is_dir() and data.name == "cirr":
        return data.parent
    raise CurateError("not a CIRR folder (no cirr/captions/)", where=str(data),
                      fix="pass the folder holding cirr/captions and cirr/image_splits (a `curate triplets` "
                          "folder or CIRR's cirr_dataset/)")


def _load_json(path: Path, what: str) -> Any:
    if not path.exists():
        raise CurateError(f"no {what}", where=str(path), fix="check --data, --format and --split")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CurateError(f"not valid JSON ({e})", where=str(path)) from e


def read_cirr(data: str | os.PathLike, split: str = "val") -> Split:
    root = cirr_root(Path(data))
    name = CIRR_SPLITS.get(split, split)
    caps = _load_json(root / "cirr" / "captions" / f"cap.rc2.{name}.json", f"CIRR {name} captions")
    rel = _load_json(root / "cirr" / "image_splits" / f"split.rc2.{name}.json", f"CIRR {name} image split")
    images = ImageSource(files={n: root / p for n, p in rel.items()})
    out = Split("cirr", name, [], list(rel), images, name=f"cirr {name}")
    seen: set[str] = set()
    for item in caps:
        qid = str(item.get("pairid", len(seen)))
        if not _unique_query(out, seen, qid):
            continue
        ref, target = item.get("reference"), item.get("target_hard")
        members = list(dict.fromkeys((item.get("img_set") or {}).get("members") or []))
        if target is not None and target == ref:
            out.skip("target is the reference", qid)
            continue
        if len(members) != CIRR_SET_SIZE:
            out.skip(f"img_set is empty or not {CIRR_SET_SIZE} images", qid)
            continue
        if ref not in rel:
            out.skip("reference not in the gallery", qid)
            continue
        if target is not None and target not in members:
            out.skip("target not in its img_set", qid)
            continue
        out.queries.append(Query(qid, ref, [str(item.get("caption", ""))], target,
                                 gt=[target] if target else [], group=members))
        out.pair_ids.append(qid)
    return out


# -- CIRCO -----------------------------------------------------------------------------------
def read_circo(data: str | os.PathLike, split: str = "val") -> Split:
    root = Path(data)
    if not (root / "annotations").is_dir() and (root / "circo" / "annotations").is_dir():
        root = root / "circo"
    anns = _load_json(root / "annotations" / f"{split}.json", f"CIRCO {split} annotations")
    info = _load_json(root / "COCO2017_unlabeled" / "annotations" / "image_info_unlabeled2017.json",
                      "CIRCO image info")
    images = ImageSource()
    index = []
    for im in info.get("images", []):
        name = str(im["id"])
        index.append(name)
        images.files[name] = root / "COCO2017_unlabeled" / "unlabeled2017" / im["file_name"]
        if im.get("curate_key"):
            images.aliases[name] = str(im["curate_key"])
    out = Split("circo", split, [], index, images, name=f"circo {split}")
    seen: set[str] = set()
    for item in anns:
        qid = str(item.get("id", len(seen)))
        if not _unique_query(out, seen, qid):
            continue
        ref = str(item["reference_img_id"])
        target = str(item["target_img_id"]) if item.get("target_img_id") is not None else None
        gts = [str(g) for g in (item.get("gt_img_ids") or []) if g is not None and str(g) not in ("", "-1")]
        if target is not None and target == ref:
            out.skip("target is the reference", qid)
            continue
        if target is not None and not gts:
            out.skip("no ground truth", qid)
            continue
        if target is not None and target not in gts:
            gts = [target, *gts]
        text = str(item.get("relative_caption", ""))
        aspects = item.get("semantic_aspects")
        out.queries.append(Query(qid, ref, [text], target, gt=gts, aspects=list(aspects) if aspects else None))
        out.pair_ids.append(qid)
    return out


# -- FashionIQ -------------------------------------------------------------------------------
def fashioniq_categories(root: Path, split: str) -> list[str]:
    return sorted(p.name[len("cap."):-len(f".{split}.json")] for p in (root / "captions").glob(f"cap.*.{split}.json"))


def read_fashioniq(data: str | os.PathLike, split: str = "val", categories: list[str] | None = None) -> list[Split]:
    root = Path(data)
    if not (root / "captions").is_dir() and (root / "fashioniq" / "captions").is_dir():
        root = root / "fashioniq"
    cats = categories or fashioniq_categories(root, split)
    if not cats:
        raise CurateError(f"no FashionIQ captions for split {split!r}", where=str(root / "captions"),
                          fix="pass the folder holding captions/cap.CATEGORY.SPLIT.json")
    files = {p.stem: p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES} \
        if (root / "images").is_dir() else {}
    out = []
    for cat in cats:
        caps = _load_json(root / "captions" / f"cap.{cat}.{split}.json", f"FashionIQ {cat} {split} captions")
        names = [str(n) for n in _load_json(root / "image_splits" / f"split.{cat}.{split}.json",
                                            f"FashionIQ {cat} {split} image split")]
        if not caps and not names and categories is None:
            continue  # an empty category (`curate triplets` writes all three names for CLIP4Cir)
        sp = Split("fashioniq", split, [], list(dict.fromkeys(names)), ImageSource(files=files),
                   name=f"fashioniq {cat} {split}")
        for i, item in enumerate(caps):
            qid = f"{cat}-{i}"
            ref, target = str(item.get("candidate")), item.get("target")
            if target is not None and str(target) == ref:
                sp.skip("target is the reference", qid)
                continue
            sp.queries.append(Query(qid, ref, [str(c) for c in item.get("captions", [])],
                                    str(target) if target is not None else None))
            sp.pair_ids.append(qid)
        out.append(sp)
    return out


def fashioniq_text(texts: list[str]) -> str:
    """CLIP4Cir's validation caption: ``cap1.strip('.?, ').capitalize() and cap2.strip('.?, ')``."""
    if len(texts) < 2:
        return texts[0] if texts else ""
    return f"{texts[0].strip('.?, ').capitalize()} and {texts[1].strip('.?, ')}"


# -- GeneCIS ---------------------------------------------------------------------------------
def genecis_files(root: Path, split: str) -> list[Path]:
    for base in (root / split, root / "genecis" / split, root, root / "genecis"):
        found = [base / f"{t}.json" for t in GENECIS_TASKS if (base / f"{t}.json").exists()]
        if found:
            return found
    raise CurateError(f"no GeneCIS task files ({', '.join(t + '.json' for t in GENECIS_TASKS)})", where=str(root),
                      fix="export them with `curate triplets --format ...,genecis` or pass the genecis/ folder")


def _genecis_image_dir(root: Path) -> Path:
    for base in (root / "images", root.parent / "images", root / "genecis" / "images", root):
        if base.is_dir():
            return base
    return root


def read_genecis(data: str | os.PathLike, split: str = "test") -> list[Split]:
    root = Path(data)
    out = []
    for path in genecis_files(root, split):
        items = _load_json(path, "GeneCIS annotations")
        img_dir = _genecis_image_dir(path.parent if path.parent.name == split else root)
        sp = Split("genecis", split, [], [], ImageSource(), name=f"genecis {path.stem}")
        lengths = Counter(len(it.get("gallery") or []) for it in items)
        modal = max(sorted(lengths), key=lambda n: lengths[n]) if lengths else 0
        for i, item in enumerate(items):
            qid = str(item.get("curate_triplet_id", f"{path.stem}-{i}"))
            gallery = item.get("gallery") or []
            if not gallery:
                sp.skip("empty gallery", qid)
                continue
            if len(gallery) != modal:
                sp.skip(f"gallery length {len(gallery)} is not the modal {modal} (as the official loader)", qid)
                continue
            ref = _genecis_image(sp.images, img_dir, item["reference"])
            target = _genecis_image(sp.images, img_dir, item["target"])
            if target == ref:
                sp.skip("target is the reference", qid)
                continue
            members = [_genecis_image(sp.images, img_dir, g) for g in gallery]
            sp.queries.append(Query(qid, ref, [str(item.get("condition", ""))], target, gt=[target],
                                    gallery=[target, *members]))
            sp.pair_ids.append(qid)
        out.append(sp)
    return out


def _genecis_image(src: ImageSource, img_dir: Path, rec: dict[str, Any]) -> str:
    """The gallery name of a GeneCIS image record (COCO ``val_image_id`` or VG ``image_id`` + box)."""
    if "val_image_id" in rec:
        name = f"coco:{int(rec['val_image_id'])}"
        src.files[name] = img_dir / f"{int(rec['val_image_id']):012d}.jpg"
    else:
        box = tuple(float(v) for v in rec.get("instance_bbox") or ())
        name = f"vg:{rec['image_id']}:{','.join(f'{v:g}' for v in box)}"
        src.files[name] = img_dir / f"{rec['image_id']}.jpg"
        if len(box) == 4:
            src.crops[name] = box  # type: ignore[assignment]
    if rec.get("curate_key"):
        src.aliases[name] = str(rec["curate_key"])
    return name


# -- dispatch ----------------------------------------------------------------------------------
def read_splits(data: str | os.PathLike, fmt: str, split: str, categories: list[str] | None = None,
                include_rejected: bool = False) -> list[Split]:
    """The splits to evaluate for ``--format``: one, or one per FashionIQ category / GeneCIS task."""
    if fmt not in FORMATS:
        raise CurateError(f"unknown --format {fmt!r}", fix=f"use one of {', '.join(FORMATS)}")
    data = Path(data)
    if not data.exists():
        raise CurateError("data folder not found", where=str(data))
    if fmt == "ours":
        return [read_ours(data, split, include_rejected)]
    if fmt == "cirr":
        return [read_cirr(data, split)]
    if fmt == "circo":
        return [read_circo(data, split)]
    if fmt == "fashioniq":
        return read_fashioniq(data, split, categories)
    return read_genecis(data, split)


def folder_splits(folder: Path, split: str, include_rejected: bool = False) -> list[Split]:
    """A split of a triplets folder in every format it holds: ours, then its cirr / circo / genecis exports."""
    out = [read_ours(folder, split, include_rejected)]
    if (folder / "cirr" / "captions" / f"cap.rc2.{CIRR_SPLITS.get(split, split)}.json").exists():
        out.append(read_cirr(folder, split))
    if (folder / "circo" / "annotations" / f"{split}.json").exists():
        out.append(read_circo(folder / "circo", split))
    if (folder / "genecis" / split).is_dir():
        out.extend(read_genecis(folder / "genecis", split))
    return out


def reread(split: Split, folder: Path, include_rejected: bool = False) -> Split:
    """A fresh copy of one of :func:`folder_splits` (``restrict`` edits a split in place)."""
    if split.format == "ours":
        return read_ours(folder, split.split, include_rejected)
    if split.format == "cirr":
        return read_cirr(folder, split.split)
    if split.format == "circo":
        return read_circo(folder / "circo", split.split)
    return next(s for s in read_genecis(folder / "genecis", split.split) if s.name == split.name)
