"""List the published stores of a cache (a local cache root, or a listable shared one: a directory or s3://)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import Cache
from mad_pipeline.store.location import Location, is_url, manifest_of, store_glob


@dataclass(frozen=True)
class StoreLsConfig:
    cache: Path | str | None = None
    kind: str | None = None


def run(cfg: StoreLsConfig) -> list[dict]:
    if cfg.cache is not None and is_url(str(cfg.cache)):
        return _remote(str(cfg.cache), cfg.kind)
    cache = Cache.at(cfg.cache)
    out = []
    for p in cache.stores(cfg.kind):
        man = manifest_of(p)
        if not man:
            continue
        size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        out.append(_row(man, size, str(p)))
    return sorted(out, key=lambda r: (r["created"] or "", r["kind"] or ""))


def _row(man: dict, size: int | None, path: str) -> dict:
    teacher = man.get("teacher") or {}
    return {"kind": man.get("kind"), "key": man.get("cache_key"), "rows": man.get("n_rows"),
            "teacher": teacher.get("name", "-"), "weights": weights_label(teacher),
            "dataset": dataset_label(man.get("dataset") or {}), "created": man.get("created"),
            "bytes": size, "path": path}


def weights_label(teacher: dict) -> str:
    """Which weights a store's teacher ran with, short enough for a table: ``sha256:<12 hex>`` of the tensor
    contents (a local or packaged checkpoint; the same bytes under any file name or alias), ``hub:<id>@<revision>``,
    ``random-init``; ``-`` for stores without a teacher (the dataset index)."""
    w = str(teacher.get("weights_sha256") or "")
    if not w:
        return "-"
    return f"sha256:{w[:12]}" if re.fullmatch(r"[0-9a-f]{64}", w) else w


def dataset_label(ds: dict) -> str:
    """Which data a store was built from: the reader (and split), then its manifest file(s) or data root."""
    if not ds:
        return "-"
    reader = str(ds.get("reader") or "?") + (f":{ds['split']}" if ds.get("split") else "")
    sources = [str(s) for s in ds.get("sources") or ()]
    where = sources[0] + (f" (+{len(sources) - 1})" if len(sources) > 1 else "") if sources else ds.get("root")
    return f"{reader} {where}" if where else reader


def _remote(url: str, kind: str | None) -> list[dict]:
    """A shared cache over fsspec (s3:// lists; http(s):// cannot and says so)."""
    root = Location(url)
    out = []
    for rel in root.glob(store_glob(kind)):
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
    if cache is not None and is_url(str(cache)):
        return str(cache)
    return Cache.at(cache).root
