"""CZSL data: the standard layout and curate dataset folders, read into one :class:`CZSLData`.

The standard layout (MIT-States, C-GQA, VAW-CZSL, UT-Zappos downloads; ``curate build
--export czsl``)::

    ROOT/images/<image>
    ROOT/compositional-split-natural/{train,val,test}_pairs.txt   'attr obj' per line ('attr+obj': VAW-CZSL)
    ROOT/metadata_compositional-split-natural.t7                  torch.save'd list of {image, attr, obj, set}
    ROOT/aux_label/aux_label.jsonl                                 {"attr obj": [adj, adj, adj]} per line

is read the way TRIDENT's ``dataset.py`` reads it: the vocabulary is the sorted attributes,
objects and pairs of the three pair files; a metadata row is kept when its pair is in a pair
file and neither its attribute nor its set is ``NA``, and goes to the split its ``set`` names.
The metadata is loaded with ``torch.load(weights_only=True)`` (a plain pickle through an
unpickler that allows no classes at all); anything holding objects that are not plain data
is refused. Where the official code crashes, this reader counts, skips and reports: images
listed but missing on disk, metadata rows naming pairs of no pair file, pair-file names that
no image carries, training pairs without auxiliary attributes.

A curate dataset folder (``manifest.parquet`` + shards) is read from its manifest (review
verdicts honoured through ``training.data.dataset_samples``, splits from its ``split``
column); names are written as in its CZSL export (spaces become ``_``), so auxiliary-attribute
keys and word lookups match either way.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.aux_labels import AUX_FILE, dataset_path, read_aux_labels, trident_path
from curate.errors import CurateError

log = logging.getLogger(__name__)

SPLIT_NAME = "compositional-split-natural"
SPLITS = ("train", "val", "test")
Pair = tuple[str, str]


def czsl_name(text: str) -> str:
    """A name as the CZSL pair files write it (their loaders split lines on whitespace)."""
    return str(text).strip().replace(" ", "_")


def display_name(name: str) -> str:
    """``paper_plane`` -> ``paper plane`` (prompts, reports)."""
    return name.replace("_", " ")


def name_parts(name: str) -> list[str]:
    """The words of a multi-word or hyphenated name, as TRIDENT's word loader splits them."""
    return [p for p in re.split(r"[_\-\s+]", name) if p]


@dataclass(frozen=True)
class Item:
    """One image: ``ref`` is its path under ``images/`` (standard layout) or its shard key."""

    ref: str
    attr: str
    obj: str


@dataclass
class CZSLData:
    root: Path
    kind: str                                   # "czsl" (standard layout) | "dataset" (curate folder)
    attrs: list[str]
    objs: list[str]
    pairs: list[Pair]                           # sorted union of the split pairs
    split_pairs: dict[str, list[Pair]]
    items: dict[str, list[Item]]
    images: Path | None = None                  # ROOT/images (standard layout)
    shards: dict[str, Path] = field(default_factory=dict)   # key -> shard (dataset folders)
    aux: dict[Pair, list[str]] = field(default_factory=dict)  # auxiliary attributes of train pairs
    aux_source: str | None = None
    problems: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    # -- vocabulary (TRIDENT's word list: attributes, objects, then the auxiliary words) ------
    @property
    def aux_words(self) -> list[str]:
        known = set(self.attrs) | set(self.objs)
        return sorted({w for ws in self.aux.values() for w in ws} - known)

    @property
    def words(self) -> list[str]:
        return self.attrs + self.objs + self.aux_words

    @property
    def train_pairs(self) -> list[Pair]:
        return self.split_pairs["train"]

    def describe(self) -> dict[str, Any]:
        return {"root": str(self.root.resolve()), "kind": self.kind, "attrs": len(self.attrs), "objs": len(self.objs),
                "pairs": {s: len(p) for s, p in self.split_pairs.items()},
                "images": {s: len(v) for s, v in self.items.items()},
                "aux_pairs": len(self.aux), "aux_source": self.aux_source, "problems": dict(self.problems)}

    def note(self, key: str, count: int, message: str) -> None:
        """Record a counted data problem (it goes to the log and the run report)."""
        if count <= 0:
            return
        self.problems[key] = self.problems.get(key, 0) + count
        self.notes.append(message)
        log.warning("%s", message)


