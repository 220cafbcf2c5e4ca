"""Push a dataset folder into a persistent FiftyOne dataset, incrementally.

Why not ``dataset.add_samples``: FiftyOne validates and re-serialises every sample through
its document classes, about 1,500-4,500 samples/s here. The fields we push are fixed and
typed (declared once on the dataset), so we build the Mongo documents ourselves, in the
exact shape FiftyOne stores, and ``insert_many`` them in large batches. A unique index on
``key`` makes duplicates impossible; a re-sync inserts only keys FiftyOne does not hold yet,
so reviewers' tags and label edits on existing samples are never touched.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.dataset import Dataset
from curate.index import near_duplicate_pairs
from curate.log import progress_bar

from .aux_labels import pair_key, read_aux_labels
from .database import connect
from .media import default_media_dir, extract_images

log = logging.getLogger(__name__)

LABEL_FIELDS = ("attr", "obj", "pair")
SKIP_COLUMNS = {"key", *LABEL_FIELDS}
VERDICT_TAGS = ("accept", "reject")
INSERT_BATCH = 5000
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


@dataclass
class SyncReport:
    name: str
    added: int = 0
    existing: int = 0
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
    import fiftyone as fo

    schema = ds.get_field_schema()
    wanted: dict[str, dict] = {"key": {"ftype": fo.StringField}, "image_sha1": {"ftype": fo.StringField},
                               "dup_group": {"ftype": fo.StringField},
                               "aux_attrs": {"ftype": fo.ListField, "subfield": fo.StringField}}
    for f in LABEL_FIELDS:
        wanted[f] = {"ftype": fo.EmbeddedDocumentField, "embedded_doc_type": fo.Classification}
    for name, kind in scalars.items():
        wanted[name] = {"ftype": kind}
    if with_embedding:
        wanted["embedding"] = {"ftype": fo.VectorField}
    for name, kw in wanted.items():
        if name not in schema:
            ds.add_sample_field(name, **kw)
    if "key" not in ds.list_indexes():
        ds.create_index("key", unique=True)


# -- documents ---------------------------------------------------------------------------
def _classification(label: Any) -> dict | None:
    from bson import ObjectId

    if label is None:
        return None
    return {"_id": ObjectId(), "_cls": "Classification", "tags": [], "label": str(label)}


def _document(row: dict, filepath: Path, sha1: str, ds_id: Any, now: datetime, scalars: dict[str, Any]) -> dict:
    """One sample document in the shape ``Dataset._make_dict`` produces (Nones omitted)."""
    from bson import ObjectId

    status = row.get("review_status")
    doc: dict[str, Any] = {
        "_id": ObjectId(), "filepath": str(filepath),
        "tags": [status] if status in VERDICT_TAGS else [],
        "_media_type": "image", "_rand": random.random() * 0.001 + 0.999,
        "_dataset_id": ds_id, "created_at": now, "last_modified_at": now,
        "key": row["key"], "image_sha1": sha1,
    }
    if row.get("width") and row.get("height"):
        doc["metadata"] = {"_cls": "ImageMetadata", "width": int(row["width"]), "height": int(row["height"])}
    for f in LABEL_FIELDS:
        c = _classification(row.get(f))
        if c is not None:
            doc[f] = c
    for name in scalars:
        v = row.get(name)
        if v is not None and not (isinstance(v, float) and np.isnan(v)):
            doc[name] = v
    return doc


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
def open_fo_dataset(fo: Any, name: str, source: Path) -> Any:
    """Load the persistent dataset ``name`` (created when absent), remembering its source folder."""
    if fo.dataset_exists(name):
        ds = fo.load_dataset(name)
        prev = ds.info.get("curate_dataset")
        if prev and prev != str(source.resolve()):
            log.warning("FiftyOne dataset %r was made from %s, now syncing %s (use --name to keep them apart)",
                        name, prev, source.resolve())
    else:
        ds = fo.Dataset(name, persistent=True)
    ds.info["curate_dataset"] = str(source.resolve())
    ds.save()
    return ds


def insert_documents(ds: Any, docs: list[dict], advance=lambda n: None) -> None:
    """``insert_many`` in large unordered batches straight into the dataset's sample collection."""
    coll = ds._sample_collection
    for i in range(0, len(docs), INSERT_BATCH):
        batch = docs[i:i + INSERT_BATCH]
        coll.insert_many(batch, ordered=False)
        advance(len(batch))


