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
