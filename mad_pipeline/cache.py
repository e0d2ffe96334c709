"""The content-hash cache: where a store with a given key lives, and the lock that keeps two runs from racing.

Layout under the cache root (``--cache`` / ``MAD_CACHE`` / the user cache dir)::

    stores/<kind>/<key>.zarr     published, complete stores (manifest present)
    partial/<kind>/<key>.zarr    stores being built; a killed run resumes from here (pulls copy into a
                                 partial/<kind>/<key>.pull-*.zarr of their own)
    locks/<key>.lock             one writer per key at a time (flock; released by the OS if the process dies)
    used/<key>                   touched whenever a lookup serves the key (``mad store gc --older-than``)
    quarantine/<kind>/<key>-<time>.zarr   corrupt stores moved aside by a lookup (kept for inspection, never served)
    derived/<area>/<key>.zarr    stores derived from published ones for one use (training's text views), rebuilt
                                 whenever missing or damaged; marked in used/ when a run opens them

A published store in the local cache is served only if it passes the checks that need no chunk reads (its chunk
files all there with the bytes its manifest records, shapes that match the manifest: see
:mod:`mad_pipeline.store.integrity`). ``find`` moves one that fails into ``quarantine/`` with a one-line warning, so
the stage that asked for it rebuilds it; ``lookup`` and ``locate`` (no side effects) just do not serve it.

Layered caches: the local cache (writable) sits in front of read-only *shared* ones (``MAD_SHARED_CACHE``: local
directories, ``http(s)://`` or ``s3://`` cache roots, separated by whitespace or ``;``). ``Cache.find`` looks in the
local cache first, then in each shared one in order; a shared hit is used in place (opened read-only through
zarr + fsspec) or, with ``MAD_PULL=1``, copied into the local cache first. Nothing is ever written to a shared cache.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError
from .hashing import content_key
from .store.filesystems import SetupError
from .store.integrity import local_problems
from .store.layout import FORMAT_VERSION
from .store.location import (
    KINDS,
    PARTIAL,
    STORES,
    Location,
    find_in,
    is_complete,
    is_url,
    partial_rel,
    store_glob,
    store_rel,
)
from .store.transfer import pull_store

SHARED_ENV = "MAD_SHARED_CACHE"
DERIVED = "derived"  # stores derived from published ones for one use, local and rebuildable
PULL_ENV = "MAD_PULL"


def default_cache_dir() -> Path:
    env = os.environ.get("MAD_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mad"))


def split_locations(value: str | None) -> list[str]:
    """``MAD_SHARED_CACHE``: several locations separated by whitespace or ``;`` (not ``:`` — URLs contain it)."""
    return [p for p in re.split(r"[;\s]+", value or "") if p]


def env_shared() -> list[str]:
    return split_locations(os.environ.get(SHARED_ENV))


def env_pull() -> bool:
    return os.environ.get(PULL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def make_key(kind: str, **parts) -> str:
    """Cache key of a store: sha256 of the canonical JSON of everything that determines its values."""
    return content_key({"format_version": FORMAT_VERSION, "kind": kind, **parts})


@dataclass(frozen=True)
class Hit:
    """Where a lookup found a complete store: ``path`` (a local path or a URL) and ``source``:
    ``local``, ``shared:<cache root>`` (used in place) or ``pulled:<cache root>`` (copied into the local cache)."""

    path: str
    source: str = "local"


@dataclass(frozen=True)
class Cache:
    root: Path
    shared: tuple[str, ...] = field(default=())  # read-only cache roots behind this one, in lookup order
    pull: bool = False  # copy shared hits into this cache instead of using them in place

    @classmethod
    def at(cls, root: str | Path | None, shared: str | list[str] | tuple[str, ...] | None = None,
           pull: bool | None = None) -> Cache:
        """The local cache at ``root`` (else ``MAD_CACHE``, else the user cache dir) with the shared caches
        ``shared`` (else ``MAD_SHARED_CACHE``) behind it; ``pull`` defaults to ``MAD_PULL``."""
        root_p = Path(root).expanduser() if root else default_cache_dir()
        if shared is None:
            locs = env_shared()
        elif isinstance(shared, str):
            locs = split_locations(shared)
        else:
            locs = [x for s in shared for x in split_locations(s)]
        return cls(root_p, tuple(_dedupe(locs, root_p)), env_pull() if pull is None else bool(pull))

    def store_path(self, kind: str, key: str) -> Path:
        """Where the published store ``key`` of ``kind`` lives (whether or not it is there)."""
        return self.root / store_rel(kind, key)

    def partial_path(self, kind: str, key: str, purpose: str | None = None) -> Path:
        """Where the store is built (resumable), or with ``purpose`` (``pull``) a scratch name unique to this call."""
        return self.root / partial_rel(kind, key, purpose)

    def derived_path(self, area: str, key: str) -> Path:
        """Where a store derived from published ones lives (``derived/<area>/<key>.zarr``: local, rebuildable)."""
        return self.root / DERIVED / area / f"{key}.zarr"

    @property
    def stores_dir(self) -> Path:
        return self.root / STORES

    def stores(self, kind: str | None = None, prefix: str = "") -> list[Path]:
        """Store directories of ``kind`` (any) whose key starts with ``prefix``, sorted; complete or not."""
        return sorted(self.root.glob(store_glob(kind, prefix)))

    def store_entries(self) -> list[Path]:
        """Everything under ``stores/<kind>/``, sorted: stores with or without a manifest, leftovers of removals."""
        return sorted(self.root.glob(f"{STORES}/*/*"))

    def derived_entries(self) -> list[Path]:
        """Everything under ``derived/<area>/``, sorted: derived stores, and builds killed before their rename."""
        return sorted(self.root.glob(f"{DERIVED}/*/*"))

    def partial_entries(self) -> list[Path]:
        """Everything under ``partial/<kind>/``, sorted: builds, pulls and pushes under way or interrupted."""
        return sorted(self.root.glob(f"{PARTIAL}/*/*"))

    def lookup(self, kind: str, key: str) -> Path | None:
        """The complete store in the local cache only (see ``find`` for the layered lookup)."""
        p = self.store_path(kind, key)
        return p if is_complete(p, key) and not local_problems(p) else None

    def quarantine_if_corrupt(self, kind: str, key: str, log: Callable[[str], None] | None = None) -> Path | None:
        """Move the published local store ``key`` aside into ``quarantine/`` when it fails the integrity checks (a
        chunk file missing or truncated, shapes that contradict the manifest); returns where it went, or None."""
        p = self.store_path(kind, key)
        if not is_complete(p, key):
            return None
        problems = local_problems(p)
        if not problems:
            return None
        stamp = _dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        dest = self.root / "quarantine" / kind / f"{key}-{stamp}-{os.getpid()}.zarr"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(p, dest)
        except FileNotFoundError:  # another process moved it first
            return None
        p0, more = problems[0], f"; {len(problems) - 1} more" if len(problems) > 1 else ""
        where = f"{p0.array}/{p0.chunk}" if p0.chunk else p0.array
        msg = f"warning: {kind} store {key[:12]} is corrupt ({where}: {p0.message}{more}); moved to {dest}, not served"
        if log:
            log(msg)
        else:
            print(msg, file=sys.stderr)
        return dest

    def locate(self, kind: str, key: str, log: Callable[[str], None] | None = None) -> Hit | None:
        """Where the complete store is: the local cache first, then each shared cache. No side effects (a plan
        or ``--dry-run`` can call it). An unreachable shared cache is reported through ``log`` and skipped."""
        p = self.lookup(kind, key)
        if p is not None:
            return Hit(str(p), "local")
        for loc in self.shared:
            try:
                hit = find_in(loc, kind, key)
            except SetupError:
                raise  # a missing library or a bad setting: say so rather than skip and recompute everything
            except Exception as e:  # noqa: BLE001 - a shared cache that is down must not stop a run
                if log:
                    log(f"shared cache {loc}: unreachable ({type(e).__name__}: {e}); skipped")
                continue
            if hit is not None:
                return Hit(hit.url, f"shared:{loc}")
        return None

    def find(self, kind: str, key: str, log: Callable[[str], None] | None = None) -> Hit | None:
        """``locate``, then: a shared hit is pulled into the local cache when ``pull`` is set; the key is marked
        used (for ``mad store gc --older-than``). A corrupt local store is quarantined first (then built again)."""
        self.quarantine_if_corrupt(kind, key, log=log)
        hit = self.locate(kind, key, log=log)
        if hit is None:
            return None
        if hit.source.startswith("shared:") and self.pull:
            loc = hit.source[len("shared:") :]
            if log:
                log(f"{kind} store {key[:12]}: pulling from {loc}")
            pull_store(self, kind, key, Location(hit.path))
            hit = Hit(str(self.store_path(kind, key)), f"pulled:{loc}")
        if not hit.source.startswith("shared:"):
            self.mark_used(key)
        return hit

    def mark_used(self, key: str) -> None:
        try:
            d = self.root / "used"
            d.mkdir(parents=True, exist_ok=True)
            (d / key).touch()
        except OSError:
            pass

    def last_used(self, key: str, path: Path) -> float:
        """Seconds since the epoch of the last lookup that served the key, or of the publication of its store at
        ``path`` (a published or derived store)."""
        times = []
        for p in (self.root / "used" / key, path / "zarr.json"):
            with contextlib.suppress(OSError):
                times.append(p.stat().st_mtime)
        return max(times, default=0.0)

    @contextlib.contextmanager
    def try_lock(self, key: str) -> Iterator[bool]:
        """Take the lock for ``key`` without waiting; yields False (holding nothing) if a live process has it."""
        with self._lock_file(key, wait=False) as held:
            yield held is not False

    @contextlib.contextmanager
    def lock(self, key: str, on_wait=None) -> Iterator[None]:
        """Exclusive lock for building ``key``. ``on_wait`` is called once if another process holds it."""
        with self._lock_file(key, wait=True, on_wait=on_wait) as f:
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()} {time.time():.0f}\n")
            f.flush()
            yield

    @contextlib.contextmanager
    def _lock_file(self, key: str, wait: bool, on_wait=None):
        """``locks/<key>.lock`` held exclusively (``flock``): yields the open file, or False when ``wait`` is False
        and a live process holds it."""
        d = self.root / "locks"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{key}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                if on_wait:
                    on_wait()
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield f
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _dedupe(locs: list[str], local_root: Path) -> list[str]:
    """Shared locations in order, without repeats and without the local cache itself."""
    out: list[str] = []
    seen = {str(local_root.resolve())}
    for loc in locs:
        ident = loc.rstrip("/") if is_url(loc) else str(Path(loc).expanduser().resolve())
        if ident not in seen:
            seen.add(ident)
            out.append(loc.rstrip("/") if is_url(loc) else str(Path(loc).expanduser()))
    return out


_KEY_PREFIX = re.compile(r"[0-9a-f]{6,64}")


def resolve_store(ref: str | Path, cache: str | Path | None = None) -> str:
    """The store ``ref`` names, for every command and API call that takes one: a URL as is; a local path (``~``
    expanded) that exists; else a store key, or a unique key prefix of at least 6 hex digits, of a published store of
    any kind in the local cache ``cache`` (else ``MAD_CACHE``), or, for a full key, in a shared cache
    (``MAD_SHARED_CACHE``). Anything else is one error line."""
    ref = str(ref)
    if is_url(ref):
        return ref
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if not _KEY_PREFIX.fullmatch(ref):
        raise StoreError(f"{path}: no such store (give a store directory, a URL, or a store key)")
    c = Cache.at(cache)
    hits = [p for p in c.stores(prefix=ref) if is_complete(p)]
    if len(hits) > 1:
        names = ", ".join(f"{p.parent.name}/{p.name[:16]}" for p in hits[:4]) + (", ..." if len(hits) > 4 else "")
        raise StoreError(f"key prefix {ref} is ambiguous in the cache {c.root}: {len(hits)} stores ({names}); "
                         f"give more characters")
    if hits:
        return str(hits[0])
    if len(ref) == 64:
        for kind in KINDS:
            hit = c.locate(kind, ref)
            if hit is not None:
                return hit.path
    where = " or the shared caches" if c.shared else ""
    raise StoreError(f"{ref}: no such path, and no published store with key {ref} in the cache {c.root}{where} "
                     f"(--cache / MAD_CACHE)")
