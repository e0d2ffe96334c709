"""List the published stores of a cache (a local cache root, or a listable shared one: a directory or s3://)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import Cache


@dataclass(frozen=True)
class StoreLsConfig:
    cache: Path | str | None = None
    kind: str | None = None


def run(cfg: StoreLsConfig) -> list[dict]:
    from mad_pipeline.store.remote import is_url

    if cfg.cache is not None and is_url(str(cfg.cache)):
        return _remote(str(cfg.cache), cfg.kind)
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
        out.append(_row(man, size, str(p)))
    return sorted(out, key=lambda r: (r["created"] or "", r["kind"] or ""))


def _row(man: dict, size: int | None, path: str) -> dict:
    return {"kind": man.get("kind"), "key": man.get("cache_key"), "rows": man.get("n_rows"),
            "teacher": (man.get("teacher") or {}).get("name", "-"), "created": man.get("created"),
            "bytes": size, "path": path}


def _remote(url: str, kind: str | None) -> list[dict]:
    """A shared cache over fsspec (s3:// lists; http(s):// cannot and says so)."""
    from mad_pipeline.store.remote import Location, manifest_of

    root = Location(url)
    out = []
    for rel in root.glob(f"stores/{kind or '*'}/*.zarr"):
        store = root.child(rel)
        man = manifest_of(store)
        if not man:
            continue
        try:
            size = int(root.fs.du(store.path()))
        except Exception:  # noqa: BLE001 - the size is a nicety
            size = None
        out.append(_row(man, size, store.url))
    return sorted(out, key=lambda r: (r["created"] or "", r["kind"] or ""))


def cache_root(cache: Path | str | None) -> Path | str:
    from mad_pipeline.store.remote import is_url

    if cache is not None and is_url(str(cache)):
        return str(cache)
    return Cache.at(cache).root
