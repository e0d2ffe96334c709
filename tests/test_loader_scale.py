"""The loader's read cost per sample at VQA v2 geometry: the text side costs no more than the image side, and
neither grows with the data.

Stores are built by ``bench/scale.py`` (the real writer and store-building path, synthetic ViT-B/16 token values at
VQA v2's questions-per-image) at two sizes; the real ``DistillDataset`` reads them in the real chunk-aware order, and
its own counters (``ChunkCache`` / ``ReadCounter``) say what that cost: reading the text store itself (one row per
chunk) and reading the text view training uses by default (the rows in training order, one chunk per image chunk).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import bench_module

REPO = Path(__file__).resolve().parent.parent
SIZES = {0.0005: 222, 0.0015: 666}  # fraction of VQA v2: questions (over 41 and 124 images)


@pytest.fixture(scope="module")
def scale():
    return bench_module("scale")


@pytest.fixture(scope="module")
def counts(scale, tmp_path_factory):
    """Per-sample counts over one epoch, per (fraction, text layout): ``rows`` (the text store) and ``view``."""
    cache = tmp_path_factory.mktemp("scale")
    out = {}
    for fraction in SIZES:
        stores = scale.build_stores(cache, fraction, "vit-b16", ["rows"], 0, log=lambda m: None)
        for layout in ("rows", "view"):
            out[fraction, layout] = scale.count(cache, fraction, stores, layout, batch_size=32,
                                                max_batches=0)["per_sample"]
    return out


def _flat(small: dict, large: dict) -> None:
    for side in ("image", "text"):  # flat as the store triples
        for what in ("chunks", "bytes_read", "bytes_decoded"):
            assert large[side][what] <= 1.15 * small[side][what], (side, what, small[side], large[side])


def test_text_store_reads_one_row_per_array_and_stay_flat(counts):
    for fraction, n in SIZES.items():
        c = counts[fraction, "rows"]
        assert c["image"]["samples"] == c["text"]["samples"] == n
        # storage reads: a text row (one row per chunk) is fetched alone, an image chunk serves ~5 questions x 4 rows
        assert c["text"]["bytes_read"] <= c["image"]["bytes_read"], c
        assert c["text"]["chunks"] == 4.0  # tokens, pooled, char_span, length: one row each, decoded once
        assert c["text"]["requests"] <= 4.1  # one byte range per row and array (each shard's index read once)
        assert c["text"]["bytes_decoded"] < 2 * 77 * 512 * 2  # one padded token row and its small columns
    _flat(*(counts[f, "rows"] for f in SIZES))


def test_text_view_decodes_no_more_chunks_than_the_image_side_and_stays_flat(counts):
    for fraction, n in SIZES.items():
        c, before = counts[fraction, "view"], counts[fraction, "rows"]
        assert c["image"] == before["image"]  # the image side reads what it read
        assert c["text"]["samples"] == n
        assert c["text"]["chunks"] <= c["image"]["chunks"], c  # one view chunk per image chunk, all four arrays
        assert c["text"]["requests"] <= c["image"]["requests"], c
        assert c["text"]["bytes_read"] <= c["image"]["bytes_read"], c
        assert c["text"]["bytes_decoded"] < 1.5 * before["text"]["bytes_decoded"]  # the rows, and some padding
    _flat(*(counts[f, "view"] for f in SIZES))
