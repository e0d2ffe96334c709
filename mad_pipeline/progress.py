"""Rich progress bars with a rate column, shared by long-running library loops.

On a terminal they are live bars. Written to a file or a pipe (a batch job's log, ``mad run ... 2> log``) a live bar
draws nothing until it ends, so there each task is a plain line instead, every :data:`LOG_EVERY_ENV` seconds (default
30) and once when it ends: ``training: 120/500 step (24%), 2.4 step/s, elapsed 0:00:50, eta 0:02:38, loss 1.23``.

:func:`make_progress` is one rich ``Progress`` (on stderr) for a stage that shows several bars of its own.
:func:`progress_bar` is one bar with a rate and an ETA from its total (training steps, evaluation batches): shown in
the bar already on screen when there is one (evaluation inside training adds a row below the training bar and removes
it when done), else in a new display. :func:`quiet_library_bars` hides the bars other libraries draw (transformers'
"Loading weights", huggingface_hub's downloads, any tqdm bar): what ``-q`` does besides passing ``progress=False``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import sys
import threading
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """The rate in the task's unit: ``12.3 step/s``, or ``4.2 s/step`` below one per second."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(rate_text(task_speed(task), task.fields.get("unit", self.unit)), style="progress.data.speed")


SPEED_WINDOW = 30.0  # seconds: rich's speed estimate averages the updates of this last stretch (its default)


def task_speed(task) -> float | None:
    """Units per second: rich's estimate over its last :data:`SPEED_WINDOW` seconds; the mean so far when that
    window holds too few updates to mean anything (units slower than half the window: study shards that take
    minutes each, where two finishing close together would read as seconds per shard), or when the task's
    ``bursts`` field says its units arrive in bursts (a study's training steps, counted as each shard ends)."""
    elapsed = task.finished_time if task.finished else task.elapsed
    mean = task.completed / elapsed if task.completed and elapsed else None
    if mean is not None and (mean * SPEED_WINDOW < 2 or task.fields.get("bursts")):
        return mean
    return task.finished_speed or task.speed or mean


def rate_text(speed: float | None, unit: str) -> str:
    """``12.3 step/s``, or ``4.2 s/step`` below one per second; ``- step/s`` without a rate."""
    if not speed:
        return f"- {unit}/s"
    return f"{1 / speed:,.1f} s/{unit}" if speed < 1 else f"{speed:,.1f} {unit}/s"


def time_left(task) -> float | None:
    """Seconds left at the rate :func:`task_speed` gives (0 once finished; None without a total or a rate)."""
    if task.finished:
        return 0.0
    speed = task_speed(task)
    return (task.total - task.completed) / speed if task.total and speed else None


class EtaColumn(ProgressColumn):
    """The time left at the rate :class:`RateColumn` shows (:func:`time_left`), as the log lines give it."""

    def render(self, task) -> Text:
        return Text(f"eta {_clock(time_left(task))}", style="progress.remaining")


class InfoColumn(ProgressColumn):
    """The task's ``info`` field (e.g. the last logged loss); empty when it has none."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("info", "")), style="progress.description")


LOG_EVERY_ENV = "MAD_PROGRESS_EVERY"  # seconds between a log file's progress lines
LOG_EVERY_DEFAULT = 30.0


def log_every() -> float:
    """Seconds between the progress lines of a log file (``MAD_PROGRESS_EVERY``, default 30; at least 0.1)."""
    try:
        return max(0.1, float(os.environ.get(LOG_EVERY_ENV, LOG_EVERY_DEFAULT)))
    except ValueError:
        return LOG_EVERY_DEFAULT


def _clock(seconds: float | None) -> str:
    return "-:--:--" if seconds is None else str(_dt.timedelta(seconds=int(seconds)))


def task_line(task) -> str:
    """One task's progress as a plain line: done/total, percent, rate, elapsed, eta and its ``info``."""
    unit = task.fields.get("unit", "it")
    done = f"{task.completed:,.0f}"
    if task.total:
        done += f"/{task.total:,.0f} {unit} ({100 * task.completed / task.total:.0f}%)"
    else:
        done += f" {unit}"
    speed = task_speed(task)
    parts = [f"{task.description}: {done}", rate_text(speed, unit),
             f"elapsed {_clock(task.finished_time if task.finished else task.elapsed)}"]
    if task.total and not task.finished:
        parts.append(f"eta {_clock(time_left(task))}")  # at the rate shown
    info = str(task.fields.get("info", "") or "")
    return ", ".join(parts) + (f", {info}" if info else "")


