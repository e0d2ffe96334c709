"""Where a store is and which keys it has: local paths and URLs, the cache-root layout, completeness.

A *location* is a cache root or one store, addressed by a local path or an fsspec URL (``http(s)://``, read-only,
or ``s3://``); ``file://`` URLs are local paths. A cache root holds::

    stores/<kind>/<key>.zarr     published, complete stores (manifest present)
    partial/<kind>/<key>.zarr    stores being built, pulled or pushed; renamed into stores/ when whole

Reads touch known keys only — the root ``zarr.json`` (which holds the consolidated metadata and the manifest), each
array's ``zarr.json`` and the chunk keys the metadata implies — so a plain static web server with no directory
listing is enough. Nothing read from a location is ever unpickled: metadata is JSON, chunks are numeric or UTF-8.

A store is *complete* when its root ``zarr.json`` holds a manifest with a cache key (and, when one is expected, the
right one); anything else is never served.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreError
from .filesystems import READ_ONLY_PROTOCOLS, fetch_many, filesystem, protocol_of, read_local
from .safety import META_MAX_BYTES, check_array, check_chunk_files, check_key, max_chunk_bytes

KINDS = ("image", "text", "index", "zeroshot")
STORES = "stores"
PARTIAL = "partial"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_url(s: str | Path) -> bool:
    """A URL fsspec opens (``http(s)://``, ``s3://``, ...); a plain path or a ``file://`` URL is local."""
    return "://" in str(s) and not str(s).startswith("file://")


class Location:
    """A directory-like place addressed by a local path or an fsspec URL; relative keys use ``/``."""

    def __init__(self, where: str | Path):
        where = str(where)
        if where.startswith("file://"):
            where = where[len("file://") :]
        self.url = where.rstrip("/") if is_url(where) else str(Path(where).expanduser())
        self.protocol = protocol_of(self.url) if is_url(self.url) else "file"
        self.local = self.protocol == "file"
        self.writable = self.protocol not in READ_ONLY_PROTOCOLS
        self._fs = None
        self._root = ""

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __str__(self) -> str:
        return self.url

    # ------------------------------------------------------------------ paths
    @property
    def fs(self):
        if self._fs is None:
            if self.local:
                from fsspec.implementations.local import LocalFileSystem

                self._fs, self._root = LocalFileSystem(), self.url
            else:
                self._fs, self._root = filesystem(self.url)
        return self._fs

    @property
    def root(self) -> str:
        _ = self.fs
        return self._root

    def path(self, rel: str = "") -> str:
        rel = rel.strip("/")
        if self.local:
            return str(Path(self.url) / rel) if rel else self.url
        return f"{self.root}/{rel}" if rel else self.root

    def child(self, rel: str) -> Location:
        rel = rel.strip("/")
        return Location(str(Path(self.url) / rel) if self.local else f"{self.url}/{rel}")

    # ------------------------------------------------------------------ reads
    def cat(self, rel: str = "", max_bytes: int | None = None) -> bytes | None:
        """The bytes at ``rel``; None when there is nothing there. A remote answer (or local file) larger than
        ``max_bytes`` (default and cap: ``MAD_SHARED_MAX_BYTES``) raises ``TooLarge`` instead of being read whole."""
        if self.local:
            try:
                return read_local(self.path(rel), max_bytes)
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        return self.cat_many([rel], {rel: max_bytes})[rel]

    def cat_many(self, rels: list[str], limits: dict[str, int | None] | None = None) -> dict[str, bytes | None]:
        """Several keys at once (concurrently for remote filesystems); None for absent ones. ``limits``: the most
        bytes each key may have (see ``cat``)."""
        limits = limits or {}
        if self.local or not rels:
            return {r: self.cat(r, limits.get(r)) for r in rels}
        paths = {self.path(r): r for r in rels}
        got = fetch_many(self.fs, {p: limits.get(r) for p, r in paths.items()})
        out: dict[str, bytes | None] = {}
        for p, r in paths.items():
            v = got[p]
            if isinstance(v, FileNotFoundError):
                out[r] = None
            elif isinstance(v, BaseException):
                raise v
            else:
                out[r] = v
        return out

    def json(self, rel: str) -> dict | None:
        data = self.cat(rel, META_MAX_BYTES)
        if data is None:
            return None
        try:
            out = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        return out if isinstance(out, dict) else None

    def glob(self, pattern: str) -> list[str]:
        """Relative keys matching ``pattern`` (not possible over plain HTTP)."""
        if not self.writable:
            raise StoreError(f"{self.url}: an {self.protocol}:// location cannot be listed; name the key instead")
        base = self.path().rstrip("/")
        out = []
        for p in self.fs.glob(f"{base}/{pattern}"):
            p = str(p)
            out.append(p[len(base) + 1 :] if p.startswith(base + "/") else p)
        return sorted(out)

    # ------------------------------------------------------------------ writes
    def check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.url}: {self.protocol}:// locations are read-only; publish into the directory "
                             f"the web server serves (mad store push STORE DIR) or to s3://")

    def put_many(self, items: dict[str, bytes]) -> None:
        self.check_writable()
        if not items:
            return
        if self.local:
            for rel, data in items.items():
                p = Path(self.path(rel))
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            return
        self.fs.pipe({self.path(rel): data for rel, data in items.items()})

    # ------------------------------------------------------------------ zarr
    def zarr_store(self):
        """A read-only zarr store over this location (never writes)."""
        if self.local:
            from zarr.storage import LocalStore

            return LocalStore(self.url, read_only=True)
        from zarr.storage import FsspecStore

        fs, path = filesystem(self.url, asynchronous=True)
        if not fs.async_impl:
            from zarr.storage._fsspec import _make_async

            fs = _make_async(fs)
        return FsspecStore(fs=fs, path=path, read_only=True)


