"""Push a dataset folder into a persistent FiftyOne dataset, and keep it in step with the manifest.

Why not ``dataset.add_samples``: FiftyOne validates and re-serialises every sample through
its document classes, about 1,500-4,500 samples/s here. The fields we push are fixed and
typed (declared once on the dataset), so we build the Mongo documents ourselves, in the
exact shape FiftyOne stores, and ``insert_many`` them in large batches. A unique index on
``key`` makes duplicates impossible.

A re-sync (after a rebuild, a review pull, a grown dataset) brings FiftyOne in step with the
manifest without touching the reviewers' work:

* keys FiftyOne does not hold yet are inserted;
* samples it holds get the manifest's current values of every pushed field (a new manifest
  column becomes a new field, filled on every sample; a changed score or split is updated; a
  value that became missing is unset), in one bulk write; their image is extracted again when
  its file is gone or its shard changed. Tags and the ``attr``/``obj`` labels are the reviewers'
  (``curate review pull`` writes them back) and are never overwritten; the ``pair`` label is
  derived from them, so it follows the manifest (after a pull, the corrected pair);
* samples whose key left the manifest are tagged ``stale`` (counted, a saved view lists them;
  ``remove_stale`` deletes them instead); a stale key that comes back loses the tag.

One FiftyOne dataset per folder: the default name is the folder's name plus a hash of its
resolved path (two folders both called ``imagenet-ao`` get two datasets), the dataset's
``info["curate_dataset"]`` records the folder, and a dataset recorded for another folder is
refused (push and pull), never mixed.

When the sync changes a sample it sets ``last_modified_at`` as FiftyOne does, and keeps the time
of the reviewer's last edit it would hide in ``review_edited_at`` (``curate_synced_at`` marks its
own writes): ``pull`` reads the review time from these (:func:`reviewer_edit_time`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.dataset import Dataset
from curate.errors import CurateError
from curate.index import near_duplicate_pairs
from curate.log import progress_bar

from .aux_labels import pair_key, read_aux_labels
from .corrections import AUX_FILE
from .database import connect
from .media import default_media_dir, extract_images

log = logging.getLogger(__name__)

LABEL_FIELDS = ("attr", "obj", "pair")
REVIEWER_LABELS = ("attr", "obj")  # the reviewers' (never overwritten); ``pair`` is derived from them
FOLDER_INFO = "curate_dataset"     # the FiftyOne dataset's info key: the folder it was made from
SYNCED_AT = "curate_synced_at"     # when a sync last changed the sample
EDITED_AT = "review_edited_at"     # the reviewer's last edit before that sync
FLAG_FIELD = "review_flag"         # manifest column: why a correction's derived fields could not be decided
# manifest columns that must not become fields: ours, and FiftyOne's own sample fields
RESERVED = {"id", "_id", "filepath", "tags", "metadata", "media_type", "created_at", "last_modified_at",
            "image_sha1", "dup_group", "aux_attrs", "embedding", "group", SYNCED_AT, EDITED_AT}
SKIP_COLUMNS = {"key", *LABEL_FIELDS, *RESERVED}
VERDICT_TAGS = ("accept", "reject")
STALE_TAG = "stale"
INSERT_BATCH = 5000
UPDATE_BATCH = 2000
DUP_THRESHOLD = 0.97


@dataclass
class SyncConfig:
    """What to push: the folder, the FiftyOne dataset name, where images go, the database."""

    dataset: Path
    name: str | None = None
    media_dir: Path | None = None
    database_uri: str | None = None
    max_pair_views: int = 1000
    dup_threshold: float = DUP_THRESHOLD
    remove_stale: bool = False  # delete samples that left the manifest (default: tag them ``stale``)


@dataclass
class SyncReport:
    name: str
    added: int = 0
    existing: int = 0
    updated: int = 0          # existing samples whose fields changed
    media_refreshed: int = 0  # existing samples whose image file was written again (gone, or changed)
    stale: int = 0            # samples whose key left the manifest (tagged, or removed)
    stale_removed: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)
    aux_matched: int = 0
    embeddings: bool = False
    dup_groups: int = 0
    views: list[str] = field(default_factory=list)
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step, for benchmarks

    @property
    def rate(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


# -- schema ------------------------------------------------------------------------------
def _fo_field_for(dtype: pl.DataType) -> Any | None:
    import fiftyone as fo

    if dtype == pl.Utf8:
        return fo.StringField
    if dtype.is_float():
        return fo.FloatField
    if dtype.is_integer():
        return fo.IntField
    if dtype == pl.Boolean:
        return fo.BooleanField
    return None  # lists, structs, datetimes: not shown in the App


def _scalar_columns(df: pl.DataFrame) -> dict[str, Any]:
    out = {}
    for name, dtype in df.schema.items():
        if name in SKIP_COLUMNS:
            continue
        kind = _fo_field_for(dtype)
        if kind is not None:
            out[name] = kind
    return out


def _declare_schema(ds: Any, scalars: dict[str, Any], with_embedding: bool) -> None:
    """Declare the fields we push, all in one schema merge (one dataset reload, not one per field)."""
    import fiftyone as fo

    schema = ds.get_field_schema()
    wanted: dict[str, Any] = {"key": fo.StringField(), "image_sha1": fo.StringField(), "dup_group": fo.StringField(),
                              "aux_attrs": fo.ListField(fo.StringField()), SYNCED_AT: fo.DateTimeField(),
                              EDITED_AT: fo.DateTimeField()}
    for f in LABEL_FIELDS:
        wanted[f] = fo.EmbeddedDocumentField(fo.Classification)
    for name, kind in scalars.items():
        wanted[name] = kind()
    if with_embedding:
        wanted["embedding"] = fo.VectorField()
    missing = {name: f for name, f in wanted.items() if name not in schema}
    if missing:
        ds._merge_sample_field_schema(missing)
    if "key" not in ds.list_indexes():
        ds.create_index("key", unique=True)


# -- documents ---------------------------------------------------------------------------
class ObjectIds:
    """Unique ObjectIds made from their parts (time, a random process part, a counter): ten times
    cheaper than ``ObjectId()``, whose generator takes a lock and a pid check per id."""

    def __init__(self) -> None:
        from bson import ObjectId

        self.make = ObjectId
        self.prefix = int(time.time()).to_bytes(4, "big") + os.urandom(5)
        self.counter = int.from_bytes(os.urandom(3), "big")
        self.start = self.counter

    def __call__(self) -> Any:
        self.counter = (self.counter + 1) & 0xFFFFFF
        if self.counter == self.start:  # 2**24 ids made: a new random part keeps them unique
            self.prefix = self.prefix[:4] + os.urandom(5)
        return self.make(self.prefix + self.counter.to_bytes(3, "big"))


def _classification(label: Any, new_id: Any = None) -> dict | None:
    if label is None:
        return None
    if new_id is None:
        from bson import ObjectId as new_id
    return {"_id": new_id(), "_cls": "Classification", "tags": [], "label": str(label)}


def new_documents(df: pl.DataFrame, paths: dict[str, Path], sha1: dict[str, str], ds_id: Any, now: datetime,
                  scalars: dict[str, Any], derived: dict[str, list[Any]]) -> list[dict]:
    """Sample documents in the shape ``Dataset._make_dict`` produces (Nones omitted), built column by
    column; rows without an extracted image are left out. ``derived``: more fields, one list each."""
    new_id = ObjectIds()
    n = df.height
    clean = df.with_columns([pl.col(c).fill_nan(None) for c, t in df.schema.items() if t.is_float()])
    keys = clean["key"].to_list()
    status = clean["review_status"].to_list() if "review_status" in clean.columns else [None] * n
    labels = {f: clean[f].to_list() for f in LABEL_FIELDS if f in clean.columns}
    values = {c: clean[c].to_list() for c in scalars}
    docs = []
    label_cols = list(labels.items())
    value_cols = list(values.items()) + list(derived.items())
    rand = random.random
    for i, key in enumerate(keys):
        path = paths.get(key)
        if path is None:
            continue
        doc: dict[str, Any] = {
            "_id": new_id(), "filepath": str(path),
            "tags": [status[i]] if status[i] in VERDICT_TAGS else [],
            "_media_type": "image", "_rand": rand() * 0.001 + 0.999,
            "_dataset_id": ds_id, "created_at": now, "last_modified_at": now,
            "key": key, "image_sha1": sha1[key],
        }
        for f, col in label_cols:
            if col[i] is not None:
                doc[f] = {"_id": new_id(), "_cls": "Classification", "tags": [], "label": str(col[i])}
        for name, col in value_cols:
            v = col[i]
            if v is not None:
                doc[name] = v
        docs.append(doc)
    return docs


def _load_embeddings(folder: Path) -> tuple[list[str], np.ndarray] | None:
    """Embeddings via ``curate.embed.store`` when that module and the folder exist, else None."""
    base = folder / "embeddings"
    if not (base / "img_emb").exists():
        return None
    try:
        from curate.embed.store import read_embeddings
    except ImportError:
        log.info("curate.embed.store not available; embeddings not pushed")
        return None
    try:
        keys, matrix = read_embeddings(base, kind="img")
    except Exception as e:  # noqa: BLE001 - optional extra: a broken folder must not stop review
        log.warning("%s: embeddings not readable (%s); pushed without them", base, e)
        return None
    return list(keys), np.asarray(matrix, dtype=np.float32)


# -- the sync ----------------------------------------------------------------------------
def default_name(folder: Path) -> str:
    """``NAME-HASH``: the folder's name and 8 hex digits of its resolved path's SHA-1, unique per folder."""
    path = folder.resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def resolve_name(fo: Any, folder: Path, name: str | None) -> str:
    """The FiftyOne dataset of ``folder``: ``name`` when given, else :func:`default_name`.

    A dataset an older curate named after the bare folder name is used (and kept under that name)
    when it records this very folder and no dataset has the new name yet, so reviews made before
    names were unique are not orphaned. One that records no folder is not guessed at."""
    if name:
        return name
    unique = default_name(folder)
    legacy = folder.resolve().name
    if fo.dataset_exists(unique) or not fo.dataset_exists(legacy):
        return unique
    made_for = fo.load_dataset(legacy).info.get(FOLDER_INFO)
    if made_for == str(folder.resolve()):
        log.info("using FiftyOne dataset %r, made for %s before dataset names were unique per folder", legacy,
                 made_for)
        return legacy
    if not made_for:
        log.warning("FiftyOne dataset %r (an older curate's default name for this folder) records no folder and is "
                    "not used: if it holds this folder's reviews, pass --name %s", legacy, legacy)
    return unique


def check_folder(ds: Any, folder: Path, command: str) -> None:
    """Refuse a FiftyOne dataset recorded for another folder: its samples and verdicts are that folder's."""
    made_for = ds.info.get(FOLDER_INFO)
    here = str(folder.resolve())
    if made_for and made_for != here:
        raise CurateError(f"FiftyOne dataset {ds.name!r} holds the samples and verdicts of another folder, {made_for}",
                          where=here, fix=f"run `{command}` without --name (each folder gets its own dataset, "
                          f"{default_name(folder)!r} for this one), or pass the folder {made_for}")


