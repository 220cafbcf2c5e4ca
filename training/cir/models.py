"""The CIR models over frozen features: CLIP4Cir's Combiner and three zero-shot baselines.

``Combiner`` is ABaldrati/CLIP4Cir ``src/combiner.py``, layer for layer: text and image
projections (Linear -> ReLU -> Dropout 0.5), their concatenation -> Linear -> ReLU -> Dropout 0.5
-> Linear back to the feature size, a gate lambda = sigmoid(MLP(concatenation)) and
``output = v + lambda * text + (1 - lambda) * image``, L2-normalised; ``logits = 100 * pred @
normalize(target).T``, trained with in-batch cross-entropy. CLIP4Cir feeds raw CLIP features;
here the inputs are the L2-normalised features ``curate embed`` stores (the residual then mixes
unit vectors), and the default sizes keep CLIP4Cir's ratios (projection 4x, hidden 8x the feature
size: 2560 / 5120 for RN50x4's 640).

Baselines need no training: ``image`` (the reference's own features), ``text`` (the edit text's)
and ``sum`` (normalised image + normalised text, renormalised).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.errors import CurateError

BASELINES = ("image", "text", "sum")
LOGIT_SCALE = 100.0


@dataclass
class CombinerConfig:
    dim: int
    projection_dim: int = 0  # 0: 4 x dim
    hidden_dim: int = 0      # 0: 8 x dim
    dropout: float = 0.5

    def resolved(self) -> CombinerConfig:
        return CombinerConfig(self.dim, self.projection_dim or 4 * self.dim, self.hidden_dim or 8 * self.dim,
                              self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self.resolved())


class Combiner(nn.Module):
    """CLIP4Cir's Combiner (see the module docstring)."""

    def __init__(self, cfg: CombinerConfig):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        d, p, h = cfg.dim, cfg.projection_dim, cfg.hidden_dim
        self.text_projection_layer = nn.Linear(d, p)
        self.image_projection_layer = nn.Linear(d, p)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.combiner_layer = nn.Linear(p * 2, h)
        self.output_layer = nn.Linear(h, d)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.dynamic_scalar = nn.Sequential(nn.Linear(p * 2, h), nn.ReLU(), nn.Dropout(cfg.dropout),
                                            nn.Linear(h, 1), nn.Sigmoid())
        self.logit_scale = LOGIT_SCALE

    def combine_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        text_projected = self.dropout1(F.relu(self.text_projection_layer(text_features)))
        image_projected = self.dropout2(F.relu(self.image_projection_layer(image_features)))
        raw = torch.cat((text_projected, image_projected), -1)
        combined = self.dropout3(F.relu(self.combiner_layer(raw)))
        gate = self.dynamic_scalar(raw)
        out = self.output_layer(combined) + gate * text_features + (1 - gate) * image_features
        return F.normalize(out, dim=-1)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                target_features: torch.Tensor) -> torch.Tensor:
        """Logits of every query against every target in the batch."""
        predicted = self.combine_features(image_features, text_features)
        return self.logit_scale * predicted @ F.normalize(target_features, dim=-1).T


def check_dim(model_dim: int, features_dim: int, where: str, backbone: str) -> None:
    """A Combiner trained on one backbone cannot read another's features: say so, clearly."""
    if model_dim != features_dim:
        raise CurateError(f"the checkpoint expects {model_dim}-d features but the backbone {backbone} gives "
                          f"{features_dim}-d", where=where,
                          fix="evaluate with the backbone the run was trained with (see RUN/run.json), or "
                              "retrain on this backbone's features")


def combine_baseline(kind: str, image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """Zero-shot query vectors: ``image``, ``text`` or ``sum`` of the normalised two (L2-normalised)."""
    if kind == "image":
        out = image
    elif kind == "text":
        out = text
    elif kind == "sum":
        out = _unit(image) + _unit(text)
    else:
        raise CurateError(f"unknown baseline {kind!r}", fix=f"use one of {', '.join(BASELINES)}")
    return _unit(np.asarray(out, dtype=np.float32))


def _unit(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32)


@torch.no_grad()
def combine_with(model: Combiner, image: np.ndarray, text: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Query vectors of a trained Combiner (eval mode, no dropout), on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(image), batch):
        img = torch.from_numpy(np.ascontiguousarray(image[i:i + batch])).to(device)
        txt = torch.from_numpy(np.ascontiguousarray(text[i:i + batch])).to(device)
        out.append(model.combine_features(img, txt).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), np.float32)
