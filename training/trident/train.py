"""``curate train trident``: TRIDENT on a CZSL dataset through ``training.loop.fit``.

One epoch = every training image once as an anchor, each with a random same-attribute and a
same-object partner (where none exists, the last training image, masked out of the
disentanglement terms, as the official loader; ``partners="drop"`` masks it out of every term).
The FAA's BatchNorm sees the three image groups one by one (``bn_groups``). After each epoch the model is scored on the
validation split (closed world) and the best validation AUC picks ``RUN/best`` (the
official ``train.py`` tracks it wrongly and saves every epoch instead). At the end the best
model is evaluated on val and test, closed and open world (feasibility threshold chosen on
val, as CompCos does), into ``RUN/results.json``, ``RUN/report.md`` and ``RUN/curves.png``.

Optimiser and schedule as the official configs: Adam, word embeddings at 1.5e-6 and the rest
at 2e-4, weight decay 5e-5, x0.1 after epochs 30 and 40 (``torch.optim.lr_scheduler.MultiStepLR``
stepped per epoch is the official ``decay_learning_rate_milestones``).

On CUDA ``fit`` runs the model in bf16 autocast; batches come from a ``DataLoader`` with
workers and pinned memory. Under ``torchrun --nproc-per-node N`` every rank takes every N-th
image of the epoch's shared order (``DistributedSampler``'s split, global batch unchanged),
gradients are averaged by DDP and the validation metrics of rank 0 are broadcast, so every
rank logs and selects the same.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.executor import worker_init

from ..data.features import TokenFeatures
from .config import TridentConfig, preset
from .data import CZSLData, load_czsl
from .features import prepare_features
from .model import make_model
from .run import RunSpec, default_backbone

log = logging.getLogger(__name__)


@dataclass
class TrainRequest:
    data: Path
    out: Path
    preset: str = "demo"
    backbone: str | None = None
    projector: Path | None = None
    aux: Path | None = None
    word_embeddings: str = "auto"
    device: str = "auto"
    cache_features: bool = True
    cache_dir: Path | None = None
    resume: bool = False
    overwrite: bool = False
    workers: int | None = None        # DataLoader workers (default: 4 on CUDA, 0 on CPU)
    overrides: dict[str, Any] = field(default_factory=dict)
    max_seconds: float | None = None
    feasibility: str = "auto"
    in_memory_gb: float = 4.0
    threads: int | None = None


def idle_threads() -> int:
    """Torch CPU threads: the idle cores (cores minus the 1-minute load, at least 1). On a busy
    machine more threads than idle cores is far slower: each small op waits at a barrier for a
    descheduled thread (measured on a shared 2-core box at load 4.5: 1.1 s per demo step with 2
    threads, 0.15 s with 1)."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(cores, round(idle)))


def _device(request: TrainRequest, local_rank: int, world_size: int) -> str:
    from curate.options import resolve_device

    dev = resolve_device(request.device)
    if dev == "cuda" and world_size > 1:
        return f"cuda:{local_rank}"
    return dev


def _check_run_folder(out: Path, spec: RunSpec, request: TrainRequest) -> None:
    """Refuse to mix runs: resume only what was started with the same preset, backbone, words, data."""
    from ..loop import CKPT_DIR

    prev_file = out / "run.json"
    if not prev_file.exists():
        foreign = [p.name for p in out.iterdir()] if out.is_dir() else []
        if foreign and not request.overwrite:
            raise CurateError(f"is not empty and holds no TRIDENT run ({len(foreign)} entries, e.g. {foreign[0]})",
                              where=str(out), fix="choose an empty or new --out")
        return
    if request.overwrite:
        for name in (CKPT_DIR, "best", "metrics.jsonl", "run.json", "results.json", "report.md", "curves.png"):
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
        return
    prev = RunSpec.read(out)
    diff = prev.differences(spec)
    if diff and request.resume:
        raise CurateError(f"cannot resume: the run was trained with a different setup ({'; '.join(diff[:4])})",
                          where=str(out), fix="resume with the preset, backbone and data it was started with, "
                                              "or pass --overwrite / another --out to start a new run")
    if not request.resume:
        raise CurateError("already holds a training run", where=str(out),
                          fix="pass --resume to continue it, --overwrite to start again, or choose another --out")


