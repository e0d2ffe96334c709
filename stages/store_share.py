"""Share stores between caches: push a store to a shared location, pull one into the local cache, and gc the
local cache (incomplete stores, and with ``older_than_days`` complete stores nobody has looked up for that long).

Shared locations are cache roots: a directory, ``http(s)://`` (read-only) or ``s3://``; see docs/sharing.md.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mad_pipeline.cache import Cache, env_shared
from mad_pipeline.errors import StoreError
from mad_pipeline.store.location import (
    KINDS,
    Location,
    find_any_kind,
    find_in,
    is_complete,
    parse_store_rel,
    store_glob,
)
from mad_pipeline.store.transfer import Transfer, discard, pull_store, push_store

HEX64 = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------------- push
@dataclass(frozen=True)
class PushConfig:
    source: str  # a store directory, a local cache root (every complete store in it), or a key in --cache
    dest: str  # a cache root: directory or s3:// URL
    cache: Path | None = None


def push(cfg: PushConfig, log: Callable[[str], None] | None = None) -> list[Transfer]:
    return [push_store(p, cfg.dest, log=log) for p in _push_sources(cfg)]


def _push_sources(cfg: PushConfig) -> list[Path]:
    src = Path(cfg.source).expanduser()
    if (src / "zarr.json").is_file():
        return [src]
    as_cache = Cache(src)
    if as_cache.stores_dir.is_dir():  # a whole cache root
        found = [p for p in as_cache.stores() if is_complete(p)]
        if not found:
            raise StoreError(f"{src}: no published stores in this cache")
        return found
    if src.exists():
        raise StoreError(f"{src}: neither a store (no zarr.json) nor a cache root (no stores/)")
    if re.fullmatch(r"[0-9a-f]{6,64}", cfg.source):  # a key (or unique prefix) in the local cache
        cache = Cache.at(cfg.cache, shared=())
        hits = [p for p in cache.stores(prefix=cfg.source) if is_complete(p)]
        if len(hits) == 1:
            return hits
        if len(hits) > 1:
            raise StoreError(f"key prefix {cfg.source} is ambiguous in {cache.root} ({len(hits)} stores)")
        raise StoreError(f"no published store with key {cfg.source} in {cache.root}")
    raise StoreError(f"{src}: no such store, cache root or key")


# ---------------------------------------------------------------------- pull
@dataclass(frozen=True)
class PullConfig:
    key: str  # full key (a unique prefix works for listable sources: directories and s3://)
    sources: tuple[str, ...] = ()  # cache roots to look in (default: MAD_SHARED_CACHE)
    cache: Path | None = None
    kind: str | None = None
    verify: bool | None = None  # verify the copy before publishing it (None: MAD_PULL_VERIFY, on by default)


def pull(cfg: PullConfig, log: Callable[[str], None] | None = None) -> Transfer:
    cache = Cache.at(cfg.cache, shared=())
    sources = list(cfg.sources) or env_shared()
    if not sources:
        raise StoreError("no location to pull from: pass --from URL or set MAD_SHARED_CACHE")
    kinds = (cfg.kind,) if cfg.kind else KINDS
    if cfg.kind and cfg.kind not in KINDS:
        raise StoreError(f"--kind {cfg.kind}: expected one of {', '.join(KINDS)}")
    if not re.fullmatch(r"[0-9a-f]{6,64}", cfg.key):
        raise StoreError(f"{cfg.key!r} is not a store key (sha256 hex, or a unique prefix of one)")
    errors = []
    for src in sources:
        try:
            found = _find(src, cfg.key, kinds)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - try the next location
            errors.append(f"{src}: {type(e).__name__}: {e}")
            continue
        if found is not None:
            kind, key, loc = found
            if log and cache.lookup(kind, key) is None:
                log(f"pulling {kind} store {key[:12]} from {src}")
            return pull_store(cache, kind, key, loc, verify=cfg.verify)
    more = f" ({'; '.join(errors)})" if errors else ""
    raise StoreError(f"no complete store with key {cfg.key} in {', '.join(sources)}{more}")


def _find(src: str, key: str, kinds) -> tuple[str, str, Location] | None:
    if len(key) == 64:
        hit = find_any_kind(src, key, kinds)
        return (hit[0], key, hit[1]) if hit else None
    loc = Location(src)
    if not loc.writable:
        raise StoreError(f"{src}: a key prefix cannot be resolved over {loc.protocol}:// (no listing); "
                         f"give the full key")
    names = [n for k in kinds for n in loc.glob(store_glob(k, key))]
    keys = {parsed for n in names if (parsed := parse_store_rel(n)) is not None}
    if len(keys) > 1:
        raise StoreError(f"key prefix {key} is ambiguous in {src} ({len(keys)} stores)")
    if not keys:
        return None
    kind, full = keys.pop()
    hit = find_in(src, kind, full)
    return (kind, full, hit) if hit else None


# ---------------------------------------------------------------------- gc
@dataclass(frozen=True)
class GcConfig:
    cache: Path | None = None
    older_than_days: float | None = None  # also remove complete stores not looked up for this long
    dry_run: bool = False


@dataclass
class GcResult:
    root: str
    removed: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)  # candidates left alone (locked by a live process)
    bytes_freed: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def gc(cfg: GcConfig) -> GcResult:
    """Remove from the LOCAL cache (never a shared one):

    - ``partial/*/*``: unfinished builds, pulls and pushes, unless a live process holds the key's lock
      (an interrupted build's resumable progress goes with it);
    - entries of ``stores/`` without a manifest, and leftovers of earlier removals (``.*.trash-*``);
    - with ``older_than_days``: complete stores whose key no lookup has served for that long, unless locked;
    - ``derived/`` (training's text views, rebuilt whenever missing): builds killed before their rename and entries
      without a manifest, unless locked; with ``older_than_days``, views no run has opened for that long.

    Lock files are kept (removing one could let two builders hold "the" lock on different files).
    """
    cache = Cache.at(cfg.cache, shared=())
    res = GcResult(str(cache.root), dry_run=cfg.dry_run)
    now = time.time()
    for p in cache.partial_entries():
        _consider(cache, p, _key_of(p.name), "incomplete (partial build, pull or push)", res, cfg.dry_run)
    for p in cache.store_entries():
        name = p.name
        if name.startswith(".") and ".trash-" in name:
            _remove(p, "leftover of an earlier removal", None, res, cfg.dry_run)
            continue
        _incomplete_or_unused(cache, p, _key_of(name), cfg, now, res, "")
    for p in cache.derived_entries():
        if p.name.endswith(".tmp"):
            _consider(cache, p, _key_of(p.name), "unfinished derived store (its build was killed)", res, cfg.dry_run)
        else:
            _incomplete_or_unused(cache, p, _key_of(p.name), cfg, now, res, "derived store, rebuilt when needed: ")
    return res


def _incomplete_or_unused(cache: Cache, p: Path, key: str | None, cfg: GcConfig, now: float, res: GcResult,
                          what: str) -> None:
    """A store entry goes when it has no manifest, and with ``older_than_days`` when no lookup (or run) has used
    its key for that long; ``what`` leads the reason."""
    if not is_complete(p, key):
        _consider(cache, p, key, f"{what}incomplete (no manifest)", res, cfg.dry_run)
    elif cfg.older_than_days is not None and key is not None:
        age = (now - cache.last_used(key, p)) / 86400
        if age > cfg.older_than_days:
            _consider(cache, p, key, f"{what}not used for {age:.1f} days", res, cfg.dry_run)


def _key_of(name: str) -> str | None:
    m = HEX64.match(name.lstrip("."))
    return m.group(0) if m else None


def _consider(cache: Cache, p: Path, key: str | None, why: str, res: GcResult, dry_run: bool) -> None:
    if key is None:
        _remove(p, why, None, res, dry_run)
        return
    with cache.try_lock(key) as got:
        if not got:
            res.kept.append({"path": str(p), "key": key, "reason": "locked by a live process"})
            return
        _remove(p, why, key, res, dry_run)


def _remove(p: Path, why: str, key: str | None, res: GcResult, dry_run: bool) -> None:
    size = _size(p)
    res.removed.append({"path": str(p), "key": key, "reason": why, "bytes": size})
    res.bytes_freed += size
    if dry_run:
        return
    if p.is_dir():
        discard(p)
    else:
        p.unlink(missing_ok=True)
    if p.exists():  # discard renames aside first; a failure there leaves it in place
        shutil.rmtree(p, ignore_errors=True)


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    total = 0
    for f in p.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:
            pass
    return total
