"""Supervised baselines on a frozen image tower: a linear (softmax) probe on its embeddings, trained
with object labels only (no captions), on every training image or on ``shots`` per object class."""

from __future__ import annotations

import numpy as np


def pick_shots(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    """Indices of up to ``shots`` images per class, drawn with ``seed`` (a class with fewer gives all it has)."""
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in np.unique(labels)]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def train_linear_probe(features: np.ndarray, labels: np.ndarray, n_classes: int, seed: int = 0,
                       shots: int | None = None, steps: int = 300, lr: float = 0.05,
                       weight_decay: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """``(W [C, D], b [C])`` of a softmax regression fitted by full-batch Adam on L2-normalised features
    (the seed draws the shots and the initialisation)."""
    import torch

    idx = pick_shots(labels, shots, seed) if shots else np.arange(len(labels))
    x = torch.from_numpy(np.ascontiguousarray(features[idx], dtype=np.float32))
    x = torch.nn.functional.normalize(x, dim=1)
    y = torch.from_numpy(labels[idx].astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(n_classes, x.shape[1], generator=gen) * 0.01).requires_grad_()
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y)
        loss.backward()
        opt.step()
    return w.detach().numpy(), b.detach().numpy()


def probe_logits(features: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The probe's class scores for ``features`` (L2-normalised, as in training)."""
    f = np.asarray(features, dtype=np.float32)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return (f @ w.T + b).astype(np.float32)
