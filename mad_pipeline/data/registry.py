"""The benchmark readers, by dataset name (``--dataset``).

A reader module registers its reader on import::

    @register_reader("vqa")
    def read_vqa(root: Path, split: str, on_error: str = "fail") -> Dataset: ...

A plugin module outside the package does the same (``register_reader("mytask", read_mytask)`` works too); once it
is imported, ``load_dataset("mytask", ...)`` reads with it. ``jsonl`` (the generic manifest) is built in and takes
a manifest rather than a split, so it is not a registered reader.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .base import Dataset

GENERIC = "jsonl"


class Reader(Protocol):
    def __call__(self, root: Path, split: str, on_error: str = "fail") -> Dataset: ...


_READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader | None = None) -> Callable[[Reader], Reader] | Reader:
    """Register ``reader`` under ``name``; without ``reader``, a decorator that does. Registering another reader
    under a taken name is an error (importing the same module again is not)."""

    def add(fn: Reader) -> Reader:
        if name == GENERIC:
            raise ValueError(f"dataset name {GENERIC!r} is the built-in JSONL manifest reader")
        old = _READERS.get(name)
        if old is not None and _origin(old) != _origin(fn):
            raise ValueError(f"dataset {name!r} already has a reader ({_origin(old)})")
        _READERS[name] = fn
        return fn

    return add if reader is None else add(reader)


def _origin(fn: Reader) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def get_reader(name: str) -> Reader | None:
    return _READERS.get(name)


def dataset_names() -> tuple[str, ...]:
    """``jsonl`` and every registered reader, in registration order."""
    return (GENERIC, *_READERS)


__all__ = ["GENERIC", "Reader", "dataset_names", "get_reader", "register_reader"]
