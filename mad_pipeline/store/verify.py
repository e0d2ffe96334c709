"""``mad store verify``: check every chunk's crc32c and the manifest against the arrays.

Two passes over every chunk (shard) file of every array:

1. raw bytes: the shard index's own crc32c, each inner chunk's bounds and crc32c (for unsharded arrays, the chunk's
   crc32c) — checked here byte by byte, so a failure names the exact file and inner chunk;
2. decode: each chunk region is read through zarr (decompression and zarr's own checksum codec), which catches
   anything the first pass cannot see.

Before either pass, every array's shape is checked against bounds (an absurd shape is a problem, never a huge
allocation). A format v2 store records its chunk files in the manifest: a chunk file (or an inner chunk of a shard)
that is absent is a problem, and so are files whose sizes do not add up to the record; in a format v1 store an absent
chunk was never written (all fill values) and is only counted.

Then the manifest: format version, kind, cache key (and the directory name), ``n_rows`` against every array's
leading dimension, the arrays the format requires for the kind with their dtypes, row shapes against the manifest's
``geometry``, ``dimension_names`` on every array, and ``image_hash`` / ``text_hash`` sorted and unique.

Works on a local path or any URL a :class:`~mad_pipeline.store.location.Location` understands (reads only).
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
import time
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np

from ..errors import StoreError
from .integrity import Problem, manifest_problems, n_chunk_files, shape_problems
from .layout import (
    READABLE_VERSIONS,
    image_arrays,
    index_arrays,
    stored_arrays,
    text_arrays,
    zarr_data_type,
)
from .location import Location, chunk_counts, chunk_keys, key_of_store_name
from .storage import Storage
from .zeroshot import SHARED, shared_arrays, zeroshot_arrays

EMPTY = 2**64 - 1  # sharding index entry of a chunk that was never written
__all__ = ["EXPECTED", "ZEROSHOT_ARRAYS", "Problem", "VerifyReport", "verify_store"]


def _table(specs) -> dict[str, tuple]:
    return {s.name: (zarr_data_type(s.dtype), 1 + len(s.row_shape)) for s in specs}


# name -> (zarr data_type, ndim) per kind. A zero-shot store's candidate columns are per row (this table) or, where
# every row shares them, one (K,) array each (the manifest's constants; see mad_pipeline.store.zeroshot).
ZEROSHOT_ARRAYS = _table(zeroshot_arrays(1))
EXPECTED = {
    "image": _table(image_arrays(1, 1, 1)),
    "text": _table(text_arrays(1, 1, 1)),
    "index": _table(index_arrays(1)),
    "zeroshot": ZEROSHOT_ARRAYS,
}
HASH_COLUMNS = ("image_hash", "text_hash")  # format v1 stored them as variable-length strings
SORTED_COLUMN = {"image": "image_hash", "text": "text_hash"}


def expected_arrays(kind, version, storage: Storage | None = None, constants=()) -> dict[str, tuple]:
    table = EXPECTED.get(kind, {})
    if kind == "zeroshot":  # a column every row shares is stored once instead of per row
        shared = [c for c, name in SHARED.items() if name in constants]
        table = {**_table(zeroshot_arrays(1, shared)), **{s.name: (zarr_data_type(s.dtype), len(s.row_shape))
                                                          for s in shared_arrays(1) if s.name in constants}}
    if kind == "image" and storage is not None and not storage.default:  # int8, bitround, kept tokens (storage.py)
        table = {**table, **_table(stored_arrays(image_arrays(1, 1, 1, storage)))}
    if version == 1:
        table = {n: ("string" if n in HASH_COLUMNS else t, nd) for n, (t, nd) in table.items()}
    return table


@dataclass
class VerifyReport:
    path: str
    kind: str | None = None
    key: str | None = None
    arrays: int = 0
    chunk_files: int = 0  # chunk or shard files read
    chunks: int = 0  # chunks checked (inner chunks of shards counted one by one)
    absent: int = 0  # chunk files not there (format v1: never written, all fill value; format v2: a problem)
    bytes_read: int = 0
    seconds: float = 0.0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "problems"}
        d["ok"] = self.ok
        d["problems"] = [p.as_dict() for p in self.problems]
        d["seconds"] = round(self.seconds, 3)
        return d


def verify_store(path: str, progress=None) -> VerifyReport:
    """Verify one store (local path or URL). Raises StoreError only when ``path`` is not a zarr store at all."""
    t0 = time.perf_counter()
    loc = Location(path)
    rep = VerifyReport(path=loc.url)
    raw = loc.cat("zarr.json")
    if raw is None:
        raise StoreError(f"{loc.url}: not a zarr store (no zarr.json)")
    try:
        meta = json.loads(raw)
        assert isinstance(meta, dict)
    except (ValueError, AssertionError, UnicodeDecodeError):
        rep.problems.append(Problem("metadata", "root zarr.json is not valid JSON", file=loc.path("zarr.json")))
        rep.seconds = time.perf_counter() - t0
        return rep
    manifest = meta.get("attributes", {}).get("mad")
    if not isinstance(manifest, dict):
        rep.problems.append(Problem("manifest", "no manifest: an incomplete store that was never published"))
        manifest = None
    else:
        rep.kind, rep.key = manifest.get("kind"), manifest.get("cache_key")

    arrays = _array_metadata(loc, meta, rep)
    rep.arrays = len(arrays)
    absurd = set()
    for name, m in list(arrays.items()):
        bad_shape = shape_problems(name, m)
        if bad_shape:  # never list the chunks of (or allocate) an absurd shape
            rep.problems.extend(bad_shape)
            absurd.add(name)
            del arrays[name]
    record = (manifest or {}).get("chunks")
    record = record if isinstance(record, dict) else None
    task = progress.add_task("verify", total=sum(n_chunk_files(m) for m in arrays.values()), unit="file") \
        if progress is not None else None
    group = _open_group(loc, rep)
    columns: dict[str, np.ndarray] = {}
    for name, m in arrays.items():
        bad_keys = _check_raw(loc, name, m, rep, progress, task, (record or {}).get(name))
        decoded = _check_decode(group, name, m, bad_keys, rep, loc)
        if decoded is not None:
            columns[name] = decoded
    if manifest is not None:
        _check_manifest(loc, manifest, arrays, columns, rep, absurd)
    rep.seconds = time.perf_counter() - t0
    return rep


# ---------------------------------------------------------------------- metadata
def _array_metadata(loc: Location, meta: dict, rep: VerifyReport) -> dict[str, dict]:
    """Array metadata documents by name: each array's own zarr.json, compared with the consolidated copy."""
    cons = (meta.get("consolidated_metadata") or {}).get("metadata")
    if cons is None:
        rep.problems.append(Problem("metadata", "no consolidated metadata in the root zarr.json"))
        names = []
        if loc.local:
            from pathlib import Path

            names = sorted(p.parent.name for p in Path(loc.url).glob("*/zarr.json"))
        cons = {n: None for n in names}
    out = {}
    for name, cm in sorted(cons.items()):
        if cm is not None and cm.get("node_type") != "array":
            continue
        own_path = loc.path(f"{name}/zarr.json")
        own = loc.json(f"{name}/zarr.json")
        if own is None:
            if cm is None:
                continue
            rep.problems.append(Problem(name, "array metadata missing or not valid JSON", file=own_path))
            own = cm
        elif cm is not None and _meta_core(own) != _meta_core(cm):
            rep.problems.append(Problem(name, "array zarr.json differs from the consolidated metadata", file=own_path))
        if own.get("node_type") == "array":
            out[name] = own
    return out