def open_fo_dataset(fo: Any, name: str, source: Path) -> Any:
    """Load the persistent dataset ``name`` (created when absent, media type ``image``), recording its
    source folder; a dataset recorded for another folder is refused. A dataset an older curate made
    without a media type gets ``image``; one that records no folder is taken over for ``source``."""
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        check_folder(ds, source, f"curate review {source}")
    else:
        ds = fo.Dataset(name, persistent=True)
    if ds.media_type is None:
        if len(ds):  # samples inserted as documents by an older version: every one is an image
            ds._set_media_type("image")
        else:
            ds.media_type = "image"
    ds.info[FOLDER_INFO] = str(source.resolve())
    ds.save()
    return ds


def insert_documents(ds: Any, docs: list[dict], advance=lambda n: None) -> None:
    """``insert_many`` in large unordered batches straight into the dataset's sample collection."""
    coll = ds._sample_collection
    for i in range(0, len(docs), INSERT_BATCH):
        batch = docs[i:i + INSERT_BATCH]
        coll.insert_many(batch, ordered=False)
        advance(len(batch))


def _current_documents(ds: Any, fields: list[str]) -> dict[str, dict]:
    """key -> the stored document (projected on ``fields``), read raw: no deserialisation."""
    if not len(ds):
        return {}
    proj = {f: 1 for f in fields}
    return {d["key"]: d for d in ds._sample_collection.find({"key": {"$exists": True}}, proj)}


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and np.isnan(v))


