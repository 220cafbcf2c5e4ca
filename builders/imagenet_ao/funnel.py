"""The filters of the build, in funnel order: decode check, embedded, object zero-shot, attribute
beats its family, composition score, near-duplicates, cap and minimum per pair.

Used by the ``filters`` step of :mod:`builders.imagenet_ao.pipeline`. :class:`FunnelRow` is one row
of the funnel the card and ``dataset.json`` show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.fingerprint import fingerprint
from curate.fsutil import write_parquet
from curate.ledger import Task, run_stage
from curate.shards import IMAGE_EXTS, ReadReport, image_of, iter_shard

from .candidates import cached_text_embeddings
from .filters import FilterConfig, attribute_scores, cap_and_minimum, check_image, dedup, object_rank
from .text import RETRIEVAL_TEMPLATES
from .vocab import Vocabulary


@dataclass
class FunnelRow:
    stage: str
    count: int
    removed: int = 0
    note: str = ""


# --- decode check ------------------------------------------------------------------------------
def _decode_task(task: Task) -> dict[str, Any]:
    a = task.args
    wanted = set(a["keys"])
    rows = []
    rep = ReadReport(shard=Path(a["shard"]).name)
    for s in iter_shard(a["shard"], rep, keys=wanted, exts=IMAGE_EXTS):
        img = image_of(s)
        ok, reason, w, h = check_image(img[1] if img else b"", a["min_resolution"])
        rows.append((s["__key__"], ok, reason, w, h))
        wanted.discard(s["__key__"])
    for k in sorted(wanted):
        rows.append((k, False, "missing from shard" + (f" ({rep.error})" if rep.error else ""), 0, 0))
    df = pl.DataFrame(rows, schema={"src_key": pl.String, "ok": pl.Boolean, "reason": pl.String,
                                    "width": pl.Int64, "height": pl.Int64}, orient="row")
    write_parquet(df.with_columns(pl.lit(a["shard"]).alias("src_shard")), Path(a["out"]) / a["rel"])
    return {"outputs": [a["rel"]], "stats": {"items": len(rows), "read_error": rep.error}}


def decode_check(cands: pl.DataFrame, out: Path, ex, min_resolution: int) -> pl.DataFrame:
    """Every candidate image decoded once (per source shard, resumably; a task records the fingerprint
    of its shard, its keys and the minimum resolution): ``ok``, ``reason``, ``width``, ``height``."""
    uniq = cands.select("src_key", "src_shard").unique().sort("src_shard", "src_key")
    tasks = []
    for i, (shard, grp) in enumerate(uniq.group_by("src_shard", maintain_order=True)):
        rel = f"filters/decode/{i:06d}.parquet"
        keys = grp["src_key"].to_list()
        tasks.append(Task(f"decode-{i:06d}-{Path(shard[0]).name}",
                          {"shard": shard[0], "keys": keys, "min_resolution": min_resolution, "out": str(out),
                           "rel": rel}, inputs=fingerprint(Path(shard[0]), keys, min_resolution)))
    res = run_stage("decode check", _decode_task, tasks, out, ex, unit="shards")
    frames = [pl.read_parquet(out / t.args["rel"]) for t in tasks if t.id not in res.errors]
    if not frames:
        raise CurateError("no candidate image could be read", where=str(out))
    return pl.concat(frames)


def embeddings_for(cands: pl.DataFrame, emb_dirs: list[Path]) -> np.ndarray:
    from curate.embed.store import read_embeddings

    lookup: dict[tuple[str, str], np.ndarray] = {}
    for src, d in zip(("pool", "generator"), emb_dirs, strict=True):
        if d is None or not d.exists():
            continue
        keys, mat = read_embeddings(d)
        pos = {k: i for i, k in enumerate(keys)}
        need = cands.filter(pl.col("source") == src)["src_key"].unique().to_list()
        for k in need:
            if k in pos:
                lookup[(src, k)] = np.asarray(mat[pos[k]], dtype=np.float32)
    dim = next(iter(lookup.values())).shape[0] if lookup else 1
    out = np.zeros((cands.height, dim), np.float32)
    for i, (src, k) in enumerate(cands.select("source", "src_key").iter_rows()):
        v = lookup.get((src, k))
        if v is not None:
            out[i] = v
    return out


@dataclass
class FilterOutcome:
    """What the filters kept (rows, embeddings), the funnel rows, the pairs dropped, and ``record``:
    every candidate with the filter row that removed it (``removed_at``, -1: kept) and its scores."""

    kept: pl.DataFrame
    img: np.ndarray
    funnel: list[FunnelRow]
    dropped: list[str]
    record: pl.DataFrame
    calibration: dict[str, Any] | None = None


# chooses (attribute margin or None = check off, composition threshold, calibration report) from the
# candidates that passed the object filter (their scores in ``score_comp`` and ``attr_margin``)
Chooser = Callable[[pl.DataFrame], tuple[float | None, float, dict[str, Any]]]


# --- the filters -------------------------------------------------------------------------------
# chooses (attribute margin or None = check off, composition threshold, calibration report) from the
# candidates that passed the object filter (their scores in ``score_comp`` and ``attr_margin``)
Chooser = Callable[[pl.DataFrame], tuple[float | None, float, dict[str, Any]]]


class _Funnel:
    """The candidates left after each filter row, and for every candidate the row that removed it
    and its scores (the funnel record)."""

    def __init__(self, cands: pl.DataFrame, img: np.ndarray):
        self.first, self.cands, self.img = cands, cands, img
        self.ids = np.arange(cands.height)  # each current row's index in ``first``
        self.removed_at = np.full(cands.height, -1, np.int64)
        self.scores = {"obj_rank": np.full(cands.height, -1, np.int64), "score_comp": np.full(cands.height, np.nan),
                       "attr_margin": np.full(cands.height, np.nan)}
        self.rows: list[FunnelRow] = []

    def step(self, name: str, mask: np.ndarray, note: str = "") -> None:
        """Keep the rows where ``mask`` holds; a funnel row named ``name``."""
        mask = np.asarray(mask, dtype=bool)
        removed = int((~mask).sum())
        self.removed_at[self.ids[~mask]] = len(self.rows)
        self.cands = self.cands.filter(pl.Series(mask))
        self.img, self.ids = self.img[mask], self.ids[mask]
        self.rows.append(FunnelRow(name, self.cands.height, removed, note))

    def cap(self, fc: FilterConfig) -> list[str]:
        """At most ``images_per_pair`` per pair, pairs with fewer than the minimum dropped."""
        before = self.cands.height
        capped, dropped = cap_and_minimum(self.cands.with_columns(pl.int_range(pl.len()).alias("_row")),
                                          fc.images_per_pair, fc.min_images_per_pair, fc.seen_images_per_pair)
        rows = capped["_row"].to_numpy()
        gone = np.ones(before, bool)
        gone[rows] = False
        self.removed_at[self.ids[gone]] = len(self.rows)
        self.img, self.ids = self.img[rows], self.ids[rows]
        self.cands = capped.drop("_row")
        seen = f" ({fc.seen_images_per_pair}/seen pair)" if fc.seen_images_per_pair else ""
        self.rows.append(FunnelRow(f"cap {fc.images_per_pair}/pair{seen}, min {fc.min_images_per_pair}/pair",
                                   self.cands.height, before - self.cands.height,
                                   f"{len(dropped)} pair(s) dropped for too few images"))
        return dropped

    def outcome(self, dropped: list[str], calibration: dict[str, Any] | None = None) -> FilterOutcome:
        record = self.first.select("source", "src_key", "attr", "obj", "rare").with_columns(
            pl.Series("removed_at", self.removed_at), *(pl.Series(k, v) for k, v in self.scores.items()))
        return FilterOutcome(self.cands, self.img, self.rows, dropped, record, calibration)


def apply_filters(cands: pl.DataFrame, img: np.ndarray, vocab: Vocabulary, encoder, fc: FilterConfig,
                  out: Path, choose: Chooser | None = None) -> FilterOutcome:
    """Run the filters in order (with ``choose``: the attribute and composition thresholds it picks)."""
    f = _Funnel(cands, img)
    f.step("decodable, >= min resolution", cands["ok"].to_numpy().astype(bool), f"min side {fc.min_resolution}px")
    f.step("embedded", np.linalg.norm(f.img, axis=1) > 0)
    if f.cands.height == 0:
        return f.outcome([])
    _object_filter(f, vocab, encoder, fc, out)
    wins, margin = _pair_scores(f, vocab, encoder)
    calibration = None
    if choose is None:
        if fc.attribute_check:
            f.step("attribute beats its family", wins, "target attribute ranks first among its family")
        f.step(f"composition score >= {fc.comp_threshold:g}", f.cands["score_comp"].to_numpy() >= fc.comp_threshold)
    else:
        min_margin, min_comp, calibration = choose(f.cands.with_columns(pl.Series("attr_margin", margin)))
        if min_margin is None:
            f.step("attribute check off (calibrated)", np.ones(f.cands.height, bool), "chosen from labelled images")
        else:
            f.step(f"attribute margin >= {min_margin:g} (calibrated)", f.scores["attr_margin"][f.ids] >= min_margin,
                   "target attribute's score minus its family's best other")
        f.step(f"composition score >= {min_comp:g} (calibrated)", f.cands["score_comp"].to_numpy() >= min_comp,
               "chosen from labelled images")
    keep = (dedup(f.img, f.cands["score_comp"].to_numpy(), fc.dedup_threshold) if f.cands.height
            else np.zeros(0, bool))
    f.step(f"near-duplicates removed (cos >= {fc.dedup_threshold:g})", keep, "within and across pairs")
    return f.outcome(f.cap(fc), calibration)


def _object_filter(f: _Funnel, vocab: Vocabulary, encoder, fc: FilterConfig, out: Path) -> None:
    """Keep the images whose object ranks in the zero-shot top-k over the vocabulary's objects."""
    from curate.embed.zeroshot import OPENAI_IMAGENET_TEMPLATES

    objs = vocab.object_names
    obj_index = {o: i for i, o in enumerate(objs)}
    obj_text = cached_text_embeddings(out, "text/objects_80templates.npy", encoder, objs, OPENAI_IMAGENET_TEMPLATES,
                                      encoder.spec)
    target = np.array([obj_index[o] for o in f.cands["obj"].to_list()])
    rank = object_rank(f.img, obj_text, target)
    f.scores["obj_rank"][f.ids] = rank
    f.cands = f.cands.with_columns(pl.Series("obj_rank", rank.astype(np.int64)))
    f.step(f"object in top-{fc.object_topk}", rank < fc.object_topk, f"zero-shot over {len(objs)} objects, 80 templates")


