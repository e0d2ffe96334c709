"""Verify a store: every chunk's checksum, and the manifest against the arrays (see mad_pipeline.store.verify)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mad_pipeline.cache import resolve_store
from mad_pipeline.store.verify import VerifyReport, verify_store


@dataclass(frozen=True)
class StoreVerifyConfig:
    path: str  # a store directory or URL, or a store key (a unique prefix works) in ``cache``
    cache: Path | str | None = None  # for a key: the local cache (else MAD_CACHE, else the user cache dir)


def run(cfg: StoreVerifyConfig, progress=None) -> VerifyReport:
    return verify_store(resolve_store(cfg.path, cfg.cache), progress=progress)