def field_updates(doc: dict, row: dict, scalars: dict[str, Any], extra: dict[str, Any]) -> tuple[dict, list[str]]:
    """``$set`` and ``$unset`` bringing a stored sample in step with its manifest row.

    Scalars follow the manifest (a missing value is unset); ``attr``/``obj`` are filled only where
    FiftyOne has none (reviewers own them), ``pair`` follows the manifest; ``extra`` holds derived
    fields (aux attributes, embedding, metadata) to set when they differ."""
    sets: dict[str, Any] = {}
    unsets: list[str] = []
    for name in scalars:
        v = row.get(name)
        if _missing(v):
            if name in doc:
                unsets.append(name)
        elif doc.get(name) != v:
            sets[name] = v
    for f in LABEL_FIELDS:
        have = (doc.get(f) or {}).get("label")
        if have is None or (f not in REVIEWER_LABELS and row.get(f) is not None and have != str(row[f])):
            c = _classification(row.get(f))
            if c is not None:
                sets[f] = c
    for name, v in extra.items():
        if v is None:
            if name in doc and name != "metadata":  # metadata FiftyOne computed itself stays
                unsets.append(name)
        elif name == "metadata":
            have = doc.get(name) or {}
            if (have.get("width"), have.get("height")) != (v["width"], v["height"]):
                sets[name] = {**have, **v}
        elif doc.get(name) != v:
            sets[name] = v
    return sets, unsets