def train_trident(request: TrainRequest) -> dict[str, Any]:
    """Train, select by validation AUC, evaluate the best model; returns the results."""
    import torch

    from ..loop import FitConfig, dist_info, fit, init_distributed, seed_everything

    torch.set_num_threads(request.threads or idle_threads())
    cfg = preset(request.preset, **request.overrides)
    info = dist_info()
    device = _device(request, info.local_rank, info.world_size)
    dist = init_distributed(device)
    t0 = time.perf_counter()
    data, spec, out = _open_run(request, cfg, dist)
    backbone, features, vectors, stats = _features_and_words(request, data, spec, device, dist)
    if dist.main:
        spec.write(out)
    if not cfg.alpha or not data.aux:
        log.info("attribute smoothing off (alpha %s, %d pairs with auxiliaries)", cfg.alpha, len(data.aux))
    seed_everything(cfg.seed)  # the initial weights are the seed's, whatever ran before in this process
    model = make_model(spec, device, vectors)
    optimizer, scheduler = _optimizer(model, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, steps = _batches(data, features, backbone, cfg, gen, request, device, dist)

    def loss(m: Any, batch: dict[str, Any]) -> tuple[Any, int]:
        if "pixels" in batch:
            batch["g"], batch["l"] = backbone.tokens(batch.pop("pixels").to(device, non_blocking=True))
        batch = {k: v.to(device, non_blocking=True) if hasattr(v, "to") else v for k, v in batch.items()}
        return m(batch)["loss"], int(batch["inv"].shape[1])

    setup_s = time.perf_counter() - t0
    res = fit(model, optimizer, loss, batches, out,
              FitConfig(epochs=cfg.epochs, seed=cfg.seed, device=device, resume=request.resume,
                        max_seconds=request.max_seconds, select="val_auc" if data.items["val"] else None,
                        desc="trident"),
              scheduler=scheduler, evaluate=_validation(model, features, data, spec, device, dist),
              generators={"plans": gen}, steps_per_epoch=steps,
              what=f"TRIDENT preset {cfg.preset!r} on {spec.backbone!r}")
    from .results import final_results

    results = final_results(out, spec, data, features, model, device, request.feasibility, dist)
    results["training"] = {"epochs_done": res.epochs_done, "steps": res.steps, "seconds": round(res.seconds, 1),
                           "setup_seconds": round(setup_s, 1), "samples_per_s": round(res.samples_per_second, 1),
                           "best": res.best, "stopped_early": res.stopped_early, "device": device,
                           "world_size": dist.world_size, **stats}
    if dist.main:
        from .report import write_report

        write_report(out, spec, data, results)
    return results


def _open_run(request: TrainRequest, cfg: TridentConfig, dist: Any) -> tuple[CZSLData, RunSpec, Path]:
    """The data, the run's description (widths filled in later) and the checked run folder."""
    from .demo import czsl_root_for, world_backbone
    from .words import resolve_spec

    root = czsl_root_for(Path(request.data))
    data = load_czsl(root, aux=request.aux)
    backbone = request.backbone or default_backbone(root) or world_backbone(Path(request.data))
    if not backbone:
        raise CurateError("no --backbone given and the data does not name one", where=str(request.data),
                          fix="pass --backbone open_clip:ViT-L-14-336//path/ckpt.pt (the paper's), hf:/path or mini:PATH")
    spec = RunSpec(config=cfg, backbone=backbone, projector=str(request.projector) if request.projector else None,
                   word_embeddings=resolve_spec(request.word_embeddings), attrs=data.attrs, objs=data.objs,
                   train_pairs=list(data.train_pairs), words=data.words,
                   aux={f"{a} {o}": w for (a, o), w in data.aux.items()})
    out = Path(request.out)
    if dist.main:  # before anything slow: a run is only resumed with what it was started with
        out.mkdir(parents=True, exist_ok=True)
        _check_run_folder(out, spec, request)
    return data, spec, out


def _features_and_words(request: TrainRequest, data: CZSLData, spec: RunSpec, device: str,
                        dist: Any) -> tuple[Any, TokenFeatures, np.ndarray, dict[str, Any]]:
    """The frozen backbone, the token features (cached or online) and the word vectors; fills ``spec``."""
    from .backbone import Backbone
    from .words import embed_words

    backbone = Backbone(spec.backbone, device, spec.config.decode)
    if request.workers is None:
        request.workers = min(4, os.cpu_count() or 1) if device.startswith("cuda") else 0
    features, cache_stats = prepare_features(data, backbone, request.cache_features, request.cache_dir,
                                             request.workers, dist.rank, dist.world_size)
    if not data.items["train"]:
        raise CurateError("the train split has no readable images", where=str(request.data))
    vectors, word_stats = embed_words(spec.word_embeddings, data.words)
    cache = features.cache
    dims = {k: int(cache.info[k]) for k in ("tokens", "local_dim", "global_dim")} if cache else backbone.dims()
    spec.dims = {**dims, "word_dim": int(vectors.shape[1])}
    spec.cache_dir = str(cache.folder) if cache else None
    spec.data = data.describe()
    return backbone, features, vectors, {"cache": cache_stats, "word_embeddings": word_stats}


def _optimizer(model: Any, cfg: TridentConfig) -> tuple[Any, Any]:
    """Adam with the word table in its own group (official: lr_word_embedding), milestone decay."""
    import torch

    words = [p for n, p in model.named_parameters() if n.startswith("word_embedder") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("word_embedder") and p.requires_grad]
    groups = [{"params": rest, "lr": cfg.lr}, {"params": words, "lr": cfg.lr_words}]  # metrics.jsonl logs group 0
    opt = torch.optim.Adam([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.decay)
    return opt, sched


def _batches(data: CZSLData, features: TokenFeatures, backbone: Any, cfg: TridentConfig, gen: Any,
             request: TrainRequest, device: str, dist: Any) -> tuple[Any, int]:
    import torch

    from .features import CachedBatches, ImageBatches, TrainTable, epoch_plans

    items = data.items["train"]
    if features.cache is not None:
        table = TrainTable.build(data, rows=features.rows([it.ref for it in items]), items=items)
        in_mem = features.cache.in_memory(table.rows, request.in_memory_gb * 1e9)
        source: Any = CachedBatches(table, features.cache, in_mem)
        workers = 0 if in_mem is not None else request.workers
    else:
        table = TrainTable.build(data, items=items)
        missing = features.store.load([it.ref for it in items])
        if missing:
            raise CurateError(f"{missing} training image(s) are missing from their shards", where=str(data.root))
        source = ImageBatches(table, features.store, backbone)
        workers = request.workers
    pin = device.startswith("cuda")
    per_rank = max(1, cfg.batch_size // dist.world_size)
    steps = math.ceil(math.ceil(len(items) / dist.world_size) / per_rank)

    def batches(epoch: int):
        plans = epoch_plans(table, cfg.batch_size, gen, dist.rank, dist.world_size, cfg.partners)
        yield from torch.utils.data.DataLoader(source, batch_size=None, sampler=plans, num_workers=workers,
                                               pin_memory=pin, worker_init_fn=worker_init())

    return batches, steps


def _validation(model: Any, features: TokenFeatures, data: CZSLData, spec: RunSpec, device: str, dist: Any):
    """Closed-world validation metrics after each epoch (``val_auc`` selects the best model)."""
    from .evaluate import closed_columns, metrics, scores_over, split_scores

    items = data.items["val"]
    if not items:
        log.warning("the val split has no images: no model selection, the last epoch is kept")
        return None
    columns = closed_columns(data, "val", spec.train_pairs)

    def evaluate(m: Any, epoch: int) -> dict[str, Any]:
        res = metrics(scores_over(m, split_scores(m, features, items, device), columns, spec), items, columns,
                      spec.attrs, spec.objs, spec.train_pairs, topk=spec.config.topk)
        row = {f"val_{k}": float(res[k]) for k in ("auc", "best_hm", "best_seen", "best_unseen", "attr_acc",
                                                   "obj_acc")}
        row = {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 6)) for k, v in row.items()}
        return _broadcast(row, dist)

    return evaluate


def _broadcast(row: dict[str, Any], dist: Any) -> dict[str, Any]:
    """Rank 0's metrics on every rank, so all ranks log and select the same."""
    if dist.world_size <= 1:
        return row
    import torch.distributed as td

    box = [row]
    td.broadcast_object_list(box, src=0)
    return box[0]

