"""What a published store holds, and the checks every reader makes before and while reading it.

Format v2 writes every chunk (fill values included, every inner chunk of a shard too), so each chunk (shard) key the
array metadata implies exists, and at publication the manifest records, per array, how many chunk files there are
and their total bytes (``chunks: {array: {files, bytes}}``). Then:

- :func:`shape_problems` / :func:`manifest_problems`: the array metadata is checked against bounds and against the
  manifest (rows, row shapes against the geometry, the recorded file count) before anything is allocated or read;
- :func:`file_problems`: a missing chunk file, or chunk files whose sizes do not add up to the record, is corruption
  (local stores: one ``stat`` per file, at open and at every cache lookup);
- :class:`StrictStore`: while reading, a chunk the store does not have (a file deleted while in use, an HTTP 404)
  raises :class:`~mad_pipeline.errors.StoreError` instead of reading as fill values;
- :class:`StoreArray`: a chunk that fails to decode (checksum mismatch, truncated shard) raises a ``StoreError``
  naming the chunk file.

Format v1 stores have no record (a chunk whose values were all fill values was never written): they get the metadata
checks only. ``mad store verify`` (:mod:`.verify`) makes every check, on any location.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from zarr.storage import WrapperStore

from ..errors import StoreError
from .location import chunk_counts, chunk_keys
from .storage import Storage

MAX_CHUNK_FILES = 10_000_000  # chunk (shard) files of one array; more is not a store this writer made
MAX_CHUNK_BYTES = 1 << 31  # decoded bytes of one (inner) chunk: the most a read decodes at once


@dataclass
class Problem:
    array: str  # array name, or "manifest" / "metadata"
    message: str
    chunk: str = ""  # chunk key inside the array, e.g. "c/1/0/0"
    file: str = ""  # the file (or object URL) that holds it

    def describe(self) -> str:
        where = f"{self.array}/{self.chunk}" if self.chunk else self.array
        return f"{where}: {self.message}" + (f" [{self.file}]" if self.file else "")

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def array_metadata(meta: dict) -> dict[str, dict]:
    """The array metadata documents in a root ``zarr.json``'s consolidated metadata, by name."""
    cons = (meta.get("consolidated_metadata") or {}).get("metadata") or {}
    return {n: m for n, m in sorted(cons.items()) if isinstance(m, dict) and m.get("node_type") == "array"}


def chunk_record(path: Path) -> dict[str, dict[str, int]]:
    """What the writer publishes in the manifest: per array, its chunk (shard) files and their total bytes. Every
    chunk key the metadata implies must exist (format v2 writes empty chunks too)."""
    import json

    out = {}
    for meta_file in sorted(Path(path).glob("*/zarr.json")):
        m = json.loads(meta_file.read_text())
        if m.get("node_type") != "array":
            continue
        name, files, nbytes = meta_file.parent.name, 0, 0
        for k in chunk_keys(m):
            try:
                nbytes += os.stat(meta_file.parent / k).st_size
            except FileNotFoundError:
                raise RuntimeError(f"cannot publish {path}: {name}/{k} was never written") from None
            files += 1
        out[name] = {"files": files, "bytes": nbytes}
    return out


# ---------------------------------------------------------------------- metadata
def _itemsize(data_type) -> int:
    if isinstance(data_type, dict):
        return int((data_type.get("configuration") or {}).get("length_bytes", 8))
    try:
        return np.dtype(data_type).itemsize
    except TypeError:
        return 16  # variable-length strings: at least a pointer per element


