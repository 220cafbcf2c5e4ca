"""Composed image retrieval (CIR) metrics, replicating the official evaluation code.

Every metric is a fraction in [0, 1] (the official scripts print ``x * 100``). Sources, read at
their default branch:

* CIRR and FashionIQ: ABaldrati/CLIP4Cir ``src/validate.py`` (``compute_cirr_val_metrics``,
  ``compute_fiq_val_metrics``), ``src/combiner_train.py`` (the three-category FashionIQ average) and
  ``src/cirr_test_submission.py``; identical code in miccunifi/SEARLE ``src/validate.py``
  (``cirr_compute_val_metrics``, ``fiq_compute_val_metrics``) and ``src/generate_test_submission.py``.
* CIRCO: miccunifi/CIRCO ``src/evaluation.py`` (the evaluation server: mAP@K, Recall@K, semantic
  mAP@10) fed with the top-50 of ``torch.topk(similarity, k=50)`` as SEARLE's
  ``circo_generate_test_dict`` / ``circo_compute_val_metrics`` build it.
* GeneCIS: facebookresearch/genecis ``eval/eval_functions.py`` (``validate``) and
  ``utils/metric_utils.py`` (``get_recall``).

What the official code does, and this module replicates:

* Ranking. CIRR/FashionIQ: ``torch.argsort(1 - similarity, dim=-1)``; CIRCO: ``torch.topk(similarity,
  k=50)``; GeneCIS: ``similarity.sort(dim=-1, descending=True)``. None of these is stable (on CPU
  ``argsort`` stops being stable above 16 columns), so ties break in the order torch happens to
  produce. The same call runs here on the caller's dtype and device, which breaks ties the same way;
  ``1 - similarity`` is kept for CIRR/FashionIQ because it can itself create ties (float rounding).
* CIRR removes the reference image, by name, from each ranking (and nothing else). FashionIQ and
  CIRCO remove nothing (a query's reference image may be retrieved).
* CIRR/FashionIQ recall is ``(torch.sum(labels[:, :k]) / len(labels)).item()``: a float32 division,
  so e.g. 1/3 is reported as 0.3333333432674408; replicated with ``np.float32``.
* CIRCO AP@K = sum_{i<=K} P@i * rel_i / min(#gt, K) in float64 (numpy), per query, then ``np.mean``.
  The target counts as one of the ground truths (it is ``gt_img_ids[0]``). SEARLE's validation
  computes the same in float32 (differences below 1e-7).
* GeneCIS recall is (#queries with the target in the top k) / #queries, float64.

Bad input raises ``ValueError`` where the official code would fail with an assertion or an obscure
reshape error, or would silently compute a wrong number: mismatched lengths, duplicate index names,
a CIRR reference not in the index (the official reshape assumes exactly one removal per row), a target
not in the index / equal to the reference / outside its group, CIRR groups whose members left in the
index differ in number across queries, a CIRCO query without ground truth (officially a division by
zero), NaN similarities.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CIRCO_SEMANTIC_ASPECTS",
    "circo_metrics",
    "circo_submission",
    "cirr_metrics",
    "cirr_submission",
    "fashioniq_average",
    "fashioniq_metrics",
    "genecis_metrics",
]

# The nine aspects reported by the CIRCO evaluation server (miccunifi/CIRCO src/evaluation.py).
CIRCO_SEMANTIC_ASPECTS = (
    "cardinality", "addition", "negation", "direct_addressing", "compare_change",
    "comparative_statement", "statement_with_conjunction", "spatial_relations_background", "viewpoint",
)
CIRR_RECALL_KS = (1, 5, 10, 50)
CIRR_GROUP_KS = (1, 2, 3)
CIRCO_KS = (5, 10, 25, 50)
FASHIONIQ_KS = (10, 50)
GENECIS_KS = (1, 2, 3)
SUBMISSION_TOP = 50
SUBSET_SUBMISSION_TOP = 3


# ----------------------------------------------------------------------------------------------- helpers


def _as_tensor(x: Any, what: str) -> torch.Tensor:
    """A float tensor on the caller's device/dtype (integers and bools become float64), NaN-free."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if t.dtype == torch.bool or not (t.is_floating_point() or t.is_complex()):
        t = t.to(torch.float64)
    if t.is_complex():
        raise ValueError(f"{what} must be real, got {t.dtype}")
    if torch.isnan(t).any():
        raise ValueError(f"{what} contains NaN")
    return t.contiguous()


