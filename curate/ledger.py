"""The task ledger: done markers next to outputs, so every stage resumes.

A task is *done* when its marker ``OUT/.curate/ledger/STAGE/TASK_ID.json`` exists and every
output it lists exists. The marker is written (atomically) only after the outputs, so a
kill -9 at any moment loses at most the tasks in flight. ``run_stage`` maps a task function
over the not-yet-done tasks with an executor, shows a progress bar and returns a summary.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .executor import Executor, LocalExecutor
from .fsutil import clean_temp_files, read_json, write_json
from .log import StageSummary, logger, progress_bar

_SAFE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass
class Task:
    """One unit of work. ``outputs`` are paths relative to the stage's output folder."""

    id: str
    args: dict[str, Any] = field(default_factory=dict)


class Ledger:
    def __init__(self, out_dir: str | os.PathLike, stage: str):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.dir = self.out_dir / ".curate" / "ledger" / _SAFE.sub("_", stage)

    def marker(self, task_id: str) -> Path:
        return self.dir / f"{_SAFE.sub('_', task_id)}.json"

    def is_done(self, task_id: str) -> bool:
        m = self.marker(task_id)
        if not m.exists():
            return False
        try:
            rec = read_json(m)
        except Exception:  # noqa: BLE001 - an unreadable marker means "not done"
            return False
        return all((self.out_dir / o).exists() for o in rec.get("outputs", []))

    def record(self, task_id: str) -> dict[str, Any] | None:
        m = self.marker(task_id)
        return read_json(m) if m.exists() else None

    def mark_done(self, task_id: str, outputs: Iterable[str] = (), stats: dict | None = None) -> None:
        write_json(self.marker(task_id), {"task": task_id, "outputs": sorted(outputs), "stats": stats or {}})

    def done_records(self) -> list[dict[str, Any]]:
        if not self.dir.exists():
            return []
        return [read_json(p) for p in sorted(self.dir.glob("*.json"))]

    def reset(self) -> None:
        if self.dir.exists():
            for p in self.dir.glob("*.json"):
                p.unlink()


@dataclass
class StageResult:
    summary: StageSummary
    records: dict[str, dict[str, Any]]
    errors: dict[str, str]


def run_stage(
    stage: str,
    fn: Callable[[Task], dict[str, Any]],
    tasks: list[Task],
    out_dir: str | os.PathLike,
    executor: Executor | None = None,
    unit: str = "tasks",
) -> StageResult:
    """Run ``fn`` over tasks not yet done; ``fn`` returns ``{"outputs": [...], "stats": {...}}``.

    ``stats["items"]`` (if present) feeds the items/s column. Failed tasks are logged with
    their reason and left undone, so the next run retries them.
    """
    out_dir = Path(out_dir)
    executor = executor or LocalExecutor(1)
    ledger = Ledger(out_dir, stage)
    clean_temp_files(out_dir)
    summary = StageSummary(stage)
    todo = []
    records: dict[str, dict[str, Any]] = {}
    for t in tasks:
        if ledger.is_done(t.id):
            summary.skipped += 1
            records[t.id] = ledger.record(t.id) or {}
        else:
            todo.append(t)
    if summary.skipped:
        logger.info("%s: %d task(s) already done, %d to run", stage, summary.skipped, len(todo))
    errors: dict[str, str] = {}
    t0 = time.perf_counter()
    with progress_bar(stage, total=len(tasks), unit=unit) as advance:
        advance(summary.skipped)
        for res in executor.map(fn, todo):
            task: Task = res.task
            if res.ok:
                value = res.value or {}
                stats = value.get("stats", {})
                ledger.mark_done(task.id, value.get("outputs", []), stats)
                records[task.id] = {"task": task.id, "outputs": value.get("outputs", []), "stats": stats}
                summary.done += 1
                summary.items += int(stats.get("items", 0))
            else:
                summary.failed += 1
                errors[task.id] = res.error or "failed"
                logger.error("%s: task %s failed: %s", stage, task.id, (res.error or "").splitlines()[0])
            advance(1)
    summary.seconds = time.perf_counter() - t0
    return StageResult(summary, records, errors)
