"""Exports for other codebases.

- ``czsl``: the layout ExplainableML/czsl and TRIDENT read — ``images/<name>``,
  ``compositional-split-natural/{train,val,test}_pairs.txt`` (one ``attr obj`` per line;
  spaces inside names become ``_`` because those loaders split lines on whitespace) and
  ``metadata_compositional-split-natural.t7`` (``torch.save`` of a list of dicts
  ``{image, attr, obj, set}``; plain Python types only, so ``torch.load(weights_only=True)``
  reads it). Train = seen pairs' train images; val/test = seen + unseen pairs.
- ``imagefolder``: ``imagefolder/<split>/<attr>_<obj>/<key>.jpg`` for torchvision ``ImageFolder``.

Images are extracted from the dataset's shards; rejected samples are excluded. A manifest row
whose image is not in its shard is left out of the export (never listed without an image, which
would crash the loaders) and reported: a warning, and ``EXPORT/export.json`` (``images``,
``missing_images``). :func:`consistency` compares the manifest's keys with the shards' keys.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from curate.errors import CurateError
from curate.fsutil import atomic_open, write_bytes, write_json, write_text
from curate.shards import iter_keys, iter_shard

log = logging.getLogger(__name__)

FORMATS = ("czsl", "imagefolder")
SPLIT_NAME = "compositional-split-natural"


def czsl_name(text: str) -> str:
    return text.strip().replace(" ", "_")


@dataclass
class Consistency:
    """Keys the manifest lists without a sample in the shards, and samples no manifest row lists."""

    manifest_only: list[str] = field(default_factory=list)
    shards_only: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.manifest_only and not self.shards_only


def consistency(out: Path | str | os.PathLike) -> Consistency:
    """Compare ``manifest.parquet`` with what ``shards/*.tar`` hold (tar headers only)."""
    from curate.manifest import read_manifest

    out = Path(out)
    manifest = set(read_manifest(out)["key"].to_list())
    in_shards = {s["__key__"] for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p, exts=())}
    return Consistency(sorted(manifest - in_shards), sorted(in_shards - manifest))


def _extract(out: Path, manifest: pl.DataFrame, dest_of) -> set[str]:
    """Write every manifest image to ``dest_of(row)`` (skipping files already there); returns the keys
    written or present. Keys without an image in their shard are logged."""
    done = set()
    rows = {row["key"]: row for row in manifest.iter_rows(named=True)}
    for s in iter_keys({k: out / "shards" / r["shard"] for k, r in rows.items()}, exts=("jpg",)):
        if "jpg" not in s:
            continue
        dest = dest_of(rows[s["__key__"]])
        if not dest.exists():
            write_bytes(dest, s["jpg"])
        done.add(s["__key__"])
    missing = sorted(set(rows) - done)
    if missing:
        log.warning("%d manifest row(s) have no image in their shard and are left out of the export: %s", len(missing),
                    ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
    return done


def _report(root: Path, manifest: pl.DataFrame, done: set[str]) -> None:
    write_json(root / "export.json", {"images": len(done),
                                      "missing_images": sorted(set(manifest["key"].to_list()) - done)})


def export_czsl(out: Path, manifest: pl.DataFrame) -> Path:
    import torch

    root = out / "exports" / "czsl"
    img_dir = root / "images"

    def rel(row) -> str:
        return f"{czsl_name(row['attr'])}_{czsl_name(row['obj'])}/{row['key']}.jpg"

    done = _extract(out, manifest, lambda row: img_dir / rel(row))
    _report(root, manifest, done)
    manifest = manifest.filter(pl.col("key").is_in(list(done)))
    split_dir = root / SPLIT_NAME
    for split in ("train", "val", "test"):
        pairs = (manifest.filter(pl.col("split") == split).select("attr", "obj").unique().sort("attr", "obj"))
        lines = "".join(f"{czsl_name(a)} {czsl_name(o)}\n" for a, o in pairs.iter_rows())
        write_text(split_dir / f"{split}_pairs.txt", lines)
    meta = [{"image": rel(r), "attr": czsl_name(r["attr"]), "obj": czsl_name(r["obj"]), "set": r["split"]}
            for r in manifest.sort("key").iter_rows(named=True)]
    with atomic_open(root / f"metadata_{SPLIT_NAME}.t7", "wb") as f:
        torch.save(meta, f)
    return root


def export_imagefolder(out: Path, manifest: pl.DataFrame) -> Path:
    root = out / "exports" / "imagefolder"
    done = _extract(out, manifest,
                    lambda r: root / r["split"] / f"{czsl_name(r['attr'])}_{czsl_name(r['obj'])}" / f"{r['key']}.jpg")
    _report(root, manifest, done)
    return root


def export(fmt: str, out: Path | str | os.PathLike, manifest: pl.DataFrame | None = None,
           include_rejected: bool = False) -> Path:
    from curate.manifest import read_manifest

    out = Path(out)
    if manifest is None:
        manifest = read_manifest(out, include_rejected=include_rejected)
    elif not include_rejected and "review_status" in manifest.columns:
        manifest = manifest.filter(pl.col("review_status").fill_null("") != "reject")
    if fmt == "czsl":
        return export_czsl(out, manifest)
    if fmt == "imagefolder":
        return export_imagefolder(out, manifest)
    raise CurateError(f"unknown export format {fmt!r}", fix=f"use one of: {', '.join(FORMATS)}")
