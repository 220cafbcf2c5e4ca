"""Zero-shot evaluation as in the ImageNet-AO papers.

Class text embeddings are the mean of the normalised embeddings of the 80 OpenAI ImageNet
templates (renormalised). Reported, for the rare set and for a reference set of ordinary
(common-pair) images: object top-1/top-5 (classes = every object of the vocabulary) and
composition top-1/top-5 (classes = every pair present in the evaluated sets, one label
space for all rows so they compare; prompts ``"{attr} {obj}"``).
The drop from the reference to the rare set is the papers' finding
(e.g. ViT-B/32 OpenAI: object top-1 0.540 on rare vs 0.794 on ordinary images).

Any folder of labelled images a user has can be the reference (:func:`load_eval_set`): a
curate dataset folder, WebDataset shards with ``attr``/``obj`` JSON, an image folder
(``CLASS/IMG`` or ``SPLIT/CLASS/IMG``; a class is an object name, ``attr_obj``, or an ImageNet
wnid named by ``LOC_synset_mapping.txt`` / ``synset_words.txt`` beside it) or a CZSL root
(``images/``, ``compositional-split-natural/``, the ``.t7`` metadata read with
``weights_only=True``). Images with an object but no attribute count for the object columns
only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.fsutil import write_json, write_text
from curate.images import DEFAULT_DECODE, decode_target
from curate.shards import image_of, iter_shard, list_shards
from curate.world import HELDOUT, RARE, TRAIN, split_dir

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str
    keys: list[str]
    attrs: list[str | None]  # None: the image has an object label only (an ImageNet-style folder)
    objs: list[str]
    images: list[bytes] | None  # None when embeddings were reused or images are files
    emb: np.ndarray | None = None
    files: list[Path] | None = None
    missing: int = 0  # listed (manifest, metadata) but without an image: skipped and reported
    kind: str = "shards"

    def image_store(self) -> Any:
        """The set's images by key as every trainer reaches them (``training.data.images.ImageStore``):
        the encoded images its reader kept with the labels, or its files."""
        from .data.images import ImageStore

        store = ImageStore(Path(self.name), files=dict(zip(self.keys, self.files or [], strict=False)))
        for key, data in zip(self.keys, self.images or [], strict=False):
            store.keep(key, data)
        return store


def _from_shards(spec: str | Path, name: str, include_rejected: bool = False) -> EvalSet:
    keys, attrs, objs, imgs = [], [], [], []
    seen: set[str] = set()
    for shard in list_shards(spec):
        for s in iter_shard(shard):
            if "json" not in s:
                continue
            meta = json.loads(s["json"])
            img = image_of(s)
            data = img[1] if img else None
            if data is None or "attr" not in meta or "obj" not in meta:
                continue
            if not include_rejected and meta.get("review_status") == "reject":
                continue
            if s["__key__"] in seen:
                log.warning("%s: key %s is in another shard too: the first kept", shard, s["__key__"])
                continue
            seen.add(s["__key__"])
            keys.append(s["__key__"])
            attrs.append(meta["attr"])
            objs.append(meta["obj"])
            imgs.append(data)
    if not keys:
        raise CurateError("no labelled images (json with attr and obj) found", where=str(spec))
    return EvalSet(name, keys, attrs, objs, imgs)


def _from_dataset(p: Path, name: str, rare_only: bool | None, model: str | None, include_rejected: bool) -> EvalSet:
    from curate.dataset import Dataset
    from curate.embed.store import made_by

    ds = Dataset(p)
    df = ds.manifest(include_rejected=include_rejected)
    if rare_only is not None and "rare" in df.columns:
        df = df.filter(pl.col("rare") == rare_only)
    if df.height == 0:
        raise CurateError(f"no {'rare' if rare_only else 'common'} samples in the dataset", where=str(p))
    df = df.sort("key")
    info_path = p / "embeddings" / "embeddings.json"
    if model and info_path.exists() and made_by(json.loads(info_path.read_text()), model):  # same spec and weights
        keys, mat = ds.embeddings()
        pos = {k: i for i, k in enumerate(keys)}
        if all(k in pos for k in df["key"]):
            emb = np.stack([np.asarray(mat[pos[k]]) for k in df["key"]]).astype(np.float32)
            return EvalSet(name, df["key"].to_list(), df["attr"].to_list(), df["obj"].to_list(), None, emb,
                           kind="dataset")
    from .data.images import ImageStore

    store = ImageStore.of_dataset(p, df)
    store.load(df["key"].to_list())
    imgs = {k: store.read(k) for k in df["key"] if k in store}
    lost = df.filter(~pl.col("key").is_in(list(imgs)))
    if lost.height:
        log.warning("%s: %d manifest row(s) have no image in their shard (e.g. %s): left out of %r", p, lost.height,
                    lost["key"][0], name)
    df = df.filter(pl.col("key").is_in(list(imgs)))
    return EvalSet(name, df["key"].to_list(), df["attr"].to_list(), df["obj"].to_list(),
                   [imgs[k] for k in df["key"]], missing=lost.height, kind="dataset")


CZSL_SPLIT = "compositional-split-natural"


def _czsl_pairs(root: Path) -> dict[str, set[tuple[str, str]]]:
    out = {}
    for split in ("train", "val", "test"):
        path = root / CZSL_SPLIT / f"{split}_pairs.txt"
        lines = path.read_text(encoding="utf-8").split("\n") if path.is_file() else []
        sep = "+" if lines and all("+" in ln for ln in lines if ln.strip()) and root.name.lower().startswith("vaw") \
            else None
        out[split] = {tuple(ln.split(sep)) for ln in lines if len(ln.split(sep)) == 2}
    return out


def _from_czsl(root: Path, name: str, rare_only: bool | None) -> EvalSet:
    """A CZSL root: images of seen pairs (train pairs) for ``rare_only=False``, unseen for True, all for None."""
    import torch

    meta_path = root / f"metadata_{CZSL_SPLIT}.t7"
    try:
        rows = torch.load(str(meta_path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused or not a torch file
        raise CurateError(f"cannot read the CZSL metadata ({str(e).splitlines()[0][:200]})", where=str(meta_path),
                          fix="the metadata must be torch.save of a list of {image, attr, obj, set} dicts") from e
    pairs = _czsl_pairs(root)
    seen = pairs["train"]
    known = set().union(*pairs.values())
    keys, attrs, objs, files = [], [], [], []
    missing = 0
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict) or r.get("attr") in (None, "NA") or r.get("set") == "NA":
            continue
        pair = (str(r["attr"]), str(r["obj"]))
        if known and pair not in known:
            continue
        if rare_only is not None and (pair not in seen) != rare_only:
            continue
        path = root / "images" / str(r["image"])
        if not path.is_file():
            missing += 1
            continue
        keys.append(str(r["image"]))
        attrs.append(pair[0].replace("_", " "))
        objs.append(pair[1].replace("_", " "))
        files.append(path)
    if missing:
        log.warning("%s: %d image(s) listed in the metadata are missing under images/: left out of %r", root, missing,
                    name)
    if not keys:
        raise CurateError(f"no {'unseen' if rare_only else 'seen' if rare_only is False else ''} images in the CZSL root",
                          where=str(root))
    return EvalSet(name, keys, attrs, objs, None, files=files, missing=missing, kind="czsl")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")


def _synsets(root: Path) -> dict[str, str]:
    """ImageNet wnid -> its first name (``n01440764 tench, Tinca tinca``), from a file beside the folder."""
    for folder in (root, root.parent):
        for fname in SYNSET_FILES:
            path = folder / fname
            if path.is_file():
                out = {}
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    wnid, _, names = line.strip().partition(" ")
                    if wnid and names:
                        out[wnid] = names.split(",")[0].strip()
                return out
    return {}


def class_label(name: str, objects: list[str], synsets: dict[str, str]) -> tuple[str | None, str]:
    """(attribute or None, object) of an image-folder class: an object, ``attr_obj``, or a wnid."""
    name = synsets.get(name, name)
    norm = {o.lower().replace(" ", "_"): o for o in objects}
    key = name.lower().replace(" ", "_")
    if key in norm:
        return None, norm[key]
    for o in sorted(norm, key=len, reverse=True):  # longest object name that ends the class name
        if key.endswith("_" + o):
            return key[:-len(o) - 1].replace("_", " "), norm[o]
    return None, name.replace("_", " ")


def _from_imagefolder(root: Path, name: str, objects: list[str]) -> EvalSet:
    """``ROOT/CLASS/IMG`` or ``ROOT/SPLIT/CLASS/IMG`` (torchvision ImageFolder, curate's imagefolder export)."""
    synsets = _synsets(root)
    classes = [d for d in sorted(root.iterdir()) if d.is_dir()]
    if classes and all(d.name in ("train", "val", "test") for d in classes):
        classes = [c for split in classes for c in sorted(split.iterdir()) if c.is_dir()]
    keys, attrs, objs, files = [], [], [], []
    unknown: set[str] = set()
    for cls in classes:
        attr, obj = class_label(cls.name, objects, synsets)
        if obj not in objects:
            unknown.add(obj)
        for f in sorted(cls.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                keys.append(str(f.relative_to(root)))
                attrs.append(attr)
                objs.append(obj)
                files.append(f)
    if not keys:
        raise CurateError("no images in CLASS/ or SPLIT/CLASS/ folders", where=str(root),
                          fix="an image folder holds one folder per class (object, attr_obj or ImageNet wnid)")
    if unknown:
        log.warning("%s: %d class(es) are not objects of the dataset's vocabulary (e.g. %r): added as object classes",
                    root, len(unknown), sorted(unknown)[0])
    return EvalSet(name, keys, attrs, objs, None, files=files, kind="imagefolder")


def load_eval_set(path: str | Path, name: str, rare_only: bool | None = None, model: str | None = None,
                  include_rejected: bool = False, objects: list[str] | None = None) -> EvalSet:
    """Labelled images from a dataset folder (embeddings reused when made by ``model``), shards, a CZSL
    root or an image folder (``objects``: the vocabulary its class names are matched against)."""
    p = Path(path)
    if (p / "manifest.parquet").exists():
        return _from_dataset(p, name, rare_only, model, include_rejected)
    if (p / CZSL_SPLIT).is_dir() or (p / f"metadata_{CZSL_SPLIT}.t7").is_file():
        return _from_czsl(p, name, rare_only)
    if p.is_dir() and not any(p.glob("*.tar")) and any(d.is_dir() for d in p.iterdir()):
        return _from_imagefolder(p, name, objects or [])
    return _from_shards(p, name, include_rejected)


def _embed(encoder, s: EvalSet, batch_size: int = 64, decode: str = DEFAULT_DECODE) -> np.ndarray:
    """Image embeddings, decoding ``batch_size`` images at a time through the set's ``ImageStore`` (files
    are read as needed) at the size the encoder needs (``decode``: ``curate.images.DECODE_MODES``)."""
    if s.emb is not None:
        return s.emb
    store, size = s.image_store(), decode_target(encoder.decode_size, decode)
    out = []
    for i in range(0, len(s.keys), batch_size):
        chunk = [store.open(key, size) for key in s.keys[i:i + batch_size]]
        out.append(encoder.encode_images(chunk, batch_size=batch_size))
    return np.concatenate(out) if out else np.zeros((0, 1), np.float32)


def evaluate_sets(encoder, sets: list[EvalSet], objects: list[str], decode: str = DEFAULT_DECODE) -> dict[str, Any]:
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES, class_text_embeddings, topk_accuracy

    obj_text = class_text_embeddings(encoder, objects, OPENAI_IMAGENET_TEMPLATES)
    oi = {o: i for i, o in enumerate(objects)}
    # one composition label space for every set (all pairs of all sets), so rows compare
    pairs = sorted({(a, o) for s in sets for a, o in zip(s.attrs, s.objs, strict=True) if a is not None})
    pi = {p: i for i, p in enumerate(pairs)}
    pair_text = class_text_embeddings(encoder, [f"{a} {o}" for a, o in pairs], OPENAI_IMAGENET_TEMPLATES) \
        if pairs else None
    out: dict[str, Any] = {}
    for s in sets:
        img = _embed(encoder, s, decode=decode)
        obj_acc = topk_accuracy(img, obj_text, [oi[o] for o in s.objs])
        labelled = [i for i, a in enumerate(s.attrs) if a is not None]
        comp_acc: dict[int, float | None] = {1: None, 5: None}
        if labelled and pair_text is not None:
            comp_acc = topk_accuracy(img[labelled], pair_text, [pi[(s.attrs[i], s.objs[i])] for i in labelled])
        out[s.name] = {"images": len(s.keys), "pairs": len({(s.attrs[i], s.objs[i]) for i in labelled}),
                       "composition_classes": len(pairs), "objects": len(set(s.objs)),
                       "object_top1": obj_acc[1], "object_top5": obj_acc[5],
                       "composition_top1": comp_acc[1], "composition_top5": comp_acc[5],
                       "images_with_attribute": len(labelled), "source": s.kind, "missing_images": s.missing}
    return out


def _vocabulary(dataset: Path) -> list[str] | None:
    """Every object of the dataset's vocabulary (``dataset.json``: ``vocabulary.objects``), if it lists one."""
    info = dataset / "dataset.json"
    objects = json.loads(info.read_text()).get("vocabulary", {}).get("objects") if info.exists() else None
    return list(objects) if objects else None


def _objects_for(dataset: Path, sets: list[EvalSet]) -> list[str]:
    """The vocabulary's objects, else those seen (with a warning)."""
    objects = _vocabulary(dataset)
    if objects:
        return objects
    log.warning("%s does not list its vocabulary (dataset.json: vocabulary.objects); object classes are the "
                "objects present", dataset)
    return sorted({o for s in sets for o in s.objs})


def evaluate_dataset(dataset: str | Path, model: str, reference: str | Path | None = None, device: str = "auto",
                     out: Path | None = None, include_rejected: bool = False,
                     extra: dict[str, str | Path] | None = None, decode: str = DEFAULT_DECODE) -> dict[str, Any]:
    """Evaluate the dataset's rare set, the ``reference`` set and any ``extra`` named sets (images
    without stored embeddings decoded as ``decode`` says)."""
    from curate.embed.backends import cached_model

    dataset = Path(dataset)
    encoder = cached_model(model, device)
    sets = [load_eval_set(dataset, "rare", rare_only=True, model=model, include_rejected=include_rejected)]
    vocabulary = _vocabulary(dataset) or sorted(set(sets[0].objs))
    if reference:
        sets.append(load_eval_set(reference, "reference", rare_only=False, model=model,
                                  include_rejected=include_rejected, objects=vocabulary))
    for name, path in (extra or {}).items():
        sets.append(load_eval_set(path, name, model=model, include_rejected=include_rejected, objects=vocabulary))
    objects = _objects_for(dataset, sets)
    missing = sorted({o for s in sets for o in s.objs} - set(objects))
    objects = objects + missing
    results = evaluate_sets(encoder, sets, objects, decode)
    filter_model = filter_model_of(dataset)
    report = {"model": model, "dataset": str(dataset), "reference": str(reference) if reference else None,
              "object_classes": len(objects), "templates": 80, "decode": decode, "results": results,
              "filter_model": filter_model, "biased": is_filter_model(model, filter_model)}
    out = out or dataset / "eval"
    write_json(out / "zeroshot.json", report)
    write_text(out / "zeroshot.md", markdown_table(report) + "\n")
    return report


FILTER_NOTE = "filter model: biased upwards (this model filtered the data)"


def filter_model_of(dataset: Path) -> str | None:
    """The model spec the dataset's build retrieved and filtered its images with (``dataset.json``)."""
    info = dataset / "dataset.json"
    return json.loads(info.read_text()).get("config", {}).get("model") if info.is_file() else None


def is_filter_model(spec: str | None, filter_spec: str | None) -> bool:
    """Is ``spec`` the model that filtered the data (same spec, or the same weights under another spec)?"""
    from curate.fingerprint import model_fingerprint

    return bool(spec and filter_spec and (spec == filter_spec or model_fingerprint(spec) == model_fingerprint(filter_spec)))


def markdown_table(report: dict[str, Any]) -> str:
    """One row per evaluated set, the columns of the papers' zero-shot tables."""
    n_comp = next(iter(report["results"].values()))["composition_classes"] if report["results"] else 0
    lines = [f"Zero-shot, `{report['model']}`: {report['object_classes']} object classes, {n_comp} composition "
             "classes, 80 OpenAI ImageNet templates"
             + (f". **{FILTER_NOTE}**: score the rare set with an independent model (`curate eval study`)"
                if report.get("biased") else ""),
             "", "| set | images | pairs | object top-1 | object top-5 | composition top-1 | composition top-5 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    def num(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    for name, x in report["results"].items():
        lines.append(f"| {name} | {x['images']} | {x['pairs']} | {num(x['object_top1'])} | {num(x['object_top5'])} | "
                     f"{num(x['composition_top1'])} | {num(x['composition_top5'])} |")
    notes = [f"{name}: {x['images'] - x.get('images_with_attribute', x['images'])} image(s) have an object label "
             "only (composition columns over the others)" for name, x in report["results"].items()
             if x.get("images_with_attribute", x["images"]) < x["images"]]
    notes += [f"{name}: {x['missing_images']} listed image(s) missing, left out"
              for name, x in report["results"].items() if x.get("missing_images")]
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


# -- the demo world: held-out common pairs vs rare pairs ------------------------------------------
WORLD_SETS = {HELDOUT: "common (heldout)", RARE: "rare"}


def _split_labels(folder: Path) -> tuple[set[str], set[str]]:
    objs: set[str] = set()
    attrs: set[str] = set()
    for shard in list_shards(folder):
        for s in iter_shard(shard, exts=("json",)):
            meta = json.loads(s["json"]) if "json" in s else {}
            objs.update([meta["obj"]] if meta.get("obj") else [])
            attrs.update([meta["attr"]] if meta.get("attr") else [])
    return objs, attrs


def evaluate_world(spec: str, world: str | Path, device: str = "auto") -> dict[str, Any]:
    """Zero-shot object and attribute top-1/top-5 on WORLD/heldout (common pairs) and WORLD/rare.

    Classes are every object and attribute labelled in the world's splits (train, heldout,
    rare); templates: the 80 OpenAI ImageNet ones and a simple ``"a photo of a {}."``. The gap
    between the two sets is the phenomenon the ImageNet-AO paper measures on real CLIPs.
    """
    from curate.embed.backends import load_model
    from curate.embed.zeroshot import (
        OPENAI_IMAGENET_TEMPLATES,
        SIMPLE_TEMPLATES,
        class_text_embeddings,
        topk_accuracy,
    )

    world = Path(world)
    splits = [name for name in (TRAIN, *WORLD_SETS) if split_dir(world, name).is_dir()]
    if not any(name in WORLD_SETS for name in splits):
        raise CurateError("no heldout/ or rare/ shards to evaluate on", where=str(world),
                          fix="point at a demo world folder (`curate demo world --out DIR`)")
    objects: set[str] = set()
    attributes: set[str] = set()
    for name in splits:
        o, a = _split_labels(split_dir(world, name))
        objects |= o
        attributes |= a
    objs, attrs = sorted(objects), sorted(attributes)
    enc = load_model(spec, device)
    templates = {"simple": SIMPLE_TEMPLATES, "openai80": OPENAI_IMAGENET_TEMPLATES}
    class_emb = {(tname, kind): class_text_embeddings(enc, [c.replace("-", " ") for c in classes], tpl)
                 for tname, tpl in templates.items() for kind, classes in (("obj", objs), ("attr", attrs))}
    report: dict[str, Any] = {"model": spec, "world": str(world.resolve()), "sets": {}}
    for split, label in WORLD_SETS.items():
        if split not in splits:
            continue
        data = _from_shards(split_dir(world, split), label, include_rejected=True)
        emb = _embed(enc, data, batch_size=256)
        row: dict[str, Any] = {"images": len(data.keys)}
        for tname in templates:
            for kind, classes, truth in (("obj", objs, data.objs), ("attr", attrs, data.attrs)):
                acc = topk_accuracy(emb, class_emb[(tname, kind)], [classes.index(t) for t in truth], ks=(1, 5))
                row[f"{kind}_top1_{tname}"] = round(acc[1], 4)
                row[f"{kind}_top5_{tname}"] = round(acc[5], 4)
        report["sets"][label] = row
    report["chance"] = {"obj_top1": round(1 / len(objs), 4), "attr_top1": round(1 / len(attrs), 4)}
    sets = report["sets"]
    if len(sets) == 2:  # the paper's phenomenon: common minus rare
        common, rare = sets[WORLD_SETS[HELDOUT]], sets[WORLD_SETS[RARE]]
        report["gap_common_minus_rare"] = {k: round(common[k] - rare[k], 4) for k in rare if k != "images"}
    return report


def print_world_report(report: dict[str, Any]) -> None:
    """One row per (image set, template set): object and attribute top-1/top-5."""
    from rich.table import Table

    from curate.log import console

    table = Table(title=f"zero-shot accuracy of {report.get('model', '?')}")
    for c in ("images", "templates", "n", "obj top-1", "obj top-5", "attr top-1", "attr top-5"):
        table.add_column(c, justify="left" if c in ("images", "templates") else "right")
    for name, row in report.get("sets", {}).items():
        for tpl in ("simple", "openai80"):
            table.add_row(name, tpl, str(row["images"]),
                          *[f"{row[f'{k}_top{t}_{tpl}']:.3f}" for k in ("obj", "attr") for t in (1, 5)])
    console.print(table)
    gap = report.get("gap_common_minus_rare")
    if gap:
        console.print("gap common - rare (openai80): object top-1 "
                      f"{gap['obj_top1_openai80']:+.3f}, attribute top-1 {gap['attr_top1_openai80']:+.3f}")
    ch = report.get("chance", {})
    if ch:
        console.print(f"chance: object top-1 {ch['obj_top1']:.3f}, attribute top-1 {ch['attr_top1']:.3f}")


