"""The loader's read cost per sample at VQA v2 geometry: the text side costs no more storage reads than the image
side, and neither grows with the data.

Stores are built by ``bench/scale.py`` (the real writer and store-building path, synthetic ViT-B/16 token values at
VQA v2's questions-per-image) at two sizes; the real ``DistillDataset`` reads them in the real chunk-aware order, and
its own counters (``ChunkCache`` / ``ReadCounter``) say what that cost.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("bench_scale", REPO / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _counts(scale, cache: Path, fraction: float) -> dict:
    stores = scale.build_stores(cache, fraction, "vit-b16", ["rows"], 0, log=lambda m: None)
    return scale.count(cache, fraction, stores, "rows", batch_size=32, max_batches=0)["per_sample"]  # one epoch


def test_text_reads_cost_no_more_than_image_reads_and_stay_flat(scale, tmp_path):
    small = _counts(scale, tmp_path, 0.0005)  # 222 questions over 41 images
    large = _counts(scale, tmp_path, 0.0015)  # 666 questions over 124 images
    for c, n in ((small, 222), (large, 666)):
        assert c["image"]["samples"] == c["text"]["samples"] == n
        # storage reads: a text row (one row per chunk) is fetched alone, an image chunk serves ~5 questions x 4 rows
        assert c["text"]["bytes_read"] <= c["image"]["bytes_read"], c
        assert c["text"]["chunks"] == 4.0  # tokens, pooled, char_span, length: one row each, decoded once
        assert c["text"]["requests"] <= 4.1  # one byte range per row and array (each shard's index read once)
        assert c["text"]["bytes_decoded"] < 2 * 77 * 512 * 2  # one padded token row and its small columns
    for side in ("image", "text"):  # flat as the store triples
        for what in ("chunks", "bytes_read", "bytes_decoded"):
            assert large[side][what] <= 1.15 * small[side][what], (side, what, small[side], large[side])
