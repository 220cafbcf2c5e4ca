"""Scoring a split over candidate pairs and turning the scores into CZSL metrics.

Candidates, as the ExplainableML/czsl ``Evaluator`` (and TRIDENT's copy of it) sets them:

- closed world: the split's pairs plus the training pairs. An image whose pair is in neither
  (a metadata row whose ``set`` disagrees with the pair files) keeps a column that can never
  be predicted (score -1e10), as the official mask does;
- open world: every attribute x object pair; infeasible ones (``feasibility``) are masked.

Scores are raw cosines between image and pair embeddings (no temperature), one float32
column per candidate, handed to :func:`training.metrics.czsl.evaluate_czsl`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from curate.errors import CurateError

from ..metrics.czsl import MASK_SCORE, evaluate_czsl
from .data import CZSLData, Item, Pair, display_name
from .feasibility import thresholds
from .run import RunSpec

if TYPE_CHECKING:
    from ..data.features import TokenFeatures

TokenBatches = Callable[[list[str]], Iterator[tuple[Any, Any]]]  # image keys -> (global, local) batches


@dataclass
class Columns:
    pairs: list[Pair]
    masked: np.ndarray  # bool [P]: columns that must never be predicted

    def index(self) -> dict[Pair, int]:
        return {p: i for i, p in enumerate(self.pairs)}


def closed_columns(data: CZSLData, split: str, train_pairs: list[Pair]) -> Columns:
    listed = sorted(set(data.split_pairs[split]) | set(train_pairs))
    extra = sorted({(it.attr, it.obj) for it in data.items[split]} - set(listed))
    return Columns(listed + extra, np.r_[np.zeros(len(listed), bool), np.ones(len(extra), bool)])


def open_columns(attrs: list[str], objs: list[str]) -> Columns:
    return Columns([(a, o) for a in attrs for o in objs], np.zeros(len(attrs) * len(objs), bool))


def labels(items: list[Item], columns: Columns, attrs: list[str], objs: list[str]) -> tuple[np.ndarray, ...]:
    a_ix = {a: i for i, a in enumerate(attrs)}
    o_ix = {o: j for j, o in enumerate(objs)}
    col = columns.index()
    missing = sorted({(it.attr, it.obj) for it in items if (it.attr, it.obj) not in col})
    if missing:
        raise CurateError(f"{len(missing)} pair(s) of the split are not candidates (e.g. {' '.join(missing[0])})")
    return (np.array([a_ix[it.attr] for it in items], np.int64), np.array([o_ix[it.obj] for it in items], np.int64),
            np.array([col[(it.attr, it.obj)] for it in items], np.int64))


def pair_ids(columns: Columns, attrs: list[str], objs: list[str]) -> np.ndarray:
    a_ix = {a: i for i, a in enumerate(attrs)}
    o_ix = {o: j for j, o in enumerate(objs)}
    return np.array([[a_ix[a], o_ix[o]] for a, o in columns.pairs], np.int64).reshape(-1, 2)


def metrics(scores: np.ndarray, items: list[Item], columns: Columns, attrs: list[str], objs: list[str],
            train_pairs: list[Pair], *, open_world: bool = False, feasible: np.ndarray | None = None,
            topk: int = 1) -> dict[str, Any]:
    """``evaluate_czsl`` on ``scores`` [N, P] over ``columns`` (masked columns never predicted)."""
    s = np.asarray(scores, np.float32).copy()
    if columns.masked.any():
        s[:, columns.masked] = MASK_SCORE
    seen = pair_ids(Columns(list(train_pairs), np.zeros(len(train_pairs), bool)), attrs, objs)
    return evaluate_czsl(s, pair_ids(columns, attrs, objs), seen, labels(items, columns, attrs, objs),
                         open_world=open_world, feasible=feasible, topk=topk)


def choose_threshold(scores: np.ndarray, items: list[Item], columns: Columns, attrs: list[str], objs: list[str],
                     train_pairs: list[Pair], feas: np.ndarray, topk: int = 1) -> tuple[float, float]:
    """CompCos's threshold: the best validation AUC over ``thresholds`` (first strictly better
    one, starting from AUC 0 with every pair feasible): returns (threshold, val AUC)."""
    seen = np.array([p in set(train_pairs) for p in columns.pairs])
    best_auc, best_th = 0.0, -10.0
    for th in thresholds(feas, seen):
        res = metrics(scores, items, columns, attrs, objs, train_pairs, open_world=True,
                      feasible=(feas >= th) | seen, topk=topk)
        if not math.isnan(res["auc"]) and res["auc"] > best_auc:
            best_auc, best_th = res["auc"], float(th)
    return best_th, best_auc


# -- scores ---------------------------------------------------------------------------------------
def image_embeddings(model: Any, keys: list[str], token_batches: TokenBatches, device: str) -> Any:
    """L2-normalised image embeddings [N, dim] (float32, CPU) of the images ``keys``."""
    import torch
    import torch.nn.functional as F

    out = []
    model.eval()
    with torch.no_grad():
        for g, loc in token_batches(keys):
            out.append(F.normalize(model.embed_images(g.to(device), loc.to(device)).float(), dim=-1).cpu())
    dim = model.cfg.dim
    return torch.cat(out) if out else torch.zeros(0, dim)


def pair_embeddings(model: Any, columns: Columns, attrs: list[str], objs: list[str], n_attrs: int) -> Any:
    """L2-normalised pair embeddings [P, dim]: word rows are attributes first, then objects."""
    import torch
    import torch.nn.functional as F

    ids = torch.from_numpy(pair_ids(columns, attrs, objs))
    device = next(model.parameters()).device
    with torch.no_grad():
        emb = model.pair_embeddings(ids[:, 0].to(device), (ids[:, 1] + n_attrs).to(device))
    return F.normalize(emb.float(), dim=-1).cpu()


# -- a split's scores, once per model ------------------------------------------------------------------
@dataclass
class SplitScores:
    items: list[Item]
    image_emb: Any  # [N, dim] normalised


def split_scores(model: Any, features: TokenFeatures, items: list[Item], device: str) -> SplitScores:
    """The image embeddings of a split's ``items``: computed once, scored against any columns."""
    return SplitScores(items, image_embeddings(model, [it.ref for it in items], features.batches, device))


def scores_over(model: Any, split: SplitScores, columns: Columns, spec: RunSpec) -> np.ndarray:
    """Cosines [N, P] of a split's images and the pair embeddings of ``columns``."""
    pe = pair_embeddings(model, columns, spec.attrs, spec.objs, len(spec.attrs))
    return (split.image_emb @ pe.T).numpy().astype(np.float32)


def zero_shot_scores(encoder: Any, images: list[Any], columns: Columns,
                     template: str = "a photo of {attr} {obj}") -> np.ndarray:
    """CLIP zero-shot cosines [N, P] with one prompt per candidate pair (names with spaces)."""
    texts = [template.format(attr=display_name(a), obj=display_name(o)) for a, o in columns.pairs]
    img = encoder.encode_images(images, batch_size=64)
    txt = encoder.encode_texts(texts, batch_size=256)
    return (img @ txt.T).astype(np.float32)


def jsonable(res: dict[str, Any]) -> dict[str, Any]:
    """Metrics with the curves as lists (NaN kept as null)."""
    def f(v: Any) -> Any:
        if isinstance(v, np.ndarray):
            return [f(x) for x in v.tolist()]
        if isinstance(v, float) and math.isnan(v):
            return None
        return v
    return {k: f(v) for k, v in res.items()}
