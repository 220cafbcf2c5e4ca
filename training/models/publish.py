"""Publish a model folder: build it into a temporary sibling, then move it into place, under a lock.

Shared by the demo mini-CLIP (``mini_clip.ensure_mini_clip``) and the demo MLLM
(``demo_mllm.ensure_demo_mllm``), whose folders live in the shared model cache: two processes
asking for the same folder at once (two ``make demo``, two xdist workers) must not build it
twice or read a half-written one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from curate.fsutil import TMP_MARK


def publish_folder(folder: Path, build: Callable[[Path, Path], None], *, is_complete: Callable[[Path], bool],
                   overwrite: bool = False, refuse: Callable[[Path], None] | None = None) -> bool:
    """Make ``folder`` complete unless it is already (``is_complete``; ``overwrite`` rebuilds it anyway).

    Under an exclusive lock on ``PARENT/.NAME.lock`` (a second caller waits, then finds the folder
    complete), ``build(tmp, run)`` writes the model into ``NAME.tmp-PID`` beside the folder, keeping
    what should survive a killed build (per-epoch checkpoints) in ``.NAME.run``; the temporary folder
    then replaces ``folder`` (``os.replace``: readers see the old folder or the new one, never part of
    one) and the run folder is removed. ``overwrite`` also drops a previous run folder first. A
    non-empty, incomplete ``folder`` is passed to ``refuse`` (unless ``overwrite``), which raises when
    it must not be replaced. The temporary folder is removed whatever happens.

    Returns True when it built the folder, False when it was already complete.
    """
    if is_complete(folder) and not overwrite:
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits instead of building twice
        if is_complete(folder) and not overwrite:
            return False
        if refuse is not None and folder.exists() and any(folder.iterdir()) and not overwrite:
            refuse(folder)
        tmp = folder.with_name(f"{folder.name}{TMP_MARK}{os.getpid()}")
        run = folder.with_name(f".{folder.name}.run")  # per-epoch checkpoints: a killed build resumes
        shutil.rmtree(tmp, ignore_errors=True)
        if overwrite:
            shutil.rmtree(run, ignore_errors=True)
        try:
            build(tmp, run)
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
            shutil.rmtree(run, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return True