def _similarity(x: Any) -> torch.Tensor:
    t = _as_tensor(x, "similarity")
    if t.ndim != 2:
        raise ValueError(f"similarity must be 2-D [queries, index], got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"similarity is empty (shape {tuple(t.shape)})")
    return t


def _to_list(seq: Any) -> list:
    if isinstance(seq, (str, bytes, Mapping)) or not isinstance(seq, Iterable):
        raise ValueError(f"expected a sequence, got {type(seq).__name__}")
    out = seq.tolist() if hasattr(seq, "tolist") else list(seq)  # numpy, torch, pandas
    if not isinstance(out, list):
        raise ValueError(f"expected a sequence, got a scalar {type(seq).__name__}")
    return out


def _names(seq: Any, n: int, what: str, against: str) -> list:
    out = _to_list(seq)
    if len(out) != n:
        raise ValueError(f"{what} has {len(out)} entries but {against} is {n}")
    return out


def _positions(index_names: Any, m: int) -> dict[Hashable, int]:
    names = _names(index_names, m, "index names", "similarity.shape[1]")
    pos: dict[Hashable, int] = {}
    for i, name in enumerate(names):
        if name in pos:
            raise ValueError(f"duplicate index name {name!r} (positions {pos[name]} and {i})")
        pos[name] = i
    return pos


def _lookup(pos: Mapping[Hashable, int], names: Sequence, what: str) -> np.ndarray:
    out = np.empty(len(names), dtype=np.int64)
    for q, name in enumerate(names):
        if name not in pos:
            raise ValueError(f"{what} {name!r} of query {q} is not in the index")
        out[q] = pos[name]
    return out


def _frac32(hits: int, n: int) -> float:
    """``(torch.sum(labels[:, :k]) / len(labels)).item()``: int64 / int -> float32 division."""
    return float(np.float32(hits) / np.float32(n))


def _ranking(sim: torch.Tensor) -> np.ndarray:
    """Index positions by descending similarity, exactly as ``torch.argsort(1 - similarity, dim=-1)``."""
    return torch.argsort(1 - sim, dim=-1).cpu().numpy()


# ----------------------------------------------------------------------------------------------- CIRR


def _cirr_rank(similarity: Any, index_names: Any, reference_names: Any, group_members: Any,
               group_size: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[Hashable, int]]:
    """Rankings without the reference ([Q, M-1]), group rankings ([Q, n]), reference positions, name map."""
    sim = _similarity(similarity)
    q, m = sim.shape
    pos = _positions(index_names, m)
    ref = _lookup(pos, _names(reference_names, q, "reference names", "similarity.shape[0]"), "reference")
    groups = _names(group_members, q, "group_members", "similarity.shape[0]")
    member = np.zeros((q, m), dtype=bool)
    for i, row in enumerate(groups):
        row = _to_list(row)
        if group_size is not None and len(row) != group_size:
            raise ValueError(f"group_members[{i}] has {len(row)} names, expected {group_size} (CIRR img_set)")
        for name in row:
            if name in pos:
                member[i, pos[name]] = True
    member[np.arange(q), ref] = False  # the reference leaves the ranking, hence its group too
    ranked = _ranking(sim)
    keep = ranked != ref[:, None]  # exactly one False per row: names are unique, the reference is present
    ranked = ranked[keep].reshape(q, m - 1)
    group_mask = np.take_along_axis(member, ranked, axis=1)
    counts = group_mask.sum(axis=1)
    if (counts != counts[0]).any():
        bad = int(np.flatnonzero(counts != counts[0])[0])
        raise ValueError(f"group members found in the index (reference excluded) differ across queries: "
                         f"{int(counts[0])} for query 0, {int(counts[bad])} for query {bad}")
    return ranked, ranked[group_mask].reshape(q, -1), ref, pos


def cirr_metrics(similarity: Any, index_names: Any, reference_names: Any, target_names: Any,
                 group_members: Any, *, group_size: int | None = None) -> dict[str, float]:
    """CIRR Recall@{1,5,10,50} and Recall_subset@{1,2,3}, as CLIP4Cir's ``compute_cirr_val_metrics``.

    ``similarity`` is [Q, M] (query x index, higher = closer); ``group_members`` [Q][6] names (the
    query's ``img_set`` members, reference and target included). Each row is ranked with
    ``torch.argsort(1 - similarity)``, the reference image is removed by name, Recall@K counts the
    target in the first K, Recall_subset@K the target in the first K among the group members left.
    Members absent from the index are ignored (as officially); their number left must be equal for
    all queries. ``group_size=None`` accepts groups of any size.

    Raises ValueError for a reference or target not in the index, a target equal to its reference
    or not in its group (the official code asserts), duplicate index names, mismatched lengths.
    """
    ranked, group_ranked, ref, pos = _cirr_rank(similarity, index_names, reference_names, group_members,
                                                group_size)
    q = ranked.shape[0]
    targets = _names(target_names, q, "target names", "similarity.shape[0]")
    tgt = _lookup(pos, targets, "target")
    same = np.flatnonzero(tgt == ref)
    if same.size:
        raise ValueError(f"query {int(same[0])}: the target is the reference image, which CIRR removes")
    labels = ranked == tgt[:, None]
    group_labels = group_ranked == tgt[:, None]
    missing = np.flatnonzero(~group_labels.any(axis=1))
    if missing.size:
        raise ValueError(f"query {int(missing[0])}: target {targets[missing[0]]!r} is not among its group members")
    out = {f"recall_at{k}": _frac32(int(labels[:, :k].sum()), q) for k in CIRR_RECALL_KS}
    out.update({f"group_recall_at{k}": _frac32(int(group_labels[:, :k].sum()), q) for k in CIRR_GROUP_KS})
    return out


def cirr_submission(similarity: Any, index_names: Any, reference_names: Any, pair_ids: Any,
                    group_members: Any, *, group_size: int | None = None) -> tuple[dict, dict]:
    """The two CIRR test-server files, as CLIP4Cir's ``generate_cirr_test_dicts``.

    Returns ``({"version": "rc2", "metric": "recall", "<pair_id>": [top-50 names]},
    {"version": "rc2", "metric": "recall_subset", "<pair_id>": [top-3 group names]})``, reference removed,
    keys ``str(int(pair_id))``. Raises ValueError on duplicate or non-integer pair ids.
    """
    ranked, group_ranked, _, pos = _cirr_rank(similarity, index_names, reference_names, group_members,
                                              group_size)
    keys = []
    for p in _names(pair_ids, ranked.shape[0], "pair_ids", "similarity.shape[0]"):
        try:
            keys.append(str(int(p)))
        except (TypeError, ValueError):
            raise ValueError(f"pair id {p!r} is not an integer") from None
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate pair id {dup}")
    names = list(pos)
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for key, row, group_row in zip(keys, ranked, group_ranked, strict=True):
        recall[key] = [names[i] for i in row[:SUBMISSION_TOP]]
        subset[key] = [names[i] for i in group_row[:SUBSET_SUBMISSION_TOP]]
    return recall, subset


# ----------------------------------------------------------------------------------------------- FashionIQ


def fashioniq_metrics(similarity: Any, index_names: Any, target_names: Any) -> dict[str, float]:
    """FashionIQ Recall@10/50 of one category, as CLIP4Cir's ``compute_fiq_val_metrics`` (nothing removed).

    Raises ValueError for a target not in the index, duplicate index names, mismatched lengths.
    """
    sim = _similarity(similarity)
    q, m = sim.shape
    pos = _positions(index_names, m)
    tgt = _lookup(pos, _names(target_names, q, "target names", "similarity.shape[0]"), "target")
    labels = _ranking(sim) == tgt[:, None]
    return {f"recall_at{k}": _frac32(int(labels[:, :k].sum()), q) for k in FASHIONIQ_KS}


def fashioniq_average(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per-category and averaged FashionIQ recalls, as CLIP4Cir's ``combiner_train`` logs them.

    ``per_category`` maps a category (``dress``, ``shirt``, ``toptee``) to ``fashioniq_metrics``'s
    output. Returns ``{cat}_recall_at10/50``, ``average_recall_at10/50`` (``statistics.mean``) and
    ``average_recall`` = (average_recall_at10 + average_recall_at50) / 2.
    """
    if not per_category:
        raise ValueError("per_category is empty")
    out: dict[str, float] = {}
    for cat, metrics in per_category.items():
        for k in FASHIONIQ_KS:
            if f"recall_at{k}" not in metrics:
                raise ValueError(f"category {cat!r} lacks recall_at{k}")
            out[f"{cat}_recall_at{k}"] = float(metrics[f"recall_at{k}"])
    r10 = statistics.mean(float(v["recall_at10"]) for v in per_category.values())
    r50 = statistics.mean(float(v["recall_at50"]) for v in per_category.values())
    out.update({"average_recall_at10": r10, "average_recall_at50": r50, "average_recall": (r50 + r10) / 2})
    return out


# ----------------------------------------------------------------------------------------------- CIRCO


def _is_padding(x: Any) -> bool:
    if x is None or (isinstance(x, str) and x == ""):
        return True
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool):
        return x == -1 or (isinstance(x, (float, np.floating)) and math.isnan(x))
    return False


def _ground_truth(gt_ids: Any, q: int) -> list[list]:
    rows = _names(gt_ids, q, "gt_ids", "similarity.shape[0]")
    out = []
    for i, row in enumerate(rows):
        row = [x for x in _to_list(row) if not _is_padding(x)]
        if not row:
            raise ValueError(f"query {i} has no ground truth (AP would divide by zero)")
        out.append(row)
    return out


def _circo_top(similarity: Any, index_ids: Any) -> tuple[np.ndarray, dict[Hashable, int]]:
    sim = _similarity(similarity)
    pos = _positions(index_ids, sim.shape[1])
    k = min(SUBMISSION_TOP, sim.shape[1])
    return torch.topk(sim, k=k, dim=-1).indices.cpu().numpy(), pos


def circo_metrics(similarity: Any, index_ids: Any, reference_ids: Any, target_ids: Any, gt_ids: Any,
                  semantic_aspects: Any = None) -> dict[str, Any]:
    """CIRCO mAP@{5,10,25,50}, Recall@{5,10,25,50} and semantic mAP@10, as miccunifi/CIRCO's evaluation.

    The ranked list is the top 50 of ``torch.topk(similarity, k=50)`` (fewer when the index is
    smaller); the reference is NOT removed (``reference_ids`` is only checked for length).
    AP@K = sum_{i<=K} P@i * rel_i / min(#gt, K); Recall@K = the target in the top K. ``gt_ids`` rows
    may be ragged or padded with -1 / "" / None. ``target_ids`` may be None (= first ground truth).
    Ground truths missing from the index are kept in #gt, as officially. ``semantic_map_at10`` maps
    each official aspect (and any other seen) to the mean AP@10 of its queries, NaN when it has none.

    Raises ValueError for a query without ground truth, a target not among its ground truths,
    duplicate index ids, mismatched lengths (a target absent from the index is simply never retrieved).
    """
    top, pos = _circo_top(similarity, index_ids)
    q = top.shape[0]
    _names(reference_ids, q, "reference_ids", "similarity.shape[0]")
    gts = _ground_truth(gt_ids, q)
    targets = [g[0] for g in gts] if target_ids is None else _names(target_ids, q, "target_ids",
                                                                        "similarity.shape[0]")
    for i, (t, g) in enumerate(zip(targets, gts, strict=True)):
        if t not in g:
            raise ValueError(f"query {i}: target {t!r} is not among its ground truths")
    tgt = np.array([pos.get(t, -1) for t in targets], dtype=np.int64)  # absent: never retrieved, as officially
    aspects = None if semantic_aspects is None else _names(semantic_aspects, q, "semantic_aspects",
                                                           "similarity.shape[0]")
    aps: dict[int, list[float]] = {k: [] for k in CIRCO_KS}
    recalls: dict[int, list[float]] = {k: [] for k in CIRCO_KS}
    semantic: dict[str, list[float]] = {a: [] for a in CIRCO_SEMANTIC_ASPECTS}
    for i in range(q):
        gt_pos = [pos[g] for g in gts[i] if g in pos]
        ap_labels = np.isin(top[i], gt_pos)
        precisions = np.cumsum(ap_labels, axis=0) * ap_labels
        precisions = precisions / np.arange(1, ap_labels.shape[0] + 1)
        for k in CIRCO_KS:
            aps[k].append(float(np.sum(precisions[:k]) / min(len(gts[i]), k)))
        recall_labels = top[i] == tgt[i]
        for k in CIRCO_KS:
            recalls[k].append(float(np.sum(recall_labels[:k])))
        if aspects is not None:
            row = aspects[i]
            if isinstance(row, str) or not isinstance(row, (Sequence, np.ndarray)):
                raise ValueError(f"semantic_aspects[{i}] must be a list of aspect names, got {row!r}")
            for a in row:
                semantic.setdefault(a, []).append(float(np.sum(precisions[:10]) / min(len(gts[i]), 10)))
    out: dict[str, Any] = {f"map_at{k}": float(np.mean(aps[k])) for k in CIRCO_KS}
    out.update({f"recall_at{k}": float(np.mean(recalls[k])) for k in CIRCO_KS})
    out["semantic_map_at10"] = {a: float(np.mean(v)) if v else math.nan for a, v in semantic.items()}
    return out


def circo_submission(similarity: Any, index_ids: Any, query_ids: Any) -> dict[str, list]:
    """The CIRCO test-server file ``{"<query_id>": [top-50 index ids]}``, as SEARLE's
    ``circo_generate_test_dict`` (``torch.topk``, reference not removed). Raises ValueError on
    duplicate query ids."""
    top, pos = _circo_top(similarity, index_ids)
    keys = [str(x) for x in _names(query_ids, top.shape[0], "query_ids", "similarity.shape[0]")]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate query id {dup}")
    ids = list(pos)
    return {key: [ids[i] for i in row] for key, row in zip(keys, top, strict=True)}


# ----------------------------------------------------------------------------------------------- GeneCIS


def _genecis_rows(similarity_per_query_gallery: Any) -> list[torch.Tensor] | torch.Tensor:
    if isinstance(similarity_per_query_gallery, (torch.Tensor, np.ndarray)):
        return _similarity(similarity_per_query_gallery)
    rows = _to_list(similarity_per_query_gallery)
    if not rows:
        raise ValueError("no queries")
    out = []
    for i, row in enumerate(rows):
        t = _as_tensor(row, f"similarity row {i}")
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"similarity row {i} must be a non-empty 1-D gallery, got shape {tuple(t.shape)}")
        out.append(t)
    return out


def genecis_metrics(similarity_per_query_gallery: Any, target_index: Any) -> dict[str, float]:
    """GeneCIS Recall@{1,2,3}, as facebookresearch/genecis ``validate`` + ``get_recall``.

    Each query ranks its own gallery with ``similarity.sort(dim=-1, descending=True)`` (unstable;
    the official galleries put the target at index 0). ``similarity_per_query_gallery`` is [Q, G] or
    a ragged list of 1-D galleries; ``target_index[q]`` is the target's position in gallery q.
    """
    rows = _genecis_rows(similarity_per_query_gallery)
    q = len(rows)
    targets = _names(target_index, q, "target_index", "the number of queries")
    sizes = [rows.shape[1]] * q if isinstance(rows, torch.Tensor) else [len(r) for r in rows]
    for i, (t, g) in enumerate(zip(targets, sizes, strict=True)):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < g:
            raise ValueError(f"target_index[{i}] = {t!r} is not a position in a gallery of {g}")
    if isinstance(rows, torch.Tensor):
        order = rows.sort(dim=-1, descending=True)[1].cpu().numpy()
        rank = np.argmax(order == np.asarray(targets)[:, None], axis=1)
    else:
        rank = np.array([int(np.flatnonzero(r.sort(dim=-1, descending=True)[1].cpu().numpy() == t)[0])
                         for r, t in zip(rows, targets, strict=True)])
    return {f"recall_at{k}": float(int((rank < k).sum())) / q for k in GENECIS_KS}