def reviewer_edit_time(doc: dict) -> datetime | None:
    """When a reviewer (the App, the SDK) last changed the sample: ``last_modified_at`` when it is later
    than the sample's insert and curate's last write to it, else the edit that write kept aside."""
    modified = doc.get("last_modified_at")
    ours = doc.get(SYNCED_AT) or doc.get("created_at")
    if modified is not None and (ours is None or modified > ours):
        return modified
    return doc.get(EDITED_AT)


def synced(doc: dict, now: datetime) -> dict[str, Any]:
    """``$set`` of a sync's write to a sample: FiftyOne's ``last_modified_at``, our mark, and the
    reviewer's last edit kept aside (it would otherwise be hidden by this write)."""
    out: dict[str, Any] = {"last_modified_at": now, SYNCED_AT: now}
    edited = reviewer_edit_time(doc)
    if edited is not None:
        out[EDITED_AT] = edited
    return out


def _metadata(row: dict) -> dict | None:
    if row.get("width") and row.get("height"):
        return {"_cls": "ImageMetadata", "width": int(row["width"]), "height": int(row["height"])}
    return None


class DerivedFields:
    """Fields computed per manifest row: auxiliary attributes (by pair), metadata, embedding."""

    def __init__(self, aux: Any, emb: tuple[list[str], np.ndarray] | None) -> None:
        self.aux, self.emb = aux, emb
        self.emb_index = {k: i for i, k in enumerate(emb[0])} if emb else {}
        self.pair_words: dict[str, list[str] | None] = {}

    def __call__(self, part: pl.DataFrame) -> dict[str, list[Any]]:
        """Field name -> one value per row of ``part`` (None: no value)."""
        pairs = part["pair"].to_list() if "pair" in part.columns else \
            [f"{a} {o}" for a, o in zip(part["attr"].to_list(), part["obj"].to_list(), strict=True)] \
            if {"attr", "obj"} <= set(part.columns) else [None] * part.height
        words = []
        for p in pairs:
            if p not in self.pair_words:
                self.pair_words[p] = self.aux.by_pair.get(pair_key(p) or "") or None
            words.append(self.pair_words[p])
        w = part["width"].to_list() if "width" in part.columns else [None] * part.height
        h = part["height"].to_list() if "height" in part.columns else [None] * part.height
        out = {"aux_attrs": words, "metadata": [_metadata({"width": a, "height": b}) for a, b in zip(w, h, strict=True)]}
        if self.emb is not None:
            emb, emb_index = self.emb, self.emb_index
            out["embedding"] = [None if emb_index.get(k) is None else _embedding_bytes(emb[1][emb_index[k]])
                                for k in part["key"].to_list()]
        return out


