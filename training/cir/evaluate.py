"""Scoring a retriever on a split exactly as each benchmark scores, plus the test-server files.

A *retriever* turns a :class:`~training.cir.data.Split` into query vectors (one per kept
query) and gallery vectors (by image name); everything after that is the benchmark's own
metric from :mod:`training.metrics.cir` (CLIP4Cir / SEARLE / CIRCO / GeneCIS semantics), fed
through :func:`training.cir.retrieval.similarity_blocks` so any gallery size fits in memory:

- ``cirr``: Recall@1/5/10/50 (reference removed by name) and Recall_subset@1/2/3;
  submission files ``recall_submission_{split}.json`` / ``recall_subset_submission_{split}.json``.
- ``circo``: mAP@5/10/25/50, Recall@5/10/25/50, semantic mAP@10; ``circo_submission_{split}.json``.
- ``fashioniq``: Recall@10/50 per category and the three-category average.
- ``genecis``: Recall@1/2/3 over each query's own gallery.
- ``ours``: Recall@1/5/10/50 as CIRR (reference removed), mAP@5/10/25/50 over every valid
  target (the ``gt`` list), and ``hard_recall_at1/2/3`` over the target + its hard negatives
  (GeneCIS-style).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.fsutil import write_json
from training.metrics import cir as M

from .data import Query, Split, fashioniq_text
from .report import gallery_warning, saturated
from .retrieval import frac32, hits_of, similarity_blocks

log = logging.getLogger(__name__)

RECALL_K = 50  # the deepest rank any metric here reads
SELECT = "val_recall_mean"  # what the trainers keep the best epoch by
FRAC32_PREFIXES = ("recall_at", "group_recall_at")


class Retriever(ABC):
    """Anything that embeds a split's queries and gallery into one space (higher dot = closer)."""

    label: str = "retriever"

    @abstractmethod
    def encode(self, split: Split) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(query vectors [kept queries, D], gallery vectors by name). Must call ``split.restrict``
        with the names it has images for, so queries without images are skipped and counted."""


def query_text(split: Split, q: Query) -> str:
    """The text the benchmark's reference code feeds the model (FashionIQ joins its two captions)."""
    return fashioniq_text(q.texts) if split.format == "fashioniq" else q.text


@dataclass
class SplitResult:
    name: str
    format: str
    split: str
    queries: int
    gallery: int
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    saturated: list[str] = field(default_factory=list)  # metrics whose K reaches the gallery: trivially 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "split": self.split, "queries": self.queries,
                "gallery": self.gallery, "metrics": self.metrics, "saturated": self.saturated,
                "skipped": self.skipped, "skipped_examples": self.examples, "files": self.files}


def evaluate_split(retriever: Retriever, split: Split, out: Path | None = None, warn: bool = True) -> SplitResult:
    """Metrics of ``retriever`` on ``split`` (when it has targets) and submission files in ``out``.

    Metrics whose K reaches the gallery (R@50 on a 51-image CIRR gallery) are listed in
    ``saturated`` and, with ``warn``, logged: they are 100 whatever the model."""
    qv, feats = retriever.encode(split)
    names = list(split.index)
    gallery = np.stack([feats[n] for n in names]).astype(np.float32) if names else np.zeros((0, qv.shape[1]),
                                                                                           np.float32)
    size = len(split.queries[0].gallery) if split.format == "genecis" and split.queries else len(names)
    res = SplitResult(split.name, split.format, split.split, len(split.queries), size)
    if split.queries:
        if split.format == "genecis":
            res.metrics = _genecis(split, qv, feats)
        elif split.has_targets:
            res.metrics = score(split, qv, names, gallery)
        if out is not None and split.format in ("cirr", "circo"):
            res.files = write_submission(split, qv, names, gallery, out)
    res.saturated = saturated(split.format, size, res.metrics)
    if res.saturated and warn:
        log.warning("%s", gallery_warning(split.name, split.format, size, res.saturated))
    res.skipped = dict(split.skipped)
    res.examples = dict(split.examples)
    if split.skipped:
        log.warning("%s: skipped %s", split.name, ", ".join(f"{n} {r}" for r, n in split.skipped.items()))
    return res


