"""``curate train cir``: the Combiner trained on triplets from cached features, through ``fit()``.

Flow: read the train split of a triplets folder (``training.data.triplet_samples``: review
verdicts honoured), get frozen-backbone features once (the source dataset's ``embeddings/``
when the backbone made them, else encoded and cached in ``RUN/features/``), then train CLIP4Cir's
Combiner with in-batch cross-entropy (Adam). Each epoch scores the validation split in the
``ours`` format and ``fit`` keeps the best model by the mean of Recall@1/5/10/50. At the end the
best model and the three zero-shot baselines are scored on the test split in every format the
folder holds (ours, and the cirr / circo / genecis exports), and ``report.md`` +
``recall_vs_k.png`` + ``results.json`` are written. Both captions of a triplet
(``edit_text``, ``edit_text_2``) are used, one drawn per sample per epoch, as CLIP4Cir draws
FashionIQ's.

Run folder::

    RUN/run.json                      model kind, backbone, sizes (what `curate eval cir` reads)
    RUN/checkpoints/epoch-NNNN/       model.safetensors + state.pt (fit); --resume continues
    RUN/best/model.safetensors        the best epoch by val_recall_mean
    RUN/metrics.jsonl                 one line per epoch
    RUN/features/                     cached backbone features (images-*.npz, texts-*.npz)
    RUN/eval/{format}-{split}/        submission files of the final test evaluation
    RUN/results.json, report.md, recall_vs_k.png
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.config import to_dict
from curate.errors import CurateError
from curate.fsutil import write_json
from curate.images import check_decode
from curate.outdir import OutputDir

from .data import (
    about_data,
    folder_splits,
    ours_images,
    read_ours,
    read_triplet_rows,
    reread,
)
from .evaluate import SELECT, Retriever, evaluate_split, val_metrics
from .features import FeatureBank, guess_table, load_table, resolve_backbone
from .models import BASELINES, Combiner, CombinerConfig
from .report import fit_summary, write_report
from .retrievers import RUN_FILE, FeatureRetriever, load_combiner

log = logging.getLogger(__name__)
COMBINER_LR = 1e-3


@dataclass
class CirTrainConfig:
    """What defines a run (its fingerprint); device, precision, resume and time limits do not."""

    triplets: str
    out: str
    model: str = "combiner"
    backbone: str | None = None
    features: str | None = None
    epochs: int = 30
    batch_size: int = 256
    lr: float | None = None  # 1e-3 for the Combiner, 2e-5 for the MLLM
    weight_decay: float = 0.0
    projection_dim: int = 0
    hidden_dim: int = 0
    dropout: float = 0.5
    seed: int = 0
    include_rejected: bool = False
    val_split: str = "val"
    test_split: str = "test"
    # the MLLM embedder (--model mllm)
    mllm: str | None = None
    stage1: str | None = None
    stage1_epochs: int = 1
    steps: int | None = None
    tune: str = "last:2"
    temperature: float = 0.05
    grad_checkpointing: bool = False
    decode: str = "fast"  # how the Combiner's backbone decodes JPEGs it encodes: fast | exact (curate.images)


@dataclass
class RunOptions:
    device: str = "auto"
    precision: str = "auto"
    resume: bool = False
    max_seconds: float | None = None
    overwrite: bool = False
    baselines: bool = True


@dataclass
class TrainData:
    """The train split as index tensors into feature matrices (built once)."""

    images: Any        # float32 [images, D]
    texts: Any         # float32 [texts, D]
    ref: Any           # int64 [N]
    tgt: Any           # int64 [N]
    captions: Any      # int64 [N, 2] (the second caption repeats the first when there is none)
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return int(self.ref.shape[0])


def validate(cfg: CirTrainConfig) -> None:
    if cfg.model not in ("combiner", "mllm"):
        raise CurateError(f"unknown --model {cfg.model!r}", fix="use combiner or mllm")
    if cfg.epochs < 1 or cfg.batch_size < 2:
        raise CurateError("--epochs must be >= 1 and --batch-size >= 2 (in-batch negatives)")
    if cfg.lr is not None and cfg.lr <= 0:
        raise CurateError("--lr must be positive")
    if cfg.model == "mllm" and not cfg.mllm:
        raise CurateError("--model mllm needs --mllm hf:/path/to/llava-folder")
    check_decode(cfg.decode)


def train_cir(cfg: CirTrainConfig, opts: RunOptions) -> dict[str, Any]:
    """Train (or resume) a run; returns ``results.json``'s content (empty on torchrun ranks > 0)."""
    from training.loop import dist_info

    validate(cfg)
    out = Path(cfg.out)
    if not (Path(cfg.triplets) / "triplets.parquet").exists():
        raise CurateError("no triplets.parquet", where=cfg.triplets, fix="run `curate triplets` first")
    if dist_info().rank != 0:  # under torchrun only rank 0 guards (locks) and writes the run folder
        return _train(cfg, opts, out)
    with OutputDir(out, "train cir", to_dict(cfg), overwrite=opts.overwrite):
        _check_resume(out, opts)
        return _train(cfg, opts, out)