class LogProgress(Progress):
    """A ``Progress`` for a log file: no live display; each unfinished task as a line (:func:`task_line`) every
    ``every`` seconds, and a last line when it is removed (if it lived that long) or when the display stops."""

    def __init__(self, *columns, every: float | None = None, **kwargs):
        super().__init__(*columns, **kwargs)
        self.every = log_every() if every is None else every
        self._stop_lines = threading.Event()
        self._thread: threading.Thread | None = None

    def _print(self, tasks) -> None:
        for t in tasks:
            if t.visible:
                self.console.print(task_line(t), markup=False, highlight=False, soft_wrap=True)

    def _loop(self) -> None:
        while not self._stop_lines.wait(self.every):
            with self._lock:
                tasks = [t for t in self.tasks if not t.finished]
            self._print(tasks)

    def start(self) -> None:  # no live display at all (on a file it would only add a blank line at the end)
        if self._thread is None and not self.disable:
            self._stop_lines.clear()
            self._thread = threading.Thread(target=self._loop, name="mad-progress-lines", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop_lines.set()
            self._thread.join()
            self._thread = None
            self._print(self.tasks)

    def remove_task(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
        if task is not None and (task.elapsed or 0) >= self.every:
            self._print([task])
        super().remove_task(task_id)


def make_progress(enabled: bool = True) -> Progress | contextlib.nullcontext:
    """The stage's progress display on stderr: live bars on a terminal, :class:`LogProgress` lines elsewhere."""
    console = Console(file=sys.stderr)
    cls = Progress if console.is_terminal or console.is_jupyter else LogProgress
    return cls(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), EtaColumn(), InfoColumn(), console=console,
        disable=not enabled, transient=False,
    )


class Bar:
    """One bar of :func:`progress_bar`: ``advance(n)`` and ``info(text)``; does nothing when disabled."""

    def __init__(self, progress: Progress | None = None, task: TaskID | None = None):
        self._progress, self._task = progress, task

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=n)

    def info(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, info=text)


_SHOWN: list[Progress] = []  # the progress_bar display on screen, if any


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, *, unit: str = "it", enabled: bool = True,
                 completed: int = 0) -> Iterator[Bar]:
    """A bar of ``total`` units with rate and ETA (``completed`` already done, e.g. steps before a resume).
    Inside another :func:`progress_bar` it is a row of the same display, removed when the block ends."""
    if not enabled:
        yield Bar()
        return
    if _SHOWN:
        progress = _SHOWN[-1]
        task = progress.add_task(description, total=total, completed=completed, unit=unit)
        try:
            yield Bar(progress, task)
        finally:
            progress.refresh()  # its last state is drawn once before the row goes
            progress.remove_task(task)
        return
    with make_progress(True) as progress:
        _SHOWN.append(progress)
        try:
            yield Bar(progress, progress.add_task(description, total=total, completed=completed, unit=unit))
        finally:
            _SHOWN.pop()


def quiet_library_bars() -> None:
    """Hide the progress bars of transformers, huggingface_hub and tqdm in this process (and its children)."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    with contextlib.suppress(ImportError):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


__all__ = ["LOG_EVERY_ENV", "Bar", "InfoColumn", "LogProgress", "RateColumn", "log_every", "make_progress",
           "progress_bar", "quiet_library_bars", "task_line"]
