"""Stores and caches in any fsspec location: a local directory, ``http(s)://`` (read-only) or ``s3://``.

A *location* is a cache root (``<root>/stores/<kind>/<key>.zarr``) or one store, addressed by a local path or a URL.
Reads touch known keys only — the root ``zarr.json`` (which holds the consolidated metadata and the manifest), each
array's ``zarr.json`` and the chunk keys the metadata implies — so a plain static web server with no directory
listing is enough. Nothing read from a location is ever unpickled: metadata is JSON, chunks are numeric or UTF-8.

S3: credentials and the endpoint come from the usual places (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_PROFILE``, and ``AWS_ENDPOINT_URL`` or fsspec's ``FSSPEC_S3_ENDPOINT_URL`` for an S3-compatible server).

Publishing (``push_store``) is atomic for readers: into a directory, the store is copied under a temporary name and
renamed; into an object store, every object is uploaded first and the root ``zarr.json`` (with the manifest) last,
so a reader that finds the manifest finds every chunk. Pulling copies into the local cache's ``partial/`` and
renames into ``stores/``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError

SHARED_ENV = "MAD_SHARED_CACHE"
PULL_ENV = "MAD_PULL"
KINDS = ("image", "text", "index", "zeroshot")
READ_ONLY_PROTOCOLS = ("http", "https")
BATCH = 64  # files per concurrent fetch / upload


def split_locations(value: str | None) -> list[str]:
    """``MAD_SHARED_CACHE``: several locations separated by whitespace or ``;`` (not ``:`` — URLs contain it)."""
    return [p for p in re.split(r"[;\s]+", value or "") if p]


def env_shared() -> list[str]:
    return split_locations(os.environ.get(SHARED_ENV))


def env_pull() -> bool:
    return os.environ.get(PULL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def is_url(s: str) -> bool:
    return "://" in str(s) and not str(s).startswith("file://")


def _http_fs_class():
    from fsspec.implementations.http import HTTPFileSystem

    class RangeTolerantHTTPFileSystem(HTTPFileSystem):
        """fsspec's HTTP filesystem that also works with servers that ignore ``Range`` (``python -m http.server``).

        When a byte range is asked for and the server answers 200 with the whole file instead of 206, the range is
        cut out locally (correct, if slower, for sharded arrays read partially).
        """

        async def _cat_file(self, url, start=None, end=None, **kwargs):
            if start is None and end is None:
                return await super()._cat_file(url, **kwargs)
            if start == end:
                return b""
            kw = self.kwargs.copy()
            kw.update(kwargs)
            headers = kw.pop("headers", {}).copy()
            headers["Range"] = await self._process_limits(url, start, end)
            kw["headers"] = headers
            session = await self.set_session()
            async with session.get(self.encode_url(url), **kw) as r:
                out = await r.read()
                self._raise_not_found_for_status(r, url)
                status = r.status
            if status != 206:
                out = out[slice(start, end)]
            return out

        async def set_session(self):
            new = self._session is None
            session = await super().set_session()
            if new and self.asynchronous:  # fsspec closes only its sync-mode sessions; close ours at exit too
                weakref.finalize(self, self.close_session, None, session)
            return session

    return RangeTolerantHTTPFileSystem


_HTTP_CLS = None


def filesystem(url: str, asynchronous: bool = False):
    """(fsspec filesystem, path inside it) for a URL. HTTP uses a Range-tolerant filesystem with sane timeouts."""
    global _HTTP_CLS
    protocol = url.split("://", 1)[0].lower()
    if protocol in READ_ONLY_PROTOCOLS:
        try:
            import aiohttp
        except ImportError:
            raise StoreError(f"{url}: http(s):// shared caches need aiohttp (pip install 'mad-pipeline[http]')") \
                from None

        if _HTTP_CLS is None:
            _HTTP_CLS = _http_fs_class()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        fs = _HTTP_CLS(asynchronous=asynchronous, client_kwargs={"timeout": timeout})
        return fs, url.rstrip("/")
    try:
        from fsspec import url_to_fs

        return url_to_fs(url, asynchronous=asynchronous) if asynchronous else url_to_fs(url)
    except ImportError as e:
        raise StoreError(f"{url}: support for {protocol}:// is not installed ({e}); "
                         f"for s3:// install s3fs (pip install 'mad-pipeline[s3]')") from None
    except ValueError as e:
        raise StoreError(f"{url}: {e}") from None


class Location:
    """A directory-like place addressed by a local path or an fsspec URL; relative keys use ``/``."""

    def __init__(self, where: str | Path):
        where = str(where)
        if where.startswith("file://"):
            where = where[len("file://") :]
        self.url = where.rstrip("/") if is_url(where) else str(Path(where).expanduser())
        self.protocol = self.url.split("://", 1)[0].lower() if is_url(self.url) else "file"
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
    def cat(self, rel: str = "") -> bytes | None:
        """The bytes at ``rel``; None when there is nothing there."""
        if self.local:
            try:
                return Path(self.path(rel)).read_bytes()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return None
        try:
            return self.fs.cat_file(self.path(rel))
        except FileNotFoundError:
            return None

    def cat_many(self, rels: list[str]) -> dict[str, bytes | None]:
        """Several keys at once (concurrently for remote filesystems); None for absent ones."""
        if self.local or not rels:
            return {r: self.cat(r) for r in rels}
        paths = {self.path(r): r for r in rels}
        got = self.fs.cat(list(paths), on_error="return")
        if not isinstance(got, dict):  # a single path comes back bare
            got = {next(iter(paths)): got}
        out: dict[str, bytes | None] = {}
        for p, r in paths.items():
            v = got.get(p, FileNotFoundError(p))
            if isinstance(v, FileNotFoundError):
                out[r] = None
            elif isinstance(v, BaseException):
                raise v
            else:
                out[r] = v
        return out

    def json(self, rel: str) -> dict | None:
        data = self.cat(rel)
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
    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.url}: {self.protocol}:// locations are read-only; publish into the directory "
                             f"the web server serves (mad store push STORE DIR) or to s3://")

    def put_many(self, items: dict[str, bytes]) -> None:
        self._check_writable()
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


# ---------------------------------------------------------------------- stores in caches
def store_rel(kind: str, key: str) -> str:
    return f"stores/{kind}/{key}.zarr"


def manifest_of(store: Location) -> dict | None:
    """The manifest in a store's root ``zarr.json``, or None (absent, unreadable or not a dict)."""
    meta = store.json("zarr.json")
    man = (meta or {}).get("attributes", {}).get("mad")
    return man if isinstance(man, dict) else None