def _meta_core(m: dict) -> dict:
    return {k: m.get(k) for k in ("shape", "data_type", "chunk_grid", "chunk_key_encoding", "codecs", "fill_value",
                                  "dimension_names")}


# ---------------------------------------------------------------------- pass 1: raw bytes
def _has_crc(codecs: list[dict]) -> bool:
    return bool(codecs) and codecs[-1].get("name") == "crc32c"


def _crc_ok(data: bytes) -> bool:
    import crc32c

    return len(data) >= 4 and struct.pack("<I", crc32c.crc32c(data[:-4])) == data[-4:]


def _check_raw(loc: Location, name: str, m: dict, rep: VerifyReport, progress, task, record=None) -> set[str]:
    """Check every chunk file of one array byte by byte; returns the keys found bad. ``record``: the manifest's
    record of the array's chunk files (format v2), against which an absent file or inner chunk is a problem."""
    codecs = m.get("codecs", [])
    sharding = codecs[0].get("configuration", {}) if codecs and codecs[0].get("name") == "sharding_indexed" else None
    inner_codecs = sharding.get("codecs", []) if sharding is not None else codecs
    if not _has_crc(inner_codecs):
        rep.problems.append(Problem(name, "chunks carry no crc32c checksum codec (format v1 requires one)"))
    bad: set[str] = set()
    strict = isinstance(record, dict)
    nbytes = 0
    keys = list(chunk_keys(m))
    grid = m["chunk_grid"]["configuration"]["chunk_shape"]
    counts = chunk_counts(m)
    for start in range(0, len(keys), 64):
        batch = keys[start : start + 64]
        got = loc.cat_many([f"{name}/{k}" for k in batch])
        for j, k in enumerate(batch):
            data = got[f"{name}/{k}"]
            if progress is not None:
                progress.update(task, advance=1)
            file = loc.path(f"{name}/{k}")
            if data is None:
                rep.absent += 1
                if strict:
                    bad.add(k)
                    rep.problems.append(Problem(name, "missing chunk file (the manifest records every chunk file; "
                                                      "a missing one would read as fill values)", k, file))
                continue
            rep.chunk_files += 1
            rep.bytes_read += len(data)
            nbytes += len(data)
            outer = np.unravel_index(start + j, counts) if counts else ()
            if sharding is None:
                rep.chunks += 1
                if _has_crc(inner_codecs) and not _crc_ok(data):
                    bad.add(k)
                    rep.problems.append(Problem(name, f"checksum mismatch (rows {_rows(outer, grid)})", k, file))
            elif _check_shard(name, k, file, data, sharding, grid, outer, rep, strict, m["shape"]):
                bad.add(k)
    if strict and not bad and nbytes != record.get("bytes"):
        rep.problems.append(Problem(name, f"chunk files hold {nbytes} bytes, the manifest records "
                                          f"{record.get('bytes')} (a file was truncated or replaced)"))
    return bad


