"""Mining (reference, edit, target) triplets in three modes.

- attribute: same object, other attribute ("striped heart" -> "dotted heart");
- object: same attribute, other object ("striped heart" -> "striped lemon");
- caption: captions differing in one content word (found by :mod:`.captions`).

Every mode reduces to *compositions*: a reference group and a target group of images (in
the same split). Each reference gets the visually closest target of the target group (cosine
in CLIP space, preferring targets not yet used so one image does not absorb a whole combo),
every image of the target group is a valid target (``gt``: CIRCO's multiple ground truths),
and the hard negatives are the images closest to the query that are *not* valid: same
composition as the reference, or the edit's distractors (the new word with the wrong other
word). At most ``max_per_pair`` references per (reference group, target group), so frequent
compositions do not drown rare ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from curate.errors import CurateError
from curate.log import track

from .captions import CaptionPairStats, find_caption_pairs, normalize_expr
from .config import SPLITS, TripletsConfig, parse_splits, unit_hash
from .splits import edit_split, split_column

logger = logging.getLogger(__name__)


@dataclass
class Combo:
    """One (reference group -> target group) edit inside one split."""

    mode: str
    split: str
    refs: np.ndarray  # feature rows, sorted by key
    tgts: np.ndarray
    distractors: np.ndarray
    info: dict[str, Any]  # ref_attr, ref_obj, tgt_attr, tgt_obj, old_word, new_word, shared


@dataclass
class MiningResult:
    triplets: pl.DataFrame
    stats: dict[str, Any] = field(default_factory=dict)


def build_pool(samples: pl.DataFrame, keys: list[str], cfg: TripletsConfig) -> pl.DataFrame:
    """Samples that have features, with their split and their feature row."""
    ratios = parse_splits(cfg.splits)
    pool = samples.join(pl.DataFrame({"key": keys, "row": np.arange(len(keys), dtype=np.int64)}), on="key")
    if ratios is None:
        bad = pool.filter(~pl.col("split_hint").is_in(list(SPLITS)) | pl.col("split_hint").is_null())
        if bad.height:
            raise CurateError(f"--splits manifest, but {bad.height} sample(s) have no train/val/test split "
                              f"(e.g. {bad['key'][0]})", fix="pass ratios instead, e.g. --splits train=0.8,val=0.1,test=0.1")
        pool = pool.with_columns(pl.col("split_hint").alias("split"))
    else:
        pool = pool.sort("key")
        pool = pool.with_columns(pl.Series("split", split_column(pool, ratios, cfg.seed, cfg.split_by, cfg.modes,
                                                                 cfg.max_tokens, cfg.max_group), dtype=pl.String))
    return pool.sort("key")


def mine(pool: pl.DataFrame, feats: np.ndarray, cfg: TripletsConfig) -> MiningResult:
    combos: list[Combo] = []
    stats: dict[str, Any] = {"pool": pool.height}
    for mode in cfg.modes:
        if mode == "caption":
            found, cstats = _caption_combos(pool, cfg)
            stats["caption_pairs"] = cstats.__dict__
        else:
            found = _compositional_combos(pool, mode)
        stats[f"combos_{mode}"] = len(found)
        combos.extend(found)
    ratios = parse_splits(cfg.splits)
    if cfg.split_by == "edit" and ratios is not None:  # each edit is mined in its own split only
        kept = [c for c in combos if edit_split(c.mode, c.info, ratios, cfg.seed) == c.split]
        stats["combos_in_other_splits"] = len(combos) - len(kept)
        combos = kept
    if not combos:
        msg = _nothing_to_mine(pool, cfg)
        if "caption_pairs" in stats:
            cp = stats["caption_pairs"]
            msg += (f"; caption mode: {cp['captions']} captions, {cp['unique']} unique, {cp['empty']} empty, "
                    f"{cp['pairs']} pairs differing in one word")
        raise CurateError(msg, where=cfg.dataset,
                          fix="use a dataset where some object appears with two attributes (or some "
                              "attribute with two objects), or add --mode caption for captioned images")
    keys = pool["key"].to_list()
    views = {s: SplitView.of(g["row"].to_numpy(), feats) for (s,), g in pool.group_by(["split"])}
    rows = [t for c in track(combos, "mine triplets", unit="combos")
            for t in _triplets_of(c, feats, keys, views[c.split], cfg)]
    df = _finalise(rows, cfg)
    stats["triplets"] = df.height
    stats["by_mode"] = dict(Counter(df["mode"].to_list()))
    stats["by_split"] = dict(Counter(df["split"].to_list()))
    return MiningResult(df, stats)


def _nothing_to_mine(pool: pl.DataFrame, cfg: TripletsConfig) -> str:
    comp = pool.drop_nulls(["attr", "obj"]).select("attr", "obj").unique()
    per_obj = comp.group_by("obj").len()
    per_attr = comp.group_by("attr").len()
    max_a = int(per_obj["len"].max() or 0) if per_obj.height else 0
    max_o = int(per_attr["len"].max() or 0) if per_attr.height else 0
    return (f"no triplets can be mined with --mode {','.join(cfg.modes)}: no object has images with two "
            f"different attributes and no attribute two objects within one split ({pool.height} usable images, "
            f"{comp.height} compositions, {per_obj.height} objects with at most {max_a} attribute(s) each, "
            f"{per_attr.height} attributes with at most {max_o} object(s) each)")


def _groups(pool: pl.DataFrame, by: list[str]) -> dict[tuple, np.ndarray]:
    out: dict[tuple, np.ndarray] = {}
    for name, g in pool.group_by(by, maintain_order=True):
        out[tuple(name)] = g["row"].to_numpy()
    return out


def _compositional_combos(pool: pl.DataFrame, mode: str) -> list[Combo]:
    keep, change = ("obj", "attr") if mode == "attribute" else ("attr", "obj")
    p = pool.drop_nulls(["attr", "obj"])
    comp = _groups(p, ["split", "attr", "obj"])
    by_change = _groups(p, ["split", change])
    keep_of_row = dict(zip(p["row"].to_list(), p[keep].to_list(), strict=True))
    combos = []
    for split in SPLITS:
        values: dict[str, list[str]] = {}
        for (s, a, o) in comp:
            if s == split:
                kv, cv = (o, a) if mode == "attribute" else (a, o)
                values.setdefault(kv, []).append(cv)
        for kv in sorted(values):
            for old in sorted(values[kv]):
                for new in sorted(values[kv]):
                    if old == new:
                        continue
                    ref_c = (split, old, kv) if mode == "attribute" else (split, kv, old)
                    tgt_c = (split, new, kv) if mode == "attribute" else (split, kv, new)
                    distract = np.array([r for r in by_change.get((split, new), []) if keep_of_row[r] != kv],
                                        dtype=np.int64)
                    ref_attr, ref_obj = (old, kv) if mode == "attribute" else (kv, old)
                    tgt_attr, tgt_obj = (new, kv) if mode == "attribute" else (kv, new)
                    combos.append(Combo(mode, split, comp[ref_c], comp[tgt_c], distract, {
                        "ref_attr": ref_attr, "ref_obj": ref_obj, "tgt_attr": tgt_attr, "tgt_obj": tgt_obj,
                        "old_word": old, "new_word": new, "shared": kv}))
    return combos


def _caption_combos(pool: pl.DataFrame, cfg: TripletsConfig) -> tuple[list[Combo], CaptionPairStats]:
    uniq, pairs, st = find_caption_pairs(pool, "caption", cfg.max_tokens, cfg.max_group)
    logger.info("caption mode: %d captions, %d unique, %d empty, %d one-word pairs",
                st.captions, st.unique, st.empty, st.pairs)
    texts = dict(zip(uniq["cid"].to_list(), uniq["text"].to_list(), strict=True))
    norm = pool.with_columns(normalize_expr("caption").alias("text")).join(uniq.select("cid", "text"), on="text")
    groups = _groups(norm, ["split", "cid"])
    first = {r: (a, o) for r, a, o in zip(norm["row"].to_list(), norm["attr"].to_list(), norm["obj"].to_list(),
                                          strict=True)}
    combos = []
    for ca, cb, pos, wa, wb in pairs.iter_rows():
        for (c_ref, c_tgt, old, new) in ((ca, cb, wa, wb), (cb, ca, wb, wa)):
            toks = texts[c_ref].split(" ")
            shared = " ".join(toks[:pos] + toks[pos + 1:])
            for split in SPLITS:
                refs, tgts = groups.get((split, c_ref)), groups.get((split, c_tgt))
                if refs is None or tgts is None:
                    continue
                ra, ro = first[int(refs[0])]
                ta, to = first[int(tgts[0])]
                combos.append(Combo("caption", split, refs, tgts, np.zeros(0, np.int64), {
                    "ref_attr": ra, "ref_obj": ro, "tgt_attr": ta, "tgt_obj": to, "old_word": old,
                    "new_word": new, "shared": shared, "ref_caption": texts[c_ref],
                    "tgt_caption": texts[c_tgt]}))
    return combos, st


@dataclass
class SplitView:
    """One split's feature rows, kept once so negatives are a matrix product, not a copy per triplet."""

    rows: np.ndarray
    feats: np.ndarray
    pos: dict[int, int]  # feature row -> position in ``rows``

    @classmethod
    def of(cls, rows: np.ndarray, feats: np.ndarray) -> SplitView:
        rows = np.sort(rows)
        return cls(rows, np.ascontiguousarray(feats[rows]), {int(r): i for i, r in enumerate(rows)})