def is_complete_at(store: Location, key: str | None = None) -> bool:
    """The remote form of ``is_complete``: the root zarr.json holds a manifest with the (expected) cache key."""
    man = manifest_of(store)
    if man is None or "cache_key" not in man:
        return False
    return key is None or man["cache_key"] == key


def find_in(cache_root: str, kind: str, key: str) -> Location | None:
    """The complete store ``key`` of ``kind`` in a cache root (local or URL), or None."""
    store = Location(cache_root).child(store_rel(kind, key))
    return store if is_complete_at(store, key) else None


def find_any_kind(cache_root: str, key: str, kinds: tuple[str, ...] = KINDS) -> tuple[str, Location] | None:
    for kind in kinds:
        hit = find_in(cache_root, kind, key)
        if hit is not None:
            return kind, hit
    return None


def store_keys(store: Location) -> list[str]:
    """Every key a published store may hold, from its consolidated metadata: array metadata and chunk (or shard)
    keys, with the root ``zarr.json`` LAST. Chunks never written (all fill value) are simply absent."""
    meta = store.json("zarr.json")
    if meta is None:
        raise StoreError(f"{store.url}: no readable zarr.json (not a zarr store)")
    cons = (meta.get("consolidated_metadata") or {}).get("metadata")
    if cons is None:
        raise StoreError(f"{store.url}: no consolidated metadata (an unpublished store?)")
    keys = []
    for name, m in sorted(cons.items()):
        keys.append(f"{name}/zarr.json")
        if m.get("node_type") == "array":
            keys.extend(f"{name}/{c}" for c in chunk_keys(m))
    keys.append("zarr.json")
    return keys


def chunk_keys(array_meta: dict) -> Iterator[str]:
    """Chunk (shard) keys of a zarr v3 array from its metadata document, in C order."""
    shape = array_meta["shape"]
    grid = array_meta["chunk_grid"]["configuration"]["chunk_shape"]
    enc = array_meta.get("chunk_key_encoding", {"name": "default"})
    sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default" else ".")
    counts = [math.ceil(s / c) if c else 0 for s, c in zip(shape, grid, strict=True)]
    for idx in itertools.product(*(range(n) for n in counts)):
        coords = sep.join(str(i) for i in idx)
        if enc.get("name", "default") == "default":
            yield f"c{sep}{coords}" if idx else "c"
        else:
            yield coords if idx else "0"


# ---------------------------------------------------------------------- push / pull
@dataclass
class Transfer:
    kind: str
    key: str
    source: str
    dest: str
    files: int = 0
    bytes: int = 0
    skipped: bool = False  # the destination already had the complete store

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _local_files(path: Path) -> list[str]:
    return sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())


