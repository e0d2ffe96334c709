"""Describe a published store: manifest fields and arrays. The store is named by a path, a URL, or a store key /
unique key prefix in the cache (:func:`mad_pipeline.cache.resolve_store`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import resolve_store
from mad_pipeline.store.reader import open_store


@dataclass(frozen=True)
class StoreInfoConfig:
    path: str  # a store directory, a URL, or a store key (a unique prefix works) in ``cache``
    cache: Path | str | None = None  # for a key: the local cache (else MAD_CACHE, else the user cache dir)


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
