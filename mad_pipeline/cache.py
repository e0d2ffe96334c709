"""The content-hash cache: where a store with a given key lives, and the lock that keeps two runs from racing.

Layout under the cache root (``--cache`` / ``MAD_CACHE`` / the user cache dir)::

    stores/<kind>/<key>.zarr     published, complete stores (manifest present)
    partial/<kind>/<key>.zarr    stores being built; a killed run resumes from here
    locks/<key>.lock             one writer per key at a time (flock; released by the OS if the process dies)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import FORMAT_VERSION
from .hashing import content_key
from .store.writer import is_complete


def default_cache_dir() -> Path:
    env = os.environ.get("MAD_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("mad"))


def make_key(kind: str, **parts) -> str:
    """Cache key of a store: sha256 of the canonical JSON of everything that determines its values."""
    return content_key({"format_version": FORMAT_VERSION, "kind": kind, **parts})


@dataclass(frozen=True)
class Cache:
    root: Path

    @classmethod
    def at(cls, root: str | Path | None) -> Cache:
        return cls(Path(root).expanduser() if root else default_cache_dir())

    def store_path(self, kind: str, key: str) -> Path:
        return self.root / "stores" / kind / f"{key}.zarr"

    def partial_path(self, kind: str, key: str) -> Path:
        return self.root / "partial" / kind / f"{key}.zarr"

    def lookup(self, kind: str, key: str) -> Path | None:
        p = self.store_path(kind, key)
        return p if is_complete(p, key) else None

    @contextlib.contextmanager
    def lock(self, key: str, on_wait=None) -> Iterator[None]:
        """Exclusive lock for building ``key``. ``on_wait`` is called once if another process holds it."""
        d = self.root / "locks"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"{key}.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()} {time.time():.0f}\n")
                f.flush()
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
