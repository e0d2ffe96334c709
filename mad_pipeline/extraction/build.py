"""Get-or-build one store by key: cache lookup, per-key lock, resumable partial build, atomic publication.

A full disk while building is the user's to fix, not a bug: it ends in one ``StoreError`` line naming the path, with
nothing published; the partial store keeps its finished shards and the same command resumes once space is freed.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..cache import Cache
from ..errors import StoreError
from ..store.layout import FORMAT_VERSION, ArraySpec
from ..store.writer import StoreWriter
from ..versions import library_versions


@dataclass
class StoreResult:
    kind: str
    key: str
    path: str
    cached: bool
    rows: int
    rows_computed: int = 0
    rows_reused: int = 0  # copied from published stores of the same teacher identity (see reuse.py)
    shards_total: int = 0
    shards_resumed: int = 0
    shards_computed: int = 0
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)
    source: str = "local"  # local | shared:<cache root> (used in place) | pulled:<cache root> (see Cache.find)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def get_or_build(cache: Cache, kind: str, key: str, n_rows: int, specs: Callable[[], list[ArraySpec]],
                 fill: Callable[[StoreWriter], object], manifest: Callable[[StoreWriter], dict],
                 shard_rows: int | None = None, log: Callable[[str], None] = print) -> StoreResult:
    """Return the published store for ``key``, building it first if needed.

    ``specs`` and ``fill`` are only called when the store must be built (so a cached run loads no teacher).
    ``fill(writer)`` writes the unfinished shards and returns PassStats-like stats.
    """
    t0 = time.perf_counter()
    found = cache.find(kind, key, log=log)  # the local cache, then the shared ones (MAD_SHARED_CACHE)
    if found is not None:
        return StoreResult(kind, key, found.path, True, n_rows, seconds=time.perf_counter() - t0,
                           source=found.source)
    try:
        return _build(cache, kind, key, n_rows, specs, fill, manifest, shard_rows, log, t0)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = e.filename or cache.partial_path(kind, key)
        raise StoreError(f"{where}: no space left on device while writing the {kind} store {key[:12]}; nothing was "
                         f"published. Free some space and run the same command again: it resumes from the shards "
                         f"already written") from None


def _build(cache: Cache, kind: str, key: str, n_rows: int, specs, fill, manifest, shard_rows, log, t0: float
           ) -> StoreResult:
    with cache.lock(key, on_wait=lambda: log(f"{kind} store {key[:12]}: another process is building it; waiting")):
        hit = cache.lookup(kind, key)  # the other process may have just published it
        if hit is not None:
            return StoreResult(kind, key, str(hit), True, n_rows, seconds=time.perf_counter() - t0)
        writer = StoreWriter(cache.partial_path(kind, key), kind, n_rows, specs(), key, shard_rows=shard_rows)
        if writer.resumed:
            log(f"{kind} store {key[:12]}: resuming ({len(writer.done_shards())}/{writer.n_shards} shards done)")
        stats = fill(writer)
        # in row order (rows are sorted by hash), whichever order the shards were computed in
        errors = sorted(writer.recorded_errors(), key=lambda e: json.dumps(e, sort_keys=True))
        man = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "cache_key": key,
            "n_rows": n_rows,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "library_versions": library_versions(),
            "layout": {"chunk_rows": writer.chunk_rows, "shard_rows": writer.shard_rows},
            **manifest(writer),
        }
        if errors:
            man["errors"] = errors
        path = writer.finalize(man, cache.store_path(kind, key))
    return StoreResult(kind, key, str(Path(path)), False, n_rows,
                       rows_computed=getattr(stats, "rows_computed", n_rows),
                       rows_reused=getattr(stats, "rows_reused", 0),
                       shards_total=writer.n_shards, shards_resumed=getattr(stats, "shards_resumed", 0),
                       shards_computed=getattr(stats, "shards_computed", writer.n_shards),
                       seconds=time.perf_counter() - t0, errors=errors)
