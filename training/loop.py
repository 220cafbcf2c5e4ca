"""``fit()``: the one training loop every trainer uses.

A trainer brings a model, an optimizer, a ``loss(model, batch) -> (loss, n_samples)``
function and ``batches(epoch)`` (the data of one epoch, in a deterministic order given the
seed and the generators handed to ``fit``); ``fit`` does the rest:

- seeding (python, numpy, torch) and ``--device auto|cpu|cuda``;
- on CUDA, bf16 autocast (fp16 + gradient scaling where bf16 is missing); fp32 on CPU;
- gradient accumulation over ``grad_accum`` batches;
- a checkpoint per epoch, written atomically: ``RUN/checkpoints/epoch-NNNN/`` holds
  ``model.safetensors`` and ``state.pt`` (optimizer, scheduler, RNG and generator states,
  step counters; read back with ``torch.load(weights_only=True)``); ``RUN/checkpoints/latest``
  names the newest. ``resume=True`` continues from it, so a run killed at any moment
  (``kill -9`` included) ends with the same weights as an uninterrupted one (bit-identical
  on CPU);
- ``RUN/metrics.jsonl``: one line per epoch (loss, lr, samples/s, the evaluation metrics);
- the best model by ``select`` (a metric of ``evaluate``) in ``RUN/best/model.safetensors``;
- a progress bar with samples/s;
- under ``torchrun``, DistributedDataParallel with uneven inputs allowed (``Join``); only
  rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from curate.errors import CurateError
from curate.fsutil import TMP_MARK, write_text
from curate.log import progress_bar

log = logging.getLogger(__name__)

CKPT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
KEEP_CHECKPOINTS = 2


@dataclass
class FitConfig:
    epochs: int
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # auto (bf16/fp16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16
    grad_accum: int = 1
    resume: bool = False
    max_seconds: float | None = None  # a safety net: stop after this long (results stay deterministic)
    select: str | None = None  # metric of ``evaluate`` that picks the best model
    select_mode: str = "max"
    desc: str = "train"
    unit: str = "samples"


@dataclass
class FitResult:
    epochs_done: int
    steps: int
    seconds: float
    samples: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    first_losses: list[float] = field(default_factory=list)
    last_losses: list[float] = field(default_factory=list)
    best: dict[str, Any] | None = None

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


# -- seeds and devices ---------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def autocast_dtype(device: str, precision: str):
    """The autocast dtype for ``precision`` on ``device`` (None: plain fp32)."""
    import torch

    if precision == "fp32" or (precision == "auto" and not device.startswith("cuda")):
        return None
    if precision in ("bf16", "auto"):
        if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
            return torch.float16 if precision == "auto" else _no_bf16()
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    raise CurateError(f"unknown precision {precision!r}", fix="use auto, fp32, bf16 or fp16")


def _no_bf16():
    raise CurateError("this GPU has no bf16", fix="use --precision fp16 or auto")


@dataclass
class Dist:
    """Where this process sits under torchrun (rank 0 of 1 otherwise)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_info() -> Dist:
    import torch.distributed as td

    if td.is_available() and td.is_initialized():
        return Dist(td.get_rank(), td.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                int(os.environ.get("LOCAL_RANK", 0)))


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    import torch
    import torch.distributed as td

    info = dist_info()
    if info.world_size > 1 and not td.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if device.startswith("cuda"):
            torch.cuda.set_device(info.local_rank)
        td.init_process_group(backend)
    return dist_info()