# -- safe metadata ---------------------------------------------------------------------------
class _PlainUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: any class or function is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not plain data")


def load_metadata(path: Path) -> list[dict[str, Any]]:
    """The ``.t7`` metadata as a list of ``{image, attr, obj, set}`` dicts, loaded safely."""
    import torch

    if not path.is_file():
        raise CurateError("metadata file not found", where=str(path),
                          fix=f"a CZSL root holds metadata_{SPLIT_NAME}.t7 (see the dataset's download script)")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol warning: it is handled below
            warnings.simplefilter("ignore")
            data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - refused or not a torch file: try a plain-data pickle
        try:
            with open(path, "rb") as f:
                data = _PlainUnpickler(f).load()
        except Exception:  # noqa: BLE001
            raise CurateError(f"refused: not a plain list of dicts ({str(first).splitlines()[0][:200]})",
                              where=str(path),
                              fix="the metadata must be torch.save of a list of {image, attr, obj, set} dicts "
                                  "of strings; objects of other classes are never unpickled") from first
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise CurateError(f"metadata is a {type(data).__name__}, not a list of dicts", where=str(path),
                          fix="torch.save a list of {image, attr, obj, set} dicts")
    missing = {k for r in data for k in ("image", "attr", "obj", "set") if k not in r}
    if missing:
        raise CurateError(f"metadata rows lack the field(s) {sorted(missing)}", where=str(path),
                          fix="each row needs image, attr, obj and set")
    return data


# -- pair files ------------------------------------------------------------------------------
def parse_pairs(path: Path, sep: str | None = None) -> list[Pair]:
    """Unique pairs of a ``*_pairs.txt`` in file order; ``sep`` None: '+' when every line has one."""
    if not path.is_file():
        raise CurateError("pair file not found", where=str(path),
                          fix=f"a CZSL root holds {SPLIT_NAME}/{{train,val,test}}_pairs.txt")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if sep is None:
        sep = "+" if lines and all("+" in ln for ln in lines) else " "
    out: list[Pair] = []
    seen: set[Pair] = set()
    for n, line in enumerate(lines, 1):
        parts = line.split(sep) if sep == "+" else line.split()
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise CurateError(f"expected 'attr{sep if sep == '+' else ' '}obj', got {line!r}", where=f"{path}:{n}",
                              fix="one pair per line: 'attr obj' ('attr+obj' for VAW-CZSL)")
        pair = (parts[0].strip(), parts[1].strip())
        if pair not in seen:
            seen.add(pair)
            out.append(pair)
    return out


# -- auxiliary attributes ----------------------------------------------------------------------
def read_aux_file(path: Path) -> dict[str, list[str]]:
    """``aux_label.jsonl``, keys as written (read by ``curate.aux_labels``: malformed lines and
    pairs given twice are refused with their line number)."""
    return read_aux_labels(path)


def _aux_keys(pair: Pair) -> list[str]:
    """Keys a pair may have in an aux file: TRIDENT's ``attr + ' ' + obj`` first, then the
    spaced and ``+`` forms (files written before names were made CZSL names, VAW style)."""
    a, o = pair
    keys = [f"{a} {o}", f"{display_name(a)} {display_name(o)}", f"{a}+{o}", f"{a.lower()} {o.lower()}"]
    return list(dict.fromkeys(keys))