def val_metrics(res: SplitResult) -> dict[str, Any]:
    """A validation result as fit() logs it: ``val_*`` metrics and ``val_recall_mean`` (mean R@1/5/10/50)."""
    m = {f"val_{k}": v for k, v in res.metrics.items() if isinstance(v, float)}
    recalls = [res.metrics[f"recall_at{k}"] for k in (1, 5, 10, 50) if f"recall_at{k}" in res.metrics]
    m[SELECT] = float(np.mean(recalls)) if recalls else math.nan
    return m


# -- metrics ----------------------------------------------------------------------------------
def score(split: Split, qv: np.ndarray, names: list[str], gallery: np.ndarray) -> dict[str, Any]:
    pos = {n: i for i, n in enumerate(names)}
    qs = split.queries
    if split.format == "cirr":
        return _blocked(qs, qv, gallery, names, pos, [[q.reference, q.target, *q.group] for q in qs],
                        lambda b, cols, rows: M.cirr_metrics(
                            b, cols, [q.reference for q in rows], [q.target for q in rows], [q.group for q in rows],
                            group_size=len(rows[0].group)), counts=True)
    if split.format == "fashioniq":
        return _blocked(qs, qv, gallery, names, pos, [[q.target] for q in qs],
                        lambda b, cols, rows: M.fashioniq_metrics(b, cols, [q.target for q in rows]), counts=True)
    if split.format == "circo":
        return _blocked(qs, qv, gallery, names, pos, [[q.reference, *q.gt] for q in qs],
                        lambda b, cols, rows: M.circo_metrics(b, cols, [q.reference for q in rows],
                                                              [q.target for q in rows], [q.gt for q in rows],
                                                              _aspects(rows)), counts=False)
    if split.format == "ours":
        return _ours(split, qv, names, gallery, pos)
    raise ValueError(f"no metric for format {split.format!r}")


def _aspects(rows: Sequence[Query]) -> list[list[str]] | None:
    return [q.aspects or [] for q in rows] if any(q.aspects for q in rows) else None


def _ours(split: Split, qv: np.ndarray, names: list[str], gallery: np.ndarray, pos: dict[str, int]) -> dict:
    qs = split.queries
    out = _blocked(qs, qv, gallery, names, pos, [[q.reference, q.target] for q in qs],
                   lambda b, cols, rows: M.cirr_metrics(b, cols, [q.reference for q in rows],
                                                        [q.target for q in rows],
                                                        [[q.reference, q.target] for q in rows]), counts=True)
    out = {k: v for k, v in out.items() if not k.startswith("group_")}
    circo = _blocked(qs, qv, gallery, names, pos, [[q.reference, *q.gt] for q in qs],
                     lambda b, cols, rows: M.circo_metrics(b, cols, [q.reference for q in rows],
                                                           [q.target for q in rows], [q.gt for q in rows]),
                     counts=False)
    out.update({k: v for k, v in circo.items() if k.startswith("map_at")})
    hard = [(i, q) for i, q in enumerate(qs) if len(q.gallery) > 1]
    if hard:
        sims = [gallery[[pos[n] for n in q.gallery]] @ qv[i] for i, q in hard]
        out.update({f"hard_{k}": v for k, v in M.genecis_metrics(sims, [0] * len(hard)).items()})
    return out


def _genecis(split: Split, qv: np.ndarray, feats: dict[str, np.ndarray]) -> dict[str, float]:
    sims = [np.stack([feats[n] for n in q.gallery]) @ qv[i] for i, q in enumerate(split.queries)]
    sizes = {len(s) for s in sims}
    return M.genecis_metrics(np.stack(sims) if len(sizes) == 1 else sims, [0] * len(sims))