def _check_shard(name, key, file, data: bytes, cfg: dict, shard_shape, outer, rep: VerifyReport,
                 strict: bool = False, shape=()) -> bool:
    inner = cfg["chunk_shape"]
    per = [s // c for s, c in zip(shard_shape, inner, strict=True)]
    n = math.prod(per)
    index_crc = _has_crc(cfg.get("index_codecs", []))
    size = 16 * n + (4 if index_crc else 0)
    if len(data) < size:
        rep.problems.append(Problem(name, f"truncated shard ({len(data)} bytes, the index alone is {size})",
                                    key, file))
        return True
    at_end = cfg.get("index_location", "end") == "end"
    index = data[-size:] if at_end else data[:size]
    if index_crc and not _crc_ok(index):
        rep.problems.append(Problem(name, "shard index checksum mismatch", key, file))
        return True
    entries = struct.unpack(f"<{2 * n}Q", index[: 16 * n])
    bad = False
    check_crc = _has_crc(cfg.get("codecs", []))
    for i in range(n):
        off, nb = entries[2 * i], entries[2 * i + 1]
        local = np.unravel_index(i, per)
        coords = tuple(int(o) * p + int(c) for o, p, c in zip(outer, per, local, strict=True))
        rows = _rows(coords, inner)
        where = f"inner chunk {','.join(map(str, coords))} (rows {rows})"
        if off == EMPTY and nb == EMPTY:
            if strict and all(c * ic < s for c, ic, s in zip(coords, inner, shape, strict=True)):
                rep.problems.append(Problem(name, f"{where}: missing from the shard (format v2 writes every chunk)",
                                            key, file))
                bad = True
            continue
        rep.chunks += 1
        if off + nb > len(data):
            rep.problems.append(Problem(name, f"{where}: past the end of the shard (truncated file)", key, file))
            bad = True
        elif check_crc and not _crc_ok(data[off : off + nb]):
            rep.problems.append(Problem(name, f"{where}: checksum mismatch", key, file))
            bad = True
    return bad


def _rows(coords, chunk_shape) -> str:
    if not len(coords):
        return "all"
    lo = int(coords[0]) * chunk_shape[0]
    return f"{lo}-{lo + chunk_shape[0] - 1}"


# ---------------------------------------------------------------------- pass 2: decode through zarr
def _open_group(loc: Location, rep: VerifyReport):
    import zarr

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return zarr.open_group(store=loc.zarr_store(), mode="r")
    except Exception as e:  # noqa: BLE001
        rep.problems.append(Problem("metadata", f"zarr cannot open the group: {e}"))
        return None


def _check_decode(group, name: str, m: dict, bad_keys: set[str], rep: VerifyReport, loc: Location):
    """Read the array chunk region by chunk region; returns the whole column for 1-D string hash arrays."""
    if group is None:
        return None
    try:
        arr = group[name]
    except Exception as e:  # noqa: BLE001
        rep.problems.append(Problem(name, f"zarr cannot open the array: {e}"))
        return None
    grid = m["chunk_grid"]["configuration"]["chunk_shape"]
    counts = chunk_counts(m)
    keep = name in ("image_hash", "text_hash") and len(m["shape"]) == 1
    parts = []
    for idx, k in zip(itertools.product(*(range(c) for c in counts)), chunk_keys(m), strict=True):
        region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, grid, m["shape"], strict=True))
        try:
            values = arr[region]
        except Exception as e:  # noqa: BLE001
            if k not in bad_keys:
                rep.problems.append(Problem(name, f"cannot decode: {type(e).__name__}: {e}", k,
                                            loc.path(f"{name}/{k}")))
            bad_keys.add(k)
            keep = False
            continue
        if keep:
            parts.append(np.asarray(values, dtype=object))
    if not keep:
        return None
    return np.concatenate(parts) if parts else np.zeros(0, dtype=object)