def find_aux_file(root: Path) -> Path | None:
    """Where TRIDENT looks (``ROOT/aux_label/aux_label.jsonl``), then the dataset folder's own
    file (``curate attributes DATASET``), then, for an export, the dataset above it."""
    cands = [trident_path(root), dataset_path(root)]
    if root.parent.name == "exports":
        cands += [dataset_path(root.parent.parent)]
    return next((p for p in cands if p.is_file()), None)


def attach_aux(data: CZSLData, path: Path | None) -> None:
    """Fill ``data.aux`` for the training pairs; pairs without auxiliaries are counted."""
    if path is None:
        data.note("train_pairs_without_aux", len(data.train_pairs),
                  f"no {AUX_FILE} found: all {len(data.train_pairs)} training pairs train with plain cross-entropy "
                  f"(no attribute smoothing); run `curate attributes` or pass --aux FILE")
        return
    table = read_aux_file(path)
    data.aux_source = str(path)
    missing = []
    for pair in data.train_pairs:
        hit = next((table[k] for k in _aux_keys(pair) if k in table), None)
        if hit:
            data.aux[pair] = [czsl_name(w) for w in hit]
        else:
            missing.append(pair)
    if missing and len(missing) == len(data.train_pairs):
        raise CurateError(f"none of the {len(missing)} training pairs has auxiliary attributes in this file "
                          f"(e.g. no key {f'{missing[0][0]} {missing[0][1]}'!r})", where=str(path),
                          fix="the keys must be 'attr obj' with the names of the pair files; rerun "
                              "`curate attributes` on this dataset")
    data.note("train_pairs_without_aux", len(missing),
              f"{len(missing)} training pair(s) have no auxiliary attributes in {path.name} "
              f"(e.g. {' '.join(missing[0]) if missing else ''}): plain cross-entropy for those")


# -- readers ---------------------------------------------------------------------------------
def is_czsl_root(path: Path) -> bool:
    return (path / SPLIT_NAME).is_dir() or (path / f"metadata_{SPLIT_NAME}.t7").is_file()


def load_czsl(path: str | os.PathLike, aux: str | os.PathLike | None = None, sep: str | None = None,
              check_images: bool = True) -> CZSLData:
    """A standard-layout CZSL root or a curate dataset folder (with its auxiliary attributes)."""
    root = Path(path)
    if not root.is_dir():
        raise CurateError("data folder not found", where=str(root),
                          fix="pass a CZSL root (images/, compositional-split-natural/) or a curate dataset")
    if (root / "manifest.parquet").is_file():
        data = _load_dataset(root)
    elif is_czsl_root(root):
        data = _load_standard(root, sep, check_images)
    else:
        raise CurateError("neither a CZSL root nor a curate dataset folder", where=str(root),
                          fix=f"pass a folder holding {SPLIT_NAME}/ and metadata_{SPLIT_NAME}.t7, "
                              "manifest.parquet (curate build), or a demo world (world.json)")
    _check_vocabulary(data)
    if aux is not None and not Path(aux).is_file():
        raise CurateError("auxiliary attributes file not found", where=str(aux))
    attach_aux(data, Path(aux) if aux is not None else find_aux_file(root))
    return data


