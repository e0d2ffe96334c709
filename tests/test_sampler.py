"""Chunk-aware shuffling visits every sample once per epoch and keeps batches inside few chunks."""

import numpy as np
import zarr

from mad_pipeline.training.chunks import ChunkCache
from mad_pipeline.training.sampler import ChunkShuffleSampler


def test_every_sample_once_and_order_changes_with_epoch():
    rows = np.array([5, 5, 0, 17, 3, 9, 9, 30, -1, 12] * 7)
    s = ChunkShuffleSampler(rows, chunk_rows=4, buffer_chunks=2, seed=1)
    a = list(s)
    assert sorted(a) == list(range(len(rows)))
    assert a == list(ChunkShuffleSampler(rows, chunk_rows=4, buffer_chunks=2, seed=1))  # deterministic
    s.set_epoch(1)
    b = list(s)
    assert sorted(b) == sorted(a) and a != b


def test_chunk_aware_order_reads_far_fewer_chunks_than_random(tmp_path):
    n, cr = 2000, 50
    arr = zarr.create_array(str(tmp_path / "a.zarr"), shape=(n, 8), chunks=(cr, 8), dtype="float32")
    arr[:] = np.arange(n * 8, dtype=np.float32).reshape(n, 8)
    rows = np.arange(n)

    def chunk_reads(order, batch=32):
        cache = ChunkCache(max_chunks=16)  # two shuffle windows
        for i in range(0, n, batch):
            got = cache.rows(arr, rows[order[i : i + batch]])
            np.testing.assert_array_equal(got[:, 0], rows[order[i : i + batch]] * 8)
        return cache.reads

    aware = chunk_reads(ChunkShuffleSampler(rows, cr, buffer_chunks=8, seed=0).order())
    naive = chunk_reads(np.random.default_rng(0).permutation(n))
    assert aware == n // cr  # each chunk decoded once per epoch
    assert naive > 10 * aware


def _padded(batches, lengths):
    return float(np.mean([lengths[b].max() for b in batches]))


def test_batches_of_similar_length_visit_every_sample_once_and_resume_exactly():
    from mad_pipeline.training.sampler import ResumableBatches

    rng = np.random.default_rng(0)
    n, b = 1000, 32  # VCR-like: half the items short (Q->A), half long (QA->R), mixed in the store's order
    rows = np.arange(n) // 2
    lengths = np.where(np.arange(n) % 2, rng.integers(22, 40, n), rng.integers(12, 24, n))
    plain = ResumableBatches(ChunkShuffleSampler(rows, 16, buffer_chunks=8, seed=3), b)
    grouped = ResumableBatches(ChunkShuffleSampler(rows, 16, buffer_chunks=8, seed=3), b, lengths, group=8)
    for epoch in (0, 1):
        plain.set(epoch, 0)
        grouped.set(epoch, 0)
        mixed, same = list(plain), list(grouped)
        assert sorted(i for x in same for i in x) == list(range(n))  # every sample once
        assert [len(x) for x in same] == [len(x) for x in mixed]  # full batches; only the last one short
        assert _padded(same, lengths) < 0.8 * _padded(mixed, lengths)  # far less padding
        assert same != [x for x in mixed]
        grouped.set(epoch, 11)  # a resumed epoch continues the same order at its saved batch
        assert list(grouped) == same[11:]
        again = ResumableBatches(ChunkShuffleSampler(rows, 16, buffer_chunks=8, seed=3), b, lengths, group=8)
        again.set(epoch, 0)
        assert list(again) == same  # a pure function of (seed, epoch)
    # the batches are shuffled among themselves: not a run of long batches, then a run of short ones
    grouped.set(0, 0)
    firsts = [lengths[x].max() for x in list(grouped)[:8]]
    assert firsts != sorted(firsts, reverse=True)
    # group 0 (the default) is the plain order, lengths or not
    off = ResumableBatches(ChunkShuffleSampler(rows, 16, buffer_chunks=8, seed=3), b, lengths, group=0)
    plain.set(0, 0)
    assert list(off) == list(plain)


def test_text_lengths_are_each_samples_longest_text_in_tokens():
    import torch

    from mad_pipeline.students.base import TextInput
    from mad_pipeline.training.sampler import text_lengths

    def tokenize(texts):  # one token per word, plus CLS and SEP, padded to the longest
        n = max(len(t.split()) for t in texts) + 2
        mask = torch.tensor([[1] * (len(t.split()) + 2) + [0] * (n - len(t.split()) - 2) for t in texts])
        return TextInput(torch.zeros_like(mask), mask, torch.zeros(*mask.shape, 2, dtype=torch.long))

    texts = [["a b", "a b c d"], ["x"], ["p q r", "s", "t u"]]
    assert text_lengths(texts, tokenize).tolist() == [6, 3, 5]
    assert text_lengths(texts, tokenize, chunk=2).tolist() == [6, 3, 5]
