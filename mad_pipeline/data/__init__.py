"""Datasets: the generic inputs (JSONL, parquet and CSV manifests, webdataset tar shards) and the benchmark readers,
behind one ``load_dataset``.

Benchmark readers are found by name in a registry (:mod:`mad_pipeline.data.registry`): each reader module registers
itself with :func:`register_reader` when imported, and a plugin module adds its own reader the same way.
``DATASETS`` is the generic inputs plus every reader registered so far.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
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
        manifest = Path(manifest)
        if name == GENERIC:
            return _memoized((name, root, manifest, on_error), lambda: read_jsonl_manifest(manifest, root, on_error))
        key = (name, root, manifest, on_error, tuple(sorted((columns or {}).items())))
        return _memoized(key, lambda: _MANIFEST_READERS[name](manifest, root, on_error, columns=columns))
    reader = get_reader(name)
    if reader is None:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    if split is None:
        raise InputError(f"--split is required with --dataset {name}")
    return _memoized((name, root, split, on_error), lambda: reader(root, split, on_error=on_error))


# The last few datasets read in this process, with the files they were read from as they were then: a pipeline reads
# the same split in several stages of one process (planning, training, evaluation, the report), and a benchmark
# split is seconds of JSON to parse and check at full size. A file changed since (size, modification time, inode)
# is read again; one modified in the last few seconds before it was read is not kept (a second change within the
# file system's timestamp granularity, at the same size, would go unseen).
_MEMO: OrderedDict[tuple, tuple[tuple, Dataset]] = OrderedDict()
_MEMO_SIZE = 4
_SETTLED_NS = 3_000_000_000


def _memoized(key: tuple, read) -> Dataset:
    key = tuple(str(Path(k).resolve()) if isinstance(k, Path) else k for k in key)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] == _signature(hit[1]):
        _MEMO.move_to_end(key)
        ds = hit[1]
    else:
        _MEMO.pop(key, None)
        started = time.time_ns()
        ds = read()
        sig = _signature(ds)
        if sig is not None and all(started - mtime > _SETTLED_NS for _, _, mtime, _ in sig):
            _MEMO[key] = (sig, ds)
            while len(_MEMO) > _MEMO_SIZE:
                _MEMO.popitem(last=False)
    # the caller's own lists (the samples themselves are frozen and shared)
    return dataclasses.replace(ds, samples=list(ds.samples), skipped=list(ds.skipped), sources=list(ds.sources))


def _signature(ds: Dataset) -> tuple | None:
    """The dataset's root and source files as they are now; None (not kept) when one cannot be read."""
    out = []
    for path in (ds.root, *ds.sources):
        try:
            st = os.stat(path)
        except (OSError, TypeError, ValueError):
            return None
        out.append((str(path), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


__all__ = ["BUILTIN", "DATASETS", "Dataset", "FileImages", "ImageDecodeError", "ImageSource", "Reader", "Sample",
           "Skipped", "dataset_names", "get_reader", "load_dataset", "load_image", "read_csv_manifest",
           "read_jsonl_manifest", "read_parquet_manifest", "read_webdataset", "register_reader"]
