"""Final numbers of a run, ``curate eval czsl`` on a run folder, and zero-shot CLIP on a dataset.

Closed world: the split's pairs + the training pairs are the candidates. Open world: every
attribute x object pair, infeasible ones masked with CompCos's threshold (chosen on the
validation split, then applied to the test split). The feasibility vectors are, by
``feasibility``: ``captions`` (the dataset's ``pairs.parquet`` co-occurrences), ``words``
(the model's word embeddings, CompCos's choice), ``none`` (every pair stays a candidate),
``auto`` (captions when a ``pairs.parquet`` is found, else words).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fsutil import write_json
from curate.images import DEFAULT_DECODE

from ..data.features import TokenFeatures
from .data import CZSLData, load_czsl
from .evaluate import (
    Columns,
    choose_threshold,
    closed_columns,
    jsonable,
    metrics,
    open_columns,
    scores_over,
    split_scores,
)
from .feasibility import caption_vectors, compcos_scores, find_cooccurrence
from .features import image_store, prepare_features
from .model import checkpoint_step, load_weights, make_model, word_vectors_of
from .run import RunSpec

log = logging.getLogger(__name__)


def feasibility_scores(kind: str, data: CZSLData, spec: RunSpec, model: Any = None,
                       table: Path | None = None) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Feasibility [A*O] (attribute-major) and where it came from; None for ``none``."""
    if kind not in ("auto", "captions", "words", "none"):
        raise CurateError(f"unknown feasibility {kind!r}", fix="use auto, captions, words or none")
    if kind == "none":
        return None, {"kind": "none"}
    path = table or find_cooccurrence(data.root)
    if kind == "captions" and path is None:
        raise CurateError("no pairs.parquet (caption co-occurrences) for this dataset", where=str(data.root),
                          fix="pass --feasibility-table PATH, or --feasibility words")
    if kind in ("auto", "captions") and path is not None:
        av, ov = caption_vectors(path, spec.attrs, spec.objs)
        info: dict[str, Any] = {"kind": "captions", "source": str(path)}
    else:
        if model is None:
            raise CurateError("word feasibility needs a trained model's word embeddings",
                              fix="use --feasibility captions or none")
        av, ov = word_vectors_of(model, spec)
        info = {"kind": "words", "source": spec.word_embeddings}
    return compcos_scores(spec.attrs, spec.objs, spec.train_pairs, av, ov).reshape(-1), info


def evaluate_splits(scorer: Any, data: CZSLData, spec: RunSpec, splits: list[str], open_world: bool,
                    feas: np.ndarray | None, feas_info: dict[str, Any]) -> dict[str, Any]:
    """Closed (and open) world metrics of ``splits``; ``scorer(split, columns) -> scores [N, P]``."""
    out: dict[str, Any] = {"closed": {}, "open": {}, "feasibility": feas_info}
    topk = spec.config.topk
    for split in splits:
        items = data.items[split]
        if not items:
            raise CurateError(f"the {split} split has no images", where=str(data.root),
                              fix="check the metadata's 'set' values, or evaluate another --split")
        cols = closed_columns(data, split, spec.train_pairs)
        out["closed"][split] = metrics(scorer(split, cols), items, cols, spec.attrs, spec.objs, spec.train_pairs,
                                       topk=topk)
    if not open_world:
        return out
    cols = open_columns(spec.attrs, spec.objs)
    seen = np.array([p in set(spec.train_pairs) for p in cols.pairs])
    threshold = None
    if feas is not None:
        if data.items.get("val"):
            threshold, val_auc = choose_threshold(scorer("val", cols), data.items["val"], cols, spec.attrs,
                                                  spec.objs, spec.train_pairs, feas, topk)
            feas_info.update(threshold=threshold, val_auc_at_threshold=val_auc)
        else:
            log.warning("no val images to choose the feasibility threshold: every pair stays feasible")
            threshold = -10.0
        mask = (feas >= threshold) | seen
        feas_info.update(feasible_pairs=int(mask.sum()), pairs=int(mask.size))
    for split in splits:
        mask = None if feas is None else (feas >= threshold) | seen
        out["open"][split] = metrics(scorer(split, cols), data.items[split], cols, spec.attrs, spec.objs,
                                     spec.train_pairs, open_world=True, feasible=mask, topk=topk)
    return out


def _model_scorer(model: Any, features: TokenFeatures, data: CZSLData, spec: RunSpec, device: str) -> Any:
    cache: dict[str, Any] = {}

    def scorer(split: str, columns: Columns) -> np.ndarray:
        if split not in cache:
            cache[split] = split_scores(model, features, data.items[split], device)
        return scores_over(model, cache[split], columns, spec)

    return scorer


