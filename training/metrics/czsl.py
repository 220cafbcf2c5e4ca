"""Compositional zero-shot (CZSL) metrics, exactly as the ExplainableML/czsl ``Evaluator``.

Re-implements ``Evaluator.score_model(..., bias=1e3, topk)`` followed by
``Evaluator.evaluate_predictions(...)`` from ExplainableML/czsl ``models/common.py``, as its
``test.py`` calls them, on plain arrays: one score column per candidate (attr, obj) pair.

Semantics (all numbers follow the official code step by step, ties included):

- *Seen columns* are the columns whose pair is in ``seen_pairs``; a *seen sample* is one whose
  label (attr, obj) is in ``seen_pairs`` (``pair_idx`` is only used to read the score of the
  true pair, see below). Pair hits compare the (attr, obj) of the predicted columns with the
  label (attr, obj); a top-k hit is a hit by any of the k best columns.
- A bias is added to every unseen column. At bias 1e3 (the official ``--bias`` default), the
  top-k predictions give ``attr_acc`` / ``obj_acc`` (the label attr / obj is that of one of
  the k predicted pairs, over all samples) and the last point of the curves.
- Bias list: for the unseen samples that are top-k hits at bias 1e3, the gap
  ``kth_best_seen_score - true_pair_score - 1e-4`` (k-th best over the seen columns of the
  unbiased scores), sorted, every ``max(len // 20, 1)``-th value. For each bias, seen and
  unseen accuracy (mean top-k hit over seen / unseen samples); then the bias-1e3 point.
- ``auc`` is ``trapz(seen_curve, unseen_curve)`` without re-sorting; the harmonic mean is
  ``scipy.stats.hmean`` (0 when either side is 0); ``best_hm`` its maximum, ``hm_seen`` /
  ``hm_unseen`` the accuracies at its first arg-max and ``biasterm`` the bias there (1e3 for
  the last point). ``best_seen`` / ``best_unseen`` are the curve maxima.

Closed vs open world: in the official closed world the candidates are the pairs of the
evaluated split plus the training pairs; here the P columns *are* the candidates, so every
column may be predicted. In the official open world the Evaluator allows every pair and the
feasibility threshold is applied by the model (CompCos ``val_forward_with_threshold``) to the
scores it hands to the Evaluator. Accordingly, with ``open_world=True`` and ``feasible`` given,
the scores of infeasible columns are replaced by -1e10 (the Evaluator's own "never predict"
value) *before* evaluation, so they are never the top prediction and never the "best seen"
score of the bias list (they only fill the end of a top-k list when k exceeds the number of
feasible columns, as in the official code). ``feasible`` is ignored in the closed world.

Precision: the official scores are float32 tensors and every step runs in their dtype (note
that adding the 1e3 bias in float32 rounds the unseen scores to ~6e-5, which can create ties).
Here float32 and float64 scores are evaluated in their own dtype (the official code run on
tensors of that dtype); any other dtype is converted to float32. Pass
``scores.astype(np.float32)`` to reproduce a float32 model's numbers from float64 scores.
Ties are broken by ``torch.topk`` on CPU, called on the same [N, P] tensors as the official.

NaN: accuracies are means over the seen or unseen samples, so where the test set has

- no seen samples: ``best_seen``, ``hm_seen``, ``best_hm`` and the whole ``seen_curve`` are
  NaN; ``auc`` is NaN too unless the curve has a single point (no unseen hit at bias 1e3),
  where ``trapz`` gives 0.0; ``hm_unseen`` / ``biasterm`` are those of the first point.
- no unseen samples: ``best_unseen``, ``hm_unseen``, ``best_hm`` and ``unseen_curve`` (one
  point) are NaN; ``auc`` is 0.0 and ``biasterm`` 1e3.

The object-oracle and unbiased statistics of the official code are not computed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import CurateError

if TYPE_CHECKING:
    import torch

__all__ = ["BIAS_MAX", "CZSLInputError", "evaluate_czsl"]

BIAS_MAX = 1e3  # official --bias default: the "all unseen" operating point
MASK_SCORE = -1e10  # official score for pairs that must not be predicted
BIAS_EPS = 1e-4  # official offset below each score gap
BIAS_BINS = 20  # official magic_binsize
_WHERE = "evaluate_czsl"


class CZSLInputError(CurateError, ValueError):
    """Bad input to :func:`evaluate_czsl` (both a ``CurateError`` and a ``ValueError``)."""

    def __init__(self, what: str, fix: str | None = None):
        super().__init__(what, where=_WHERE, fix=fix)


def _int_array(x: Any, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``x`` as int64 of the given shape (None: any length); an empty input is reshaped to fit."""
    a = _to_numpy(x)
    if a.size == 0:
        a = a.astype(np.int64).reshape([0 if d is None else d for d in shape])
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise CZSLInputError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.ndim != len(shape) or any(d is not None and d != n for d, n in zip(shape, a.shape, strict=True)):
        want = "[" + ", ".join("*" if d is None else str(d) for d in shape) + "]"
        raise CZSLInputError(f"{name} must have shape {want}, got {a.shape}")
    return a.astype(np.int64)


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(scores: Any, pairs: Any, seen_pairs: Any, labels: Any, feasible: Any, topk: int) -> tuple:
    s = _to_numpy(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise CZSLInputError(f"scores must be a non-empty [N, P] array, got shape {s.shape}")
    if not (np.issubdtype(s.dtype, np.floating) or np.issubdtype(s.dtype, np.integer)):
        raise CZSLInputError(f"scores must be numeric, got dtype {s.dtype}")
    if np.isnan(s).any():
        raise CZSLInputError("scores contain NaN")
    n, p = s.shape
    pr = _int_array(pairs, "pairs (one row per score column)", (p, 2))
    sp = _int_array(seen_pairs, "seen_pairs", (None, 2))
    if isinstance(labels, str | bytes) or not hasattr(labels, "__len__") or len(labels) != 3:
        raise CZSLInputError("labels must be a tuple (attr_idx, obj_idx, pair_idx)")
    attr, obj, pair = (_int_array(x, name, (None,)) for x, name in zip(labels, ("attr_idx", "obj_idx", "pair_idx"),
                                                                       strict=True))
    if not len(attr) == len(obj) == len(pair) == n:
        raise CZSLInputError(f"labels must all have N = {n} entries (one per score row), got "
                             f"{len(attr)}, {len(obj)}, {len(pair)}")
    if pair.min() < 0 or pair.max() >= p:
        raise CZSLInputError(f"pair_idx must index the {p} score columns, got values in "
                             f"[{pair.min()}, {pair.max()}]")
    feas = None
    if feasible is not None:
        f = _to_numpy(feasible)
        if f.shape != (p,):
            raise CZSLInputError(f"feasible must be a bool [P] array with P = {p}, got shape {f.shape}")
        if f.dtype != bool and not (np.issubdtype(f.dtype, np.integer) and np.isin(f, (0, 1)).all()):
            raise CZSLInputError(f"feasible must be boolean, got dtype {f.dtype}")
        feas = f.astype(bool)
    if isinstance(topk, bool) or not isinstance(topk, int | np.integer) or not 1 <= topk <= p:
        raise CZSLInputError(f"topk must be an integer in [1, {p}], got {topk!r}")
    return s, pr, sp, (attr, obj, pair), feas


def _member(rows: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Bool per row of ``rows`` ([M, 2]): whether that (attr, obj) is a row of ``table``."""
    known = {(int(a), int(o)) for a, o in table}
    return np.array([(int(a), int(o)) in known for a, o in rows], dtype=bool)


def _as_tensor(s: np.ndarray) -> torch.Tensor:
    import torch

    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(s)).clone()


def _predict(base: torch.Tensor, unseen_col: torch.Tensor, pairs: torch.Tensor, bias: Any,
             topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k (attr, obj) predictions [N, k] after adding ``bias`` to the unseen columns."""
    scores = base.clone()
    scores[:, unseen_col] += bias
    idx = scores.topk(topk, dim=1)[1]
    return pairs[idx, 0], pairs[idx, 1]


def _hits(pred: tuple[torch.Tensor, torch.Tensor], attr: torch.Tensor,
          obj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float 0/1 per sample: pair, attr and obj hit by any of the k predictions."""
    attr_match = attr.unsqueeze(1) == pred[0]
    obj_match = obj.unsqueeze(1) == pred[1]
    return ((attr_match & obj_match).any(1).float(), attr_match.any(1).float(), obj_match.any(1).float())


def _split_means(match: torch.Tensor, seen_idx: torch.Tensor, unseen_idx: torch.Tensor) -> tuple[float, float]:
    """Mean hit over seen and over unseen samples (float32 means, NaN for an empty side)."""
    return float(match[seen_idx].mean()), float(match[unseen_idx].mean())


def _bias_list(scores: torch.Tensor, pair: torch.Tensor, seen_col: torch.Tensor, unseen_idx: torch.Tensor,
               unseen_hits: torch.Tensor, topk: int) -> torch.Tensor:
    import torch

    correct = scores[torch.arange(scores.shape[0]), pair][unseen_idx]
    kth_seen = scores[unseen_idx][:, seen_col].topk(topk, dim=1)[0][:, topk - 1]
    gaps = torch.sort((kth_seen - correct)[unseen_hits.bool()] - BIAS_EPS)[0]
    return gaps[:: max(len(gaps) // BIAS_BINS, 1)]


def _hmean(seen: np.ndarray, unseen: np.ndarray) -> np.ndarray:
    """``scipy.stats.hmean([seen, unseen], axis=0)``: 0 where a side is 0, NaN where one is NaN."""
    with np.errstate(divide="ignore"):
        return 1.0 / ((1.0 / seen + 1.0 / unseen) / 2.0)


def _trapz(y: np.ndarray, x: np.ndarray) -> float:
    """``numpy.trapz(y, x)``, same arithmetic (no sorting of x)."""
    return float(np.add.reduce(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def evaluate_czsl(scores: Any, pairs: Any, seen_pairs: Any, labels: tuple[Any, Any, Any], *,
                  open_world: bool = False, feasible: Any = None, topk: int = 1) -> dict[str, Any]:
    """CZSL metrics of ExplainableML/czsl (``Evaluator``, bias 1e3) on array inputs.

    Args:
        scores: float [N, P], one column per candidate pair (float32/float64 kept, see module doc).
        pairs: int [P, 2], the (attr_idx, obj_idx) of each column.
        seen_pairs: int [S, 2], the training pairs.
        labels: ``(attr_idx [N], obj_idx [N], pair_idx [N])``, ``pair_idx`` indexing the columns.
        open_world: when true, ``feasible`` (bool [P]) masks the scores of infeasible columns.
        feasible: bool [P] or None (all feasible); ignored in the closed world.
        topk: top-k pair hits (needs at least ``topk`` seen columns).

    Returns:
        Floats in [0, 1] (or NaN, see the module doc) ``best_seen``, ``best_unseen``, ``best_hm``,
        ``auc``, ``attr_acc``, ``obj_acc``, ``hm_seen``, ``hm_unseen``, the float ``biasterm``,
        and float64 arrays ``biases``, ``seen_curve``, ``unseen_curve`` of one length: point i
        was measured at bias ``biases[i]``; the last point is bias 1e3.

    Raises:
        CZSLInputError (a ``ValueError`` and ``CurateError``): shapes or values that do not fit.
    """
    import torch

    s, pr, sp, (attr, obj, pair), feas = _check_inputs(scores, pairs, seen_pairs, labels, feasible, topk)
    topk = int(topk)
    seen_col = _member(pr, sp)
    if int(seen_col.sum()) < topk:
        raise CZSLInputError(f"topk={topk} needs at least {topk} seen columns (columns whose pair is in "
                             f"seen_pairs), got {int(seen_col.sum())}")
    seen_row = _member(np.stack([attr, obj], 1), sp)

    base = _as_tensor(s)
    if open_world and feas is not None:
        base[:, torch.from_numpy(~feas)] = MASK_SCORE
    pairs_t = torch.from_numpy(pr)
    seen_col_t = torch.from_numpy(seen_col)
    attr_t, obj_t, pair_t = torch.from_numpy(attr), torch.from_numpy(obj), torch.from_numpy(pair)
    seen_idx = torch.from_numpy(np.flatnonzero(seen_row))
    unseen_idx = torch.from_numpy(np.flatnonzero(~seen_row))

    match, attr_hit, obj_hit = _hits(_predict(base, ~seen_col_t, pairs_t, BIAS_MAX, topk), attr_t, obj_t)
    biaslist = _bias_list(base, pair_t, seen_col_t, unseen_idx, match[unseen_idx], topk)

    seen_acc, unseen_acc = [], []
    for bias in biaslist:
        s_acc, u_acc = _split_means(_hits(_predict(base, ~seen_col_t, pairs_t, bias, topk), attr_t, obj_t)[0],
                                    seen_idx, unseen_idx)
        seen_acc.append(s_acc)
        unseen_acc.append(u_acc)
    s_max, u_max = _split_means(match, seen_idx, unseen_idx)
    seen_curve = np.array([*seen_acc, s_max], dtype=np.float64)
    unseen_curve = np.array([*unseen_acc, u_max], dtype=np.float64)
    biases = np.array([*(float(b) for b in biaslist), BIAS_MAX], dtype=np.float64)

    hm = _hmean(seen_curve, unseen_curve)
    best = int(np.argmax(hm))  # the first NaN if any, as numpy (and the official code) does
    return {
        "best_seen": float(np.max(seen_curve)),
        "best_unseen": float(np.max(unseen_curve)),
        "best_hm": float(np.max(hm)),
        "auc": _trapz(seen_curve, unseen_curve),
        "attr_acc": float(attr_hit.mean()),
        "obj_acc": float(obj_hit.mean()),
        "hm_seen": float(seen_curve[best]),
        "hm_unseen": float(unseen_curve[best]),
        "biasterm": float(biases[best]),
        "biases": biases,
        "seen_curve": seen_curve,
        "unseen_curve": unseen_curve,
    }
