"""Executors: the only place parallelism lives.

``Executor.map(fn, tasks)`` runs ``fn(task)`` for every task and yields ``TaskResult`` in
completion order. ``fn`` must be a picklable top-level function. An exception inside a
task is caught and returned as a failed result (the run goes on); the caller decides.

- ``LocalExecutor``: a process pool (``--workers``, default = cores). With one worker it
  runs in-process, which is what tests and small demo runs want; a caller that names a
  ``start_method`` gets a pool of processes started that way whatever their number (tasks
  Ctrl-C must stop at once; ``fork`` for tasks that run only fork-safe code, so the workers
  start without importing anything again).
- ``RayExecutor``: the same over a Ray cluster (``--executor ray --address ...``); Ray is
  imported only here (``pip install ".[ray]"``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import CurateError


@dataclass
class TaskResult:
    task: Any
    value: Any = None
    error: str | None = None
    seconds: float = 0.0
    uploaded: list[str] | None = None  # keys a task on another machine wrote to the output URL

    @property
    def ok(self) -> bool:
        return self.error is None


def _call(fn: Callable[[Any], Any], task: Any) -> TaskResult:
    t0 = time.perf_counter()
    try:
        value = fn(task)
        return TaskResult(task, value, None, time.perf_counter() - t0)
    except CurateError as e:
        return TaskResult(task, None, e.message, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failing task is data for the summary
        tb = traceback.format_exc(limit=6)
        return TaskResult(task, None, f"{type(e).__name__}: {e}\n{tb}", time.perf_counter() - t0)


def _call_synced(fn: Callable[[Any], Any], task: Any, spec: dict[str, Any] | None) -> TaskResult:
    """``_call`` on a Ray node: on a machine that does not see the driver's object-storage mirror folder the
    task runs on this machine's own mirror (pulled before it, its outputs pushed after it succeeded), and the
    result names what it uploaded."""
    from . import storage

    t0 = time.perf_counter()
    try:
        if not storage.needs_task_sync(spec):
            return _call(fn, task)
        assert spec is not None
        mirrors = storage.pull_for_task(spec)
        res = _call(fn, task)
        if not res.ok:  # nothing is uploaded for a failed task: its rerun redoes it
            return res
        uploaded = storage.push_task_outputs(mirrors)
    except CurateError as e:
        return TaskResult(task, None, e.message, time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - the bucket unreachable from this node: the task failed, retried on a rerun
        return TaskResult(task, None, f"object storage on node {socket.gethostname()}: {type(e).__name__}: {e}",
                          time.perf_counter() - t0)
    return TaskResult(task, res.value, None, res.seconds, uploaded)


def _pool_worker_start(parent: int) -> None:
    """A pool worker's initializer: it leaves Ctrl-C to the parent, which stops it (one message, not a
    traceback per worker), and ends when the parent (``parent``: its pid, taken before the workers start)
    is gone (:func:`exit_with_parent`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent=parent)


def exit_with_parent(interval: float = 1.0, parent: int | None = None) -> None:
    """End this (child) process once its parent is gone: a daemon thread checks every ``interval`` seconds
    whether the process was re-parented. A worker blocked reading its task queue never sees end-of-file when
    the parent is SIGKILLed (it holds the pipe's write end too: a multiprocessing queue carries both ends), and
    one that was reading when the parent died mid-message waits forever; torch's DataLoader workers check their
    parent only between reads. Without this, ``kill -9`` of a command left its decode workers asleep for good.
    ``parent``: the parent's pid as the parent saw it before starting the child (pass it: a parent killed
    before the child got here has already been replaced by the one it was re-parented to)."""
    parent = os.getppid() if parent is None else parent

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _dataloader_worker_start(worker_id: int, parent: int) -> None:
    """``worker_init_fn`` of a DataLoader with worker processes (:func:`exit_with_parent`), made by
    :func:`worker_init` in the parent."""
    exit_with_parent(parent=parent)


def worker_init() -> Callable[[int], None]:
    """The ``worker_init_fn`` for a DataLoader made now, in this process: its workers end when this process is gone."""
    from functools import partial

    return partial(_dataloader_worker_start, parent=os.getpid())


@contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Workers started inside ignore Ctrl-C from their first instruction: an ignored signal stays ignored
    across exec, while the initializer runs only after the interpreter has started and imported the main
    module (a Ctrl-C then printed the worker's traceback and broke the pool). The parent blocks SIGINT
    meanwhile, so a Ctrl-C in that moment is delivered when the block ends instead of being lost."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _terminate(pool: ProcessPoolExecutor) -> None:
    """Stop the pool's workers now (no public way to stop running tasks). Not ``shutdown(wait=False)``: that
    drops the pool's reference to its manager thread, so :func:`_join` could no longer wait for it; the
    manager sees its workers gone, fails what is left and ends."""
    for proc in list((pool._processes or {}).values()):
        proc.terminate()


def _join(pool: ProcessPoolExecutor) -> None:
    """``pool.shutdown(wait=True)`` that a second Ctrl-C does not cut short: the pool's manager thread must
    be gone before the interpreter exits (on CPython 3.11 its exit hook wakes the thread through a pipe the
    thread may be closing at that moment, and prints "OSError: [Errno 9] Bad file descriptor")."""
    while True:
        try:
            pool.shutdown(wait=True, cancel_futures=True)
            return
        except KeyboardInterrupt:
            _terminate(pool)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Executor(ABC):
    name = "base"
    workers = 1

    @abstractmethod
    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[TaskResult]:
        """Run ``fn`` on every task; yield results as they complete."""

    def close(self) -> None:  # noqa: B027 - optional hook; most executors hold nothing to release
        """Release what the executor holds (nothing by default)."""


class LocalExecutor(Executor):
    """Process pool (spawn context: safe with torch and polars threads)."""

    name = "local"

    def __init__(self, workers: int | None = None, max_pending: int | None = None, start_method: str | None = None):
        self.workers = workers or default_workers()
        self.max_pending = max_pending or self.workers * 2
        if start_method is not None and start_method not in mp.get_all_start_methods():
            raise CurateError(f"unknown process start method {start_method!r}",
                              fix=f"use one of {', '.join(mp.get_all_start_methods())}")
        self.start_method = start_method  # None: one worker runs in-process, more are spawned

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[TaskResult]:
        tasks = list(tasks)
        if self.start_method is None and (self.workers <= 1 or len(tasks) <= 1):
            for t in tasks:
                yield _call(fn, t)
            return
        if not tasks:
            return
        ctx = mp.get_context(self.start_method or "spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(tasks)), mp_context=ctx,
                                   initializer=_pool_worker_start, initargs=(os.getpid(),))
        try:
            yield from self._run(pool, fn, tasks)
        except BaseException:  # Ctrl-C in the parent: stop the workers now, not after their tasks
            _terminate(pool)
            raise
        finally:
            _join(pool)

    def _run(self, pool: ProcessPoolExecutor, fn: Callable[[Any], Any], tasks: list[Any]) -> Iterator[TaskResult]:
        pending = set()
        it = iter(tasks)
        for t in it:
            with _children_ignore_sigint():  # submit starts the worker processes
                pending.add(pool.submit(_call, fn, t))
            if len(pending) >= self.max_pending:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    res = fut.result()
                except BrokenProcessPool as e:
                    raise CurateError(
                        f"a worker process died ({e})",
                        fix="rerun the same command to resume (finished tasks are kept); "
                            "if memory ran out, lower --workers",
                    ) from e
                yield res
                nxt = next(it, None)
                if nxt is not None:
                    with _children_ignore_sigint():
                        pending.add(pool.submit(_call, fn, nxt))


class RayExecutor(Executor):
    """Ray tasks. ``address``: a cluster's ``HOST:PORT`` (or ``auto``); ``None`` takes ``RAY_ADDRESS``
    when set (Ray's own convention), else starts a new local Ray with ``workers`` CPUs even when a cluster
    started with ``ray start`` runs on this machine (``ray.init()`` alone would join that cluster, and
    refuse the CPU count)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None):
        try:
            import ray
        except ImportError as e:
            raise CurateError("--executor ray needs Ray", fix='pip install -c constraints.txt ".[ray]"') from e
        self.ray = ray
        self.workers = workers or default_workers()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "ignore_reinit_error": True,
                                      "log_to_driver": False}
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                kwargs["address"] = address
            else:
                kwargs.update(address="local", num_cpus=self.workers)
            ray.init(**kwargs)

    def map(self, fn: Callable[[Any], Any], tasks: Iterable[Any]) -> Iterator[TaskResult]:
        from . import storage

        spec = storage.task_sync_spec()  # the command's URLs, for tasks on machines without this mirror
        if spec is not None:
            storage.push_active()  # what earlier stages wrote here is in the bucket before a task elsewhere pulls
        remote = self.ray.remote(_call_synced)
        refs = [remote.remote(fn, t, spec) for t in tasks]
        while refs:
            done, refs = self.ray.wait(refs, num_returns=1)
            for r in done:
                res = self.ray.get(r)
                if res.uploaded:
                    try:  # into this mirror before the task is marked done (a marker follows its outputs)
                        storage.fetch_uploaded(res.uploaded)
                    except CurateError as e:
                        res = TaskResult(res.task, None, f"fetching its outputs: {e.message}", res.seconds)
                yield res

    def close(self) -> None:
        pass


def node_id() -> str:
    """Where the calling task runs: its Ray node's id inside a Ray worker, else this host's name (a task
    records it with its stats, so a run says which node did what)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def get_executor(name: str = "local", workers: int | None = None, address: str | None = None) -> Executor:
    name = (name or "local").lower()
    if name == "local":
        return LocalExecutor(workers)
    if name == "ray":
        return RayExecutor(address=address, workers=workers)
    raise CurateError(f"unknown executor {name!r}", fix="use --executor local or --executor ray")
