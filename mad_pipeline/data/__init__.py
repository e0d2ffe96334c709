"""Datasets: the generic inputs (JSONL, parquet and CSV manifests, webdataset tar shards) and the benchmark readers,
behind one ``load_dataset``.

Benchmark readers are found by name in a registry (:mod:`mad_pipeline.data.registry`): each reader module registers
itself with :func:`register_reader` when imported, and a plugin module adds its own reader the same way.
``DATASETS`` is the generic inputs plus every reader registered so far.
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
from .registry import BUILTIN, GENERIC, Reader, dataset_names, get_reader, register_reader
from .sources import FileImages, ImageSource
from .table import read_csv_manifest, read_parquet_manifest
from .webdataset import read_webdataset

_MANIFEST_READERS = {GENERIC: read_jsonl_manifest, "parquet": read_parquet_manifest, "csv": read_csv_manifest}


def __getattr__(name: str) -> tuple[str, ...]:
    if name == "DATASETS":  # read when asked, so readers registered later are listed too
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_dataset(name: str, root: str | Path, split: str | None = None, manifest: str | Path | None = None,
                 on_error: str = "fail", columns: dict[str, str] | None = None) -> Dataset:
    """Read a dataset by reader name. ``jsonl``, ``parquet`` and ``csv`` need ``manifest`` (``columns`` names a
    table's image / text / id columns); ``webdataset`` reads the shards ``root`` names (a brace pattern, a glob,
    a folder); the benchmark readers need ``split``."""
    if name == "webdataset":
        if manifest is not None:
            raise InputError("--manifest is not used with --dataset webdataset: --data-root names the shards, "
                             "e.g. 'shards/{00000..00127}.tar'")
        return read_webdataset(root, on_error)
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data-root {root}: not a directory")
    if name in _MANIFEST_READERS:
        if manifest is None:
            raise InputError(f"--manifest is required with --dataset {name}")
        if not Path(manifest).is_file():
            raise InputError(f"--manifest {manifest}: file not found")
        if name == GENERIC:
            return read_jsonl_manifest(Path(manifest), root, on_error)
        return _MANIFEST_READERS[name](Path(manifest), root, on_error, columns=columns)
    reader = get_reader(name)
    if reader is None:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    if split is None:
        raise InputError(f"--split is required with --dataset {name}")
    return reader(root, split, on_error=on_error)


__all__ = ["BUILTIN", "DATASETS", "Dataset", "FileImages", "ImageDecodeError", "ImageSource", "Reader", "Sample",
           "Skipped", "dataset_names", "get_reader", "load_dataset", "load_image", "read_csv_manifest",
           "read_jsonl_manifest", "read_parquet_manifest", "read_webdataset", "register_reader"]