def _load_standard(root: Path, sep: str | None, check_images: bool) -> CZSLData:
    if sep is None and root.name.lower().startswith("vaw"):
        sep = "+"  # TRIDENT: DATASET.name.startswith('vaw')
    split_pairs = {s: parse_pairs(root / SPLIT_NAME / f"{s}_pairs.txt", sep) for s in SPLITS}
    all_pairs = sorted({p for ps in split_pairs.values() for p in ps})
    attrs = sorted({a for a, _ in all_pairs})
    objs = sorted({o for _, o in all_pairs})
    known = set(all_pairs)
    images = root / "images"
    data = CZSLData(root=root, kind="czsl", attrs=attrs, objs=objs, pairs=all_pairs, split_pairs=split_pairs,
                    items={s: [] for s in SPLITS}, images=images)
    skipped: Counter[str] = Counter()
    missing_files: list[str] = []
    for row in load_metadata(root / f"metadata_{SPLIT_NAME}.t7"):
        image, attr, obj, kind = (str(row[k]) for k in ("image", "attr", "obj", "set"))
        if attr == "NA" or kind == "NA":
            skipped["NA"] += 1
            continue
        if (attr, obj) not in known:
            skipped["pair in no pair file"] += 1
            continue
        if check_images and not (images / image).is_file():
            missing_files.append(image)
            continue
        data.items["train" if kind == "train" else "val" if kind == "val" else "test"].append(Item(image, attr, obj))
    data.note("metadata_rows_skipped_pair_not_in_pair_files", skipped["pair in no pair file"],
              f"{skipped['pair in no pair file']} metadata row(s) name a pair of no pair file: skipped "
              "(as TRIDENT does)")
    data.note("images_missing_on_disk", len(missing_files),
              f"{len(missing_files)} image(s) listed in the metadata are missing under {images} "
              f"(e.g. {missing_files[0] if missing_files else ''}): skipped")
    return data


def _load_dataset(root: Path) -> CZSLData:
    import polars as pl

    from ..data import dataset_samples

    df = dataset_samples(root, None, include_rejected=False)
    need = [c for c in ("key", "shard", "attr", "obj", "split") if c not in df.columns]
    if need:
        raise CurateError(f"manifest lacks column(s) {need}", where=str(root / "manifest.parquet"),
                          fix="pass a dataset built by `curate build`")
    df = df.filter(pl.col("split").is_in(list(SPLITS)) & pl.col("attr").is_not_null() & pl.col("obj").is_not_null())
    items: dict[str, list[Item]] = {s: [] for s in SPLITS}
    shards: dict[str, Path] = {}
    for key, shard, attr, obj, split in df.select("key", "shard", "attr", "obj", "split").iter_rows():
        items[split].append(Item(str(key), czsl_name(attr), czsl_name(obj)))
        shards[str(key)] = root / "shards" / str(shard)
    split_pairs = {s: sorted({(it.attr, it.obj) for it in items[s]}) for s in SPLITS}
    all_pairs = sorted({p for ps in split_pairs.values() for p in ps})
    return CZSLData(root=root, kind="dataset", attrs=sorted({a for a, _ in all_pairs}),
                    objs=sorted({o for _, o in all_pairs}), pairs=all_pairs, split_pairs=split_pairs,
                    items=items, shards=shards)


def _check_vocabulary(data: CZSLData) -> None:
    """Names of the pair files that no image carries (often a spelling that differs from the
    metadata's, e.g. ``paper plane`` vs ``paper_plane``) and pairs without images."""
    import difflib

    img_attrs = {it.attr for v in data.items.values() for it in v}
    img_objs = {it.obj for v in data.items.values() for it in v}
    for kind, names, have in (("attribute", data.attrs, img_attrs), ("object", data.objs, img_objs)):
        absent = [n for n in names if n not in have]
        if absent:
            close = difflib.get_close_matches(absent[0], sorted(have), n=1)
            data.note(f"{kind}s_without_images", len(absent),
                      f"{len(absent)} {kind}(s) of the pair files appear in no image's metadata "
                      f"(e.g. {absent[0]!r}{f', did you mean {close[0]!r}?' if close else ''}): they stay "
                      "candidates but can never be right")
    for split in SPLITS:
        have = {(it.attr, it.obj) for it in data.items[split]}
        empty = [p for p in data.split_pairs[split] if p not in have]
        data.note(f"{split}_pairs_without_images", len(empty),
                  f"{len(empty)} {split} pair(s) have no {split} image (e.g. {' '.join(empty[0]) if empty else ''})")
    if not data.items["train"]:
        raise CurateError("the train split has no images", where=str(data.root),
                          fix="check the metadata's 'set' values and that images/ holds the files")


