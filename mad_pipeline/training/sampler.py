"""The training data order: chunk-aware shuffling, in batches that resume exactly.

:class:`ChunkShuffleSampler` shuffles the order of store chunks, then rows inside a buffer of a few chunks. A fully
random permutation over a chunked store reads (and decompresses) one whole chunk per sample; this sampler keeps each
batch inside a small window of chunks, so an epoch decompresses every chunk about once, while every sample is still
visited exactly once per epoch and the order changes with the epoch. The order is a pure function of
``(seed, epoch)``, and :class:`ResumableBatches` starts an epoch at a saved batch position.

**Batches of similar text length** (``train.group_by_length``, as transformers' Trainer offers it): a batch is padded
to its longest text, so a batch mixing short and long texts (VCR's Q->A items beside its longer QA->R items) computes
mostly padding. With ``group`` > 0 each run of ``group`` batches of the shuffled order is sorted by the samples' text
length and cut into batches again, and those batches are shuffled among themselves: each batch holds texts of similar
length, every sample is still visited once per epoch, the order stays near the same chunks, and it is still a pure
function of ``(seed, epoch)``.
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
    """Batches of an epoch's chunk-aware order, starting at batch ``position`` (set before each ``iter``).
    ``lengths`` and ``group`` > 0: batches of similar length, from runs of ``group`` batches (module docstring)."""

    def __init__(self, sampler: ChunkShuffleSampler, batch_size: int, lengths: np.ndarray | None = None,
                 group: int = 0):
        self.sampler = sampler
        self.batch_size = batch_size
        self.position = 0
        self.group = int(group) if lengths is not None else 0
        self.lengths = None if lengths is None else np.asarray(lengths, dtype=np.int64)
        if self.lengths is not None and len(self.lengths) != len(sampler):
            raise ValueError(f"{len(self.lengths)} lengths for {len(sampler)} samples")

    def set(self, epoch: int, position: int) -> None:
        self.sampler.set_epoch(epoch)
        self.position = position

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.order()
        if self.group:
            order = self._grouped(order)
        for b in range(self.position, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()

    def _grouped(self, order: np.ndarray) -> np.ndarray:
        """``order`` with each run of ``group`` batches sorted by length (longest first, ties in shuffled order),
        then its whole batches shuffled; a short last batch stays last (only the epoch's last batch is short)."""
        rng = np.random.default_rng([self.sampler.seed, self.sampler.epoch, 1])
        b, span = self.batch_size, self.batch_size * self.group
        out = []
        for start in range(0, len(order), span):
            run = order[start : start + span]
            run = run[np.argsort(-self.lengths[run], kind="stable")]
            full = len(run) // b
            pick = np.concatenate([rng.permutation(full), np.arange(full, -(-len(run) // b))])
            out += [run[i * b : (i + 1) * b] for i in pick.tolist()]
        return np.concatenate(out) if out else order


def text_lengths(texts: list[list[str]], tokenize, chunk: int = 4096) -> np.ndarray:
    """Each sample's longest text in tokens (``texts[i]``: sample i's texts; ``tokenize``: texts -> a
    :class:`~mad_pipeline.students.base.TextInput`), tokenised ``chunk`` texts at a time."""
    flat = [t for ts in texts for t in ts]
    counts = np.zeros(len(flat), np.int64)
    for start in range(0, len(flat), chunk):
        counts[start : start + chunk] = tokenize(flat[start : start + chunk]).attention_mask.sum(-1).numpy()
    ends = np.cumsum([len(ts) for ts in texts])
    return np.array([counts[e - len(ts) : e].max(initial=0) for e, ts in zip(ends.tolist(), texts, strict=True)],
                    np.int64)


__all__ = ["ChunkShuffleSampler", "ResumableBatches", "text_lengths"]
