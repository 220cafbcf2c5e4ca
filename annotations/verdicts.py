"""Pull reviewers' verdicts from FiftyOne into the manifest.

What a reviewer does in the App, and what it becomes in ``manifest.parquet``:

* tag ``reject`` (wins over ``accept``) / ``accept`` -> ``review_status``; removing the tag
  clears it (the push tags samples from the manifest, so FiftyOne always shows the truth);
* edit the ``attr`` or ``obj`` label -> new ``attr``/``obj``; the first original is kept in
  ``attr_original``/``obj_original``; a corrected sample with no tag counts as accepted. Every
  field derived from the labels is recomputed from the folder's own data (``pair``, ``rare``,
  ``family``, ``split``, auxiliary attributes: :mod:`annotations.corrections`); what the data
  cannot decide is written to ``review_flag`` with the reason instead of being guessed;
* ``review_time`` (UTC, ISO 8601) is set on rows whose verdict or labels changed: the time the
  reviewer last edited the sample in FiftyOne (its ``last_modified_at``, or the edit a later
  push kept aside), not the time of the pull.

Only changed rows are touched, so pulling twice gives the same manifest (the file is not
even rewritten). Keys FiftyOne holds but the manifest no longer does are reported and
written to ``review_orphans.jsonl``; nothing is deleted on either side. Verdicts of a FiftyOne
dataset recorded for another folder are refused.
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

from .corrections import DERIVED, Rules
from .database import connect

log = logging.getLogger(__name__)

ORPHANS_FILE = "review_orphans.jsonl"
REVIEW_COLUMNS = {"review_status": pl.Utf8, "review_time": pl.Utf8, "attr_original": pl.Utf8,
                  "obj_original": pl.Utf8, "review_flag": pl.Utf8}


@dataclass
class Verdict:
    key: str
    status: str | None
    attr: str | None
    obj: str | None
    time: str | None = None  # when the reviewer last edited the sample (UTC, ISO 8601), if FiftyOne knows


@dataclass
class PullReport:
    name: str
    seen: int = 0
    changed: int = 0
    accepted: int = 0
    rejected: int = 0
    corrected: int = 0
    orphans: list[str] = field(default_factory=list)
    flagged: dict[str, str] = field(default_factory=dict)  # key -> why its correction needs the user
    written: bool = False


def verdict_from_tags(tags: list[str] | None) -> str | None:
    tags = tags or []
    if "reject" in tags:
        return "reject"
    if "accept" in tags:
        return "accept"
    return None


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.replace(tzinfo=UTC, microsecond=0).isoformat()


def read_verdicts(ds: Any) -> list[Verdict]:
    """Every sample's key, verdict, current labels and the time of its reviewer's last edit, in bulk reads."""
    from .sync import EDITED_AT, SYNCED_AT, reviewer_edit_time

    times = ["created_at", "last_modified_at"] + [f for f in (SYNCED_AT, EDITED_AT) if f in ds.get_field_schema()]
    keys, tags, attrs, objs, *stamps = ds.values(["key", "tags", "attr.label", "obj.label", *times])
    return [Verdict(k, verdict_from_tags(t), a, o, _iso(reviewer_edit_time(dict(zip(times, s, strict=True)))))
            for k, t, a, o, *s in zip(keys, tags, attrs, objs, *stamps, strict=True) if k is not None]


def _with_review_columns(df: pl.DataFrame) -> pl.DataFrame:
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in REVIEW_COLUMNS.items() if c not in df.columns]
    return df.with_columns(missing) if missing else df


def apply_verdicts(df: pl.DataFrame, verdicts: list[Verdict], now: str,
                   folder: Path | None = None) -> tuple[pl.DataFrame, PullReport]:
    """Return the manifest with verdicts applied (only changed rows touched) and the counts.

    ``folder``'s vocabulary, pairs and aux labels (:meth:`Rules.read`) decide the fields a correction
    changes; without a folder only ``pair`` and ``split`` are derived, ``rare``/``family`` flagged.
    ``now`` is the review time of a verdict whose sample FiftyOne records no edit time for."""
    report = PullReport(name="")
    df = _with_review_columns(df)
    labelled = {"attr", "obj"} <= set(df.columns)
    derived = [c for c in DERIVED if c in df.columns]
    cols = ["key", *(["attr", "obj"] if labelled else []), *derived, *REVIEW_COLUMNS]
    rows = {r["key"]: r for r in df.select(cols).iter_rows(named=True)}
    verdicts = sorted(verdicts, key=lambda v: v.key)  # corrections are derived in key order (deterministic)
    rules = Rules.read(folder, df, corrected_keys(rows, verdicts))
    updates = []
    for v in verdicts:
        report.seen += 1
        row = rows.get(v.key)
        if row is None:
            report.orphans.append(v.key)
            continue
        new = dict(row)
        attr_fix = labelled and v.attr is not None and v.attr != row["attr"]
        obj_fix = labelled and v.obj is not None and v.obj != row["obj"]
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
        corrected = bool(new["attr_original"] or new["obj_original"])
        if corrected:  # derived again on every pull: a flag clears once the folder's data can decide
            fields, why = rules.derive(new)
            new.update(fields)
            new["review_flag"] = "; ".join(why) or None
            if why:
                report.flagged[v.key] = new["review_flag"]
        report.accepted += status == "accept"
        report.rejected += status == "reject"
        report.corrected += corrected
        if status != row["review_status"] or attr_fix or obj_fix:
            new["review_time"] = v.time or now
        if new != row:
            updates.append(new)
    report.changed = len(updates)
    if not updates:
        return df, report
    upd = pl.DataFrame(updates, schema={c: df.schema[c] for c in cols})
    merged = df.join(upd, on="key", how="left", suffix="__new")
    hit = pl.col("key").is_in(upd["key"].to_list())
    changed = [c for c in cols if c != "key"]
    merged = merged.with_columns([pl.when(hit).then(pl.col(f"{c}__new")).otherwise(pl.col(c)).alias(c)
                                  for c in changed])
    return merged.select(df.columns), report


def corrected_keys(rows: dict[str, dict], verdicts: list[Verdict]) -> set[str]:
    """Keys whose labels a reviewer corrected, before or in this pull: their split is not the build's."""
    out = {k for k, r in rows.items() if r.get("attr_original") or r.get("obj_original")}
    for v in verdicts:
        r = rows.get(v.key)
        if r is not None and ((v.attr is not None and v.attr != r.get("attr"))
                              or (v.obj is not None and v.obj != r.get("obj"))):
            out.add(v.key)
    return out


