"""Progress that works without a terminal: a live rich bar on a TTY, otherwise plain lines
(``ingest fmi: 120/400 (30%), 2.1/s, ETA 2m13s``) every ``NOWCAST_PROGRESS_SECONDS`` (default 30),
and one when the work ends. Output sent to a file (cron, batch jobs, CI) then shows a long run is
alive and how far it is, where a bar would print nothing at all.

Both answer the subset of rich's ``Progress`` that the commands use: ``add_task``, ``advance``,
``update``, and use as a context manager.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

#: seconds between two plain progress lines (0: a line at every update, as tests use)
DEFAULT_INTERVAL_S = 30.0


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("NOWCAST_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def duration(seconds: float) -> str:
    """``2m13s``, ``1h04m``, ``9s``: short enough for a log line."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


@dataclass
class _Task:
    description: str
    total: float | None = None
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    printed: float = float("-inf")  # when the last line was printed (monotonic): the first update prints
    printed_completed: float = -1.0


class PlainProgress:
    """Periodic one-line progress reports for output that is not a terminal."""

    def __init__(self, file: IO[str] | None = None, interval_s: float | None = None, disable: bool = False):
        self.file = file or sys.stderr
        self.interval_s = _interval() if interval_s is None else interval_s
        self.disable = disable
        self._tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            for task in self._tasks.values():
                if task.completed != task.printed_completed:
                    self._line(task, final=True)

    def add_task(self, description: str, total: float | None = None, **_: Any) -> int:
        key = len(self._tasks)
        self._tasks[key] = _Task(description, total)
        return key

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, **_: Any) -> None:
        task = self._tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance:
            task.completed += advance
        now = time.monotonic()
        finished = task.total is not None and task.completed >= task.total
        if finished or now - task.printed >= self.interval_s:
            self._line(task, final=finished)

    def _line(self, task: _Task, final: bool = False) -> None:
        if self.disable or task.completed == task.printed_completed:
            return
        elapsed = max(time.monotonic() - task.started, 1e-9)
        rate = task.completed / elapsed
        text = f"{task.description}: {task.completed:g}"
        if task.total:
            text += f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        text += f", {rate:.3g}/s"
        if final:
            text += f", done in {duration(elapsed)}"
        elif task.total and rate > 0:
            text += f", ETA {duration((task.total - task.completed) / rate)}"
        print(text, file=self.file, flush=True)
        task.printed, task.printed_completed = time.monotonic(), task.completed


def progress_display(console: Any = None, disable: bool = False) -> Any:
    """rich's live bar on a terminal, PlainProgress lines otherwise (``console``: a rich Console,
    default one on stderr)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = console or Console(stderr=True)
    if not console.is_terminal:
        return PlainProgress(console.file, disable=disable)
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, transient=False, disable=disable)
