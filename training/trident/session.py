"""What training and evaluation share: the run folder's description, features, the model, scores.

``RUN/run.json`` records everything needed to rebuild the model without the training data:
the config (preset and shape fields), the backbone spec, the projector path, the word
embeddings, the vocabulary (attributes, objects, training pairs, words, auxiliaries) and the
feature widths. A run is only resumed or evaluated with what it was trained with: any
difference is an error that names it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fsutil import write_json

from .backbone import Backbone, ImageSource, load_projector
from .config import SHAPE_FIELDS, TridentConfig
from .data import CZSLData, Item, Pair
from .features import FeatureCache, build_cache, default_cache_dir
from .model import build_model, set_vocabulary

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
EVAL_BATCH = 256


def default_backbone(root: Path) -> str | None:
    """The model a curate dataset was built with (its ``dataset.json``), for it or its export."""
    for folder in (root, root.parent.parent if root.parent.name == "exports" else None):
        if folder is not None and (folder / "dataset.json").is_file():
            model = json.loads((folder / "dataset.json").read_text()).get("config", {}).get("model")
            if model:
                return str(model)
    return None


# -- the run folder's description ---------------------------------------------------------------------
@dataclass
class RunSpec:
    config: TridentConfig
    backbone: str
    projector: str | None
    word_embeddings: str
    attrs: list[str]
    objs: list[str]
    train_pairs: list[Pair]
    words: list[str]
    aux: dict[str, list[str]] = field(default_factory=dict)   # "attr obj" -> aux words of a train pair
    dims: dict[str, int] = field(default_factory=dict)         # tokens, local_dim, global_dim, word_dim
    cache_dir: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "backbone": self.backbone, "projector": self.projector,
                "word_embeddings": self.word_embeddings, "attrs": self.attrs, "objs": self.objs,
                "train_pairs": [list(p) for p in self.train_pairs], "words": self.words, "aux": self.aux,
                "dims": self.dims, "cache_dir": self.cache_dir, "data": self.data}

    @classmethod
    def read(cls, run: Path) -> RunSpec:
        path = run / RUN_FILE
        if not path.is_file():
            raise CurateError("not a TRIDENT run folder (no run.json)", where=str(run),
                              fix="pass the --out folder of `curate train trident`")
        try:
            d = json.loads(path.read_text())
            return cls(config=TridentConfig.from_dict(d["config"]), backbone=d["backbone"], projector=d.get("projector"),
                       word_embeddings=d["word_embeddings"], attrs=d["attrs"], objs=d["objs"],
                       train_pairs=[tuple(p) for p in d["train_pairs"]], words=d["words"], aux=d.get("aux", {}),
                       dims=d.get("dims", {}), cache_dir=d.get("cache_dir"), data=d.get("data", {}))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CurateError(f"run.json is unreadable ({e})", where=str(path), fix="retrain into a new --out") from e

    def write(self, run: Path) -> None:
        write_json(run / RUN_FILE, self.to_dict())

    def differences(self, other: RunSpec) -> list[str]:
        """Human-readable differences that make one run's checkpoints useless to the other."""
        out = []
        for f in ("preset", *SHAPE_FIELDS):
            a, b = getattr(self.config, f), getattr(other.config, f)
            if a != b:
                out.append(f"{f} {a!r} vs {b!r}")
        for f in ("backbone", "projector", "word_embeddings"):
            if getattr(self, f) != getattr(other, f):
                out.append(f"{f} {getattr(self, f)!r} vs {getattr(other, f)!r}")
        for f in ("attrs", "objs", "train_pairs", "words"):
            if list(getattr(self, f)) != list(getattr(other, f)):
                out.append(f"{f} ({len(getattr(self, f))} vs {len(getattr(other, f))})")
        return out