def _lap(report: SyncReport, phase: str, t0: float) -> None:
    """``report.phases[phase]``: the seconds since the previous phase ended (since ``t0`` for the first)."""
    report.phases[phase] = time.perf_counter() - t0 - sum(report.phases.values())


def _images_wanted(new: pl.DataFrame, old: pl.DataFrame, current: dict[str, dict]) -> tuple[dict, dict]:
    """key -> shard of the images to extract: new keys, and existing ones whose file is gone or whose shard
    changed; and key -> (file, image hash) of the latter, ``extract_images``'s ``keep``."""
    refresh = {r["key"]: r for r in old.select("key", "shard").iter_rows(named=True)
               if current[r["key"]].get("shard", r["shard"]) != r["shard"]
               or not os.path.exists(current[r["key"]].get("filepath", ""))}
    wanted = dict(new.select("key", "shard").iter_rows())
    wanted.update({k: r["shard"] for k, r in refresh.items()})
    keep = {k: (current[k].get("filepath", ""), current[k].get("image_sha1", "")) for k in refresh}
    return wanted, keep


def _extract(folder: Dataset, wanted: dict, media_dir: Path, keep: dict, report: SyncReport) -> Any:
    """Extract the wanted images (a progress bar), warn of broken shards and of rows without an image
    (``report.missing``); returns ``extract_images``'s result."""
    with progress_bar("extract images", total=len(wanted), unit="images") as advance:
        media = extract_images(folder.shard_dir, wanted, media_dir, advance, keep=keep)
    for shard, err in media.shard_errors.items():
        log.warning("shard %s: %s", shard, err)
    report.missing = media.missing  # new samples skipped; existing ones keep their (missing) file
    if report.missing:
        log.warning("%d manifest row(s) have no image in their shard and were skipped: %s", len(report.missing),
                    ", ".join(report.missing[:20]) + (" ..." if len(report.missing) > 20 else ""))
    return media


def _new_documents(new: pl.DataFrame, media: Any, ds_id: Any, now: datetime, scalars: dict[str, Any],
                   derived: DerivedFields, report: SyncReport) -> list[dict]:
    """The documents of the new keys that have an image; counts their auxiliary attributes found."""
    extra_new = derived(new)
    docs = new_documents(new, media.paths, media.sha1, ds_id, now, scalars, extra_new)
    report.aux_matched += sum(w is not None for k, w in zip(new["key"].to_list(), extra_new["aux_attrs"], strict=True)
                              if k in media.paths)
    return docs