def _triplets_of(c: Combo, feats: np.ndarray, keys: list[str], split: SplitView,
                 cfg: TripletsConfig) -> list[dict[str, Any]]:
    """Up to ``max_per_pair`` triplets of one combo: nearest (preferably unused) target per reference."""
    order = sorted(c.refs.tolist(), key=lambda r: unit_hash(cfg.seed, f"{c.mode}:{keys[r]}:{c.info['new_word']}"))
    refs = order[: cfg.max_per_pair]
    sims = feats[c.tgts] @ feats[refs].T  # [targets, refs]
    used: set[int] = set()
    picks: list[tuple[int, int, np.ndarray]] = []
    for j, r in enumerate(refs):
        by_sim = np.argsort(-sims[:, j], kind="stable")
        pick = next((int(i) for i in by_sim if int(c.tgts[i]) not in used), int(by_sim[0]))
        used.add(int(c.tgts[pick]))
        picks.append((r, pick, by_sim))
    negs = _negatives(c, [(r, int(c.tgts[p])) for r, p, _ in picks], feats, split, cfg.negatives)
    combo_rank = unit_hash(cfg.seed, f"{c.mode}:{c.split}:{keys[int(c.refs[0])]}:{keys[int(c.tgts[0])]}")
    out = []
    for rank, ((r, pick, by_sim), neg) in enumerate(zip(picks, negs, strict=True)):
        t = int(c.tgts[pick])
        gt = [t] + [int(c.tgts[i]) for i in by_sim if int(c.tgts[i]) != t]
        out.append({"reference": keys[r], "target": keys[t], "mode": c.mode, "split": c.split,
                    **{k: c.info[k] for k in ("ref_attr", "ref_obj", "tgt_attr", "tgt_obj", "old_word",
                                              "new_word", "shared")},
                    "ref_caption": c.info.get("ref_caption"), "tgt_caption": c.info.get("tgt_caption"),
                    "target_sim": float(sims[pick, rank]), "gt": [keys[g] for g in gt],
                    "negatives": [keys[n] for n in neg], "_rank": rank, "_combo": combo_rank})
    return out