def open_for_pull(fo: Any, folder: Dataset, name: str | None) -> Any:
    """The FiftyOne dataset holding this folder's verdicts; one recorded for another folder is refused."""
    from .sync import FOLDER_INFO, check_folder, resolve_name

    chosen = resolve_name(fo, folder.path, name)
    if not fo.dataset_exists(chosen):
        legacy = folder.path.resolve().name
        hint = (f"a dataset named {legacy!r} exists but records no folder: if it was made from this one, pass "
                f"--name {legacy}" if not name and fo.dataset_exists(legacy)
                and not fo.load_dataset(legacy).info.get(FOLDER_INFO) else
                f"run `curate review {folder.path} --no-launch` first" + ("" if name else " (or pass --name)"))
        raise CurateError(f"no FiftyOne dataset named {chosen!r} for this folder", where=str(folder.path), fix=hint)
    ds = fo.load_dataset(chosen)
    check_folder(ds, folder.path, f"curate review pull {folder.path}")
    if not ds.info.get(FOLDER_INFO):
        log.warning("FiftyOne dataset %r records no folder (made by an older curate): pulling it into %s as asked",
                    chosen, folder.path)
    return ds


def pull_verdicts(dataset: Path, name: str | None = None, database_uri: str | None = None) -> PullReport:
    """Write the FiftyOne dataset's verdicts into ``DATASET/manifest.parquet`` (idempotent)."""
    folder = Dataset(dataset)
    fo = connect(database_uri)
    ds = open_for_pull(fo, folder, name)
    verdicts = read_verdicts(ds)
    df = read_manifest(folder.path, include_rejected=True)
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    out, report = apply_verdicts(df, verdicts, now, folder.path)
    report.name = ds.name
    if report.changed:
        write_manifest(out, manifest_path(folder.path))
        report.written = True
    if report.orphans:
        write_orphans(folder.path / ORPHANS_FILE, [v for v in verdicts if v.key in set(report.orphans)])
        log.warning("%d verdict(s) are for keys no longer in the manifest (kept in FiftyOne and in %s): %s",
                    len(report.orphans), folder.path / ORPHANS_FILE, ", ".join(report.orphans[:20]))
    if report.flagged:
        log.warning("%d corrected sample(s) flagged in review_flag: the folder's data cannot decide every field "
                    "their new label changes (e.g. %s: %s); fix the label, reject the sample, or supply what is "
                    "missing and pull again", len(report.flagged), *next(iter(report.flagged.items())))
    return report


def write_orphans(path: Path, verdicts: list[Verdict]) -> None:
    """Keep verdicts the manifest cannot take, one JSON object per line (sorted, rewritten atomically)."""
    lines = [json.dumps(v.__dict__, sort_keys=True) for v in sorted(verdicts, key=lambda v: v.key)]
    write_text(path, "".join(line + "\n" for line in lines))