# -- same-attribute / same-object partners -----------------------------------------------------
class Partners:
    """For each training image, a random other image sharing its attribute (object differs)
    and one sharing its object (attribute differs), drawn uniformly like TRIDENT's
    ``sample_same_attribute`` / ``sample_same_object``; masked where none exists.

    Vectorised: images sorted by (attribute, object), so "same attribute, other object" is the
    attribute's block minus the pair's sub-block, drawn with one uniform number per image.
    """

    def __init__(self, attr: np.ndarray, obj: np.ndarray):
        self.n = len(attr)
        self.by_attr = self._index(attr, obj)
        self.by_obj = self._index(obj, attr)

    @staticmethod
    def _index(group: np.ndarray, sub: np.ndarray) -> tuple[np.ndarray, ...]:
        order = np.lexsort((sub, group))
        g, s = group[order], sub[order]
        n = len(order)
        g_start = np.zeros(n, np.int64)
        b_start = np.zeros(n, np.int64)
        g_len = np.zeros(n, np.int64)
        b_len = np.zeros(n, np.int64)
        bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            g_start[lo:hi], g_len[lo:hi] = lo, hi - lo
            sb = np.flatnonzero(np.r_[True, s[lo + 1:hi] != s[lo:hi - 1], True]) + lo
            for blo, bhi in zip(sb[:-1], sb[1:], strict=True):
                b_start[blo:bhi], b_len[blo:bhi] = blo - lo, bhi - blo
        inv = np.empty(n, np.int64)
        inv[order] = np.arange(n)
        return order, g_start[inv], g_len[inv], b_start[inv], b_len[inv]

    @staticmethod
    def _draw(index: tuple[np.ndarray, ...], rows: np.ndarray, u: np.ndarray,
              fallback: int | None) -> tuple[np.ndarray, np.ndarray]:
        order, g_start, g_len, b_start, b_len = index
        free = g_len[rows] - b_len[rows]
        valid = free > 0
        r = np.minimum((u * np.maximum(free, 1)).astype(np.int64), np.maximum(free - 1, 0))
        pos = r + (r >= b_start[rows]) * b_len[rows]
        none = rows if fallback is None else np.full_like(rows, fallback)
        partner = np.where(valid, order[g_start[rows] + np.where(valid, pos, 0)], none)
        return partner, valid

    def sample(self, rows: np.ndarray, u_attr: np.ndarray, u_obj: np.ndarray,
               fallback: int | None = None) -> dict[str, np.ndarray]:
        """Partners of ``rows`` from uniforms in [0, 1); an invalid partner (masked) is row
        ``fallback`` (the official loader's ``self.data[-1]``: the last training image), else the
        image itself."""
        pa, ma = self._draw(self.by_attr, rows, u_attr, fallback)
        po, mo = self._draw(self.by_obj, rows, u_obj, fallback)
        return {"same_attr": pa, "attr_mask": ma, "same_obj": po, "obj_mask": mo}


# -- writing the standard layout -----------------------------------------------------------------
def write_czsl_root(root: Path, rows: list[dict[str, Any]], images: dict[str, bytes], sep: str = " ") -> Path:
    """Write a standard-layout CZSL root: ``rows`` are ``{image, attr, obj, set}`` (CZSL names),
    ``images`` the bytes of each ``image`` path; pair files list each split's pairs."""
    import torch

    from curate.fsutil import atomic_open, write_bytes, write_text

    for rel, data in images.items():
        dest = root / "images" / rel
        if not dest.exists():
            write_bytes(dest, data)
    for split in SPLITS:
        pairs = sorted({(r["attr"], r["obj"]) for r in rows if r["set"] == split})
        write_text(root / SPLIT_NAME / f"{split}_pairs.txt", "".join(f"{a}{sep}{o}\n" for a, o in pairs))
    with atomic_open(root / f"metadata_{SPLIT_NAME}.t7", "wb") as f:
        torch.save([{k: str(r[k]) for k in ("image", "attr", "obj", "set")} for r in rows], f)
    return root
