"""Zero-shot evaluation as in the ImageNet-AO papers.

Class text embeddings are the mean of the normalised embeddings of the 80 OpenAI ImageNet
templates (renormalised). Reported, for the rare set and for a reference set of ordinary
(common-pair) images: object top-1/top-5 (classes = every object of the vocabulary) and
composition top-1/top-5 (classes = every pair present in the evaluated sets, one label
space for all rows so they compare; prompts ``"{attr} {obj}"``).
The drop from the reference to the rare set is the papers' finding
(e.g. ViT-B/32 OpenAI: object top-1 0.540 on rare vs 0.794 on ordinary images).
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
from curate.images import open_rgb
from curate.shards import image_of, iter_shard, list_shards

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str
    keys: list[str]
    attrs: list[str]
    objs: list[str]
    images: list[bytes] | None  # None when embeddings were reused
    emb: np.ndarray | None = None


def _from_shards(spec: str | Path, name: str, include_rejected: bool = False) -> EvalSet:
    keys, attrs, objs, imgs = [], [], [], []
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
            keys.append(s["__key__"])
            attrs.append(meta["attr"])
            objs.append(meta["obj"])
            imgs.append(data)
    if not keys:
        raise CurateError("no labelled images (json with attr and obj) found", where=str(spec))
    return EvalSet(name, keys, attrs, objs, imgs)


def load_eval_set(path: str | Path, name: str, rare_only: bool | None = None, model: str | None = None,
                  include_rejected: bool = False) -> EvalSet:
    """A dataset folder (manifest; embeddings reused when made by ``model``) or plain shards."""
    p = Path(path)
    if (p / "manifest.parquet").exists():
        from curate.dataset import Dataset

        ds = Dataset(p)
        df = ds.manifest(include_rejected=include_rejected)
        if rare_only is not None and "rare" in df.columns:
            df = df.filter(pl.col("rare") == rare_only)
        if df.height == 0:
            raise CurateError(f"no {'rare' if rare_only else 'common'} samples in the dataset", where=str(p))
        df = df.sort("key")
        info_path = p / "embeddings" / "embeddings.json"
        if model and info_path.exists() and json.loads(info_path.read_text()).get("model") == model:
            keys, mat = ds.embeddings()
            pos = {k: i for i, k in enumerate(keys)}
            if all(k in pos for k in df["key"]):
                emb = np.stack([np.asarray(mat[pos[k]]) for k in df["key"]]).astype(np.float32)
                return EvalSet(name, df["key"].to_list(), df["attr"].to_list(), df["obj"].to_list(), None, emb)
        imgs = dict(ds.images(df["key"].to_list()))
        df = df.filter(pl.col("key").is_in(list(imgs)))
        return EvalSet(name, df["key"].to_list(), df["attr"].to_list(), df["obj"].to_list(),
                       [imgs[k] for k in df["key"]])
    return _from_shards(p, name, include_rejected)


def _embed(encoder, s: EvalSet, batch_size: int = 64) -> np.ndarray:

    if s.emb is not None:
        return s.emb
    images = [open_rgb(b) for b in s.images or []]
    return encoder.encode_images(images, batch_size=batch_size)


def evaluate_sets(encoder, sets: list[EvalSet], objects: list[str]) -> dict[str, Any]:
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES, class_text_embeddings, topk_accuracy

    obj_text = class_text_embeddings(encoder, objects, OPENAI_IMAGENET_TEMPLATES)
    oi = {o: i for i, o in enumerate(objects)}
    # one composition label space for every set (all pairs of all sets), so rows compare
    pairs = sorted({p for s in sets for p in zip(s.attrs, s.objs, strict=True)})
    pi = {p: i for i, p in enumerate(pairs)}
    pair_text = class_text_embeddings(encoder, [f"{a} {o}" for a, o in pairs], OPENAI_IMAGENET_TEMPLATES)
    out: dict[str, Any] = {}
    for s in sets:
        img = _embed(encoder, s)
        obj_acc = topk_accuracy(img, obj_text, [oi[o] for o in s.objs])
        comp_acc = topk_accuracy(img, pair_text, [pi[p] for p in zip(s.attrs, s.objs, strict=True)])
        out[s.name] = {"images": len(s.keys), "pairs": len(set(zip(s.attrs, s.objs, strict=True))),
                       "composition_classes": len(pairs), "objects": len(set(s.objs)),
                       "object_top1": obj_acc[1], "object_top5": obj_acc[5],
                       "composition_top1": comp_acc[1], "composition_top5": comp_acc[5]}
    return out


def _objects_for(dataset: Path, sets: list[EvalSet]) -> list[str]:
    """Every object of the dataset's vocabulary (``dataset.json``: ``vocabulary.objects``), else those seen."""
    info = dataset / "dataset.json"
    objects = json.loads(info.read_text()).get("vocabulary", {}).get("objects") if info.exists() else None
    if objects:
        return list(objects)
    log.warning("%s does not list its vocabulary (dataset.json: vocabulary.objects); object classes are the "
                "objects present", dataset)
    return sorted({o for s in sets for o in s.objs})


