"""The task registry: ``@register_task`` on a :class:`~mad_pipeline.tasks.base.Task` subclass makes it a
``--task``; :func:`get_task` builds one (plugins included, see :mod:`mad_pipeline.plugins`)."""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from ..plugins import load_plugins
from .base import Task

_TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register ``cls`` under ``cls.name`` (a later registration of the same name replaces it)."""
    _TASKS[cls.name] = cls
    return cls


def task_names() -> tuple[str, ...]:
    load_plugins()
    return tuple(sorted(_TASKS, key=lambda n: _TASKS[n].order))


def task_class(name: str) -> type[Task]:
    load_plugins()
    if name not in _TASKS:
        raise InputError(f"--task {name!r}: expected one of {', '.join(task_names())}")
    return _TASKS[name]


def get_task(name: str, **options: Any) -> Task:
    """A new instance of the task ``name`` (options: the task's own, e.g. VQA's ``vocab_min_count``)."""
    return task_class(name)(**options)


__all__ = ["get_task", "register_task", "task_class", "task_names"]
