"""The task ledger: reruns skip done tasks, failed ones are retried, and a run killed with
SIGKILL then rerun gives byte-identical output to an uninterrupted run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from curate.fsutil import TMP_MARK, write_text
from curate.ledger import Ledger, Task, run_stage

CURATE = str(Path(sys.executable).with_name("curate"))


def write_task(task: Task) -> dict:
    """A stage task: one output file per task, failing when asked to."""
    out = Path(task.args["out"])
    if task.args.get("fail_if_exists") and Path(task.args["fail_if_exists"]).exists():
        raise RuntimeError(f"task {task.id} told to fail")
    write_text(out / f"{task.id}.txt", f"result of {task.id}\n")
    return {"outputs": [f"{task.id}.txt"], "stats": {"items": 2}}


def tasks_for(out: Path, n: int = 4, **args) -> list[Task]:
    return [Task(f"t{i}", {"out": str(out), **args}) for i in range(n)]


def test_marker_counts_only_when_outputs_exist(tmp_path):
    led = Ledger(tmp_path, "stage/one")
    assert not led.is_done("a")
    (tmp_path / "a.txt").write_text("x")
    led.mark_done("a", ["a.txt"], {"items": 1})
    assert led.is_done("a")
    assert led.record("a") == {"task": "a", "outputs": ["a.txt"], "stats": {"items": 1}}
    assert led.marker("a").parent.name == "stage_one"
    (tmp_path / "a.txt").unlink()
    assert not led.is_done("a")  # output gone: redo it
    led.marker("b").write_text("{not json")
    assert not led.is_done("b")  # a torn marker means not done
    led.reset()
    assert led.done_records() == []


def test_rerun_skips_done_tasks_and_retries_failed(tmp_path):
    flag = tmp_path / "fail-t2"
    flag.write_text("")
    tasks = tasks_for(tmp_path, 4)
    tasks[2].args["fail_if_exists"] = str(flag)
    first = run_stage("write", write_task, tasks, tmp_path)
    assert (first.summary.done, first.summary.skipped, first.summary.failed) == (3, 0, 1)
    assert first.summary.items == 6
    assert "told to fail" in first.errors["t2"]
    assert not (tmp_path / "t2.txt").exists()

    flag.unlink()
    (tmp_path / f"t0.txt{TMP_MARK}99").write_text("left by a killed run")
    second = run_stage("write", write_task, tasks, tmp_path)
    assert (second.summary.done, second.summary.skipped, second.summary.failed) == (1, 3, 0)
    assert sorted(second.records) == ["t0", "t1", "t2", "t3"]
    assert (tmp_path / "t2.txt").read_text() == "result of t2\n"
    assert not list(tmp_path.glob(f"*{TMP_MARK}*"))  # temp files of killed runs are cleaned

    (tmp_path / "t1.txt").unlink()
    third = run_stage("write", write_task, tasks, tmp_path)
    assert (third.summary.done, third.summary.skipped) == (1, 3)


def make_inputs(folder: Path, n_shards: int, per_shard: int, size: int) -> None:
    from curate.shards import write_shard

    rng = np.random.default_rng(0)
    for i in range(n_shards):
        write_shard(folder / f"in-{i:04d}.tar",
                    [{"__key__": f"k{i:04d}_{j}", "bin": rng.bytes(size), "json": {"shard": i, "j": j}}
                     for j in range(per_shard)])


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its hash (the lock file holds a pid, so it differs)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder) != Path(".curate/lock")}


@pytest.mark.slow
def test_sigkill_then_rerun_is_byte_identical(tmp_path):
    n = 40
    make_inputs(tmp_path / "in", n_shards=n, per_shard=3, size=300_000)
    args = [str(tmp_path / "in"), "--maxcount", "2"]
    one = ["--workers", "1"]  # tasks run one after another in the CLI process: the kill lands mid-run
    env = {**os.environ, "CURATE_NO_PROGRESS": "1"}

    ref = subprocess.run([CURATE, "shards", "reshard", *args, *one, "--out", str(tmp_path / "ref")],
                         capture_output=True, text=True, env=env)
    assert ref.returncode == 0, ref.stderr

    out = tmp_path / "killed"
    markers = out / ".curate" / "ledger" / "reshard"
    proc = subprocess.Popen([CURATE, "shards", "reshard", *args, *one, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not any(markers.glob("*.json")):  # finished markers only, not their temp files
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(markers.glob("*.json")))
    assert 1 <= done_at_kill < n, "the kill must land mid-run"
    assert not (out / "manifest.parquet").exists()

    # where tasks run is not part of the output's config: resume with a pool of two workers
    rerun = subprocess.run([CURATE, "shards", "reshard", *args, "--out", str(out), "--workers", "2"],
                           capture_output=True, text=True, env=env)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_at_kill} task(s) already done" in rerun.stderr
    got, want = tree(out), tree(tmp_path / "ref")
    assert sorted(got) == sorted(want)
    assert got == want
    assert sum(k.endswith(".tar") for k in want) == 2 * n


# --- named steps (run_steps) -----------------------------------------------------------------
def _pipeline(src: Path, runs: list[str]):
    """Three steps: ``first`` keeps the first line of a source file, ``upper`` upper-cases what
    ``first`` wrote (reads it: ``after``), ``other`` depends on an option only."""
    from curate.ledger import Step

    def first(ctx) -> dict:
        runs.append("first")
        write_text(ctx.out / "first.txt", src.read_text().splitlines()[0] + "\n")
        return {"items": 1, "chars": len(src.read_text().splitlines()[0])}

    def upper(ctx) -> dict:
        runs.append("upper")
        assert ctx.stats["first"]["items"] == 1  # the upstream step's stats are there, run now or before
        write_text(ctx.out / "upper.txt", (ctx.out / "first.txt").read_text().upper())
        return {"items": 1}

    def other(ctx) -> dict:
        runs.append("other")
        write_text(ctx.out / "other.txt", ctx.option)
        return {}

    return [Step("first", first, ["first.txt"], inputs=lambda ctx: [src]),
            Step("upper", upper, ["upper.txt"], after=["first"]),
            Step("other", other, ["other.txt"], inputs=lambda ctx: {"option": ctx.option},
                 when=lambda ctx: ctx.option != "off")]


def _ctx(out: Path, option: str = "x"):
    from dataclasses import dataclass

    from curate.ledger import StepContext

    @dataclass
    class Ctx(StepContext):
        option: str = "x"

    return Ctx(out, option=option)


def test_steps_rerun_redoes_exactly_the_steps_whose_inputs_changed(tmp_path):
    from curate.ledger import run_steps

    src, out = tmp_path / "captions.txt", tmp_path / "out"
    src.write_text("a red cat\na blue dog\n")
    runs: list[str] = []
    steps = _pipeline(src, runs)
    run_steps(steps, _ctx(out))
    assert runs == ["first", "upper", "other"]
    assert (out / "upper.txt").read_text() == "A RED CAT\n"

    runs.clear()
    ctx = _ctx(out)
    res = run_steps(steps, ctx)
    assert runs == [] and all(r.summary.skipped == 1 for r in res.values())  # nothing changed: all skipped
    assert ctx.stats["first"] == {"items": 1, "chars": 9} and [s.name for s in ctx.summaries] == [
        "first", "upper", "other"]

    src.write_text("a red cat\na blue dog\na green owl\n")  # first.txt comes out the same: upper is kept
    runs.clear()
    run_steps(steps, _ctx(out))
    assert runs == ["first"]

    src.write_text("a striped cat\n")  # first.txt changes: upper is redone, other is not
    runs.clear()
    run_steps(steps, _ctx(out))
    assert runs == ["first", "upper"]
    assert (out / "upper.txt").read_text() == "A STRIPED CAT\n"

    runs.clear()
    run_steps(steps, _ctx(out, option="y"))  # an option of one step only
    assert runs == ["other"] and (out / "other.txt").read_text() == "y"

    runs.clear()
    (out / "first.txt").unlink()  # a lost output: its step is redone, and what reads it only if it differs
    run_steps(steps, _ctx(out, option="off"))  # when() says no: "other" is left out of this run
    assert runs == ["first"]


def test_each_step_runs_on_its_own(tmp_path):
    from curate.ledger import run_step

    src, out = tmp_path / "captions.txt", tmp_path / "out"
    src.write_text("a red cat\n")
    runs: list[str] = []
    first, upper, other = _pipeline(src, runs)
    with pytest.raises(RuntimeError, match="step 'first' has not run"):
        run_step(upper, _ctx(out))
    assert runs == []
    run_step(other, _ctx(out))
    run_step(first, _ctx(out))
    assert runs == ["other", "first"]
    ctx = _ctx(out)  # a fresh process: upper finds first's outputs and stats through its marker
    res = run_step(upper, ctx)
    assert runs == ["other", "first", "upper"] and res.summary.done == 1
    assert ctx.stats["first"]["chars"] == 9 and (out / "upper.txt").read_text() == "A RED CAT\n"
    assert run_step(upper, _ctx(out)).summary.skipped == 1
