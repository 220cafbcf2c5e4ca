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
- ``run_steps`` runs a pipeline of named :class:`Step` s in order (datatrove's pipeline of
  ``PipelineStep`` s, for steps that write files), each through ``run_global`` with the
  fingerprint of its declared inputs and of the outputs of the steps it reads (``after``):
  a rerun redoes exactly the steps whose inputs changed and the steps that read what they
  rewrote differently. ``run_step`` runs one step on its own (tests, debugging).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .executor import Executor, LocalExecutor
from .fingerprint import fingerprint
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
        # closing: an exception here (Ctrl-C while a result is recorded) closes the map at once, so a process
        # pool stops its workers and its manager thread before the interpreter exits, not at garbage collection
        # (on CPython 3.11 a manager thread still closing at exit made the exit hook print "OSError: [Errno 9]
        # Bad file descriptor" after "Interrupted")
        with closing(executor.map(fn, todo)) as results:
            for res in results:
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


# --- named steps ------------------------------------------------------------------------------
@dataclass
class StepContext:
    """What a pipeline's steps share: the output folder, and what the runner fills in, each step's
    stats by name (this run's, or read from its marker when it was done earlier) and every stage's
    summary in run order (a step may add its sub-stages' summaries). A pipeline subclasses it with
    its own fields (config, executor, vocabulary ...)."""

    out: Path
    stats: dict[str, Stats] = field(default_factory=dict)
    summaries: list[StageSummary] = field(default_factory=list)


@dataclass(frozen=True)
class Step:
    """One named step of a pipeline: reads files and options, writes files, returns its stats.

    - ``name``: the stage name (its marker: ``OUT/.curate/ledger/NAME/NAME.json``);
    - ``run(ctx) -> stats``: does the work, writing ``outputs`` atomically; a dict of stats (or None);
    - ``outputs``: paths relative to ``ctx.out`` (or ``outputs(ctx)``): the step is done only while
      they all exist, and a step that reads this one fingerprints their content;
    - ``inputs(ctx)``: the parts to fingerprint beyond upstream outputs (``Path`` s are hashed by
      content: caption files, vocabulary files, model weights ...; values as they are: options).
      None: the step is done by marker and outputs alone;
    - ``after``: names of the steps whose outputs and stats this step reads (or ``after(ctx)``);
      they must have run (in this run or an earlier one on the same folder);
    - ``when(ctx)``: False skips the step in this run (an optional step: ground truth ...).
    """

    name: str
    run: Callable[[Any], dict[str, Any] | None]
    outputs: Sequence[str] | Callable[[Any], Sequence[str]] = ()
    inputs: Callable[[Any], Any] | None = None
    after: Sequence[str] | Callable[[Any], Sequence[str]] = ()
    when: Callable[[Any], bool] | None = None

    def outputs_for(self, ctx: Any) -> list[str]:
        return sorted(self.outputs(ctx) if callable(self.outputs) else self.outputs)

    def after_for(self, ctx: Any) -> list[str]:
        return list(self.after(ctx) if callable(self.after) else self.after)


def upstream(ctx: StepContext, name: str) -> dict[str, Any]:
    """The record of step ``name`` (task, outputs, stats, inputs): from this run, else from its marker."""
    rec = Ledger(ctx.out, name).record(name)
    if rec is None:
        raise RuntimeError(f"step {name!r} has not run in {ctx.out}: run the steps before it first")
    if name not in ctx.stats:
        ctx.stats[name] = Stats(rec.get("stats", {}))
    return rec


def step_inputs(step: Step, ctx: StepContext) -> str | None:
    """The fingerprint a step's marker records: its own inputs, and the content of its upstream steps'
    outputs and their stats (None when it declares neither)."""
    after = step.after_for(ctx)
    if step.inputs is None and not after:
        return None
    ups = {}
    for a in after:  # first: an upstream step done in an earlier run puts its stats in ctx.stats
        rec = upstream(ctx, a)
        ups[a] = {"outputs": [Path(ctx.out) / o for o in rec.get("outputs", [])], "stats": rec.get("stats", {})}
    return fingerprint(step.inputs(ctx) if step.inputs is not None else None, ups)


def run_step(step: Step, ctx: StepContext) -> StageResult:
    """Run one step unless it is done for its current inputs (see :class:`Step`); its stats go to
    ``ctx.stats[step.name]`` and its summary to ``ctx.summaries``."""
    inputs = step_inputs(step, ctx)
    res = run_global(step.name, lambda: step.run(ctx), ctx.out, step.outputs_for(ctx), inputs=inputs)
    ctx.stats[step.name] = res.stats
    ctx.summaries.append(res.summary)
    return res


def run_steps(steps: Sequence[Step], ctx: StepContext) -> dict[str, StageResult]:
    """Run a pipeline: each step in order (those whose ``when`` says no are left out), each skipped
    when its marker was written for the same inputs fingerprint and its outputs exist, redone
    otherwise. Returns each step's result by name; ``ctx.stats`` holds their stats.

    A step's fingerprint covers its declared ``inputs(ctx)`` and the content of the outputs (and the
    stats) of the steps named in ``after``, so a changed caption file redoes the step that scans
    captions, and the next steps only if what it wrote changed. A kill -9 at any moment loses at most the step in flight.
    """
    results: dict[str, StageResult] = {}
    for step in steps:
        if step.when is not None and not step.when(ctx):
            continue
        results[step.name] = run_step(step, ctx)
    return results