def _blocked(queries: list[Query], qv: np.ndarray, gallery: np.ndarray, names: list[str], pos: dict[str, int],
             required: list[list[str]], metric: Callable[[np.ndarray, list[str], list[Query]], dict[str, Any]],
             counts: bool) -> dict[str, Any]:
    """Run ``metric(similarity, column names, queries)`` per block and merge into the dense result.

    ``counts``: the recalls are CLIP4Cir's float32 fractions (merged through their hit counts);
    otherwise every value is a float64 mean over queries (merged weighted by queries).
    """
    req = [np.array([pos[n] for n in r if n in pos], dtype=np.int64) for r in required]
    results, rows_of = [], []
    for block in similarity_blocks(qv, gallery, req, RECALL_K + 1):
        rows = queries[block.rows]
        results.append(metric(block.similarity, [names[i] for i in block.cols], rows))
        rows_of.append(rows)
    if len(results) == 1:
        return results[0]
    return merge_blocks(results, [len(r) for r in rows_of], counts, [_aspects(r) for r in rows_of])


def merge_blocks(results: list[dict[str, Any]], sizes: list[int], counts: bool,
                 aspects: list[list[list[str]] | None] | None = None) -> dict[str, Any]:
    """Merge per-block metrics into what one dense call returns (see :func:`_blocked`)."""
    total = sum(sizes)
    out: dict[str, Any] = {}
    for key, first in results[0].items():
        if isinstance(first, dict):
            out[key] = _merge_semantic(key, results, aspects)
        elif counts and key.startswith(FRAC32_PREFIXES):
            out[key] = frac32(sum(hits_of(r[key], n) for r, n in zip(results, sizes, strict=True)), total)
        else:
            out[key] = float(sum(r[key] * n for r, n in zip(results, sizes, strict=True)) / total)
    return out


def _merge_semantic(key: str, results: list[dict[str, Any]], aspects: list | None) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    n_all: dict[str, int] = defaultdict(int)
    for r, block_aspects in zip(results, aspects or [None] * len(results), strict=True):
        n_of: dict[str, int] = defaultdict(int)
        for row in block_aspects or []:
            for a in row:
                n_of[a] += 1
        for a, v in r[key].items():
            if n_of.get(a):
                sums[a] += v * n_of[a]
                n_all[a] += n_of[a]
    return {a: sums[a] / n_all[a] if n_all.get(a) else math.nan for a in results[0][key]}


# -- submissions ------------------------------------------------------------------------------
def write_submission(split: Split, qv: np.ndarray, names: list[str], gallery: np.ndarray, out: Path) -> list[str]:
    """The CIRR / CIRCO test-server files (reference removed for CIRR; no duplicate ids: the reader
    already dropped repeated ids, counted)."""
    pos = {n: i for i, n in enumerate(names)}
    qs = split.queries
    files: list[str] = []
    if split.format == "cirr":
        recall: dict[str, Any] = {}
        subset: dict[str, Any] = {}
        required = [[q.reference, *q.group] for q in qs]
        req = [np.array([pos[n] for n in r if n in pos], dtype=np.int64) for r in required]
        for block in similarity_blocks(qv, gallery, req, RECALL_K + 1):
            rows = qs[block.rows]
            r, s = M.cirr_submission(block.similarity, [names[i] for i in block.cols], [q.reference for q in rows],
                                     [q.qid for q in rows], [q.group for q in rows], group_size=len(rows[0].group))
            recall.update(r)
            subset.update(s)
        for name, obj in ((f"recall_submission_{split.split}.json", recall),
                          (f"recall_subset_submission_{split.split}.json", subset)):
            write_json(out / name, obj)
            files.append(recorded(out / name))
    elif split.format == "circo":
        sub: dict[str, Any] = {}
        req = [np.array([pos[q.reference]], dtype=np.int64) if q.reference in pos else np.zeros(0, np.int64)
               for q in qs]
        for block in similarity_blocks(qv, gallery, req, RECALL_K):
            rows = qs[block.rows]
            sub.update(M.circo_submission(block.similarity, [names[i] for i in block.cols], [q.qid for q in rows]))
        write_json(out / f"circo_submission_{split.split}.json", sub)
        files.append(recorded(out / f"circo_submission_{split.split}.json"))
    return files


def recorded(path: Path) -> str:
    """A submission file as results.json and report.md name it: relative to the run folder
    (``eval/FORMAT-SPLIT/NAME``), so a run resumed after kill -9, or moved, records the same."""
    parts = path.parts
    if "eval" in parts:
        return Path(*parts[len(parts) - 1 - parts[::-1].index("eval"):]).as_posix()
    return path.name
