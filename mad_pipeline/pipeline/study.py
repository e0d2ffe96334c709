"""A study over several tasks in one ``mad run`` config: ``task: [vqa, snli-ve, vcr]`` (the key's parser), the
tasks of a config, one task's values (the config with that task and its ``per_task`` settings), and the merge of a
``per_task`` entry into the YAML (validated by :mod:`.config`)."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import InputError
from .schema import show


def tasks_of(values: dict[str, Any]) -> list[str]:
    """The tasks of a config: ``task:`` is one name, or a list of them (a study over several tasks: each task's
    stages are those of a config with that one task, sharing the generated world)."""
    t = values["task"]
    return list(t) if isinstance(t, list) else [t]


def for_task(values: dict[str, Any], task: str) -> dict[str, Any]:
    """The values of one task of a (possibly several-task) config: the same config with ``task: <task>`` and that
    task's ``per_task`` settings applied (validated at load)."""
    out = copy.deepcopy((values.get("per_task") or {}).get(task) or values)
    out["task"] = task
    out["per_task"] = {}
    return out


def parse_per_task(v: Any, source: str, key: str) -> dict[str, dict[str, Any]]:
    """``per_task: {vcr: {train: {batch_size: 16}}}``: settings of one task of the study, written as the YAML's own
    keys (checked against the schema once merged, by :func:`from_dict`)."""
    if not isinstance(v, dict) or not all(isinstance(b, dict) for b in v.values()):
        raise InputError(f"{source}: {key}: expected a mapping task -> {{settings}}, got {show(v)}")
    return copy.deepcopy(v)


def merge_settings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    for k, v in over.items():
        base[k] = merge_settings(dict(base.get(k) or {}), v) if isinstance(v, dict) and k != "methods" else v
    return base



def parse_tasks(names: list[str] | tuple[str, ...]):
    """The ``task:`` key's parser: one name of ``names``, or a non-empty list of distinct ones (a list of one is that
    name)."""

    def parse(v: Any, source: str, key: str) -> str | list[str]:
        items = v if isinstance(v, list) else [v]
        if not items:
            raise InputError(f"{source}: {key}: expected a task or a list of tasks ({', '.join(names)}), got []")
        out: list[str] = []
        for i, x in enumerate(items):
            where = f"{key}[{i}]" if isinstance(v, list) else key
            if not isinstance(x, str) or x not in names:
                raise InputError(f"{source}: {where}: {show(x)} is not one of {', '.join(names)}")
            if x in out:
                raise InputError(f"{source}: {key}: {x} listed twice")
            out.append(x)
        return out[0] if len(out) == 1 else out

    return parse


__all__ = ["for_task", "merge_settings", "parse_per_task", "parse_tasks", "tasks_of"]
