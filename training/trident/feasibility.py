"""Open-world feasibility: which of all attribute x object pairs to keep as candidates.

CompCos (ExplainableML/czsl ``models/compcos.py``, ``compute_feasibility``): an unseen pair
(a, o) scores the mean of (1) the best cosine between ``o`` and another object seen with
``a`` in training and (2) the best cosine between ``a`` and another attribute seen with
``o`` (-1 where there is none); seen pairs score 1. A pair is feasible when its score
reaches a threshold; ``test.py`` tries ``threshold_trials`` (50) values evenly spaced
between the lowest and highest unseen score and keeps the one with the best validation AUC
(strictly better than the previous best, starting from 0 with every pair feasible).

The vectors compared may be
- ``captions``: caption co-occurrence profiles, from a ``pairs.parquet`` (``curate build``'s
  rarity scan: ``attr, obj, cooccurrence`` for every pair): an attribute is the row
  ``log(1 + count(a, o))`` over objects, an object the column over attributes; objects used
  with the same attributes in captions are close;
- ``words``: the model's word embeddings (what CompCos uses).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from curate.errors import CurateError

from .data import Pair, czsl_name

log = logging.getLogger(__name__)

THRESHOLD_TRIALS = 50


def _cosine(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    y = np.divide(x, norm, out=np.zeros_like(x, dtype=np.float64), where=norm > 0)
    return y @ y.T


def compcos_scores(attrs: list[str], objs: list[str], train_pairs: list[Pair], attr_vecs: np.ndarray,
                   obj_vecs: np.ndarray) -> np.ndarray:
    """Feasibility ``[A, O]`` (attribute-major like the open-world columns); seen pairs 1."""
    a_ix = {a: i for i, a in enumerate(attrs)}
    o_ix = {o: j for j, o in enumerate(objs)}
    seen = np.zeros((len(attrs), len(objs)), bool)
    for a, o in train_pairs:
        seen[a_ix[a], o_ix[o]] = True
    s_obj, s_attr = _cosine(np.asarray(obj_vecs, np.float64)), _cosine(np.asarray(attr_vecs, np.float64))
    np.fill_diagonal(s_obj, -np.inf)   # o' != o
    np.fill_diagonal(s_attr, -np.inf)  # a' != a
    score_obj = np.full(seen.shape, -1.0)
    for i in range(len(attrs)):        # objects seen with attribute i
        cols = np.flatnonzero(seen[i])
        if len(cols):
            score_obj[i] = np.maximum(s_obj[:, cols].max(1), -1.0)
    score_attr = np.full(seen.shape, -1.0)
    for j in range(len(objs)):         # attributes seen with object j
        rows = np.flatnonzero(seen[:, j])
        if len(rows):
            score_attr[:, j] = np.maximum(s_attr[:, rows].max(1), -1.0)
    out = (score_obj + score_attr) / 2
    out[seen] = 1.0
    return out


def caption_vectors(path: Path, attrs: list[str], objs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(attribute rows [A, O], object rows [O, A]) of ``log(1 + co-occurrence)`` from a pairs table."""
    import polars as pl

    try:
        df = pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - any parquet failure is a bad input file
        raise CurateError(f"cannot read the co-occurrence table ({e})", where=str(path)) from e
    need = [c for c in ("attr", "obj", "cooccurrence") if c not in df.columns]
    if need:
        raise CurateError(f"no column(s) {need} in the co-occurrence table", where=str(path),
                          fix="pass the pairs.parquet of `curate build` (attr, obj, cooccurrence)")
    a_ix = {a: i for i, a in enumerate(attrs)}
    o_ix = {o: j for j, o in enumerate(objs)}
    counts = np.zeros((len(attrs), len(objs)))
    hits = 0
    for a, o, c in df.select("attr", "obj", "cooccurrence").iter_rows():
        i, j = a_ix.get(czsl_name(str(a))), o_ix.get(czsl_name(str(o)))
        if i is not None and j is not None:
            counts[i, j] = float(c or 0)
            hits += 1
    if hits == 0:
        raise CurateError("the co-occurrence table names none of this dataset's pairs", where=str(path))
    log.info("feasibility from caption co-occurrence: %d of %d pairs in %s", hits, counts.size, path)
    x = np.log1p(counts)
    return x, x.T


def find_cooccurrence(root: Path) -> Path | None:
    """``pairs.parquet`` of the dataset (root, or the dataset above an export)."""
    cands = [root / "pairs.parquet"]
    if root.parent.name == "exports":
        cands.append(root.parent.parent / "pairs.parquet")
    return next((p for p in cands if p.is_file()), None)


def thresholds(scores: np.ndarray, seen: np.ndarray, trials: int = THRESHOLD_TRIALS) -> np.ndarray:
    """CompCos's candidate thresholds: evenly spaced over the unseen pairs' scores."""
    unseen = scores[~seen]
    if not len(unseen):
        return np.array([-10.0])
    return np.linspace(unseen.min(), unseen.max(), num=trials)