def evaluate_dataset(dataset: str | Path, model: str, reference: str | Path | None = None, device: str = "auto",
                     out: Path | None = None, include_rejected: bool = False,
                     extra: dict[str, str | Path] | None = None) -> dict[str, Any]:
    """Evaluate the dataset's rare set, the ``reference`` set and any ``extra`` named sets."""
    from curate.embed.backends import cached_model

    dataset = Path(dataset)
    encoder = cached_model(model, device)
    sets = [load_eval_set(dataset, "rare", rare_only=True, model=model, include_rejected=include_rejected)]
    if reference:
        sets.append(load_eval_set(reference, "reference", rare_only=False, model=model,
                                  include_rejected=include_rejected))
    for name, path in (extra or {}).items():
        sets.append(load_eval_set(path, name, model=model, include_rejected=include_rejected))
    objects = _objects_for(dataset, sets)
    missing = sorted({o for s in sets for o in s.objs} - set(objects))
    objects = objects + missing
    results = evaluate_sets(encoder, sets, objects)
    report = {"model": model, "dataset": str(dataset), "reference": str(reference) if reference else None,
              "object_classes": len(objects), "templates": 80, "results": results}
    out = out or dataset / "eval"
    write_json(out / "zeroshot.json", report)
    write_text(out / "zeroshot.md", markdown_table(report) + "\n")
    return report


def markdown_table(report: dict[str, Any]) -> str:
    """One row per evaluated set, the columns of the papers' zero-shot tables."""
    n_comp = next(iter(report["results"].values()))["composition_classes"] if report["results"] else 0
    lines = [f"Zero-shot, `{report['model']}`: {report['object_classes']} object classes, {n_comp} composition "
             "classes, 80 OpenAI ImageNet templates",
             "", "| set | images | pairs | object top-1 | object top-5 | composition top-1 | composition top-5 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, x in report["results"].items():
        lines.append(f"| {name} | {x['images']} | {x['pairs']} | {x['object_top1']:.3f} | {x['object_top5']:.3f} | "
                     f"{x['composition_top1']:.3f} | {x['composition_top5']:.3f} |")
    return "\n".join(lines)


# -- the demo world: held-out common pairs vs rare pairs ------------------------------------------
WORLD_SETS = {"heldout": "common (heldout)", "rare": "rare"}


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
    splits = [name for name in ("train", *WORLD_SETS) if (world / name).is_dir()]
    if not any(name in WORLD_SETS for name in splits):
        raise CurateError("no heldout/ or rare/ shards to evaluate on", where=str(world),
                          fix="point at a demo world folder (`curate demo world --out DIR`)")
    objects: set[str] = set()
    attributes: set[str] = set()
    for name in splits:
        o, a = _split_labels(world / name)
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
        data = _from_shards(world / split, label, include_rejected=True)
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
        common, rare = sets[WORLD_SETS["heldout"]], sets[WORLD_SETS["rare"]]
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


