"""Open a published feature store. Plain zarr underneath: ``zarr.open_group(path)`` works without this module.

Opening checks what can be checked without reading chunks (see :mod:`.integrity`): array shapes against bounds and
against the manifest, and, for a local store, that every recorded chunk file is there with the recorded bytes. Reads
then fail with one clear :class:`~mad_pipeline.errors.StoreError` naming the chunk file when a chunk is missing (a
file deleted while in use, an HTTP 404) or cannot be decoded (a checksum mismatch), instead of reading fill values.

A store written with a storage option (the manifest's ``storage``, see :mod:`.storage`) reads as float values all the
same: ``store["tokens"]`` of an int8 store is dequantised on read (``tokens_scale`` is not listed among its arrays);
bitround tokens are plain float16; a keep-tokens store's ``tokens`` holds the kept tokens, ``token_index`` where they
sit (``storage`` tells).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..errors import StoreError
from .integrity import StoreArray, StrictStore, corrupt, store_problems
from .layout import hash_column
from .location import Location, is_complete
from .storage import TOKEN_SCALE, DequantizedTokens, Storage


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
            meta = loc.json("zarr.json") or {}
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open ({type(e).__name__}: {e})") from None
        self.manifest: dict[str, Any] = dict((meta.get("attributes") or {}).get("mad") or {})
        if not self.manifest:
            raise StoreError(f"{self.path}: incomplete store (no manifest)")
        problems = store_problems(loc.url, meta, local=loc.local)
        if problems:
            raise corrupt(self.path, problems)
        store = loc.zarr_store()
        if isinstance(self.manifest.get("chunks"), dict):  # format v2: every chunk exists; an absent one is an error
            store = StrictStore(store, self.manifest["chunks"], self.path)
        try:
            self.group = zarr.open_group(store=store, mode="r", use_consolidated=True)
        except Exception as e:  # noqa: BLE001
            raise StoreError(f"{self.path}: cannot open ({e})") from None
        self.kind: str = self.manifest.get("kind", "?")
        self.storage = Storage.from_manifest(self.manifest)  # Storage() (fp16, every token) unless recorded
        self._hashes: np.ndarray | None = None

    def __getitem__(self, name: str) -> StoreArray:
        arr = StoreArray(self.group[name], self.path, name)
        if name == "tokens" and self.storage.dtype == "int8":  # read as float16: q * scale
            return DequantizedTokens(arr, StoreArray(self.group[TOKEN_SCALE], self.path, TOKEN_SCALE))
        return arr

    def array_names(self) -> list[str]:
        """The arrays a reader sees (an int8 store's ``tokens_scale`` is folded into its ``tokens``)."""
        hidden = {TOKEN_SCALE} if self.storage.dtype == "int8" else set()
        return sorted(name for name, _ in self.group.arrays() if name not in hidden)

    @property
    def n_rows(self) -> int:
        return int(self.manifest.get("n_rows", 0))

    def hashes(self) -> np.ndarray:
        """The sorted hash column as numpy ``<U64`` (also for format v1 stores, which zarr returns as StringDType)."""
        if self._hashes is None:
            col = "image_hash" if self.kind == "image" else "text_hash"
            self._hashes = hash_column(self[col][:])
        return self._hashes

    def rows_for(self, hashes) -> np.ndarray:
        """Row index of each content hash (rows are sorted by hash); -1 where absent."""
        table = self.hashes()
        q = np.asarray(list(hashes), dtype=str)
        if not len(table):
            return np.full(len(q), -1, np.int64)
        idx = np.clip(np.searchsorted(table, q), 0, len(table) - 1)
        return np.where(table[idx] == q, idx, -1).astype(np.int64)


def open_store(path: str | Path) -> FeatureStore:
    return FeatureStore(path)
