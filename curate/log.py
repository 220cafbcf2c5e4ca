"""Logging, rich progress bars and the end-of-run summary table.

One console (stderr) for everything human-facing, so stdout stays clean for data
(`curate search` prints results there).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")

class _Console(Console):
    """Rich's console, except that when it does not write to a terminal (piped, redirected to a log) a
    string (a Markdown table, a path) and a table go out whole, at their own width, instead of wrapped at
    80 columns. Log lines keep the console's width."""

    def print(self, *objects, **kwargs) -> None:  # noqa: ANN002, ANN003 - Console.print's signature
        if self.is_terminal:
            return super().print(*objects, **kwargs)
        kwargs.setdefault("soft_wrap", True)
        wide = self.options.update(max_width=UNWRAPPED)
        width = max([self.width] + [self.measure(o, options=wide).maximum for o in objects
                                    if isinstance(o, Table) and not o.expand])
        saved, self._width = self._width, width  # print(width=) cannot go beyond the console's width
        try:
            super().print(*objects, **kwargs)
        finally:
            self._width = saved


UNWRAPPED = 100_000  # the width a table may take when nothing wraps it
console: Console = _Console(stderr=True)


def _fresh_console_lock() -> None:
    console._lock = threading.RLock()  # the forked child's copy may be held by a thread it did not inherit


# A process pool may fork while a progress bar's refresh thread draws (the pool download forks its
# workers inside run_stage's bar): hold the console's lock across the fork, as logging does for its
# handlers, so a child never starts with a lock that no thread of its own can release.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=lambda: console._lock.acquire(), after_in_parent=lambda: console._lock.release(),
                        after_in_child=_fresh_console_lock)
_state = {"quiet": False, "verbose": False}

logger = logging.getLogger("curate")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Configure the ``curate`` logger; ``--quiet`` also hides progress bars."""
    _state["quiet"] = quiet
    _state["verbose"] = verbose
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger("curate")
    root.handlers.clear()
    handler = RichHandler(console=console, show_path=verbose, show_time=verbose, markup=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
    for name in ("builders", "annotations", "training"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.addHandler(handler)
        lg.setLevel(level)
        lg.propagate = False


def progress_enabled() -> bool:
    if _state["quiet"] or os.environ.get("CURATE_NO_PROGRESS"):
        return False
    return True


@contextmanager
def progress_bar(desc: str, total: int | None = None, unit: str = "items") -> Iterator[Callable]:
    """A rich progress bar; yields ``advance(n=1)``. Silent when quiet or not wanted."""
    if not progress_enabled():
        yield lambda n=1: None
        return
    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{unit}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=not console.is_terminal,
        disable=not console.is_terminal and not os.environ.get("CURATE_FORCE_PROGRESS"),
    )
    with prog:
        task = prog.add_task(desc, total=total)
        yield lambda n=1: prog.advance(task, n)


def track(items: Iterable[T], desc: str, total: int | None = None, unit: str = "items") -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(desc, total, unit) as advance:
        for item in items:
            yield item
            advance(1)


@dataclass
class StageSummary:
    """Counts of one stage for the run summary table."""

    name: str
    done: int = 0
    skipped: int = 0
    failed: int = 0
    items: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.items / self.seconds if self.seconds > 0 else 0.0


def summary_table(stages: list[StageSummary], title: str = "Run summary") -> Table:
    table = Table(title=title)
    for col in ("stage", "tasks done", "skipped", "failed", "items", "seconds", "items/s"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in stages:
        table.add_row(
            s.name,
            str(s.done),
            str(s.skipped),
            str(s.failed),
            str(s.items),
            f"{s.seconds:.1f}",
            f"{s.rate:.1f}",
        )
    return table


def print_table(table: Table) -> None:
    if not _state["quiet"]:
        console.print(table)


def print_summary(stages: list[StageSummary], title: str = "Run summary") -> None:
    """The summary table, then each stage's notes (e.g. corrupt inputs and why) one per line, unwrapped."""
    print_table(summary_table(stages, title))
    if _state["quiet"]:
        return
    for s in stages:
        for note in s.notes:
            console.print(f"{s.name}: {note}", soft_wrap=True, markup=False, highlight=False)