def _ints(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def n_chunk_files(m: dict) -> int:
    """Chunk (shard) files the metadata implies (call after :func:`shape_problems` found none)."""
    return math.prod(chunk_counts(m))


def shape_problems(name: str, m: dict) -> list[Problem]:
    """Shapes a reader cannot trust: not non-negative integers, more chunk files than any store has, or a chunk that
    would decode to more than 2 GiB. Checked before any chunk key is listed or any array is read."""
    shape = m.get("shape")
    grid = ((m.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
    if not (_ints(shape) and _ints(grid) and len(shape) == len(grid) and all(grid)):
        return [Problem(name, f"shape {shape} / chunk shape {grid} are not valid (corrupt metadata)")]
    files = math.prod(math.ceil(s / c) for s, c in zip(shape, grid, strict=True))
    if files > MAX_CHUNK_FILES:
        return [Problem(name, f"shape {tuple(shape)} in chunks of {tuple(grid)} means {files:.3g} chunk files "
                              f"(at most {MAX_CHUNK_FILES:.0e}; corrupt metadata)")]
    codecs = m.get("codecs") or [{}]
    inner = (codecs[0].get("configuration") or {}).get("chunk_shape") if codecs[0].get("name") == "sharding_indexed" \
        else grid
    if not (_ints(inner) and len(inner) == len(grid) and all(inner)):
        return [Problem(name, f"inner chunk shape {inner} is not valid (corrupt metadata)")]
    nbytes = math.prod(inner) * _itemsize(m.get("data_type"))
    if nbytes > MAX_CHUNK_BYTES:
        return [Problem(name, f"one chunk of {tuple(inner)} would decode to {nbytes / 2**30:.3g} GiB (at most 2 GiB; "
                              "corrupt metadata)")]
    return []


def manifest_problems(man: dict, arrays: dict[str, dict]) -> list[Problem]:
    """The arrays (with sane shapes) against the manifest: rows, row shapes against ``geometry``, chunk record."""
    out: list[Problem] = []
    n_rows = man.get("n_rows")
    if n_rows is not None and (not isinstance(n_rows, int) or isinstance(n_rows, bool) or n_rows < 0):
        out.append(Problem("manifest", f"n_rows {n_rows!r} is not a non-negative integer"))
        n_rows = None
    constants = man.get("constants") if isinstance(man.get("constants"), list) else []  # arrays without rows
    for name, m in arrays.items():
        if n_rows is not None and name not in constants and (not m["shape"] or m["shape"][0] != n_rows):
            out.append(Problem(name, f"shape {tuple(m['shape'])} does not have n_rows = {n_rows} rows"))
    geo = man.get("geometry") if isinstance(man.get("geometry"), dict) else {}
    want = {}
    if man.get("kind") == "image" and geo:
        n = geo.get("num_tokens")
        if isinstance(n, int):  # a keep-tokens store holds CLS + the kept patches of each image
            n = Storage.from_manifest(man).stored_tokens(n)
        want = {"tokens": (n, geo.get("width")), "pooled": (geo.get("embed_dim"),)}
    elif man.get("kind") == "text" and geo:
        want = {"tokens": (geo.get("max_length"), geo.get("width")), "pooled": (geo.get("embed_dim"),),
                "char_span": (geo.get("max_length"), 2)}
    for name, row in want.items():
        m = arrays.get(name)
        if m is not None and None not in row and tuple(m["shape"][1:]) != tuple(row):
            out.append(Problem(name, f"row shape {tuple(m['shape'][1:])} does not match the manifest geometry "
                                     f"{tuple(row)}"))
    record = man.get("chunks")
    if record is None:
        return out  # format v1: nothing recorded
    if not isinstance(record, dict):
        return [*out, Problem("manifest", "the chunk record is not a mapping")]
    for name in sorted(set(arrays) | set(record)):
        r = record.get(name)
        if not (isinstance(r, dict) and isinstance(r.get("files"), int) and isinstance(r.get("bytes"), int)):
            out.append(Problem(name, "not in the manifest's chunk record" if r is None else "bad chunk record"))
        elif name not in arrays:
            out.append(Problem(name, "recorded in the manifest but the array's metadata is missing"))
        elif n_chunk_files(arrays[name]) != r["files"]:
            out.append(Problem(name, f"the metadata implies {n_chunk_files(arrays[name])} chunk files, the manifest "
                                     f"records {r['files']}"))
    return out


def file_problems(path: str | Path, man: dict, arrays: dict[str, dict]) -> list[Problem]:
    """Local store: every recorded array's chunk files exist and their sizes add up to the record."""
    record = man.get("chunks")
    if not isinstance(record, dict):
        return []
    out = []
    for name, r in sorted(record.items()):
        m = arrays.get(name)
        if m is None or not isinstance(r, dict):
            continue  # manifest_problems says so
        missing, nbytes = [], 0
        for k in chunk_keys(m):
            try:
                nbytes += os.stat(Path(path) / name / k).st_size
            except FileNotFoundError:
                missing.append(k)
        if missing:
            out.append(Problem(name, f"missing chunk file ({len(missing)} of {r.get('files')} recorded files are "
                                     "missing; they would read as fill values)", missing[0],
                               str(Path(path) / name / missing[0])))
        elif nbytes != r.get("bytes"):
            out.append(Problem(name, f"chunk files hold {nbytes} bytes, the manifest records {r.get('bytes')} "
                                     "(a file was truncated or replaced)"))
    return out


def local_problems(path: str | Path) -> list[Problem]:
    """Every check short of reading chunks, for a local store directory with a manifest (a cache lookup's check)."""
    import json

    try:
        meta = json.loads((Path(path) / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return [Problem("metadata", "root zarr.json is missing or not valid JSON")]
    return store_problems(path, meta, local=True)


def store_problems(path: str | Path, meta: dict, local: bool) -> list[Problem]:
    arrays = array_metadata(meta)
    man = (meta.get("attributes") or {}).get("mad") or {}
    out = [p for n, m in arrays.items() for p in shape_problems(n, m)]
    if out:
        return out
    out = manifest_problems(man, arrays)
    if not out and local:
        out = file_problems(path, man, arrays)
    return out


def corrupt(where: str, problems: list[Problem]) -> StoreError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return StoreError(f"{where}: corrupt store: {problems[0].describe()}{more}; check it with `mad store verify`")


# ---------------------------------------------------------------------- while reading
class StrictStore(WrapperStore):
    """A read-only zarr store over a published v2 store: a chunk key of a recorded array that is absent raises
    ``StoreError`` (zarr itself would return fill values)."""

    def __init__(self, store, arrays, where: str):
        super().__init__(store)
        self._arrays = frozenset(arrays)
        self._where = where

    def __str__(self) -> str:  # stable across reopenings: ChunkCache keys its LRUs by the array's store path
        return f"strict+{self._store}"

    def __repr__(self) -> str:
        return f"StrictStore({self._store!r})"

    async def get(self, key, prototype, byte_range=None):
        out = await self._store.get(key, prototype, byte_range)
        if out is None and not key.endswith("zarr.json") and key.split("/", 1)[0] in self._arrays:
            raise StoreError(f"{self._where}/{key}: missing chunk file (removed while in use, or never copied); "
                             "the store is corrupt, check it with `mad store verify`")
        return out


class StoreArray:
    """A zarr array whose reads fail with a one-line ``StoreError`` naming the chunk file when a chunk cannot be
    decoded; everything else is the zarr array's."""

    def __init__(self, array, where: str, name: str):
        self._array = array
        self._where = where
        self._name = name

    def __getattr__(self, attr):
        return getattr(self._array, attr)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, sel):
        try:
            return self._array[sel]
        except (StoreError, IndexError, TypeError, KeyError):  # ours, or a bad selection (the caller's bug)
            raise
        except Exception as e:  # noqa: BLE001 - a decode failure inside zarr: checksum, truncated shard, codec
            why = "checksum mismatch" if "checksum" in str(e).lower() else f"{type(e).__name__}: {e}"
            raise StoreError(f"{self._where}/{self._name}/{self._files(sel)}: cannot be read ({why}); the store is "
                             "corrupt, check it with `mad store verify`") from None

    def _files(self, sel) -> str:
        """The chunk (shard) key(s) a row selection touches."""
        first = sel[0] if isinstance(sel, tuple) and sel else sel
        if not self._array.shape:
            return "c"
        n, outer = self._array.shape[0], (self._array.shards or self._array.chunks)[0]
        if isinstance(first, (int, np.integer)):
            lo = hi = int(first) % max(n, 1)
        elif isinstance(first, slice):
            lo, stop, _ = first.indices(n)
            hi = max(lo, stop - 1)
        else:
            return "c/..."
        rest = "/0" * (len(self._array.shape) - 1)
        a, b = lo // outer, hi // outer
        return f"c/{a}{rest}" if a == b else f"c/{a}{rest} to c/{b}{rest}"
