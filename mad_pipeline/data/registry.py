"""The benchmark readers, by dataset name (``--dataset``).

A reader module registers its reader on import::

    @register_reader("vqa")
    def read_vqa(root: Path, split: str, on_error: str = "fail") -> Dataset: ...

A plugin module outside the package does the same (``register_reader("mytask", read_mytask)`` works too); plugins
named by ``MAD_PLUGINS`` or the ``mad_pipeline.plugins`` entry points are imported before a reader is looked up
(see :mod:`mad_pipeline.plugins`). The generic inputs are built in and take no split, so they are not registered
readers: ``jsonl``, ``parquet`` and ``csv`` (a manifest file) and ``webdataset`` (tar shards).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ..plugins import load_plugins
from .base import Dataset

GENERIC = "jsonl"
_BUILTIN = {GENERIC: "JSONL manifest", "webdataset": "webdataset tar shards", "parquet": "parquet manifest",
            "csv": "CSV manifest"}
BUILTIN = tuple(_BUILTIN)  # the generic inputs (no split), read by load_dataset itself


class Reader(Protocol):
    def __call__(self, root: Path, split: str, on_error: str = "fail") -> Dataset: ...


_READERS: dict[str, Reader] = {}


def register_reader(name: str, reader: Reader | None = None) -> Callable[[Reader], Reader] | Reader:
    """Register ``reader`` under ``name`` (a later registration of the same name replaces it); without ``reader``,
    a decorator that does."""

    def add(fn: Reader) -> Reader:
        if name in BUILTIN:
            raise ValueError(f"dataset name {name!r} is the built-in {_BUILTIN[name]} reader")
        _READERS[name] = fn
        return fn

    return add if reader is None else add(reader)


def get_reader(name: str) -> Reader | None:
    load_plugins()
    return _READERS.get(name)


def dataset_names() -> tuple[str, ...]:
    """The built-in generic readers, then every registered reader in registration order."""
    load_plugins()
    return (*BUILTIN, *_READERS)


__all__ = ["BUILTIN", "GENERIC", "Reader", "dataset_names", "get_reader", "register_reader"]