# ---------------------------------------------------------------------- manifest
def _check_manifest(loc: Location, man: dict, arrays: dict[str, dict], columns: dict, rep: VerifyReport,
                    skip: set[str] = frozenset()) -> None:
    """``arrays``: those with sane shapes; ``skip``: the names whose shapes were already reported as absurd."""
    def bad(msg, array="manifest"):
        rep.problems.append(Problem(array, msg))

    version = man.get("format_version")
    if version not in READABLE_VERSIONS:
        bad(f"format_version is {version!r}, expected one of {', '.join(map(str, READABLE_VERSIONS))}")
    key = man.get("cache_key")
    if not (isinstance(key, str) and re.fullmatch(r"[0-9a-f]{64}", key)):
        bad(f"cache_key {key!r} is not a sha256 hex digest")
    else:
        name = PurePosixPath(loc.url.rstrip("/")).name
        named = key_of_store_name(name)
        if named is not None and named != key:
            bad(f"the directory is named {name} but the manifest's cache_key is {key}")
    if man.get("n_rows") is None:
        bad("n_rows None is not a non-negative integer")
    kind = man.get("kind")
    if kind not in EXPECTED:
        bad(f"unknown kind {kind!r} (expected one of {', '.join(EXPECTED)})")
    constants = man.get("constants") if isinstance(man.get("constants"), list) else []
    for name, (dtype, ndim) in expected_arrays(kind, version, Storage.from_manifest(man), constants).items():
        m = arrays.get(name)
        if m is None:
            if name not in skip:
                bad(f"missing: a {kind} store must have it", name)
            continue
        if m.get("data_type") != dtype:
            bad(f"dtype {m.get('data_type')} (format v{version}: {dtype})", name)
        if len(m["shape"]) != ndim:
            bad(f"{len(m['shape'])} dimensions (format v{version}: {ndim})", name)
    for name, m in arrays.items():
        dims = m.get("dimension_names")
        if not dims or len(dims) != len(m["shape"]) or any(d is None for d in dims):
            bad(f"dimension_names {dims} do not name all {len(m['shape'])} dimensions", name)
    rep.problems.extend(p for p in manifest_problems(man, arrays) if p.array not in skip)
    col = SORTED_COLUMN.get(kind)
    values = columns.get(col) if col else None
    if values is not None:
        v = values.astype(str)
        if len(v) > 1 and not bool(np.all(v[1:] > v[:-1])):
            dup = len(v) - len(np.unique(v))
            bad("not sorted ascending and unique" + (f" ({dup} duplicates)" if dup else ""), col)
