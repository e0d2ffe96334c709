"""Verify a store: every chunk's checksum, and the manifest against the arrays (see mad_pipeline.store.verify)."""

from __future__ import annotations

from dataclasses import dataclass

from mad_pipeline.store.verify import VerifyReport, verify_store


@dataclass(frozen=True)
class StoreVerifyConfig:
    path: str  # a store directory or URL


def run(cfg: StoreVerifyConfig, progress=None) -> VerifyReport:
    return verify_store(cfg.path, progress=progress)
