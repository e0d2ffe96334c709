"""The datasets' image cache: an image read again gives exactly the student input it gave the first time, without
being decoded again; the cache stays within its budget, is never shipped to another process, and leaves the online
teacher's path (which needs the decoded image itself) alone."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

import mad_pipeline.training.dataset as dataset_mod
from mad_pipeline.data import load_dataset
from mad_pipeline.students import build_student, image_preprocess
from mad_pipeline.tasks import get_task
from mad_pipeline.training.dataset import SampleDataset


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes-pixel-cache")
    write_dataset(out, size=8, seed=0)
    ds = load_dataset("vqa", out / "vqa", split="train")
    task = get_task("vqa", vocab_min_count=1)
    task.fit(ds.samples)
    student = build_student("vilt-tiny", "vqa", task.num_classes, None)
    return ds, task, image_preprocess(student)


def _decodes(monkeypatch) -> list[str]:
    calls: list[str] = []
    real = dataset_mod.load_image

    def counting(path, *a, **k):
        calls.append(str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(dataset_mod, "load_image", counting)
    return calls


def test_an_image_read_again_is_not_decoded_again_and_gives_the_same_input(vqa, monkeypatch):
    ds, task, preprocess = vqa
    images = {s.image for s in ds.samples}
    assert len(images) < len(ds.samples)  # several questions per picture: the cache is used within one pass
    data = SampleDataset(ds.samples, ds.root, task, preprocess)
    calls = _decodes(monkeypatch)
    first = data.__getitems__(range(len(data)))
    assert len(calls) == len(images)  # one decode per distinct image, not per question
    again = data.__getitems__(range(len(data)))
    assert len(calls) == len(images)  # the second epoch decodes nothing
    fresh = SampleDataset(ds.samples, ds.root, task, preprocess).__getitems__(range(len(data)))
    for a, b, c in zip(first, again, fresh, strict=True):
        assert torch.equal(a.pixels, b.pixels) and torch.equal(a.pixels, c.pixels)
        assert np.array_equal(a.box, c.box) and a.texts == c.texts


def test_the_cache_stays_within_its_budget_and_is_not_pickled(vqa, monkeypatch):
    ds, task, preprocess = vqa
    one = 3 * 64 * 64 * 4 + 4 * 4  # one 64 x 64 image's fp32 pixels and its crop box
    monkeypatch.setattr(dataset_mod, "PIXEL_CACHE_MB", 0)  # nothing fits: every read decodes
    data = SampleDataset(ds.samples, ds.root, task, preprocess)
    calls = _decodes(monkeypatch)
    data.__getitems__(range(len(data)))
    assert len(calls) == len(data) and data._pixel_bytes == 0
    monkeypatch.setattr(dataset_mod, "PIXEL_CACHE_MB", 1)
    data = SampleDataset(ds.samples, ds.root, task, preprocess)
    data.__getitems__(range(len(data)))
    assert 0 < data._pixel_bytes <= 1 << 20 and data._pixel_bytes == one * len(data._pixels)
    clone = pickle.loads(pickle.dumps(data))  # what a DataLoader worker receives
    assert clone._pixels == {} and clone._pixel_bytes == 0
    assert torch.equal(clone.__getitems__([0])[0].pixels, data.__getitems__([0])[0].pixels)
