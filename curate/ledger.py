"""The task ledger and the one stage runner: done markers next to outputs, so every stage resumes.

A task is *done* when its marker ``OUT/.curate/ledger/STAGE/TASK_ID.json`` exists, every
output it lists exists, and the fingerprint of its inputs it records equals the fingerprint of
what it would read now (``inputs``: a :func:`curate.fingerprint.fingerprint` of the manifest,
verdicts, vocabulary, model, upstream outputs, options...). A changed input therefore redoes
exactly the stages that read it; a stage given no ``inputs`` is done by marker and outputs
alone. The marker is written (atomically) only after the outputs, so a kill -9 at any moment
loses at most the tasks in flight.

- ``run_stage`` maps a task function over the not-yet-done tasks with an executor, shows a
  progress bar and returns a summary whose ``stats`` are the tasks' :class:`Stats` summed.
- ``run_global`` is its one extension, for a stage that is a single step over everything (a
  join, a filter over all candidates, writing the dataset): the same marker, summary and
  stats, run in this process (so the step may be a closure) with exceptions propagating.
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


class Stats(dict):
    """A stage's counters, merged with ``+`` (as datatrove's ``PipelineStats``).

    Numbers (and numpy arrays) add, lists concatenate, dicts merge key by key, anything else
    (a reason string, a flag) keeps the last value that is not None. ``sum(stats, Stats())``
    merges many.
    """

    def __add__(self, other: dict[str, Any] | None) -> Stats:
        out = Stats(self)
        for k, v in (other or {}).items():
            out[k] = _merge(out[k], v) if k in out else v
        return out

    __radd__ = __add__


def _merge(a: Any, b: Any) -> Any:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a if b is None else b
    if isinstance(a, dict) and isinstance(b, dict):
        return Stats(a) + b
    if isinstance(a, list) and isinstance(b, list):
        return a + b
    try:
        return a + b
    except TypeError:
        return b


@dataclass
class Task:
    """One unit of work. ``outputs`` are paths relative to the stage's output folder; ``inputs`` is
    the fingerprint of what this task reads beyond the stage's own ``inputs`` (e.g. its shard)."""

    id: str
    args: dict[str, Any] = field(default_factory=dict)
    inputs: str | None = None


def task_inputs(stage_inputs: str | None, task: Task | None = None) -> str | None:
    """The fingerprint a task's marker records: the stage's inputs and the task's own."""
    if stage_inputs is None and (task is None or task.inputs is None):
        return None
    if task is None or task.inputs is None:
        return stage_inputs
    return f"{stage_inputs or ''}+{task.inputs}"


class Ledger:
    def __init__(self, out_dir: str | os.PathLike, stage: str):
        self.out_dir = Path(out_dir)
        self.stage = stage
        self.dir = self.out_dir / ".curate" / "ledger" / _SAFE.sub("_", stage)

    def marker(self, task_id: str) -> Path:
        return self.dir / f"{_SAFE.sub('_', task_id)}.json"

    def is_done(self, task_id: str, inputs: str | None = None) -> bool:
        """Marker and outputs exist, and (when ``inputs`` is given) the marker was written for these inputs."""
        m = self.marker(task_id)
        if not m.exists():
            return False
        try:
            rec = read_json(m)
        except Exception:  # noqa: BLE001 - an unreadable marker means "not done"
            return False
        if inputs is not None and rec.get("inputs") != inputs:
            return False
        return all((self.out_dir / o).exists() for o in rec.get("outputs", []))

    def is_stale(self, task_id: str, inputs: str | None) -> bool:
        """A marker exists but was written for other inputs (the task will be redone)."""
        rec = self.record(task_id) if self.marker(task_id).exists() else None
        return inputs is not None and rec is not None and rec.get("inputs") != inputs

    def record(self, task_id: str) -> dict[str, Any] | None:
        m = self.marker(task_id)
        try:
            return read_json(m) if m.exists() else None
        except Exception:  # noqa: BLE001 - unreadable: no record
            return None

    def mark_done(self, task_id: str, outputs: Iterable[str] = (), stats: dict | None = None,
                  inputs: str | None = None) -> None:
        rec = {"task": task_id, "outputs": sorted(outputs), "stats": stats or {}}
        if inputs is not None:
            rec["inputs"] = inputs
        write_json(self.marker(task_id), rec)

    def done_records(self) -> list[dict[str, Any]]:
        if not self.dir.exists():
            return []
        return [read_json(p) for p in sorted(self.dir.glob("*.json"))]

    def reset(self) -> None:
        """Forget every task of this stage (the next run redoes them all)."""
        if self.dir.exists():
            for p in self.dir.glob("*.json"):
                p.unlink()


