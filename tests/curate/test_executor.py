"""Executors: the local process pool and Ray run the same tasks to the same results."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.executor import LocalExecutor, RayExecutor, get_executor


# Task functions live at module level: the spawn pool pickles them by reference.
def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed")
    if x == 4:
        raise CurateError("bad input", where=f"task {x}", fix="drop it")
    return x


def die_on_two(x: int) -> int:
    if x == 2:
        os._exit(9)  # a worker killed by the OOM killer looks like this to the pool
    return x


def test_local_pool_runs_every_task_in_worker_processes():
    results = list(LocalExecutor(workers=2).map(square_with_pid, range(7)))
    assert sorted(r.task for r in results) == list(range(7))
    assert all(r.ok and r.value[0] == r.task ** 2 for r in results)
    assert all(r.value[1] != os.getpid() for r in results)
    assert all(r.seconds >= 0 for r in results)


def test_one_worker_runs_in_process_in_order():
    results = list(LocalExecutor(workers=1).map(square_with_pid, [3, 1, 2]))
    assert [r.task for r in results] == [3, 1, 2]
    assert {r.value[1] for r in results} == {os.getpid()}


def test_failing_tasks_are_results_not_crashes():
    results = {r.task: r for r in LocalExecutor(workers=2).map(fail_on_three, range(6))}
    assert sorted(t for t, r in results.items() if r.ok) == [0, 1, 2, 5]
    assert results[3].error.startswith("ValueError: three is not allowed")
    assert "Traceback" in results[3].error
    assert results[4].error == "task 4: bad input — fix: drop it"


def sleep_then_return(x: int) -> int:
    import time

    time.sleep(30 if x else 0)
    return x


def test_ctrl_c_leaves_no_pool_thread_for_the_exit_hook():
    """Ctrl-C while tasks run: the workers are stopped and the pool's manager thread is gone when map() has
    unwound. A live one races the interpreter's exit hook, which wakes it through a pipe it is closing
    ("OSError: [Errno 9] Bad file descriptor" after "Interrupted; ..."): stopping the workers must not drop
    the pool's reference to that thread before the final shutdown waits for it."""
    import threading
    import time

    def managers() -> list:
        return [t for t in threading.enumerate() if type(t).__name__ == "_ExecutorManagerThread" and t.is_alive()]

    for _ in range(3):
        gen = LocalExecutor(workers=2).map(sleep_then_return, [0, 1, 1])
        assert next(gen).task == 0  # the pool runs; tasks 1 and 2 sleep in its workers
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            gen.throw(KeyboardInterrupt)
        assert time.perf_counter() - t0 < 20  # stopped, not waited for
        assert managers() == []


def test_dead_worker_is_a_clear_error():
    with pytest.raises(CurateError, match="worker process died") as e:
        list(LocalExecutor(workers=2).map(die_on_two, range(4)))
    assert "rerun" in e.value.fix


def test_default_workers_and_unknown_executor():
    assert get_executor("local").workers == len(os.sched_getaffinity(0))
    assert get_executor("LOCAL", workers=3).workers == 3
    with pytest.raises(CurateError, match="unknown executor 'spark'"):
        get_executor("spark")


@pytest.fixture(scope="module")
def ray_local():
    """Ray stopped after the module; the test's ``get_executor("ray")`` starts it, as a command does."""
    ray = pytest.importorskip("ray")
    yield ray
    ray.shutdown()


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "lock"}


@pytest.mark.slow
def test_ray_executor_matches_local(ray_local, tmp_path):
    """One Ray test (start-up costs seconds): plain tasks, failures, and a real stage."""
    from curate.ledger import Task, run_stage
    from curate.shards import ShardWriter
    from curate.shards_cli import reshard_task

    # without --address a new local Ray starts, even while a `ray start` cluster runs on this machine (the
    # two-node cluster test may run at the same time in the other worker: ray.init() alone would join it
    # and refuse the CPU count)
    ex = get_executor("ray", workers=2)
    assert isinstance(ex, RayExecutor) and ray_local.cluster_resources()["CPU"] == 2
    results = {r.task: r for r in ex.map(abs, [-3, 2, -1])}
    assert {t: r.value for t, r in results.items()} == {-3: 3, 2: 2, -1: 1}
    failed = [r for r in ex.map(int, ["7", "x"]) if not r.ok]
    assert len(failed) == 1 and failed[0].error.startswith("ValueError")

    with ShardWriter(tmp_path / "in", maxcount=3) as w:
        w.write_all({"__key__": f"k{i:02d}", "txt": f"sample {i}", "json": {"i": i}} for i in range(10))
    outs = {}
    for name, executor in (("ray", ex), ("local", LocalExecutor(workers=1))):
        out = tmp_path / name
        tasks = [Task(f"{i:06d}", {"input": str(p), "out": str(out), "index": i, "prefix": "r",
                                   "maxcount": 2, "maxsize": 1 << 20, "ids": None})
                 for i, p in enumerate(w.written)]
        res = run_stage("reshard", reshard_task, tasks, out, executor=executor)
        assert res.summary.done == 4 and res.summary.items == 10 and not res.errors
        outs[name] = _tree(out)
    assert outs["ray"] == outs["local"]
    assert sum(k.endswith(".tar") for k in outs["ray"]) == 7  # 3+3+3+1 samples, 2 per shard


def test_a_worker_whose_parent_is_killed_ends_itself(tmp_path):
    """kill -9 of a command must not leave its workers behind: a child blocked for good on a pipe whose
    write end it holds itself (a multiprocessing queue's reader does: it never sees end-of-file) ends
    once its parent is gone, through exit_with_parent (pool initializer, DataLoader worker_init_fn)."""
    import signal
    import subprocess
    import sys
    import time

    code = """
import os, sys, time
from curate.executor import exit_with_parent
r, w = os.pipe()
me = os.getpid()  # taken before the fork, as the pool and the DataLoaders do
pid = os.fork()
if pid == 0:
    exit_with_parent(0.1, parent=me)
    os.read(r, 1)  # blocks for good: this process holds the write end too
    os._exit(0)
print(pid, flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in state  # a zombie has ended; only reaping is left

    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)