def describe_state(path: Path) -> str:
    """What a model checkpoint's tensor shapes say about the run that wrote it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
    except Exception:  # noqa: BLE001 - the caller already reports the file as unreadable
        return "unreadable"
    parts = []
    if "global_cond_masks.weight" in shapes:
        g, dim = shapes["global_cond_masks.weight"]
        n_local = len({k.split(".")[1] for k in shapes if k.startswith("local_agg.")})
        parts.append(f"TRIDENT G={g}, L={n_local}, dim={dim}")
    elif "image_embedder.weight" in shapes:
        parts.append("the linear baseline")
    if "project.weight" in shapes:
        parts.append(f"backbone tokens {shapes['project.weight'][1]}-d")
    if "word_embedder.weight" in shapes:
        n, d = shapes["word_embedder.weight"]
        parts.append(f"{n} words x {d}-d word embeddings")
    return ", ".join(parts) or "no TRIDENT tensors"


# -- features -------------------------------------------------------------------------------------
class Features:
    """Token features of items: from the cache, or computed online by the backbone."""

    def __init__(self, data: CZSLData, backbone: Backbone | None, cache: FeatureCache | None, device: str):
        self.data, self.backbone, self.cache, self.device = data, backbone, cache, device
        self.index = cache.index() if cache is not None else {}
        self.source = ImageSource(data)

    def rows(self, items: list[Item]) -> np.ndarray:
        return np.array([self.index[it.ref] for it in items], np.int64)

    def batches(self, items: list[Item], size: int = EVAL_BATCH) -> Iterator[tuple[Any, Any]]:
        import torch

        if self.cache is not None:
            rows = self.rows(items)
            for i in range(0, len(rows), size):
                g, loc = self.cache.gather(rows[i:i + size])
                yield torch.from_numpy(g), torch.from_numpy(loc)
            return
        assert self.backbone is not None
        self.source.load_all(items)
        for i in range(0, len(items), size):
            pixels = torch.stack([self.backbone.preprocess(self.source.open(it)) for it in items[i:i + size]])
            yield self.backbone.tokens(pixels)


def prepare_features(data: CZSLData, backbone: Backbone, cache: bool, cache_dir: Path | None, workers: int,
                     rank: int = 0, world_size: int = 1) -> tuple[FeatureCache | None, dict[str, int]]:
    """Build (this rank's part of) the cache and open it; drop images it could not read."""
    if not cache:
        return None, {}
    folder = cache_dir or default_cache_dir(data, backbone.spec)
    stats = build_cache(folder, data, backbone, workers=workers, rank=rank, world_size=world_size)
    if world_size > 1:
        import torch.distributed as td

        td.barrier()
    fc = FeatureCache.open(folder, backbone.spec, data.root)
    index = fc.index()
    for split in list(data.items):
        before = len(data.items[split])
        data.items[split] = [it for it in data.items[split] if it.ref in index]
        data.note("images_unreadable", before - len(data.items[split]),
                  f"{before - len(data.items[split])} {split} image(s) could not be decoded: skipped")
    log.info("feature cache %s: %d images (%.1f MB), %d computed now", folder, len(fc.keys), fc.nbytes / 1e6,
             stats.get("computed", 0))
    return fc, stats


# -- the model ----------------------------------------------------------------------------------------
def make_model(spec: RunSpec, device: str, word_vectors: np.ndarray | None = None) -> Any:
    """The network of ``spec`` (word table from ``word_vectors``, or zeros to be loaded)."""
    import torch

    projector = load_projector(spec.projector) if spec.projector else None
    d = spec.dims
    model = build_model(spec.config, len(spec.words), d["word_dim"], d["local_dim"], d["global_dim"], projector)
    if word_vectors is not None:
        model.word_embedder.weight.data.copy_(torch.from_numpy(word_vectors))
    model.to(device)
    word = {w: i for i, w in reversed(list(enumerate(spec.words)))}
    n_attrs = len(spec.attrs)
    attr_w = [spec.attrs.index(a) for a, _ in spec.train_pairs]
    obj_w = [n_attrs + spec.objs.index(o) for _, o in spec.train_pairs]
    aux = [[word[w] for w in spec.aux.get(f"{a} {o}", []) if w in word] for a, o in spec.train_pairs]
    set_vocabulary(model, attr_w, obj_w, aux, spec.config.alpha)
    return model


def load_weights(model: Any, path: Path, spec: RunSpec) -> None:
    """Load a checkpoint, naming the preset/backbone mismatch when it does not fit."""
    from ..loop import load_model_weights

    want = (f"preset {spec.config.preset!r} ({spec.config.model}, G={spec.config.global_masks}, "
            f"L={spec.config.local_poolings}, dim={spec.config.dim}) on backbone {spec.backbone!r} "
            f"({spec.dims.get('local_dim')}-d tokens)")
    try:
        load_model_weights(model, path, want)
    except CurateError as e:
        if "another model" not in e.what:
            raise
        raise CurateError(f"checkpoint does not fit this run: it holds {describe_state(path)}; the run is {want}",
                          where=str(path), fix="evaluate it with the run folder it was trained in, or retrain "
                                               "with that preset and backbone") from e


# -- whole-split evaluation -------------------------------------------------------------------------------
@dataclass
class SplitScores:
    items: list[Item]
    image_emb: Any  # [N, dim] normalised


def split_scores(model: Any, features: Features, items: list[Item], device: str) -> SplitScores:
    from .evaluate import image_embeddings

    return SplitScores(items, image_embeddings(model, items, features.batches, device))


def scores_over(model: Any, split: SplitScores, columns: Any, spec: RunSpec) -> np.ndarray:
    from .evaluate import pair_embeddings

    pe = pair_embeddings(model, columns, spec.attrs, spec.objs, len(spec.attrs))
    return (split.image_emb @ pe.T).numpy().astype(np.float32)


def word_vectors_of(model: Any, spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    w = model.word_embedder.weight.detach().float().cpu().numpy()
    n = len(spec.attrs)
    return w[:n], w[n:n + len(spec.objs)]