def push_store(store_path: str | Path, dest_root: str, log: Callable[[str], None] | None = None) -> Transfer:
    """Publish one complete local store into the cache root ``dest_root`` (a directory or an object store)."""
    src = Path(store_path).expanduser()
    man = manifest_of(Location(src))
    if man is None or "cache_key" not in man:
        if not (src / "zarr.json").exists():
            raise StoreError(f"{src}: not a zarr store")
        raise StoreError(f"{src}: incomplete store (no manifest); only published stores can be pushed")
    kind, key = man.get("kind"), man["cache_key"]
    if kind not in KINDS:
        raise StoreError(f"{src}: unknown store kind {kind!r} in the manifest")
    dest = Location(dest_root)
    dest._check_writable()
    final = dest.child(store_rel(kind, key))
    result = Transfer(kind, key, str(src), final.url)
    if is_complete_at(final, key):
        result.skipped = True
        return result
    files = [f for f in _local_files(src) if f != "zarr.json"] + ["zarr.json"]  # the manifest lands last
    result.files = len(files)
    result.bytes = sum((src / f).stat().st_size for f in files)
    if dest.local:
        tmp = Path(dest.path(f"partial/{kind}/{key}.push-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr"))
        try:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, tmp, ignore=lambda d, names: ["zarr.json"] if Path(d) == src else [])
            shutil.copy2(src / "zarr.json", tmp / "zarr.json")
            Path(final.url).parent.mkdir(parents=True, exist_ok=True)
            if Path(final.url).exists() and not is_complete_at(final, key):
                discard(Path(final.url))  # a leftover without a manifest is never served; replace it
            try:
                os.rename(tmp, final.url)
            except OSError:
                if not is_complete_at(final, key):
                    raise
                result.skipped = True  # someone else published the same key first
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return result
    body = files[:-1]
    for i in range(0, len(body), BATCH):  # every chunk and array metadata object first ...
        batch = body[i : i + BATCH]
        final.put_many({f: (src / f).read_bytes() for f in batch})
        if log:
            log(f"push {kind} {key[:12]}: {min(i + BATCH, len(body))}/{len(files)} files")
    final.put_many({"zarr.json": (src / "zarr.json").read_bytes()})  # ... the manifest alone, last
    return result


def copy_store(src: Location, dst_dir: Path) -> tuple[int, int]:
    """Copy a published store (any location) into a new local directory by its known keys; root zarr.json last."""
    keys = store_keys(src)
    n = nbytes = 0
    for i in range(0, len(keys), BATCH):
        got = src.cat_many(keys[i : i + BATCH])
        for rel, data in got.items():
            if data is None:
                if rel == "zarr.json" or rel.endswith("/zarr.json"):
                    raise StoreError(f"{src.url}/{rel}: missing")
                continue  # a chunk never written: fill value
            p = dst_dir / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            n += 1
            nbytes += len(data)
    return n, nbytes


def pull_store(cache, kind: str, key: str, src: Location, verify: bool = False, locked: bool = False) -> Transfer:
    """Copy the published store ``src`` into ``cache`` (partial/ then an atomic rename into stores/)."""
    final = cache.store_path(kind, key)
    result = Transfer(kind, key, src.url, str(final))
    if not locked:
        with cache.lock(key):
            return pull_store(cache, kind, key, src, verify=verify, locked=True)
    if cache.lookup(kind, key) is not None:
        result.skipped = True
        return result
    if not is_complete_at(src, key):
        raise StoreError(f"{src.url}: no complete store with key {key}")
    tmp = cache.root / "partial" / kind / f"{key}.pull-{os.getpid()}-{uuid.uuid4().hex[:8]}.zarr"
    try:
        tmp.mkdir(parents=True)
        try:
            result.files, result.bytes = copy_store(src, tmp)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - network and server errors: one clear line, nothing published
            raise StoreError(f"pulling {kind} store {key} from {src.url} failed ({type(e).__name__}: {e}); "
                             f"nothing was published, run again to retry") from None
        from .writer import is_complete

        if not is_complete(tmp, key):
            raise StoreError(f"{src.url}: the copied store has no manifest for key {key}")
        if verify:
            from .verify import verify_store

            rep = verify_store(tmp)
            if not rep.ok:
                raise StoreError(f"{src.url}: pulled copy fails verification: {rep.problems[0].describe()}")
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            discard(final)  # not complete (lookup said so above): never served, safe to replace
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def discard(path: Path) -> None:
    """Remove a directory by first renaming it aside (so no reader sees it half-deleted under its name)."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)
