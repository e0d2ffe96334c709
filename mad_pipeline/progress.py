"""Rich progress bars with a rate column, shared by long-running library loops.

:func:`make_progress` is one rich ``Progress`` (on stderr) for a stage that shows several bars of its own.
:func:`progress_bar` is one bar with a rate and an ETA from its total (training steps, evaluation batches): shown in
the bar already on screen when there is one (evaluation inside training adds a row below the training bar and removes
it when done), else in a new display. :func:`quiet_library_bars` hides the bars other libraries draw (transformers'
"Loading weights", huggingface_hub's downloads, any tqdm bar): what ``-q`` does besides passing ``progress=False``.
"""

from __future__ import annotations

import contextlib
import os
import sys
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
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """The rate in the task's unit: ``12.3 step/s``, or ``4.2 s/step`` below one per second."""

    def __init__(self, unit: str = "it"):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed and task.completed and task.elapsed:  # too few updates for rich's own estimate
            speed = task.completed / task.elapsed
        unit = task.fields.get("unit", self.unit)
        if not speed:
            text = f"- {unit}/s"
        elif speed < 1:
            text = f"{1 / speed:,.1f} s/{unit}"
        else:
            text = f"{speed:,.1f} {unit}/s"
        return Text(text, style="progress.data.speed")


class InfoColumn(ProgressColumn):
    """The task's ``info`` field (e.g. the last logged loss); empty when it has none."""

    def render(self, task) -> Text:
        return Text(str(task.fields.get("info", "")), style="progress.description")


def make_progress(enabled: bool = True) -> Progress | contextlib.nullcontext:
    console = Console(file=sys.stderr)
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), InfoColumn(), console=console,
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


__all__ = ["Bar", "InfoColumn", "RateColumn", "make_progress", "progress_bar", "quiet_library_bars"]
