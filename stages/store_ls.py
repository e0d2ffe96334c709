"""List the published stores of a cache."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import Cache


@dataclass(frozen=True)
class StoreLsConfig:
    cache: Path | None = None
    kind: str | None = None


def run(cfg: StoreLsConfig) -> list[dict]:
    cache = Cache.at(cfg.cache)
    out = []
    for p in sorted((cache.root / "stores").glob(f"{cfg.kind or '*'}/*.zarr")):
        try:
            man = json.loads((p / "zarr.json").read_text()).get("attributes", {}).get("mad")
        except (OSError, json.JSONDecodeError):
            man = None
        if not man:
            continue
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        out.append({"kind": man.get("kind"), "key": man.get("cache_key"), "rows": man.get("n_rows"),
                    "teacher": (man.get("teacher") or {}).get("name", "-"), "created": man.get("created"),
                    "bytes": size, "path": str(p)})
    return sorted(out, key=lambda r: (r["created"] or "", r["kind"] or ""))


def cache_root(cache: Path | str | None) -> Path:
    return Cache.at(cache).root
