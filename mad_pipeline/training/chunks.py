"""Row reads from chunked Zarr arrays with a small per-process cache of decoded chunks.

Opened lazily inside each DataLoader worker (zarr handles are not shared across processes); with chunk-aware
shuffling consecutive batches hit the same chunks, so each chunk is decompressed about once per epoch.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class ChunkCache:
    """Decoded chunks, one LRU of ``max_chunks`` per array: the image-token chunks a shuffle window walks through
    must not evict the text-token chunks or the one-chunk small arrays (pooled, crop box, spans, zero-shot logits),
    which every batch needs again."""

    def __init__(self, max_chunks: int = 32):
        self.max_chunks = max_chunks
        self._cache: dict[str, OrderedDict[int, np.ndarray]] = {}
        self.reads = 0  # chunks decoded (for benchmarks)

    def rows(self, array, rows: np.ndarray) -> np.ndarray:
        """``array[rows]`` (rows along the first axis), decoding each needed chunk once."""
        rows = np.asarray(rows, dtype=np.int64)
        cr = int(array.chunks[0])
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        for c in np.unique(rows // cr):
            block = self._chunk(array, int(c), cr)
            sel = (rows // cr) == c
            out[sel] = block[rows[sel] - c * cr]
        return out

    def _chunk(self, array, c: int, cr: int) -> np.ndarray:
        # keyed by path, not id(array): a reopened handle can reuse a dead one's id
        lru = self._cache.setdefault(str(array.store_path), OrderedDict())
        hit = lru.get(c)
        if hit is not None:
            lru.move_to_end(c)
            return hit
        block = array[c * cr : min((c + 1) * cr, array.shape[0])]
        self.reads += 1
        lru[c] = block
        if len(lru) > self.max_chunks:
            lru.popitem(last=False)
        return block
