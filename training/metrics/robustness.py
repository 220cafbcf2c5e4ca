"""Effective robustness (Taori et al. 2020; the ImageNet-AO paper's ID-vs-OoD plots): pure functions.

Accuracies are logit-scaled, ``logit(p) = log(p / (1 - p))`` (clipped to ``[EPS, 1 - EPS]`` so 0
and 1 stay finite); a line ``ood_logit = a * id_logit + b`` is fitted by least squares over a
baseline group of models; a model's effective robustness is its OoD accuracy minus what the line
predicts from its ID accuracy, ``ood - sigmoid(a * logit(id) + b)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EPS = 1e-4


def logit(p: float | np.ndarray) -> float | np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    out = np.log(q / (1 - q))
    return float(out) if out.ndim == 0 else out


def sigmoid(x: float | np.ndarray) -> float | np.ndarray:
    out = 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
    return float(out) if out.ndim == 0 else out


@dataclass(frozen=True)
class LogitFit:
    slope: float
    intercept: float
    points: int

    def predict(self, id_acc: float) -> float:
        """The OoD accuracy the line predicts at this ID accuracy."""
        return float(sigmoid(self.slope * logit(id_acc) + self.intercept))


def fit_logit_line(id_acc: Sequence[float], ood_acc: Sequence[float]) -> LogitFit | None:
    """Least-squares line through the logit-scaled (ID, OoD) points; None with fewer than two
    distinct ID accuracies (no line is determined)."""
    x = np.asarray(logit(np.asarray(id_acc, dtype=np.float64)), dtype=np.float64).reshape(-1)
    y = np.asarray(logit(np.asarray(ood_acc, dtype=np.float64)), dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} ID accuracies but {len(y)} OoD accuracies")
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return LogitFit(float(slope), float(intercept), len(x))


def effective_robustness(id_acc: float, ood_acc: float, fit: LogitFit | None) -> float | None:
    """OoD accuracy above (positive) or below the baseline line at the model's ID accuracy."""
    if fit is None or id_acc is None or ood_acc is None or not math.isfinite(id_acc):
        return None
    return float(ood_acc) - fit.predict(float(id_acc))


def topk(scores: np.ndarray, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose true class (``labels``) is among the ``k`` highest scores."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return {k: 0.0 for k in ks}
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")
    return {k: float((order[:, :k] == labels[:, None]).any(1).mean()) for k in ks}