def _negatives(c: Combo, pairs: list[tuple[int, int]], feats: np.ndarray, split: SplitView,
               n: int) -> list[list[int]]:
    """Closest invalid images to each query (reference + target direction).

    First the hard ones (same composition as the reference, the edit's distractors); when
    there are fewer than ``n``, the nearest other images of the split that are not valid targets.
    """
    if n == 0 or not pairs:
        return [[] for _ in pairs]
    q = np.stack([feats[r] + feats[t] for r, t in pairs])  # [m, D]
    hard = np.unique(np.concatenate([c.refs, c.distractors]).astype(np.int64))
    hard_sims = feats[hard] @ q.T if hard.size else np.zeros((0, len(pairs)), np.float32)
    out: list[list[int]] = []
    rest_sims = None
    for j, (r, _) in enumerate(pairs):
        order = [int(hard[i]) for i in np.argsort(-hard_sims[:, j], kind="stable") if int(hard[i]) != r]
        chosen = order[:n]
        if len(chosen) < n:
            if rest_sims is None:
                rest_sims = split.feats @ q.T  # [split rows, m]
                excluded = [split.pos[int(x)] for x in np.concatenate([hard, c.tgts]) if int(x) in split.pos]
                rest_sims[excluded, :] = -np.inf
            col = rest_sims[:, j]
            k = min(n - len(chosen), int(np.isfinite(col).sum()))
            if k > 0:
                top = np.argpartition(-col, k - 1)[:k]
                top = top[np.lexsort((top, -col[top]))]
                chosen += [int(split.rows[i]) for i in top]
        out.append(chosen)
    return out


def _finalise(rows: list[dict[str, Any]], cfg: TripletsConfig) -> pl.DataFrame:
    """Cap to ``max_triplets`` round-robin over combos, then give stable ids in a fixed order."""
    if cfg.max_triplets is not None and len(rows) > cfg.max_triplets:
        rows = sorted(rows, key=lambda t: (t["_rank"], t["_combo"]))[: cfg.max_triplets]
    split_order = {s: i for i, s in enumerate(SPLITS)}
    rows.sort(key=lambda t: (split_order[t["split"]], t["mode"], t["reference"], t["target"]))
    for i, t in enumerate(rows):
        t["pair_id"] = i
        t["id"] = f"{t['split']}-{t['mode'][:3]}-{i:07d}"
        del t["_rank"], t["_combo"]
    schema = {"id": pl.String, "pair_id": pl.Int64, "reference": pl.String, "target": pl.String,
              "mode": pl.String, "split": pl.String, "ref_attr": pl.String, "ref_obj": pl.String,
              "tgt_attr": pl.String, "tgt_obj": pl.String, "old_word": pl.String, "new_word": pl.String,
              "shared": pl.String, "ref_caption": pl.String, "tgt_caption": pl.String,
              "target_sim": pl.Float64, "gt": pl.List(pl.String), "negatives": pl.List(pl.String)}
    return pl.DataFrame(rows, schema=schema)
