"""Progress of a long run in the foreground (backup, restore, verify, the drill): percent, rate and ETA.

On a terminal it is rich's live bars (NO_COLOR respected, as rich does). Anywhere else it
is plain lines, no control characters: one each time a task passes another tenth of its
total (or every `every` seconds when the total is unknown), and one at the end. Every task
ends at 100 % when the work is done, whatever the estimate was: the estimate (a
collection's estimated count, a database's dataSize) is only a guess, and the last figure
shown must be the true one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


@dataclass
class _Task:
    label: str
    unit: str
    total: float | None
    done: float = 0.0
    started: float = field(default_factory=time.monotonic)
    shown_tenth: int = -1
    shown_at: float = 0.0


def archive_ticks(update: Callable[..., None], manifest: dict[str, Any] | None,
                  verb: str) -> Callable[[int, int], None]:  # fmt: skip
    """A `progress(stored_bytes_read, documents)` callback (restore, verify) feeding two tasks, with the
    manifest's totals when there is one: percent and ETA of the archive read and of the documents."""

    def tick(read: int, documents: int) -> None:
        update(f"{verb}:bytes", read, (manifest or {}).get("stored_bytes"), unit="bytes", label=f"{verb}: archive")
        # The label names what is counted: "restore: documents: 40 % (40,000 of 100,000 …)", not "… docs".
        update(f"{verb}:docs", documents, (manifest or {}).get("documents"), unit="", label=f"{verb}: documents")

    return tick


def _figure(value: float, unit: str) -> str:
    return f"{value / 1e6:,.1f} MB" if unit == "bytes" else f"{value:,.0f} {unit}".rstrip()


class ProgressReport:
    """Tasks by name; `update` them as work goes, `close` at the end."""

    def __init__(self, stream: TextIO | None = None, *, terminal: bool | None = None, every: float = 5.0,
                 log: Callable[..., None] | None = None) -> None:  # fmt: skip
        """`log(event, **fields)`, when given, takes the plain lines as structured log lines instead."""
        self.stream = stream or sys.stderr
        self.log = log
        self.terminal = self.stream.isatty() if terminal is None else terminal
        self.every = every
        self._tasks: dict[str, _Task] = {}
        self._ids: dict[str, TaskID] = {}
        self._live: Progress | None = None
        if self.terminal:
            # Imported here: the daemon, which never watches a terminal, does not carry rich.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeRemainingColumn,
            )

            columns: list[Any] = [TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                  MofNCompleteColumn(), TimeRemainingColumn()]  # fmt: skip
            self._live = Progress(*columns, console=Console(file=self.stream), transient=False)
            self._live.start()

    def update(self, name: str, done: float, total: float | None = None, *, unit: str = "docs",
               label: str | None = None) -> None:  # fmt: skip
        """Set a task's progress (created on first sight); a total below what is done grows to it."""
        task = self._tasks.get(name)
        if task is None:
            task = self._tasks[name] = _Task(label or name, unit, total)
        if total is not None:
            task.total = total
        task.done = done
        if task.total is not None and task.done > task.total:
            task.total = task.done
        if self._live is not None:
            if name not in self._ids:
                self._ids[name] = self._live.add_task(task.label, total=task.total)
            self._live.update(self._ids[name], completed=task.done, total=task.total)
            return
        self._line(task)

    def finish(self, name: str) -> None:
        """The task is done: it shows 100 % (its total becomes what was done)."""
        task = self._tasks.get(name)
        if task is None:
            return
        if task.done == 0:  # an empty collection: nothing was to do, so no bar stays stuck at 0 %
            if self._live is not None and name in self._ids:
                self._live.remove_task(self._ids.pop(name))
            return
        self.update(name, task.done, task.done)
        if self._live is None and task.shown_tenth < 10:
            task.shown_tenth = -1
            self._line(task)

    def close(self, *, finish: bool = True) -> None:
        """Finish every task (unless the work failed: then the last figures stay) and stop the display."""
        for name in list(self._tasks) if finish else ():
            self.finish(name)
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _line(self, task: _Task) -> None:
        now = time.monotonic()
        elapsed = max(now - task.started, 1e-6)
        if task.total:
            tenth = int(10 * task.done / task.total)
            if tenth <= task.shown_tenth:
                return
            task.shown_tenth = tenth
            rate = task.done / elapsed
            left = (task.total - task.done) / rate if rate > 0 else None
            eta = "" if left is None or task.done >= task.total else f", about {left:,.0f} s left"
            text = (f"{task.label}: {100 * task.done / task.total:.0f} % ({_figure(task.done, task.unit)} of "
                    f"{_figure(task.total, task.unit)}, {_figure(rate, task.unit)}/s{eta})")  # fmt: skip
        else:
            if now - task.shown_at < self.every:
                return
            text = f"{task.label}: {_figure(task.done, task.unit)} ({_figure(task.done / elapsed, task.unit)}/s)"
        task.shown_at = now
        if self.log is not None:
            self.log("progress", task=task.label, done=task.done, total=task.total, unit=task.unit, summary=text)
        else:
            print(text, file=self.stream, flush=True)