def as_location(where: Location | str | Path) -> Location:
    return where if isinstance(where, Location) else Location(where)


# ---------------------------------------------------------------------- the cache-root layout
def store_rel(kind: str, key: str) -> str:
    """A published store, relative to its cache root."""
    return f"{STORES}/{kind}/{key}.zarr"


def partial_rel(kind: str, key: str, purpose: str | None = None) -> str:
    """Where a store is assembled before its atomic rename into ``stores/``, relative to the cache root: the
    resumable build directory, or with ``purpose`` (``pull``, ``push``) a name unique to this process and call."""
    if purpose is None:
        return f"{PARTIAL}/{kind}/{key}.zarr"
    return f"{PARTIAL}/{kind}/{key}.{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr"


def store_glob(kind: str | None = None, prefix: str = "") -> str:
    """Glob pattern (relative to a cache root) of the stores of ``kind`` (any) whose key starts with ``prefix``."""
    return f"{STORES}/{kind or '*'}/{prefix}*.zarr"


def key_of_store_name(name: str) -> str | None:
    """The key in a published store's directory name ``<key>.zarr`` (a full sha256 key); None for other names."""
    key = name[: -len(".zarr")] if name.endswith(".zarr") else ""
    return key if _HEX64.fullmatch(key) else None


def parse_store_rel(rel: str) -> tuple[str, str] | None:
    """(kind, key) of ``stores/<kind>/<key>.zarr`` with a full sha256 key; None for anything else."""
    parts = rel.strip("/").split("/")
    if len(parts) != 3 or parts[0] != STORES:
        return None
    key = key_of_store_name(parts[2])
    return (parts[1], key) if key is not None else None


# ---------------------------------------------------------------------- completeness
def manifest_of(store: Location | str | Path) -> dict | None:
    """The manifest in a store's root ``zarr.json``, or None (absent, unreadable or not a dict)."""
    loc = as_location(store)
    try:
        meta = loc.json("zarr.json")
    except OSError:
        if not loc.local:  # a remote failure is not "absent": the caller decides (skip a shared cache, retry)
            raise
        meta = None
    man = (meta or {}).get("attributes", {}).get("mad")
    return man if isinstance(man, dict) else None


def is_complete(store: Location | str | Path, key: str | None = None) -> bool:
    """A store (local path, URL or Location) is complete when its root ``zarr.json`` holds a manifest with a cache
    key, and, if ``key`` is given, that key."""
    man = manifest_of(store)
    if man is None or "cache_key" not in man:
        return False
    return key is None or man["cache_key"] == key


def find_in(cache_root: str, kind: str, key: str) -> Location | None:
    """The complete store ``key`` of ``kind`` in a cache root (local or URL), or None."""
    store = Location(cache_root).child(store_rel(kind, key))
    return store if is_complete(store, key) else None


def find_any_kind(cache_root: str, key: str, kinds: tuple[str, ...] = KINDS) -> tuple[str, Location] | None:
    for kind in kinds:
        hit = find_in(cache_root, kind, key)
        if hit is not None:
            return kind, hit
    return None


# ---------------------------------------------------------------------- a store's keys
def store_keys(store: Location) -> list[str]:
    """Every key a published store may hold, from its consolidated metadata: array metadata and chunk (or shard)
    keys, with the root ``zarr.json`` LAST. Chunks never written (all fill value) are simply absent."""
    return [k for k, _ in store_files(store)]


def store_files(store: Location) -> list[tuple[str, int | None]]:
    """``store_keys`` with the most bytes each key may hold; every key checked safe (relative, normalised, zarr's
    characters) before it is returned, so nothing is fetched or written for a store whose metadata lies."""
    meta = store.json("zarr.json")
    if meta is None:
        raise StoreError(f"{store.url}: no readable zarr.json (not a zarr store)")
    cons = (meta.get("consolidated_metadata") or {}).get("metadata")
    if cons is None:
        raise StoreError(f"{store.url}: no consolidated metadata (an unpublished store?)")
    if not isinstance(cons, dict) or not all(isinstance(m, dict) for m in cons.values()):
        raise StoreError(f"{store.url}: consolidated metadata is not a mapping of node metadata")
    files: list[tuple[str, int | None]] = []
    for name, m in sorted(cons.items()):
        files.append((check_key(f"{name}/zarr.json", store.url), META_MAX_BYTES))
        if m.get("node_type") == "array":
            check_array(name, m, store.url)
            check_chunk_files(len(files) + math.prod(chunk_counts(m)), store.url)
            bound = max_chunk_bytes(m)
            files.extend((check_key(f"{name}/{c}", store.url), bound) for c in chunk_keys(m))
    files.append(("zarr.json", META_MAX_BYTES))
    return files


def chunk_counts(array_meta: dict) -> list[int]:
    """Number of chunks (shards) along each dimension of a zarr v3 array, from its metadata document."""
    grid = array_meta["chunk_grid"]["configuration"]["chunk_shape"]
    return [math.ceil(s / c) if c else 0 for s, c in zip(array_meta["shape"], grid, strict=True)]


def chunk_keys(array_meta: dict) -> Iterator[str]:
    """Chunk (shard) keys of a zarr v3 array from its metadata document, in C order."""
    enc = array_meta.get("chunk_key_encoding", {"name": "default"})
    sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default" else ".")
    for idx in itertools.product(*(range(n) for n in chunk_counts(array_meta))):
        coords = sep.join(str(i) for i in idx)
        if enc.get("name", "default") == "default":
            yield f"c{sep}{coords}" if idx else "c"
        else:
            yield coords if idx else "0"
