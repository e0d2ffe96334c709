"""A row's teacher features do not depend on the batch it was computed in: every forward of an extraction has the
same batch shape (a short last batch padded), so a store built from donor rows equals a fresh one bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_photos

from mad_pipeline.extraction.batch_shape import fixed_shape, pad_items, pad_rows
from mad_pipeline.extraction.device import FastPath
from mad_pipeline.extraction.runner import extract_images, extract_texts
from mad_pipeline.extraction.zeroshot import _text_embeddings
from mad_pipeline.store.layout import image_arrays, text_arrays
from mad_pipeline.store.writer import StoreWriter

TEXTS = [f"a {c} {s} {p} the {c2} {s2}" for c in ("red", "green", "blue") for s in ("circle", "square", "star")
         for p in ("left of", "above", "below") for c2, s2 in (("blue", "star"), ("red", "square"))]


@pytest.fixture(scope="module")
def teacher():
    """The shipped shapes-clip teacher (a real open_clip ViT), in fp32 so that no fp16 rounding hides a difference."""
    from mad_pipeline.teachers import load_teacher

    return load_teacher("shapes-clip", device="cpu", precision="fp32")


def test_pad_rows_and_items_repeat_the_last_one():
    x = torch.arange(6.0).reshape(3, 2)
    assert pad_rows(x, 5).tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(x, 3) is x and pad_rows(x, 2) is x
    assert pad_items(["a", "b"], 4) == ["a", "b", "b", "b"] and pad_items([], 4) == []


def test_an_image_row_is_the_same_alone_as_in_a_full_batch(teacher):
    """With the forward at a fixed shape, an image computed alone, in a short batch or at another place of a full
    batch gives the same fp32 tokens, pooled embedding and dense features, bit for bit. (Unpadded, a batch of 1-3
    rows takes other matrix kernels on CPU: the pooled embedding differs by up to 7e-7 on a 2-core AMD EPYC.)"""
    px = torch.rand(40, 3, teacher.image_size, teacher.image_size, generator=torch.Generator().manual_seed(0))
    forward = fixed_shape(lambda x: teacher.encode_image_tokens(x, dense=True), 32)
    full = forward(px[:32])
    for part, at in ((px[5:6], 5), (px[30:32], 30), (px[3:35], 3)):
        out = forward(part)
        assert [t.shape[0] for t in out] == [len(part)] * 3
        for a, b in zip(out, full, strict=True):
            n = min(len(part), 32 - at)
            assert torch.equal(a[:n], b[at : at + n])


def test_a_text_embedding_is_the_same_whatever_its_batch(teacher):
    """The zero-shot pass embeds its candidate texts in batches: a text's fp32 embedding is the same in a batch of
    one as among 31 others."""
    alone = _text_embeddings(teacher, TEXTS[7:8], 32, None)
    among = _text_embeddings(teacher, TEXTS[:32], 32, None)
    assert torch.equal(alone[0], among[7])
    assert _text_embeddings(teacher, TEXTS[:33], 32, None).shape == (33, teacher.embed_dim)


def test_every_extraction_forward_sees_a_full_batch(teacher, tmp_path, monkeypatch):
    """The real image and text passes of stage 1: each teacher forward gets exactly batch_size inputs, though the
    shards (of 4 rows) end in short batches, and each row written is the row computed alone."""
    seen = {"image": [], "text": []}
    encode_image, encode_text = teacher.encode_image_tokens, teacher.encode_text_tokens

    def image(x, dense=False):
        seen["image"].append(x.shape[0])
        return encode_image(x, dense=dense)

    def text(batch):
        seen["text"].append(batch.ids.shape[0])
        return encode_text(batch)

    monkeypatch.setattr(teacher, "encode_image_tokens", image)
    monkeypatch.setattr(teacher, "encode_text_tokens", text)
    paths = [str(tmp_path / "img" / r) for r in make_photos(tmp_path / "img", 7, size=48)]
    hashes = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]

    def images(rows: list[int], name: str) -> dict:
        w = StoreWriter(tmp_path / f"{name}.partial", "image", len(rows), image_arrays(
            teacher.num_tokens, teacher.width, teacher.embed_dim), key=name, shard_rows=4)
        extract_images(teacher, w, [hashes[r] for r in rows], [paths[r] for r in rows], batch_size=3,
                       num_workers=0, on_error="fail", fast=FastPath.for_device("cpu"))
        store = zarr.open_group(w.finalize({"cache_key": name}, tmp_path / f"{name}.zarr"), mode="r")
        return {k: np.asarray(store[k][:]) for k in ("tokens", "pooled")}

    every, one = images(list(range(7)), "all"), images([6], "one")
    assert seen["image"] == [3, 3, 3, 3]  # shards [0, 4) and [4, 7): batches of 3 + 1 and 3, then the lone row
    assert all(np.array_equal(every[k][6:], one[k]) for k in every)

    def texts(rows: list[int], name: str) -> dict:
        w = StoreWriter(tmp_path / f"{name}.partial", "text", len(rows),
                        text_arrays(teacher.max_length, teacher.width, teacher.embed_dim), key=name, shard_rows=4)
        extract_texts(teacher, w, [hashlib.sha256(TEXTS[r].encode()).hexdigest() for r in rows],
                      [TEXTS[r] for r in rows], batch_size=3)
        store = zarr.open_group(w.finalize({"cache_key": name}, tmp_path / f"{name}.zarr"), mode="r")
        return {k: np.asarray(store[k][:]) for k in ("tokens", "pooled", "length", "char_span")}

    seen["text"].clear()
    every_t, one_t = texts(list(range(7)), "all-t"), texts([6], "one-t")
    assert seen["text"] == [3, 3, 3, 3]
    assert all(np.array_equal(every_t[k][6:], one_t[k]) for k in every_t)
