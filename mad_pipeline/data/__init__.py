"""Datasets: the generic JSONL manifest and the benchmark readers, behind one ``load_dataset``.

Benchmark readers are found by name in a registry (:mod:`mad_pipeline.data.registry`): each reader module registers
itself with :func:`register_reader` when imported, and a plugin module adds its own reader the same way.
``DATASETS`` is ``jsonl`` plus every reader registered so far.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

# isort: off
# the built-in readers register themselves on import, in the order error messages list them
from . import vqa, snli_ve, vcr  # noqa: F401

# isort: on
from .base import Dataset, Sample, Skipped
from .images import ImageDecodeError, load_image
from .manifest import read_jsonl_manifest
from .registry import GENERIC, Reader, dataset_names, get_reader, register_reader


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "DATASETS":  # read when asked, so readers registered later are listed too
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, root: str | Path, split: str | None = None, manifest: str | Path | None = None,
                 on_error: str = "fail") -> Dataset:
    """Read a dataset by reader name. ``jsonl`` needs ``manifest``; the benchmark readers need ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data-root {root}: not a directory")
    if name == GENERIC:
        if manifest is None:
            raise InputError("--manifest is required with --dataset jsonl")
        return read_jsonl_manifest(Path(manifest), root, on_error)
    reader = get_reader(name)
    if reader is None:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    if split is None:
        raise InputError(f"--split is required with --dataset {name}")
    return reader(root, split, on_error=on_error)


__all__ = ["DATASETS", "Dataset", "ImageDecodeError", "Reader", "Sample", "Skipped", "dataset_names", "get_reader",
           "load_dataset", "load_image", "read_jsonl_manifest", "register_reader"]
