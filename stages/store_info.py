"""Describe a published store: manifest fields and arrays."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mad_pipeline.store.reader import open_store


@dataclass(frozen=True)
class StoreInfoConfig:
    path: str


def run(cfg: StoreInfoConfig) -> dict:
    st = open_store(cfg.path)
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