def _train(cfg: CirTrainConfig, opts: RunOptions, out: Path) -> dict[str, Any]:
    if cfg.model == "mllm":
        from .mllm import train_mllm

        return train_mllm(cfg, opts, out)
    return train_combiner(cfg, opts, out)


def _check_resume(out: Path, opts: RunOptions) -> None:
    from training.loop import latest_checkpoint

    ckpts = [p for p in (out, out / "stage1", out / "stage2") if latest_checkpoint(p) is not None]
    if ckpts and opts.overwrite and not opts.resume:  # same config, --overwrite: start again (features stay cached)
        import shutil

        for name in ("checkpoints", "best", "stage1", "stage2", "eval", "metrics.jsonl"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return
    if ckpts and not opts.resume:
        raise CurateError("the run folder already has checkpoints", where=str(out),
                          fix="pass --resume to continue it, --overwrite to start again, or choose another --out")


def combiner_data(folder: Path, cfg: CirTrainConfig, bank: FeatureBank) -> TrainData:
    """Train triplets -> feature indices; triplets whose images have no features, or whose target is
    their reference, are skipped and counted."""
    import torch

    rows = read_triplet_rows(folder, "train", cfg.include_rejected)
    if rows.height == 0:
        raise CurateError("the triplets folder has no train split", where=str(folder),
                          fix="mine triplets with a train ratio, e.g. curate triplets --splits train=0.8,val=0.1,test=0.1")
    names = list(dict.fromkeys(rows["reference"].to_list() + rows["target"].to_list()))
    feats = bank.images(names, ours_images(folder))
    skipped: Counter = Counter()
    keep = []
    for r in rows.iter_rows(named=True):
        if r["target"] == r["reference"]:
            skipped["target is the reference"] += 1
        elif r["reference"] not in feats or r["target"] not in feats:
            skipped["image missing"] += 1
        else:
            keep.append(r)
    if len(keep) < 2:
        raise CurateError(f"fewer than 2 usable train triplets ({dict(skipped)})", where=str(folder))
    texts = list(dict.fromkeys(t for r in keep for t in (r["edit_text"], r.get("edit_text_2")) if t))
    tf = bank.texts(texts)
    img_names = list(dict.fromkeys(n for r in keep for n in (r["reference"], r["target"])))
    ipos = {n: i for i, n in enumerate(img_names)}
    tpos = {t: i for i, t in enumerate(texts)}
    caps = [[tpos[r["edit_text"]], tpos[r.get("edit_text_2") or r["edit_text"]]] for r in keep]
    if skipped:
        log.warning("train triplets skipped: %s", dict(skipped))
    return TrainData(
        images=torch.from_numpy(np.stack([feats[n] for n in img_names]).astype(np.float32)),
        texts=torch.from_numpy(np.stack([tf[t] for t in texts]).astype(np.float32)),
        ref=torch.tensor([ipos[r["reference"]] for r in keep]), tgt=torch.tensor([ipos[r["target"]] for r in keep]),
        captions=torch.tensor(caps), skipped=skipped)


def combiner_batches(data: TrainData, batch_size: int, generator: Any, device: str, rank: int = 0,
                     world_size: int = 1):
    """``batches(epoch)`` for fit: a permutation per epoch (CLIP4Cir's drop_last), one caption drawn per
    sample; under torchrun each rank takes every ``world_size``-th triplet of each global batch."""
    import torch

    images, texts = data.images.to(device), data.texts.to(device)
    n = len(data)
    bs = min(batch_size, n)

    def batches(epoch: int) -> Iterator[tuple[Any, Any, Any]]:
        perm = torch.randperm(n, generator=generator)
        pick = torch.randint(0, 2, (n,), generator=generator)
        for start in range(0, n - bs + 1, bs):
            idx = perm[start:start + bs][rank::world_size]
            cap = data.captions[idx, pick[idx]]
            yield images[data.ref[idx].to(device)], texts[cap.to(device)], images[data.tgt[idx].to(device)]

    return batches, n // bs


def combiner_loss(model: Any, batch: tuple[Any, Any, Any]) -> tuple[Any, int]:
    import torch
    import torch.nn.functional as F

    ref, txt, tgt = batch
    logits = model(ref, txt, tgt)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return F.cross_entropy(logits, labels), int(logits.shape[0])


def val_evaluator(folder: Path, cfg: CirTrainConfig, bank: FeatureBank):
    """``evaluate(model, epoch)`` for fit: the ``ours`` metrics of the validation split, prefixed ``val_``."""
    split = read_ours(folder, cfg.val_split, cfg.include_rejected)
    if not split.queries:
        log.warning("no %s triplets: no validation, the last epoch is kept", cfg.val_split)
        return None

    warned: list[bool] = []

    def evaluate(model: Any, epoch: int) -> dict[str, Any]:
        res = evaluate_split(FeatureRetriever(bank, "combiner", _unwrap(model)), split, warn=not warned)
        warned.append(True)  # a too-small val gallery is said once, not every epoch
        return val_metrics(res)

    return evaluate


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def train_combiner(cfg: CirTrainConfig, opts: RunOptions, out: Path) -> dict[str, Any]:
    import torch

    from curate.options import resolve_device
    from training.loop import FitConfig, fit, init_distributed

    folder = Path(cfg.triplets)
    table = load_table(cfg.features) if cfg.features else guess_table(folder)
    backbone = resolve_backbone(cfg.backbone, table, cfg.triplets)
    device = resolve_device(opts.device)
    dist = init_distributed(device)
    if dist.world_size > 1 and device.startswith("cuda"):
        device = f"cuda:{dist.local_rank}"
    bank = FeatureBank(backbone, device, cache_dir=out / "features" / "ours", table=table, decode=cfg.decode)
    data = combiner_data(folder, cfg, bank)
    ccfg = CombinerConfig(bank.dim, cfg.projection_dim, cfg.hidden_dim, cfg.dropout)
    info = {"model": "combiner", "backbone": backbone, "combiner": ccfg.to_dict(),
            "features": str(Path(cfg.features).resolve()) if cfg.features else None,
            "triplets": str(folder.resolve()), "train_triplets": len(data), "train_skipped": dict(data.skipped)}
    if dist.main:
        write_json(out / RUN_FILE, info)
    torch.manual_seed(cfg.seed)
    model = Combiner(ccfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr or COMBINER_LR, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches, steps = combiner_batches(data, cfg.batch_size, gen, device, dist.rank, dist.world_size)
    evaluate = val_evaluator(folder, cfg, bank)
    fc = FitConfig(epochs=cfg.epochs, seed=cfg.seed, device=device, precision=opts.precision, resume=opts.resume,
                   max_seconds=opts.max_seconds, select=SELECT if evaluate else None, desc="train cir", unit="triplets")
    res = fit(model, optimizer, combiner_loss, batches, out, fc, evaluate=evaluate, generators={"batches": gen},
              steps_per_epoch=steps, what=f"a Combiner of {ccfg.dim}-d features ({backbone})")
    if not dist.main:
        return {}
    best = load_combiner(out, info, device)
    methods: dict[str, Retriever] = {"Combiner": FeatureRetriever(bank, "combiner", best)}
    if opts.baselines:
        methods.update({f"zero-shot {k}": FeatureRetriever(bank, k) for k in BASELINES})
    results = {"run": info, "training": fit_summary(res), "seed": cfg.seed, "data": about_data(folder),
               "test": final_evaluation(folder, cfg, methods, table, backbone, device, out)}
    write_json(out / "results.json", results)
    write_report(out, results)
    return results


def final_evaluation(folder: Path, cfg: CirTrainConfig, methods: dict[str, Retriever], table: Any,
                     backbone: str, device: str, out: Path) -> dict[str, dict[str, Any]]:
    """``{method: {split name: SplitResult dict}}`` on the test split, every format the folder holds."""
    results: dict[str, dict[str, Any]] = {m: {} for m in methods}
    banks: dict[str, FeatureBank] = {}
    for split in folder_splits(folder, cfg.test_split, cfg.include_rejected):
        bank = banks.setdefault(split.format, FeatureBank(backbone, device, out / "features" / split.format, table,
                                                          decode=cfg.decode))
        for label, retriever in methods.items():
            if isinstance(retriever, FeatureRetriever):
                retriever = FeatureRetriever(bank, retriever.kind, retriever.model)
            sub = out / "eval" / f"{split.format}-{split.split}" if label == methods_first(methods) else None
            fresh = reread(split, folder, cfg.include_rejected)
            results[label][fresh.name] = evaluate_split(retriever, fresh, sub, warn=sub is not None).to_dict()
    return results


def methods_first(methods: dict[str, Retriever]) -> str:
    """The trained model (listed first): the one whose submission files are written."""
    return next(iter(methods))