def _update_ops(old: pl.DataFrame, current: dict[str, dict], media: Any, extra_old: dict[str, list[Any]],
                scalars: dict[str, Any], now: datetime, report: SyncReport) -> list:
    """``UpdateOne``s bringing the samples FiftyOne holds in step with their manifest rows: fields, images
    extracted again, the ``stale`` tag of a key that came back; counts into ``report``."""
    from pymongo import UpdateOne

    ops = []
    for i, row in enumerate(old.iter_rows(named=True)):
        doc = current[row["key"]]
        extra = {name: col[i] for name, col in extra_old.items()}
        report.aux_matched += extra["aux_attrs"] is not None
        if row["key"] in media.paths:
            extra["filepath"] = str(media.paths[row["key"]])
            extra["image_sha1"] = media.sha1[row["key"]]
            report.media_refreshed += row["key"] not in media.reused
        sets, unsets = field_updates(doc, row, scalars, extra)
        pull = STALE_TAG in (doc.get("tags") or [])
        if sets or unsets or pull:
            update: dict[str, Any] = {"$set": {**sets, **synced(doc, now)}}
            if unsets:
                update["$unset"] = dict.fromkeys(unsets, "")
            if pull:
                update["$pull"] = {"tags": STALE_TAG}
            ops.append(UpdateOne({"_id": doc["_id"]}, update))
            report.updated += bool(sets or unsets)
    return ops


def _stale_ops(ds: Any, current: dict[str, dict], in_manifest: set[str], remove: bool, now: datetime,
               report: SyncReport) -> list:
    """Samples whose key left the manifest: deleted now (``remove``), else the ``UpdateOne``s tagging them
    ``stale`` (those not tagged yet)."""
    from pymongo import UpdateOne

    ops = []
    stale = [d for k, d in current.items() if k not in in_manifest]
    report.stale = len(stale)
    if stale and remove:
        ds.delete_samples([str(d["_id"]) for d in stale])
        report.stale_removed = len(stale)
    elif stale:
        ops = [UpdateOne({"_id": d["_id"]}, {"$addToSet": {"tags": STALE_TAG}, "$set": synced(d, now)})
               for d in stale if STALE_TAG not in (d.get("tags") or [])]
        log.warning("%d FiftyOne sample(s) are no longer in the manifest: tagged %r (saved view 'stale'; "
                    "pass --remove-stale to delete them)", len(stale), STALE_TAG)
    return ops


def _bulk_write(ds: Any, ops: list) -> None:
    """The updates in unordered batches, then the dataset reloaded."""
    coll = ds._sample_collection
    for i in range(0, len(ops), UPDATE_BATCH):
        coll.bulk_write(ops[i:i + UPDATE_BATCH], ordered=False)
    ds.reload()


def _held_after(current: dict[str, dict], in_manifest: set[str], remove_stale: bool, media: Any,
                docs: list[dict]) -> Held:
    """What FiftyOne holds after the sync, without reading it back: the samples it held (less those
    removed), images extracted again, and the inserted documents."""
    held = Held()
    for k, d in current.items():
        if not (remove_stale and k not in in_manifest):
            held.ids[k], held.sha1[k], held.dup_group[k] = d["_id"], d.get("image_sha1"), d.get("dup_group")
    for k, h in media.sha1.items():
        held.sha1[k] = h
    for d in docs:
        held.ids[d["key"]], held.sha1[d["key"]], held.dup_group[d["key"]] = d["_id"], d["image_sha1"], None
    return held


