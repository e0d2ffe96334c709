"""Settings dataclasses describe themselves: each field carries its help text, whether it changes the result
(``key``) and its bounds, so the command line help, the ``mad run`` YAML schema, run fingerprints and cache keys read
one description instead of listing the fields again."""

from __future__ import annotations

import dataclasses
from dataclasses import field, fields
from typing import Any


def setting(default: Any = dataclasses.MISSING, help: str = "", key: bool | str = True, **extra: Any):
    """A dataclass field with its description. ``key=False``: the value does not change the result (workers,
    device, logging and checkpoint intervals...). ``key="unless-default"``: in keys only when set to another value
    than its default (a setting added later keeps every earlier key). ``extra``: ``min``, ``choices``, ``yaml=False``
    (not a ``mad run`` key), or ``factory`` for a default made per instance."""
    kw = {"default_factory": extra.pop("factory")} if "factory" in extra else {"default": default}
    return field(metadata={"help": help, "key": key, **extra}, **kw)


def not_in_key(cls) -> set[str]:
    """Fields of a settings dataclass that do not change the result."""
    return {f.name for f in fields(cls) if f.metadata.get("key") is False}


def keyed(cls, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a settings dataclass as a dict) without what does not change the result: the fields marked
    ``key=False``, and those marked ``key="unless-default"`` while they hold their default."""
    drop = not_in_key(cls) | {f.name for f in fields(cls) if f.metadata.get("key") == "unless-default"
                              and f.default is not dataclasses.MISSING and values.get(f.name) == f.default}
    return {k: v for k, v in values.items() if k not in drop}


__all__ = ["keyed", "not_in_key", "setting"]
