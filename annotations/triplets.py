"""Triplets in the App: a grouped FiftyOne dataset, one group per triplet.

Each group holds two slices, ``reference`` and ``target``, both images of the source
dataset (files from the media folder the main sync wrote), with the triplet's edit text,
mode and split on both, so a reviewer flips between slices and reads the instruction.
Re-syncing adds only triplet ids not present yet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from curate.errors import CurateError

from .media import extract_images

log = logging.getLogger(__name__)

TRIPLET_COLUMNS = ("id", "reference", "target", "edit_text")
SLICES = ("reference", "target")


@dataclass
class TripletSyncReport:
    name: str
    added: int = 0
    existing: int = 0
    skipped: list[str] = field(default_factory=list)


def read_triplets(folder: Path) -> pl.DataFrame:
    path = folder / "triplets.parquet" if folder.is_dir() else folder
    if not path.exists():
        raise CurateError("no triplets.parquet", where=str(folder), fix="run `curate triplets DATASET` first, or "
                          "pass --triplets DIR pointing at a folder that holds triplets.parquet")
    df = pl.read_parquet(path)
    missing = [c for c in TRIPLET_COLUMNS if c not in df.columns]
    if missing:
        raise CurateError(f"triplets.parquet lacks column(s) {missing}", where=str(path))
    return df.with_columns(pl.col("id").cast(pl.Utf8))


def _slice_sample(fo: Any, group: Any, role: str, row: dict, filepath: Path) -> Any:
    key = row[role]
    prefix = "ref" if role == "reference" else "tgt"
    fields = {"triplet_id": row["id"], "key": key, "edit_text": row.get("edit_text"), "mode": row.get("mode"),
              "split": row.get("split")}
    for part in ("attr", "obj"):
        label = row.get(f"{prefix}_{part}")
        if label is not None:
            fields[part] = fo.Classification(label=str(label))
    return fo.Sample(filepath=str(filepath), group=group.element(role),
                     **{k: v for k, v in fields.items() if v is not None})


def sync_triplets(fo: Any, triplets_dir: Path, dataset_name: str, manifest: pl.DataFrame, shard_dir: Path,
                  media_dir: Path) -> TripletSyncReport:
    """Create/extend the grouped dataset ``NAME-triplets``; triplets whose images are missing are skipped."""
    df = read_triplets(triplets_dir)
    name = f"{dataset_name}-triplets"
    report = TripletSyncReport(name=name)
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
    else:
        ds = fo.Dataset(name, persistent=True)
        ds.add_group_field("group", default="reference")
    done = set(ds.select_group_slices(SLICES[0]).distinct("triplet_id")) if len(ds) else set()
    todo = df.filter(~pl.col("id").is_in(list(done)))
    report.existing = df.height - todo.height
    keys = set(todo["reference"].to_list()) | set(todo["target"].to_list())
    shard_of = dict(manifest.filter(pl.col("key").is_in(list(keys))).select("key", "shard").iter_rows())
    media = extract_images(shard_dir, shard_of, media_dir)
    samples = []
    for row in todo.iter_rows(named=True):
        if row["reference"] not in media.paths or row["target"] not in media.paths:
            report.skipped.append(row["id"])
            continue
        group = fo.Group()
        samples += [_slice_sample(fo, group, role, row, media.paths[row[role]]) for role in SLICES]
    if samples:
        ds.add_samples(samples, progress=False)
    report.added = len(samples) // 2
    if report.skipped:
        log.warning("%d triplet(s) skipped: reference or target image not in the dataset (e.g. %s)",
                    len(report.skipped), ", ".join(report.skipped[:10]))
    return report
