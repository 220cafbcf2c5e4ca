"""Pull reviewers' verdicts from FiftyOne into the manifest.

What a reviewer does in the App, and what it becomes in ``manifest.parquet``:

* tag ``reject`` (wins over ``accept``) / ``accept`` -> ``review_status``; removing the tag
  clears it (the push tags samples from the manifest, so FiftyOne always shows the truth);
* edit the ``attr`` or ``obj`` label -> new ``attr``/``obj``/``pair``; the first original is
  kept in ``attr_original``/``obj_original``; a corrected sample with no tag counts as accepted;
* ``review_time`` (UTC, ISO 8601) is set on rows whose verdict or labels changed.

Only changed rows are touched, so pulling twice gives the same manifest (the file is not
even rewritten). Keys FiftyOne holds but the manifest no longer does are reported and
written to ``review_orphans.jsonl``; nothing is deleted on either side.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from curate.dataset import Dataset
from curate.errors import CurateError
from curate.fsutil import write_text
from curate.manifest import manifest_path, read_manifest, write_manifest

from .database import connect

log = logging.getLogger(__name__)

ORPHANS_FILE = "review_orphans.jsonl"
REVIEW_COLUMNS = {"review_status": pl.Utf8, "review_time": pl.Utf8, "attr_original": pl.Utf8,
                  "obj_original": pl.Utf8}


@dataclass
class Verdict:
    key: str
    status: str | None
    attr: str | None
    obj: str | None


@dataclass
class PullReport:
    name: str
    seen: int = 0
    changed: int = 0
    accepted: int = 0
    rejected: int = 0
    corrected: int = 0
    orphans: list[str] = field(default_factory=list)
    written: bool = False


def verdict_from_tags(tags: list[str] | None) -> str | None:
    tags = tags or []
    if "reject" in tags:
        return "reject"
    if "accept" in tags:
        return "accept"
    return None


def read_verdicts(ds: Any) -> list[Verdict]:
    """Every sample's key, verdict and current labels, in four bulk reads."""
    keys, tags, attrs, objs = ds.values(["key", "tags", "attr.label", "obj.label"])
    return [Verdict(k, verdict_from_tags(t), a, o) for k, t, a, o in zip(keys, tags, attrs, objs, strict=True)
            if k is not None]


def _with_review_columns(df: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in REVIEW_COLUMNS.items() if c not in df.columns]
    return df.with_columns(missing) if missing else df


def apply_verdicts(df: pl.DataFrame, verdicts: list[Verdict], now: str) -> tuple[pl.DataFrame, PullReport]:
    """Return the manifest with verdicts applied (only changed rows touched) and the counts."""
    report = PullReport(name="")
    df = _with_review_columns(df)
    rows = {r["key"]: r for r in df.select("key", "attr", "obj", *REVIEW_COLUMNS).iter_rows(named=True)} \
        if {"attr", "obj"} <= set(df.columns) else \
        {r["key"]: {**r, "attr": None, "obj": None} for r in df.select("key", *REVIEW_COLUMNS).iter_rows(named=True)}
    updates = []
    for v in verdicts:
        report.seen += 1
        row = rows.get(v.key)
        if row is None:
            report.orphans.append(v.key)
            continue
        new = dict(row)
        attr_fix = v.attr is not None and v.attr != row["attr"]
        obj_fix = v.obj is not None and v.obj != row["obj"]
        if attr_fix:
            new["attr"] = v.attr
            new["attr_original"] = row["attr_original"] or row["attr"]
        if obj_fix:
            new["obj"] = v.obj
            new["obj_original"] = row["obj_original"] or row["obj"]
        status = v.status or ("accept" if (attr_fix or obj_fix) else None)
        if status is None and row["review_status"] and (row["attr_original"] or row["obj_original"]):
            status = row["review_status"]  # an earlier correction stays accepted until a tag says otherwise
        new["review_status"] = status
        report.accepted += status == "accept"
        report.rejected += status == "reject"
        report.corrected += bool(new["attr_original"] or new["obj_original"])
        if new != row:
            new["review_time"] = now
            updates.append(new)
    report.changed = len(updates)
    if not updates:
        return df, report
    upd = pl.DataFrame(updates, schema={"key": pl.Utf8, "attr": df.schema.get("attr", pl.Utf8),
                                        "obj": df.schema.get("obj", pl.Utf8), **REVIEW_COLUMNS})
    cols = [c for c in upd.columns if c != "key" and (c in REVIEW_COLUMNS or c in df.columns)]
    merged = df.join(upd.select("key", *cols), on="key", how="left", suffix="__new")
    hit = pl.col("key").is_in(upd["key"].to_list())
    merged = merged.with_columns([pl.when(hit).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c) for c in cols])
    if "pair" in df.columns and "attr" in cols:
        merged = merged.with_columns(pl.when(hit).then(pl.col("attr") + " " + pl.col("obj")).otherwise(pl.col("pair"))
                                     .alias("pair"))
    return merged.select(df.columns), report


def pull_verdicts(dataset: Path, name: str | None = None, database_uri: str | None = None) -> PullReport:
    """Write the FiftyOne dataset's verdicts into ``DATASET/manifest.parquet`` (idempotent)."""
    folder = Dataset(dataset)
    name = name or folder.name
    fo = connect(database_uri)
    if not fo.dataset_exists(name):
        raise CurateError(f"no FiftyOne dataset named {name!r}", where=str(folder.path),
                          fix=f"run `curate review {folder.path} --no-launch` first (or pass --name)")
    verdicts = read_verdicts(fo.load_dataset(name))
    df = read_manifest(folder.path, include_rejected=True)
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    out, report = apply_verdicts(df, verdicts, now)
    report.name = name
    if report.changed:
        write_manifest(out, manifest_path(folder.path))
        report.written = True
    if report.orphans:
        write_orphans(folder.path / ORPHANS_FILE, [v for v in verdicts if v.key in set(report.orphans)])
        log.warning("%d verdict(s) are for keys no longer in the manifest (kept in FiftyOne and in %s): %s",
                    len(report.orphans), folder.path / ORPHANS_FILE, ", ".join(report.orphans[:20]))
    return report


def write_orphans(path: Path, verdicts: list[Verdict]) -> None:
    """Keep verdicts the manifest cannot take, one JSON object per line (sorted, rewritten atomically)."""
    lines = [json.dumps(v.__dict__, sort_keys=True) for v in sorted(verdicts, key=lambda v: v.key)]
    write_text(path, "".join(line + "\n" for line in lines))