def sync_dataset(cfg: SyncConfig) -> SyncReport:
    """Create or update the FiftyOne dataset for ``cfg.dataset``; returns what was done."""
    folder = Dataset(cfg.dataset)  # validates the folder and the manifest before fiftyone starts
    fo = connect(cfg.database_uri)  # not timed: starting the embedded database is not the sync's work
    name = resolve_name(fo, folder.path, cfg.name)
    media_dir = cfg.media_dir or default_media_dir(name)
    t0 = time.perf_counter()
    df = folder.manifest(include_rejected=True)  # reviewers must see rejected samples to undo them
    ds = open_fo_dataset(fo, name, folder.path)
    report = SyncReport(name=name)

    emb = _load_embeddings(folder.path)
    report.embeddings = emb is not None
    scalars = _scalar_columns(df)
    _declare_schema(ds, scalars, with_embedding=emb is not None)
    current = _current_documents(ds, ["_id", "key", "filepath", "tags", "image_sha1", "metadata", "aux_attrs",
                                      "embedding", "dup_group", "created_at", "last_modified_at", SYNCED_AT,
                                      EDITED_AT, *LABEL_FIELDS, *scalars])
    in_manifest = set(df["key"].to_list())
    new = df.filter(~pl.col("key").is_in(list(current)))
    old = df.filter(pl.col("key").is_in(list(current)))
    report.existing = old.height
    derived = DerivedFields(read_aux_labels(folder.path / AUX_FILE), emb)
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)

    # images: new keys, and existing ones whose file is gone or whose shard changed
    wanted, keep = _images_wanted(new, old, current)
    _lap(report, "prepare", t0)
    media = _extract(folder, wanted, media_dir, keep, report)
    _lap(report, "extract", t0)

    docs = _new_documents(new, media, ds._doc.id, now, scalars, derived, report)
    _lap(report, "documents", t0)
    with progress_bar("add to FiftyOne", total=len(docs), unit="samples") as advance:
        insert_documents(ds, docs, advance)
    report.added = len(docs)
    _lap(report, "insert", t0)

    # existing samples: fields in step with the manifest, images refreshed, stale ones marked
    ops = _update_ops(old, current, media, derived(old), scalars, now, report)
    ops += _stale_ops(ds, current, in_manifest, cfg.remove_stale, now, report)
    _bulk_write(ds, ops)
    _lap(report, "update", t0)
    held = _held_after(current, in_manifest, cfg.remove_stale, media, docs)
    report.dup_groups = mark_near_duplicates(ds, emb, cfg.dup_threshold, held)
    _lap(report, "near-duplicates", t0)
    report.views = save_views(ds, cfg.max_pair_views)
    _lap(report, "views", t0)
    report.total = len(ds)
    report.seconds = time.perf_counter() - t0
    return report


def _embedding_bytes(vector: np.ndarray) -> bytes:
    from fiftyone.core.utils import serialize_numpy_array

    return serialize_numpy_array(np.asarray(vector, dtype=np.float32))


# -- near-duplicates and saved views -----------------------------------------------------
def _groups(keys: list[str], pairs: list[tuple[int, int]]) -> dict[str, str]:
    """Union-find over index pairs; each member maps to its group's smallest key."""
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(len(keys)):
        members.setdefault(find(i), []).append(i)
    out = {}
    for idx in members.values():
        if len(idx) > 1:
            label = min(keys[i] for i in idx)
            out.update({keys[i]: label for i in idx})
    return out


@dataclass
class Held:
    """What the FiftyOne dataset holds after the inserts, per key: id, image hash, duplicate group."""

    ids: dict[str, Any] = field(default_factory=dict)
    sha1: dict[str, str | None] = field(default_factory=dict)
    dup_group: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def read(cls, ds: Any) -> Held:
        keys, ids, sha, groups = ds.values(["key", "_id", "image_sha1", "dup_group"])
        held = cls()
        for k, i, h, g in zip(keys, ids, sha, groups, strict=True):
            if k is not None:
                held.ids[k], held.sha1[k], held.dup_group[k] = i, h, g
        return held


