"""Which devices `curate embed` runs on, and which one a worker process takes.

On CUDA the stage runs one process per GPU, each holding one copy of the model and fed by its
own decode workers; shards are split between the processes by the executor (each takes the
next shard when it finishes one, so a slow GPU never holds the others back). A process learns
its GPU by taking a lock file ``cuda:N.lock`` (``flock``, released by the kernel when the
process dies) in a folder per output folder and per machine: with exactly one process per GPU
every process gets a different one, without any help from the executor.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import CurateError

logger = logging.getLogger(__name__)

# file objects of the locks this process holds (kept open for its lifetime: closing releases them)
_HELD: dict[str, Any] = {}


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def embed_devices(device: str, count: int | None = None) -> list[str]:
    """The devices a ``--device`` value names, one process each on CUDA.

    ``auto``: every visible GPU, else ``cpu``; ``cuda``: every visible GPU; ``cuda:N``: that
    one; ``cuda:0,2``: those; ``cpu`` (or another torch device such as ``mps``): itself.
    ``count`` is the number of visible GPUs (asked of torch when None).
    """
    device = (device or "auto").strip()
    if not (device == "auto" or device.startswith("cuda")):
        return [device]
    n = cuda_count() if count is None else count
    if device == "auto":
        return [f"cuda:{i}" for i in range(n)] or ["cpu"]
    if n == 0:
        raise CurateError(f"--device {device} asked for, but CUDA is not available", fix="use --device cpu or auto")
    if device == "cuda":
        return [f"cuda:{i}" for i in range(n)]
    ids = device.removeprefix("cuda:").split(",")
    try:
        idx = [int(i) for i in ids]
    except ValueError:
        raise CurateError(f"--device {device!r} is not a CUDA device list",
                          fix="use cuda (every GPU), cuda:N or cuda:0,1") from None
    bad = [i for i in idx if not 0 <= i < n]
    if bad or len(set(idx)) != len(idx):
        raise CurateError(f"--device {device}: this machine has {n} GPU(s) (cuda:0..cuda:{n - 1})",
                          fix="name each visible GPU once, e.g. cuda:0,1")
    return [f"cuda:{i}" for i in idx]


def lock_dir(out: str | os.PathLike) -> Path:
    """Per output folder, per machine (the locks of two runs, or two nodes, never meet)."""
    digest = hashlib.sha1(str(Path(out).resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "curate-embed-devices" / digest


def claim_device(devices: list[str], folder: str | os.PathLike) -> str:
    """The device this process uses: the first of ``devices`` whose lock it can take (kept for life).

    One device needs no lock. When every lock is held (more processes than GPUs, e.g. on Ray),
    the process shares a GPU, chosen by its pid, and says so.
    """
    if len(devices) == 1:
        return devices[0]
    key = f"{folder}|{','.join(devices)}"
    if key in _HELD:
        return _HELD[key][0]
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for dev in devices:
        f = open(folder / f"{dev.replace(':', '-')}.lock", "a+b")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _HELD[key] = (dev, f)
        logger.debug("process %d embeds on %s", os.getpid(), dev)
        return dev
    dev = devices[os.getpid() % len(devices)]
    logger.warning("more embedding processes than GPUs: process %d shares %s", os.getpid(), dev)
    return dev


def release_devices() -> None:
    """Drop this process's device locks (tests; a process that ends releases them anyway)."""
    for _, f in _HELD.values():
        f.close()
    _HELD.clear()


# a forked child (a decode worker) closes its copies: the GPU is free as soon as its process dies
os.register_at_fork(after_in_child=release_devices)