# -- checkpoints ---------------------------------------------------------------------------------
def _rng_state(generators: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state() -> list[Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(state: dict[str, Any], generators: Mapping[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])


def _unwrap(model: Any) -> Any:
    return getattr(model, "module", model)


def save_model(model: Any, path: Path) -> None:
    """The model's state dict as safetensors (atomic), with the model's ``checkpoint_metadata()``
    (str -> str: how it was trained, for the loader to check) when it has one."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in _unwrap(model).state_dict().items()}
    about = getattr(_unwrap(model), "checkpoint_metadata", None)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    # one metadata key holding sorted JSON: safetensors keeps metadata in a hash map whose order differs
    # from process to process, so two keys would make the same weights different bytes run to run
    meta = {METADATA_KEY: json.dumps(about(), sort_keys=True)} if about else None
    save_file(state, str(tmp), metadata=meta)
    os.replace(tmp, path)


METADATA_KEY = "curate"


def model_metadata(path: Path) -> dict[str, str]:
    """What ``save_model`` recorded beside the weights (``checkpoint_metadata()``); {} when none."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else dict(meta)


def load_model_weights(model: Any, path: Path, what: str = "this model") -> None:
    """Load ``model.safetensors`` into ``model`` with errors that name the file and the mismatch."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or not safetensors
        raise CurateError(f"not a readable checkpoint ({type(e).__name__}: {str(e)[:160]})", where=str(path),
                          fix="the file is truncated or corrupt: delete it and resume from an older checkpoint, "
                              "or retrain") from e
    own = _unwrap(model).state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        detail = "; ".join(filter(None, [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(extra[:3])}" if extra else "",
            f"shape {', '.join(shapes[:3])}" if shapes else ""]))
        raise CurateError(f"checkpoint is from another model than {what} ({detail})", where=str(path),
                          fix="use the preset, backbone and options the checkpoint was trained with, "
                              "or start a new run folder")
    _unwrap(model).load_state_dict(state)


def latest_checkpoint(run: Path) -> Path | None:
    p = run / CKPT_DIR / "latest"
    if not p.exists():
        return None
    folder = run / CKPT_DIR / p.read_text().strip()
    return folder if (folder / STATE_FILE).exists() and (folder / MODEL_FILE).exists() else None


def checkpoint_name(epoch: int) -> str:
    """``epoch-NNNN``: the checkpoint folder written after the epoch of 0-based index ``epoch`` (the
    ``epoch`` of metrics.jsonl and best.json counts from 1: their epoch 29 is ``epoch-0028``)."""
    return f"epoch-{epoch:04d}"


def _write_checkpoint(run: Path, epoch: int, model: Any, optimizer: Any, scheduler: Any, scaler: Any,
                      generators: Mapping[str, Any], counters: dict[str, Any]) -> Path:
    import torch

    ckpts = run / CKPT_DIR
    name = checkpoint_name(epoch)
    tmp = ckpts / f"{name}{TMP_MARK}{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, tmp / MODEL_FILE)
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict() if scheduler is not None else None,
             "scaler": scaler.state_dict() if scaler is not None else None,
             "rng": _rng_state(generators), "counters": counters}
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    final = ckpts / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text(ckpts / "latest", name + "\n")
    for old in sorted(p for p in ckpts.glob("epoch-*") if TMP_MARK not in p.name)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(path: Path) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, corrupt, or a pickle of arbitrary objects
        raise CurateError(f"not a readable training state ({type(e).__name__}: {str(e).splitlines()[0][:160]})",
                          where=str(path), fix="delete this checkpoint folder to resume from the one before, "
                                               "or start again without --resume") from e
    if not isinstance(state, dict) or "epoch" not in state:
        raise CurateError("not a training state written by curate", where=str(path))
    return state


# -- the loop ------------------------------------------------------------------------------------
@dataclass
class _Trainer:
    """What one ``fit`` call works with: set up once by :func:`_setup`, read by every epoch."""

    model: Any
    ddp: Any                     # the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: Any
    loss: Callable[[Any, Any], tuple[Any, int]]
    run: Path
    cfg: FitConfig
    scheduler: Any
    scheduler_per: str
    generators: dict[str, Any]
    device: str
    dist: Dist
    amp_dtype: Any
    scaler: Any

    def step(self) -> None:
        """One optimizer step (and the scheduler's, when it steps per optimizer step)."""
        _step(self.optimizer, self.scaler, self.scheduler if self.scheduler_per == "step" else None)


def fit(
    model: Any,
    optimizer: Any,
    loss: Callable[[Any, Any], tuple[Any, int]],
    batches: Callable[[int], Iterable[Any]],
    run: str | os.PathLike,
    cfg: FitConfig,
    *,
    scheduler: Any = None,
    scheduler_per: str = "epoch",
    evaluate: Callable[[Any, int], dict[str, Any]] | None = None,
    generators: Mapping[str, Any] | None = None,
    steps_per_epoch: int | None = None,
    what: str = "this model",
) -> FitResult:
    """Train ``model`` for ``cfg.epochs`` epochs; see the module docstring.

    ``loss(model, batch)`` returns the (mean) loss of the batch and its number of samples;
    ``batches(epoch)`` yields the batches of one epoch (already on the device or moved by
    ``loss``). ``scheduler`` steps once per epoch (``scheduler_per="epoch"``) or after every
    optimizer step (``"step"``). ``generators`` (name -> ``torch.Generator``) are saved and
    restored with the checkpoints, so a resumed run draws the same batches.
    ``steps_per_epoch`` only sizes the progress bar.

    In order: :func:`_setup` (device, precision, DDP), :func:`_resume` (the latest checkpoint,
    or the seed), then per epoch :func:`_train_epoch` and :func:`_end_epoch` (scheduler,
    metrics row, evaluation and the best model, checkpoint).
    """
    t = _setup(model, optimizer, loss, Path(run), cfg, scheduler, scheduler_per, generators)
    counters, start_epoch = _resume(t, what)
    if t.dist.main:
        _write_history(t.run, counters["history"])
    t_start = time.perf_counter() - float(counters["seconds"])
    stopped = bool(counters.get("stopped_early"))
    total_steps = steps_per_epoch * cfg.epochs if steps_per_epoch else None
    with progress_bar(cfg.desc, total=total_steps, unit="steps") as advance:
        if counters["step"]:
            advance(counters["step"])
        for epoch in range(start_epoch, cfg.epochs):
            if stopped:
                break
            t_epoch = time.perf_counter()
            ep_loss, ep_n, ep_steps, stopped = _train_epoch(t, batches(epoch), counters, t_start, advance)
            if stopped and ep_steps == 0:
                break
            _end_epoch(t, epoch, counters, ep_loss, ep_n, t_epoch, t_start, stopped, evaluate)
    return FitResult(epochs_done=len(counters["history"]), steps=counters["step"],
                     seconds=float(counters["seconds"]), samples=int(counters["samples"]),
                     stopped_early=bool(counters["stopped_early"]), history=list(counters["history"]),
                     first_losses=list(counters["first_losses"]), last_losses=list(counters["last_losses"]),
                     best=counters["best"])


def _setup(model: Any, optimizer: Any, loss: Callable[[Any, Any], tuple[Any, int]], run: Path, cfg: FitConfig,
           scheduler: Any, scheduler_per: str, generators: Mapping[str, Any] | None) -> _Trainer:
    """The device, the precision (autocast dtype, gradient scaler) and, under torchrun, DDP."""
    import torch

    device = _device_of(model)
    dist = dist_info()
    amp_dtype = autocast_dtype(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if cfg.grad_accum < 1:
        raise CurateError(f"gradient accumulation must be at least 1, got {cfg.grad_accum}")
    ddp = model
    if dist.world_size > 1 and not isinstance(model, torch.nn.parallel.DistributedDataParallel):
        ids = [torch.device(device).index] if device.startswith("cuda") else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return _Trainer(model, ddp, optimizer, loss, run, cfg, scheduler, scheduler_per, dict(generators or {}),
                    device, dist, amp_dtype, scaler)


def _resume(t: _Trainer, what: str) -> tuple[dict[str, Any], int]:
    """``(counters, first epoch)``: from the latest checkpoint under ``resume``, else fresh and seeded."""
    counters: dict[str, Any] = {"step": 0, "samples": 0, "seconds": 0.0, "first_losses": [], "last_losses": [],
                                "best": None, "history": [], "stopped_early": False}
    latest = latest_checkpoint(t.run) if t.cfg.resume else None
    if latest is None:
        if t.cfg.resume and (t.run / "metrics.jsonl").exists():
            log.warning("%s: --resume, but no complete checkpoint in %s: starting from scratch", t.cfg.desc, t.run)
        seed_everything(t.cfg.seed)
        return counters, 0
    state = read_state(latest / STATE_FILE)
    load_model_weights(t.model, latest / MODEL_FILE, what)
    try:
        t.optimizer.load_state_dict(state["optimizer"])
        if t.scheduler is not None and state.get("scheduler") is not None:
            t.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise CurateError(f"checkpoint's optimizer state does not fit {what} ({e})", where=str(latest),
                          fix="resume with the options the run was started with") from e
    if t.scaler is not None and state.get("scaler"):
        t.scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], t.generators)
    start_epoch = int(state["epoch"]) + 1
    log.info("%s: resuming after epoch %d from %s", t.cfg.desc, start_epoch, latest)
    return state["counters"], start_epoch


def _train_epoch(t: _Trainer, batches: Iterable[Any], counters: dict[str, Any], t_start: float,
                 advance: Callable[[int], None]) -> tuple[float, int, int, bool]:
    """One pass over ``batches`` (autocast, accumulation, steps): ``(loss sum, samples, steps, stopped)``."""
    import torch

    cfg = t.cfg
    t.model.train()
    ep_loss, ep_n, ep_steps, micro, stopped = 0.0, 0, 0, 0, False
    with _join(t.ddp, t.dist):
        for batch in batches:
            if cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds:
                stopped = True
                break
            ctx = torch.autocast(t.device.split(":")[0], dtype=t.amp_dtype) if t.amp_dtype else nullcontext()
            with ctx:
                value, n = t.loss(t.ddp, batch)
            scaled = value / cfg.grad_accum
            (t.scaler.scale(scaled) if t.scaler is not None else scaled).backward()
            micro += 1
            lv = float(value.detach())
            ep_loss += lv * n
            ep_n += n
            if micro % cfg.grad_accum == 0:
                t.step()
                ep_steps += 1
                counters["step"] += 1
                _track_loss(counters, lv)
                advance(1)
        if micro % cfg.grad_accum and not stopped:  # the epoch's last, partial accumulation
            t.step()
            ep_steps += 1
            counters["step"] += 1
    return ep_loss, ep_n, ep_steps, stopped


def _end_epoch(t: _Trainer, epoch: int, counters: dict[str, Any], ep_loss: float, ep_n: int, t_epoch: float,
               t_start: float, stopped: bool, evaluate: Callable[[Any, int], dict[str, Any]] | None) -> None:
    """After an epoch: the per-epoch scheduler step, the metrics row, evaluation and the best
    model, then (rank 0) the checkpoint and ``metrics.jsonl``."""
    import torch

    if t.scheduler is not None and t.scheduler_per == "epoch":
        t.scheduler.step()
    seconds = time.perf_counter() - t_epoch
    counters["samples"] += ep_n
    counters["seconds"] = time.perf_counter() - t_start
    row: dict[str, Any] = {"epoch": epoch + 1, "step": counters["step"], "samples": ep_n,
                           "loss": round(ep_loss / max(ep_n, 1), 6),
                           "lr": float(t.optimizer.param_groups[0]["lr"]),
                           "samples_per_s": round(ep_n / seconds, 1) if seconds > 0 else None,
                           "seconds": round(seconds, 2)}
    if stopped:
        row["stopped_early"] = True
        counters["stopped_early"] = True
    if evaluate is not None:
        t.model.eval()
        with torch.no_grad():
            metrics = evaluate(t.model, epoch)
        row.update(metrics)
        _update_best(t.run, t.model, row, t.cfg, counters, t.dist)
    counters["history"].append(row)
    log.info("%s epoch %d/%d: loss %.4f, %s samples/s%s", t.cfg.desc, epoch + 1, t.cfg.epochs, row["loss"],
             row["samples_per_s"], "".join(f", {k} {v:.4f}" for k, v in row.items()
                                            if k not in _ROW_KEYS and isinstance(v, float)))
    if t.dist.main:
        _write_checkpoint(t.run, epoch, t.model, t.optimizer, t.scheduler, t.scaler, t.generators, counters)
        _write_history(t.run, counters["history"])


_ROW_KEYS = ("epoch", "step", "samples", "loss", "lr", "samples_per_s", "seconds")


def _device_of(model: Any) -> str:
    for p in model.parameters():
        return str(p.device)
    return "cpu"


def _join(ddp: Any, dist: Dist):
    if dist.world_size > 1:
        from torch.distributed.algorithms.join import Join

        return Join([ddp])
    return nullcontext()


def _step(optimizer: Any, scaler: Any, scheduler: Any) -> None:
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()


def _track_loss(counters: dict[str, Any], value: float) -> None:
    if len(counters["first_losses"]) < 10:
        counters["first_losses"].append(value)
    counters["last_losses"] = (counters["last_losses"] + [value])[-10:]


def _update_best(run: Path, model: Any, row: dict[str, Any], cfg: FitConfig, counters: dict[str, Any],
                 dist: Dist) -> None:
    if not cfg.select or cfg.select not in row:
        return
    value = row[cfg.select]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    best = counters["best"]
    better = best is None or (value > best["value"] if cfg.select_mode == "max" else value < best["value"])
    if better:
        counters["best"] = {"epoch": row["epoch"], "checkpoint": checkpoint_name(row["epoch"] - 1),
                            "metric": cfg.select, "value": value}
        if dist.main:
            save_model(model, run / "best" / MODEL_FILE)
            write_text(run / "best" / "best.json", json.dumps(counters["best"], sort_keys=True) + "\n")


def _write_history(run: Path, history: list[dict[str, Any]]) -> None:
    """``metrics.jsonl``: rewritten whole, so a resumed run never repeats an epoch's line."""
    write_text(run / "metrics.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def index_batches(n: int, batch: int, gen: Any) -> tuple[Any, int]:
    """``(batches, steps)`` for :func:`fit`: each epoch a permutation of ``range(n)`` drawn from the torch
    generator ``gen``, cut into ``steps = n // batch`` batches (at least one) of ``min(batch, n)`` indices.
    Pass ``generators={"sampler": gen}`` to fit so a resumed run draws the same permutations."""
    import torch

    bs = min(batch, n)
    steps = max(1, n // bs)

    def batches(epoch: int) -> Any:
        perm = torch.randperm(n, generator=gen)
        for b in range(steps):
            yield perm[b * bs:(b + 1) * bs]

    return batches, steps
