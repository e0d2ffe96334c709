"""Row reads from chunked Zarr arrays with a small per-process cache of decoded chunks, and counters of what they cost.

Opened lazily inside each DataLoader worker (zarr handles are not shared across processes); with chunk-aware
shuffling consecutive batches hit the same chunks, so each chunk is decompressed about once per epoch. The chunks of
a batch that are not cached are read with one zarr slice per run of consecutive chunks (an integer-array selection
over the same rows costs about ten times as much in zarr).

Counters, per *side* (``image``, ``text``, ``zeroshot``: whatever the caller names): chunks decoded and bytes they
decode to (:class:`ChunkCache`), requests and bytes fetched from storage (:class:`ReadCounter`, a zarr store wrapper
that also keeps the shard indexes it has read, so a row read from a sharded array costs one byte-range request, not
two). A benchmark or a test divides them by the samples read (:meth:`ChunkCache.per_sample`).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import asdict, dataclass

import numpy as np
from zarr.abc.store import SuffixByteRequest
from zarr.storage import WrapperStore

from ..errors import StoreError

SHARD_INDEX_CACHE_BYTES = 16 << 20  # shard indexes kept per store (a 400-row shard's index is 6.4 KB)


@dataclass
class SideCounts:
    """What reading one side cost so far, in this process."""

    samples: int = 0  # samples whose rows were asked for
    chunks: int = 0  # (inner) chunks decoded
    bytes_decoded: int = 0  # bytes those chunks decode to
    requests: int = 0  # reads sent to storage (whole files or byte ranges), shard indexes included
    bytes_read: int = 0  # bytes those reads returned

    def per_sample(self) -> dict[str, float]:
        n = max(self.samples, 1)
        return {"samples": self.samples, "chunks": self.chunks / n, "bytes_decoded": self.bytes_decoded / n,
                "requests": self.requests / n, "bytes_read": self.bytes_read / n}


class ReadCounter(WrapperStore):
    """A read-only zarr store wrapper that counts requests and bytes, and keeps the shard indexes it has read (a
    published store never changes, so a shard's index, read once, holds for as long as the handle lives)."""

    def __init__(self, store, counts: SideCounts):
        super().__init__(store)
        self.counts = counts
        self._index: OrderedDict[tuple[str, int], object] = OrderedDict()
        self._index_bytes = 0

    def __str__(self) -> str:  # stable across reopenings, distinct from the unwrapped store's
        return f"counted+{self._store}"

    def __repr__(self) -> str:
        return f"ReadCounter({self._store!r})"

    async def get(self, key, prototype, byte_range=None):
        index = isinstance(byte_range, SuffixByteRequest)
        if index:
            hit = self._index.get((key, byte_range.suffix))
            if hit is not None:
                self._index.move_to_end((key, byte_range.suffix))
                return hit
        out = await self._store.get(key, prototype, byte_range)
        self.counts.requests += 1
        if out is not None:
            self.counts.bytes_read += len(out)
            if index:
                self._keep_index((key, byte_range.suffix), out)
        return out

    def _keep_index(self, where: tuple[str, int], buf) -> None:
        self._index[where] = buf
        self._index_bytes += len(buf)
        while self._index_bytes > SHARD_INDEX_CACHE_BYTES and len(self._index) > 1:
            _, old = self._index.popitem(last=False)
            self._index_bytes -= len(old)


def count_reads(store, counts: SideCounts):
    """Make a :class:`~mad_pipeline.store.reader.FeatureStore` read through a :class:`ReadCounter` (its group is
    reopened over the wrapped store; its checks and array wrappers stay as they are). Returns the store."""
    import zarr

    store.group = zarr.open_group(store=ReadCounter(store.group.store, counts), mode="r", use_consolidated=True)
    return store


class ChunkCache:
    """Decoded chunks, one LRU per array: the image-token chunks a shuffle window walks through must not evict the
    text-token chunks or the one-chunk small arrays (pooled, crop box, spans, zero-shot logits), which every batch
    needs again. An LRU holds ``max_chunks`` chunks, or more small ones up to ``max_bytes`` (0: a count only), so an
    array stored one row per chunk keeps as many rows as a few big chunks would hold."""

    def __init__(self, max_chunks: int = 32, max_bytes: int = 0):
        self.max_chunks = max_chunks
        self.max_bytes = max_bytes
        self._cache: dict[str, OrderedDict[int, np.ndarray]] = {}
        self._held: dict[str, int] = {}
        self.counts: dict[str, SideCounts] = {}

    @property
    def reads(self) -> int:
        """Chunks decoded, every side together."""
        return sum(c.chunks for c in self.counts.values())

    def side(self, name: str) -> SideCounts:
        return self.counts.setdefault(name, SideCounts())

    def per_sample(self) -> dict[str, dict[str, float]]:
        """Each side's counts divided by its samples (see :class:`SideCounts`)."""
        return {name: c.per_sample() for name, c in sorted(self.counts.items())}

    def totals(self) -> dict[str, dict[str, int]]:
        return {name: asdict(c) for name, c in sorted(self.counts.items())}

    def rows(self, array, rows: np.ndarray, side: str = "other") -> np.ndarray:
        """``array[rows]`` (rows along the first axis), decoding each needed chunk once."""
        rows = np.asarray(rows, dtype=np.int64)
        cr = int(array.chunks[0])
        key = str(array.store_path)  # keyed by path, not id(array): a reopened handle can reuse a dead one's id
        lru = self._cache.setdefault(key, OrderedDict())
        out = np.empty((len(rows), *array.shape[1:]), dtype=array.dtype)
        needed = np.unique(rows // cr).tolist()
        missing = [c for c in needed if c not in lru]
        if missing:
            self._fetch(array, missing, cr, lru, key, self.side(side))
        for c in needed:
            block = lru[c]
            lru.move_to_end(c)
            sel = (rows // cr) == c
            out[sel] = block[rows[sel] - c * cr]
        self._evict(lru, key, keep=len(needed))
        return out

    def _fetch(self, array, chunks: list[int], cr: int, lru: OrderedDict, key: str, counts: SideCounts) -> None:
        """Read and decode ``chunks`` (sorted), one zarr slice per run of consecutive chunks: zarr's integer-array
        (orthogonal) selection over several chunks costs about ten times the same rows read as slices."""
        n = int(array.shape[0])
        runs: list[list[int]] = []
        for c in chunks:
            if runs and c == runs[-1][-1] + 1:
                runs[-1].append(c)
            else:
                runs.append([c])
        for run in runs:
            lo, hi = run[0] * cr, min((run[-1] + 1) * cr, n)
            try:
                data = array[lo:hi]
            except StoreError:  # name the chunk file that fails: read the run's chunks one by one
                for c in run:
                    array[c * cr : min((c + 1) * cr, n)]
                raise
            for c in run:
                a, b = c * cr - lo, min((c + 1) * cr, n) - lo
                block = data[a:b] if len(run) == 1 else data[a:b].copy()  # no shared base between cached chunks
                lru[c] = block
                self._held[key] = self._held.get(key, 0) + block.nbytes
                counts.chunks += 1
                counts.bytes_decoded += block.nbytes

    def _evict(self, lru: OrderedDict, key: str, keep: int) -> None:
        """Drop the least recently used chunks beyond the budget (never the ``keep`` chunks this call used)."""
        while len(lru) > max(self.max_chunks, keep) and (not self.max_bytes or self._held[key] > self.max_bytes):
            _, block = lru.popitem(last=False)
            self._held[key] -= block.nbytes