def sync_dataset(cfg: SyncConfig) -> SyncReport:
    """Create or update the FiftyOne dataset for ``cfg.dataset``; returns what was done."""
    t0 = time.perf_counter()
    folder = Dataset(cfg.dataset)  # validates the folder and the manifest before fiftyone starts
    df = folder.manifest(include_rejected=True)  # reviewers must see rejected samples to undo them
    name = cfg.name or folder.name
    media_dir = cfg.media_dir or default_media_dir(name)
    fo = connect(cfg.database_uri)
    ds = open_fo_dataset(fo, name, folder.path)
    report = SyncReport(name=name)

    existing = set(ds.distinct("key")) if "key" in ds.get_field_schema() else set()
    new = df.filter(~pl.col("key").is_in(list(existing)))
    report.existing = len(existing & set(df["key"].to_list()))
    emb = _load_embeddings(folder.path)
    report.embeddings = emb is not None
    scalars = _scalar_columns(df)
    _declare_schema(ds, scalars, with_embedding=emb is not None)

    report.phases["prepare"] = time.perf_counter() - t0
    with progress_bar("extract images", total=new.height, unit="images") as advance:
        media = extract_images(folder.shard_dir, dict(new.select("key", "shard").iter_rows()), media_dir, advance)
    for shard, err in media.shard_errors.items():
        log.warning("shard %s: %s", shard, err)
    report.missing = media.missing
    if media.missing:
        log.warning("%d manifest row(s) have no image in their shard and were skipped: %s", len(media.missing),
                    ", ".join(media.missing[:20]) + (" ..." if len(media.missing) > 20 else ""))

    report.phases["extract"] = time.perf_counter() - t0 - sum(report.phases.values())
    aux = read_aux_labels(folder.path / "aux_label.jsonl")
    emb_index = {k: i for i, k in enumerate(emb[0])} if emb else {}
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    docs = []
    for row in new.iter_rows(named=True):
        key = row["key"]
        if key not in media.paths:
            continue
        doc = _document(row, media.paths[key], media.sha1[key], ds._doc.id, now, scalars)
        words = aux.by_pair.get(pair_key(row.get("pair") or f"{row.get('attr')} {row.get('obj')}") or "")
        if words:
            doc["aux_attrs"] = words
            report.aux_matched += 1
        if key in emb_index:
            from fiftyone.core.utils import serialize_numpy_array

            doc["embedding"] = serialize_numpy_array(emb[1][emb_index[key]])
        docs.append(doc)
    report.phases["documents"] = time.perf_counter() - t0 - sum(report.phases.values())
    with progress_bar("add to FiftyOne", total=len(docs), unit="samples") as advance:
        insert_documents(ds, docs, advance)
    report.added = len(docs)
    ds.reload()
    report.phases["insert"] = time.perf_counter() - t0 - sum(report.phases.values())
    report.dup_groups = mark_near_duplicates(ds, emb, cfg.dup_threshold)
    report.phases["near-duplicates"] = time.perf_counter() - t0 - sum(report.phases.values())
    report.views = save_views(ds, cfg.max_pair_views)
    report.phases["views"] = time.perf_counter() - t0 - sum(report.phases.values())
    report.total = len(ds)
    report.seconds = time.perf_counter() - t0
    return report


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


def mark_near_duplicates(ds: Any, emb: tuple[list[str], np.ndarray] | None, threshold: float) -> int:
    """Set ``dup_group`` on near-duplicates: by embedding cosine when present, else identical bytes."""
    keys, sha = ds.values(["key", "image_sha1"])
    if emb is not None:
        in_ds = set(keys)
        sel = [i for i, k in enumerate(emb[0]) if k in in_ds]
        ekeys = [emb[0][i] for i in sel]
        groups = _groups(ekeys, near_duplicate_pairs(np.asarray(emb[1][sel]), threshold))
    else:
        by_hash: dict[str, list[int]] = {}
        for i, h in enumerate(sha):
            if h:
                by_hash.setdefault(h, []).append(i)
        pairs = [(idx[0], j) for idx in by_hash.values() if len(idx) > 1 for j in idx[1:]]
        groups = _groups(keys, pairs)
    current = dict(zip(keys, ds.values("dup_group"), strict=True))
    values = {k: groups.get(k) for k in keys if current.get(k) != groups.get(k)}
    if values:
        ds.set_values("dup_group", values, key_field="key")
    return len(set(groups.values()))


def save_views(ds: Any, max_pair_views: int) -> list[str]:
    """Saved views: lowest composition score first, reviewed/unreviewed, near-duplicates, one per pair."""
    from fiftyone import ViewField as F

    schema = ds.get_field_schema()
    views: dict[str, Any] = {}
    score = "score_comp" if "score_comp" in schema else next((f for f in schema if f.startswith("score_")), None)
    if score:
        views["lowest composition score"] = ds.exists(score).sort_by(score)
    views["near-duplicates"] = ds.exists("dup_group").sort_by("dup_group")
    views["rejected"] = ds.match_tags("reject")
    views["unreviewed"] = ds.match_tags(list(VERDICT_TAGS), bool=False)
    for name, view in views.items():
        ds.save_view(name, view, overwrite=True)
    have = set(ds.list_saved_views())
    pairs = sorted(p for p in ds.distinct("pair.label") if p)
    if len(pairs) > max_pair_views:
        log.warning("%d pairs: saving views for the first %d only (raise --max-pair-views)", len(pairs),
                    max_pair_views)
    for p in pairs[:max_pair_views]:
        vname = f"pair {p}"
        if vname not in have:
            try:
                ds.save_view(vname, ds.match(F("pair.label") == p))
            except ValueError as e:  # two pairs whose names slugify alike: keep the first
                log.debug("view %r not saved: %s", vname, e)
                continue
        views[vname] = None
    return list(views)
