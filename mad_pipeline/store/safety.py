"""Checks on what a store's metadata says, made before anything is fetched or written from it.

A store copied from another cache (a shared directory, HTTP, S3) is described by its own consolidated metadata:
node names and chunk-key separators decide the file names the copy writes, shapes and chunk grids decide how many
files there are and how large each may be. None of it is trusted:

- every key is relative, normalised and made of the characters zarr uses: components of ``A-Z a-z 0-9 _ - .``, none
  empty, none starting with ``.`` (so no ``.`` or ``..``), no leading ``/``, no backslash;
- shapes and chunk grids are lists of non-negative integers of the same length, and a store has at most
  ``MAX_CHUNK_FILES`` chunk files;
- each key's size is bounded: a metadata document by ``META_MAX_BYTES``, a chunk (or shard) of a fixed-size data type
  by its uncompressed size plus the most its codecs can add; other data types (strings) only by the reader's global
  cap.
"""

from __future__ import annotations

import math
import re

from ..errors import StoreError

META_MAX_BYTES = 64 << 20  # a zarr.json document (the root one holds the consolidated metadata)
MAX_CHUNK_FILES = 10_000_000  # per store
_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,254}")
_ITEMSIZE = {"bool": 1, "int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "float16": 2, "int32": 4, "uint32": 4,
             "float32": 4, "int64": 8, "uint64": 8, "float64": 8, "complex64": 8, "complex128": 16}


def check_key(key: str, where: str) -> str:
    """``key`` if it is a safe relative key inside a store; a StoreError naming it otherwise."""
    parts = key.split("/") if isinstance(key, str) else [""]
    if not all(_COMPONENT.fullmatch(p) for p in parts):
        raise StoreError(f"{where}: unsafe key {key!r} in the store's metadata (keys must be relative paths of "
                         f"letters, digits, '_', '-' and '.'); nothing was copied")
    return key


def _int_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def check_array(name: str, meta: dict, where: str) -> None:
    """The parts of an array's metadata that decide its keys: a StoreError when they make no sense."""
    try:
        shape = meta["shape"]
        grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
        enc = meta.get("chunk_key_encoding", {"name": "default"})
        ok = (_int_list(shape) and _int_list(grid) and len(shape) == len(grid)
              and all(c > 0 for s, c in zip(shape, grid, strict=True) if s > 0)
              and isinstance(enc, dict) and enc.get("name", "default") in ("default", "v2")
              and enc.get("configuration", {}).get("separator", "/") in ("/", "."))
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{where}: array {name!r} has unusable metadata (shape, chunk grid or chunk key encoding)")


def check_chunk_files(n: int, where: str) -> None:
    if n > MAX_CHUNK_FILES:
        raise StoreError(f"{where}: the metadata describes {n} chunk files (more than {MAX_CHUNK_FILES}); refused")


def max_chunk_bytes(meta: dict) -> int | None:
    """The most bytes one chunk (or shard) file of an array can hold, or None when its data type has no fixed size.

    Generous on purpose: the raw size, plus 1/32 of it and 1 KiB per inner chunk for what compressors and
    checksums can add to incompressible data, plus the shard index."""
    itemsize = _ITEMSIZE.get(meta.get("data_type")) if isinstance(meta.get("data_type"), str) else None
    if itemsize is None:
        return None
    outer = meta["chunk_grid"]["configuration"]["chunk_shape"]
    raw = math.prod(outer) * itemsize
    inner_chunks = 1
    codecs = meta.get("codecs") or []
    if codecs and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed":
        inner = (codecs[0].get("configuration") or {}).get("chunk_shape")
        if not (_int_list(inner) and len(inner) == len(outer) and all(inner)):
            return None
        inner_chunks = math.prod(math.ceil(o / i) for o, i in zip(outer, inner, strict=True))
    return raw + raw // 32 + 1024 * inner_chunks + 16 * inner_chunks + 4096
