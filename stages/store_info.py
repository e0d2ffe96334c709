"""Describe a published store: manifest fields and arrays. Also: which store a command-line reference names (a
path, a URL, or a store key / unique key prefix in the local cache)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import Cache
from mad_pipeline.errors import StoreError
from mad_pipeline.store.location import is_url
from mad_pipeline.store.reader import open_store

_KEY_PREFIX = re.compile(r"[0-9a-f]{6,64}")


@dataclass(frozen=True)
class StoreInfoConfig:
    path: str  # a store directory, a URL, or a store key (a unique prefix works) in ``cache``
    cache: Path | str | None = None  # for a key: the local cache (else MAD_CACHE, else the user cache dir)


def resolve_store(ref: str | Path, cache: Path | str | None = None) -> str:
    """The store ``ref`` names: a URL as is; a local path (``~`` expanded) that exists; else a store key or a unique
    key prefix (6 hex characters at least) of a store of any kind in the local cache ``cache``. An unknown or
    ambiguous key is one error line."""
    ref = str(ref)
    if is_url(ref):
        return ref
    path = Path(ref).expanduser()
    if path.exists() or not _KEY_PREFIX.fullmatch(ref):
        return str(path)  # a missing path is reported by whoever opens it, naming it
    root = Cache.at(cache, shared=())
    hits = root.stores(prefix=ref)
    if len(hits) == 1:
        return str(hits[0])
    if not hits:
        raise StoreError(f"{ref}: no such path, and no store with that key (or key prefix) in the cache {root.root} "
                         f"(--cache / MAD_CACHE)")
    names = ", ".join(f"{p.parent.name}/{p.name[:16]}" for p in hits[:4]) + (", ..." if len(hits) > 4 else "")
    raise StoreError(f"key prefix {ref} is ambiguous in the cache {root.root}: {len(hits)} stores ({names}); "
                     f"give more characters")


def run(cfg: StoreInfoConfig) -> dict:
    st = open_store(resolve_store(cfg.path, cfg.cache))
    arrays = []
    for name in st.array_names():
        a = st[name]
        arrays.append({"name": name, "shape": list(a.shape), "dtype": str(a.dtype), "chunks": list(a.chunks),
                       "shards": list(a.shards) if a.shards else None,
                       "dims": list(a.metadata.dimension_names or ()), "nbytes_stored": int(a.nbytes_stored())})
    rows = []
    for k, v in st.manifest.items():
        if k in ("errors", "skipped"):
            rows.append((k, f"{len(v)} recorded"))
        elif isinstance(v, dict) and k != "library_versions":
            rows.extend((f"{k}.{sub}", _fmt(sv)) for sub, sv in v.items())
        else:
            rows.append((k, _fmt(v)))
    return {"path": st.path, "kind": st.kind, "manifest": st.manifest, "manifest_rows": rows, "arrays": arrays}


def _fmt(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)