def mark_near_duplicates(ds: Any, emb: tuple[list[str], np.ndarray] | None, threshold: float,
                         held: Held | None = None) -> int:
    """Set ``dup_group`` on near-duplicates: by embedding cosine when present, else identical bytes.

    ``held`` (what the sync already knows the dataset holds) saves reading it back."""
    from pymongo import UpdateOne

    held = held or Held.read(ds)
    keys = list(held.ids)
    if emb is not None:
        sel = [i for i, k in enumerate(emb[0]) if k in held.ids]
        ekeys = [emb[0][i] for i in sel]
        groups = _groups(ekeys, near_duplicate_pairs(np.asarray(emb[1][sel]), threshold))
    else:
        by_hash: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            h = held.sha1.get(k)
            if h:
                by_hash.setdefault(h, []).append(i)
        pairs = [(idx[0], j) for idx in by_hash.values() if len(idx) > 1 for j in idx[1:]]
        groups = _groups(keys, pairs)
    ops = [UpdateOne({"_id": held.ids[k]}, {"$set": {"dup_group": groups[k]}} if groups.get(k) is not None
                     else {"$unset": {"dup_group": ""}})
           for k in keys if held.dup_group.get(k) != groups.get(k)]
    for i in range(0, len(ops), UPDATE_BATCH):
        ds._sample_collection.bulk_write(ops[i:i + UPDATE_BATCH], ordered=False)
    return len(set(groups.values()))


def save_views(ds: Any, max_pair_views: int) -> list[str]:
    """Saved views: lowest composition score first, reviewed/unreviewed, near-duplicates, stale, flagged
    corrections, one per pair.

    The per-pair views are written in one batch (one insert of view documents, one update of the
    dataset document) instead of ``save_view`` per pair, which reloads and saves the dataset
    document each time."""
    from fiftyone import ViewField as F

    schema = ds.get_field_schema()
    views: dict[str, Any] = {}
    score = "score_comp" if "score_comp" in schema else next((f for f in schema if f.startswith("score_")), None)
    if score:
        views["lowest composition score"] = ds.exists(score).sort_by(score)
    views["near-duplicates"] = ds.exists("dup_group").sort_by("dup_group")
    views["rejected"] = ds.match_tags("reject")
    views["unreviewed"] = ds.match_tags(list(VERDICT_TAGS), bool=False)
    views[STALE_TAG] = ds.match_tags(STALE_TAG)
    if FLAG_FIELD in schema:
        views["flagged corrections"] = ds.exists(FLAG_FIELD)
    for name, view in views.items():
        ds.save_view(name, view, overwrite=True)
    pairs = sorted(p for p in ds.distinct("pair.label") if p)
    if len(pairs) > max_pair_views:
        log.warning("%d pairs: saving views for the first %d only (raise --max-pair-views)", len(pairs),
                    max_pair_views)
    saved = save_match_views(ds, {f"pair {p}": F("pair.label") == p for p in pairs[:max_pair_views]})
    return list(views) + saved


def save_match_views(ds: Any, filters: dict[str, Any]) -> list[str]:
    """Save ``name -> ds.match(filter)`` views not saved yet, in bulk; returns every name now saved.

    Two names with the same slug keep the first (as ``save_view`` would refuse the second)."""
    from datetime import datetime as _dt

    import fiftyone.core.odm as foo
    import fiftyone.core.stages as fos
    import fiftyone.core.utils as fou
    from bson import json_util

    ds._doc.reload("saved_views")
    have = {v.slug for v in ds._doc.get_saved_views()}
    names = {v.name for v in ds._doc.get_saved_views()}
    now = _dt.utcnow()
    docs = []
    for name, expr in filters.items():
        slug = fou.to_slug(name)
        if slug in have:
            continue
        have.add(slug)
        stage = json_util.dumps(fos.Match(expr)._serialize(include_uuid=False))
        docs.append(foo.SavedViewDocument(dataset_id=ds._doc.id, name=name, slug=slug, view_stages=[stage],
                                          created_at=now, last_modified_at=now))
    if docs:
        coll = foo.SavedViewDocument._get_collection()
        result = coll.insert_many([d.to_mongo() for d in docs])
        for d, _id in zip(docs, result.inserted_ids, strict=True):
            d.id = _id
        ds._doc.saved_views.extend(docs)
        ds._doc.last_modified_at = now
        ds._doc.save(virtual=True)
        names |= {d.name for d in docs}
    return [n for n in filters if n in names]
