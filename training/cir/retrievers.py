"""Retrievers over frozen features (a trained Combiner or a zero-shot baseline), and loading a run.

``curate eval cir RUN`` accepts a run folder made by ``curate train cir`` (``RUN/run.json``
says which model, backbone and sizes; the weights are ``RUN/best/model.safetensors``, else the
latest checkpoint) or ``baseline:image|text|sum`` with ``--backbone``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fsutil import read_json

from .data import Split
from .evaluate import Retriever, query_text
from .features import FeatureBank, stack
from .models import BASELINES, Combiner, CombinerConfig, check_dim, combine_baseline, combine_with

log = logging.getLogger(__name__)
RUN_FILE = "run.json"


class FeatureRetriever(Retriever):
    """Query = f(reference image features, edit-text features); gallery = image features."""

    def __init__(self, bank: FeatureBank, kind: str, model: Combiner | None = None):
        if kind == "combiner" and model is None:
            raise ValueError("a combiner retriever needs a model")
        if kind != "combiner" and kind not in BASELINES:
            raise CurateError(f"unknown baseline {kind!r}", fix=f"use one of {', '.join(BASELINES)}")
        self.bank = bank
        self.kind = kind
        self.model = model
        self.label = "Combiner" if kind == "combiner" else f"zero-shot {kind}"

    def encode(self, split: Split) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feats = self.bank.images(split.names(), split.images)
        split.restrict(set(feats))
        dim = self.bank.dim
        if self.model is not None:
            check_dim(self.model.cfg.dim, dim, "the run's Combiner", self.bank.backbone)
        texts = [query_text(split, q) for q in split.queries]
        tf = self.bank.texts(texts)
        image = stack(feats, [q.reference for q in split.queries], dim)
        text = np.stack([tf[t] for t in texts]).astype(np.float32) if texts else np.zeros((0, dim), np.float32)
        if self.kind == "combiner":
            qv = combine_with(self.model, image, text)
        else:
            qv = combine_baseline(self.kind, image, text)
        return qv, feats


def read_run(run: Path) -> dict[str, Any]:
    p = run / RUN_FILE
    if not p.exists():
        raise CurateError("not a CIR run folder (no run.json)", where=str(run),
                          fix="pass a folder made by `curate train cir`, or baseline:image|text|sum with --backbone")
    return read_json(p)


def run_weights(run: Path) -> Path:
    """The weights to evaluate: the best model by validation, else the latest epoch's."""
    from training.loop import MODEL_FILE, latest_checkpoint

    best = run / "best" / MODEL_FILE
    if best.exists():
        return best
    latest = latest_checkpoint(run)
    if latest is None:
        raise CurateError("the run has no weights yet (no best/ and no checkpoint)", where=str(run),
                          fix="train it with `curate train cir`, or resume it with --resume")
    return latest / MODEL_FILE


def load_combiner(run: Path, info: dict[str, Any], device: str = "cpu") -> Combiner:
    from training.loop import load_model_weights

    cfg = CombinerConfig(**info["combiner"])
    model = Combiner(cfg)
    load_model_weights(model, run_weights(run), what=f"a Combiner of {cfg.dim}-d features")
    return model.to(device).eval()