@dataclass
class StageResult:
    summary: StageSummary
    records: dict[str, dict[str, Any]]
    errors: dict[str, str]

    @property
    def stats(self) -> Stats:
        """Every finished task's stats (this run's and earlier runs'), merged with ``+``."""
        return sum((Stats(self.records[k].get("stats", {})) for k in sorted(self.records)), Stats())


def run_stage(
    stage: str,
    fn: Callable[[Task], dict[str, Any]],
    tasks: list[Task],
    out_dir: str | os.PathLike,
    executor: Executor | None = None,
    unit: str = "tasks",
    inputs: str | None = None,
) -> StageResult:
    """Run ``fn`` over tasks not yet done; ``fn`` returns ``{"outputs": [...], "stats": {...}}``.

    ``inputs`` fingerprints what every task reads (and ``Task.inputs`` what one task reads): a
    task whose marker was written for other inputs is redone. ``stats["items"]`` (if present)
    feeds the items/s column. Failed tasks are logged with their reason and left undone, so the
    next run retries them.
    """
    out_dir = Path(out_dir)
    executor = executor or LocalExecutor(1)
    ledger = Ledger(out_dir, stage)
    clean_temp_files(out_dir)
    summary = StageSummary(stage)
    todo = []
    records: dict[str, dict[str, Any]] = {}
    stale = 0
    for t in tasks:
        if ledger.is_done(t.id, task_inputs(inputs, t)):
            summary.skipped += 1
            records[t.id] = ledger.record(t.id) or {}
        else:
            stale += ledger.is_stale(t.id, task_inputs(inputs, t))
            todo.append(t)
    if stale:
        logger.info("%s: inputs changed since %d task(s) ran: redoing them", stage, stale)
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
                ledger.mark_done(task.id, value.get("outputs", []), stats, task_inputs(inputs, task))
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


def run_global(
    stage: str,
    fn: Callable[[], dict[str, Any]],
    out_dir: str | os.PathLike,
    outputs: Iterable[str] = (),
    inputs: str | None = None,
) -> StageResult:
    """Run the one-step stage ``fn`` unless its marker and ``outputs`` exist (and the marker was
    written for the same ``inputs`` fingerprint); ``fn`` returns its stats.

    The marker lives where ``run_stage`` puts them (task id = the stage name), so a rerun
    after kill -9 skips finished global stages too. A failure raises (nothing is marked).
    """
    out_dir = Path(out_dir)
    ledger = Ledger(out_dir, stage)
    summary = StageSummary(stage)
    if ledger.is_stale(stage, inputs):
        logger.info("%s: inputs changed since it ran: redoing it", stage)
    if ledger.is_done(stage, inputs):
        summary.skipped = 1
        rec = ledger.record(stage) or {}
        logger.info("%s: already done, skipped", stage)
        return StageResult(summary, {stage: rec}, {})
    t0 = time.perf_counter()
    stats = Stats(fn() or {})
    summary.seconds = time.perf_counter() - t0  # in the summary table, not in the stats: outputs stay deterministic
    outputs = sorted(outputs)
    ledger.mark_done(stage, outputs, stats, inputs)
    summary.done, summary.items = 1, int(stats.get("items", 0))
    return StageResult(summary, {stage: {"task": stage, "outputs": outputs, "stats": stats}}, {})