def final_results(out: Path, spec: RunSpec, data: CZSLData, features: TokenFeatures, model: Any, device: str,
                  feasibility: str, dist: Any) -> dict[str, Any]:
    """The best model on val and test, closed and open world (rank 0 only)."""
    from ..loop import MODEL_FILE

    if not dist.main:
        return {}
    best = out / "best" / MODEL_FILE
    if best.is_file():
        load_weights(model, best, spec)
    splits = [s for s in ("val", "test") if data.items[s]]
    feas, info = feasibility_scores(feasibility, data, spec, model)
    res = evaluate_splits(_model_scorer(model, features, data, spec, device), data, spec, splits, True, feas, info)
    res["model_file"] = str(best if best.is_file() else "last epoch")
    return res


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    out = dict(results)
    for world in ("closed", "open"):
        out[world] = {s: jsonable(r) for s, r in results.get(world, {}).items()}
    return out


# -- curate eval czsl ---------------------------------------------------------------------------------
def _check_vocabulary(data: CZSLData, spec: RunSpec) -> None:
    attrs, objs = set(spec.attrs), set(spec.objs)
    bad = sorted({it.attr for v in data.items.values() for it in v} - attrs)
    bad_o = sorted({it.obj for v in data.items.values() for it in v} - objs)
    if bad or bad_o:
        raise CurateError(f"the data names attributes/objects the run never saw ({', '.join((bad + bad_o)[:5])})",
                          where=str(data.root), fix="evaluate on the dataset the run was trained on")


def evaluate_run(run: Path, data_dir: Path, split: str, open_world: bool, device: str = "auto",
                 feasibility: str = "auto", table: Path | None = None, checkpoint: Path | None = None,
                 cache_features: bool = True, workers: int = 0, decode: str | None = None) -> dict[str, Any]:
    """``curate eval czsl RUN --data DIR``: the run's best model on one split (+ val for open world).
    ``decode``: how the images are decoded (default: as the run was trained; another mode does not read the
    run's feature cache, which holds the trained mode's tokens)."""
    from curate.options import resolve_device

    from ..loop import MODEL_FILE, latest_checkpoint
    from .backbone import Backbone

    spec = RunSpec.read(run)
    dev = resolve_device(device)
    path = checkpoint or (run / "best" / MODEL_FILE)
    if not path.is_file():
        latest = latest_checkpoint(run)
        if latest is None:
            raise CurateError("the run has no model yet (no best/ nor checkpoints/)", where=str(run),
                              fix="train it first: curate train trident --out RUN")
        path = latest / MODEL_FILE
    model = make_model(spec, dev)
    load_weights(model, path, spec)
    from .demo import czsl_root_for

    data = load_czsl(czsl_root_for(data_dir))
    _check_vocabulary(data, spec)
    mode = decode or spec.config.decode
    backbone = Backbone(spec.backbone, dev, mode)
    same_data = Path(spec.data.get("root", "")).resolve() == data.root.resolve()
    own_cache = spec.cache_dir and cache_features and same_data and mode == spec.config.decode
    cache_dir = Path(spec.cache_dir) if own_cache else None
    features, _ = prepare_features(data, backbone, cache_features, cache_dir, workers)
    feas, info = (feasibility_scores(feasibility, data, spec, model, table) if open_world else (None, {}))
    res = evaluate_splits(_model_scorer(model, features, data, spec, dev), data, spec, [split], open_world, feas, info)
    res["model_file"] = str(path)
    res["decode"] = mode
    if spec.config.model == "trident":
        res["training_step"] = checkpoint_step(path)  # BatchNorm grouping and partner rule it was trained with
    write_json(run / f"eval-{split}.json", to_json(res))
    return res


def evaluate_zero_shot(spec_name: str, data_dir: Path, split: str, open_world: bool, device: str = "auto",
                       feasibility: str = "auto", table: Path | None = None,
                       decode: str = DEFAULT_DECODE) -> dict[str, Any]:
    """Zero-shot CLIP ("a photo of {attr} {obj}") with the CZSL evaluator: no training. Each image is padded to
    a square as TRIDENT's backbone does, decoded (``decode``) so its longest side covers the model's resize."""
    from curate.embed.backends import load_model
    from curate.options import resolve_device

    from .backbone import pad_square
    from .config import TridentConfig
    from .demo import czsl_root_for
    from .evaluate import zero_shot_scores

    data = load_czsl(czsl_root_for(data_dir))
    encoder = load_model(spec_name, resolve_device(device))
    spec = RunSpec(config=TridentConfig(preset="zero-shot", topk=1), backbone=spec_name, projector=None,
                   word_embeddings="none", attrs=data.attrs, objs=data.objs, train_pairs=list(data.train_pairs),
                   words=data.words)
    store = image_store(data)
    images: dict[str, list[Any]] = {}
    fill = encoder.pad_color

    def scorer(s: str, columns: Columns) -> np.ndarray:
        if s not in images:
            store.load([it.ref for it in data.items[s]])
            images[s] = [pad_square(encoder.open_image(store.read(it.ref), decode, fit="long"), fill)
                         for it in data.items[s]]
        return zero_shot_scores(encoder, images[s], columns)

    if feasibility in ("auto", "words"):  # no word embeddings here: captions when there are some
        feasibility = "captions" if (table or find_cooccurrence(data.root)) else "none"
    feas, info = feasibility_scores(feasibility, data, spec, None, table) if open_world else (None, {})
    return {**evaluate_splits(scorer, data, spec, [split], open_world, feas, info), "decode": decode}