def _pair_scores(f: _Funnel, vocab: Vocabulary, encoder) -> tuple[np.ndarray, np.ndarray]:
    """The composition score (``score_comp``) of every candidate left, and whether its attribute beats
    the others of its family (and by how much: the margin)."""
    from curate.embed.zeroshot import class_text_embeddings

    families = vocab.families()
    family_of = {a.name: a.family or "attribute" for a in vocab.attributes}
    pairs = f.cands.select("attr", "obj")
    # text embeddings of every (attribute of the same family, object) prompt we need
    needed = sorted({(x, o) for a, o in pairs.iter_rows() for x in families.get(family_of[a], [a])}
                    | set(pairs.iter_rows()))
    names = [f"{a} {o}" for a, o in needed]
    temb = class_text_embeddings(encoder, names, RETRIEVAL_TEMPLATES) if names else np.zeros((0, f.img.shape[1]))
    pair_text = {p: temb[i] for i, p in enumerate(needed)}
    comp = np.array([float(f.img[i] @ pair_text[(a, o)]) for i, (a, o) in enumerate(pairs.iter_rows())],
                    dtype=np.float64)
    f.cands = f.cands.with_columns(pl.Series("score_comp", comp))
    wins, margin = attribute_scores(f.img, pair_text, f.cands["attr"].to_list(), f.cands["obj"].to_list(), families,
                                    family_of)
    f.scores["score_comp"][f.ids], f.scores["attr_margin"][f.ids] = comp, margin
    return wins, margin
