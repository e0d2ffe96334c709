"""Datasets: the generic JSONL manifest and the official benchmark readers, behind one ``load_dataset``."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .base import Dataset, Sample, Skipped
from .images import ImageDecodeError, load_image
from .manifest import read_jsonl_manifest

DATASETS = ("jsonl", "vqa", "snli-ve", "vcr")


def load_dataset(name: str, root: str | Path, split: str | None = None, manifest: str | Path | None = None,
                 on_error: str = "fail") -> Dataset:
    """Read a dataset by reader name. ``jsonl`` needs ``manifest``; the benchmark readers need ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"--data-root {root}: not a directory")
    if name == "jsonl":
        if manifest is None:
            raise InputError("--manifest is required with --dataset jsonl")
        return read_jsonl_manifest(Path(manifest), root, on_error)
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if split is None:
        raise InputError(f"--split is required with --dataset {name}")
    if name == "vqa":
        from .vqa import read_vqa as reader
    elif name == "snli-ve":
        from .snli_ve import read_snli_ve as reader
    else:
        from .vcr import read_vcr as reader
    return reader(root, split, on_error=on_error)


__all__ = ["DATASETS", "Dataset", "ImageDecodeError", "Sample", "Skipped", "load_dataset", "load_image",
           "read_jsonl_manifest"]
