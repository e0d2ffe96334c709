"""Open a published feature store. Plain zarr underneath: ``zarr.open_group(path)`` works without this module."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from .location import Location, is_complete


class FeatureStore:
    """A read-only view of one store: its manifest and arrays; rows looked up by content hash."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        loc = Location(self.path)
        if loc.local and not is_complete(loc):
            if not (Path(loc.url) / "zarr.json").exists():
                raise StoreError(f"{self.path}: not a zarr store")
            raise StoreError(f"{self.path}: incomplete store (no manifest); it was never published")
        try:
            if loc.local:
                self.group = zarr.open_group(loc.url, mode="r", use_consolidated=True)
            else:  # a shared location: read-only through fsspec, known keys only
                self.group = zarr.open_group(store=loc.zarr_store(), mode="r", use_consolidated=True)
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"{self.path}: cannot open ({e})") from None
        self.manifest: dict[str, Any] = dict(self.group.attrs.get("mad", {}))
        if not self.manifest:
            raise StoreError(f"{self.path}: incomplete store (no manifest)")
        self.kind: str = self.manifest.get("kind", "?")
        self._hashes: np.ndarray | None = None

    def __getitem__(self, name: str):
        return self.group[name]

    def array_names(self) -> list[str]:
        return sorted(name for name, _ in self.group.arrays())

    @property
    def n_rows(self) -> int:
        return int(self.manifest.get("n_rows", 0))

    def hashes(self) -> np.ndarray:
        if self._hashes is None:
            col = "image_hash" if self.kind == "image" else "text_hash"
            self._hashes = np.asarray(self.group[col][:], dtype=object).astype(str)
        return self._hashes

    def rows_for(self, hashes) -> np.ndarray:
        """Row index of each content hash (rows are sorted by hash); -1 where absent."""
        table = self.hashes()
        q = np.asarray(list(hashes), dtype=str)
        idx = np.searchsorted(table, q)
        idx = np.clip(idx, 0, max(len(table) - 1, 0))
        found = (len(table) > 0) & (table[idx] == q) if len(table) else np.zeros(len(q), bool)
        return np.where(found, idx, -1).astype(np.int64)


def open_store(path: str | Path) -> FeatureStore:
    return FeatureStore(path)
