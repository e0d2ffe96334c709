"""Row reads from chunked Zarr arrays with a small per-process cache of decoded chunks.

Opened lazily inside each DataLoader worker (zarr handles are not shared across processes); with chunk-aware
shuffling consecutive batches hit the same chunks, so each chunk is decompressed about once per epoch.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np


class ChunkCache:
    def __init__(self, max_chunks: int = 32):
        self.max_chunks = max_chunks
        self._cache: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
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
        key = (str(array.store_path), c)  # not id(array): a reopened handle can reuse a dead one's id
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        block = array[c * cr : min((c + 1) * cr, array.shape[0])]
        self.reads += 1
        self._cache[key] = block
        if len(self._cache) > self.max_chunks:
            self._cache.popitem(last=False)
        return block
