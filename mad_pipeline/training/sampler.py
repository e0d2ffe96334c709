"""The training data order: chunk-aware shuffling, in batches that resume exactly.

:class:`ChunkShuffleSampler` shuffles the order of store chunks, then rows inside a buffer of a few chunks. A fully
random permutation over a chunked store reads (and decompresses) one whole chunk per sample; this sampler keeps each
batch inside a small window of chunks, so an epoch decompresses every chunk about once, while every sample is still
visited exactly once per epoch and the order changes with the epoch. The order is a pure function of
``(seed, epoch)``, and :class:`ResumableBatches` starts an epoch at a saved batch position.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ChunkShuffleSampler(Sampler[int]):
    def __init__(self, rows: np.ndarray, chunk_rows: int, buffer_chunks: int = 8, seed: int = 0):
        """``rows[i]`` is the store row that sample ``i`` reads most (its image row); -1 = no row."""
        self.rows = np.asarray(rows, dtype=np.int64)
        self.chunk_rows = max(1, int(chunk_rows))
        self.buffer_chunks = max(1, int(buffer_chunks))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        chunk = np.where(self.rows >= 0, self.rows // self.chunk_rows, -1)
        groups: dict[int, list[int]] = {}
        for i, c in enumerate(chunk.tolist()):
            groups.setdefault(c, []).append(i)
        keys = np.array(sorted(groups), dtype=np.int64)
        rng.shuffle(keys)
        out = []
        for start in range(0, len(keys), self.buffer_chunks):
            window = keys[start : start + self.buffer_chunks]
            buf = np.concatenate([np.asarray(groups[int(k)], dtype=np.int64) for k in window])
            rng.shuffle(buf)
            out.append(buf)
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order().tolist())


class ResumableBatches(Sampler[list[int]]):
    """Batches of an epoch's chunk-aware order, starting at batch ``position`` (set before each ``iter``)."""

    def __init__(self, sampler: ChunkShuffleSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.position = 0

    def set(self, epoch: int, position: int) -> None:
        self.sampler.set_epoch(epoch)
        self.position = position

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.order()
        for b in range(self.position, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


__all__ = ["ChunkShuffleSampler", "ResumableBatches"]
