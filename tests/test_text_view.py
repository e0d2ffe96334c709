"""The text view (``mad_pipeline.training.text_view``): the text rows a dataset trains on, in training order.

Built once per (text store, row list) and found again; a damaged or half-written one is built again; the dataset's
items are the same with it as without it (value for value, dtype for dtype); ``mad distill`` trains to the same
losses with ``--text-view auto`` (the default) and ``--text-view off``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import bench_module

from mad_pipeline.training import text_view
from mad_pipeline.training.sampler import ChunkShuffleSampler, ResumableBatches

REPO = Path(__file__).resolve().parent.parent
FRACTION = 0.0005  # of VQA v2: 222 questions over 41 images, ViT-B/16 image rows, CLIP text rows


@pytest.fixture(scope="module")
def scaled(tmp_path_factory):
    scale = bench_module("scale")
    scale.StoreOnly = scale._store_only_class()
    cache = tmp_path_factory.mktemp("view")
    stores = scale.build_stores(cache, FRACTION, "vit-b16", ["rows", "chunks"], 0, log=lambda m: None)
    return scale, cache, stores


def _data(scaled):
    scale, cache, stores = scaled
    return scale.dataset(cache, FRACTION, stores, "rows", store_only=True)[0]


def _epoch(data) -> list:
    batches = ResumableBatches(ChunkShuffleSampler(data.image_rows(), data.image_chunk_rows, 8, seed=0), 32)
    return [it for idx in batches for it in data.__getitems__(idx)]


def test_view_is_built_once_and_serves_the_same_items(scaled, monkeypatch):
    _, cache, _ = scaled
    monkeypatch.setattr(text_view, "WHOLE_STORE_BYTES", 0)  # build as from a large store: rows read from the shards
    plain, viewed = _data(scaled), _data(scaled)
    logs: list[str] = []
    view = text_view.attach(viewed, cache, "auto", log=logs.append, progress=False)
    assert view is not None and Path(view.path).parent == cache / "derived" / "views"
    assert len(logs) == 1 and "built" in logs[0], logs
    # a second dataset over the same samples and store finds it: nothing is built
    again = text_view.ensure_view(cache, viewed.stores.text, text_view.plan_for(_data(scaled)), log=logs.append,
                                  progress=False)
    assert again == (view.path, False) and len(logs) == 1
    a, b = _epoch(plain), _epoch(viewed)
    assert [it.index for it in a] == [it.index for it in b]
    for x, y in zip(a, b, strict=True):
        assert list(x.teacher) == list(y.teacher)
        for k, v in x.teacher.items():
            assert np.asarray(v).dtype == np.asarray(y.teacher[k]).dtype and np.array_equal(v, y.teacher[k]), k
    assert viewed.read_counts()["text"]["chunks"] <= viewed.read_counts()["image"]["chunks"]
    assert plain.read_counts()["text"]["chunks"] == 4.0
    assert text_view.attach(_data(scaled), cache, "off") is None


def test_damaged_or_half_written_view_is_built_again(scaled):
    _, cache, _ = scaled
    data = _data(scaled)
    plan = text_view.plan_for(data)
    path, _ = text_view.ensure_view(cache, data.stores.text, plan, progress=False)
    key = Path(path).name.removesuffix(".zarr")
    shard = next(p for p in (Path(path) / text_view.ARRAY / "c").rglob("*") if p.is_file())
    shard.unlink()  # a chunk file lost
    logs: list[str] = []
    assert text_view.ensure_view(cache, data.stores.text, plan, log=logs.append, progress=False) == (path, True)
    assert any("corrupt" in m for m in logs) and text_view.usable(Path(path), key)
    # a build killed before its rename leaves a temporary directory and nothing published; one whose manifest was
    # never written (no key) is not served either
    stale = Path(path).parent / f".{key}.1-deadbeef.tmp"
    shutil.copytree(path, stale)
    meta = json.loads((Path(path) / "zarr.json").read_text())
    meta["attributes"].pop("mad")
    (Path(path) / "zarr.json").write_text(json.dumps(meta))
    assert not text_view.usable(Path(path), key)
    assert text_view.ensure_view(cache, data.stores.text, plan, progress=False) == (path, True)
    assert not stale.exists() and text_view.usable(Path(path), key)
    # a cache it cannot write (here: a file where the cache root should be): one warning, the text store is read
    blocked = cache / "not-a-directory"
    blocked.write_text("")
    logs.clear()
    assert text_view.attach(data, blocked, "auto", log=logs.append, progress=False) is None
    assert data.text_view is None and len(logs) == 1 and logs[0].startswith("warning: text view not built"), logs


def test_gc_removes_killed_builds_and_unused_views_never_locked(scaled, tmp_path):
    """``mad store gc`` cleans ``derived/``: a build killed before its rename always (unless its key is locked);
    with ``--older-than``, a view no run has opened for that long. A run then builds it again."""
    import os
    import time

    from mad_pipeline.stages import store_share

    from mad_pipeline.cache import Cache

    data = _data(scaled)
    plan = text_view.plan_for(data)
    cache = tmp_path / "cache"
    path, built = text_view.ensure_view(cache, data.stores.text, plan, progress=False)
    view = Path(path)
    key = view.name.removesuffix(".zarr")
    stale = view.parent / f".{key}.1-deadbeef.tmp"
    shutil.copytree(view, stale)

    def gc(days=None):
        return store_share.gc(store_share.GcConfig(cache=cache, older_than_days=days))

    assert built and [Path(r["path"]) for r in gc().removed] == [stale] and text_view.usable(view, key)
    assert not gc(5).removed  # just used
    old = time.time() - 10 * 86400
    for p in (view / "zarr.json", cache / "used" / key):
        os.utime(p, (old, old))
    with Cache(cache).lock(key):
        res = gc(5)
    assert not res.removed and [r["key"] for r in res.kept] == [key] and view.exists()
    res = gc(5)
    assert [Path(r["path"]) for r in res.removed] == [view] and "not used for 10.0 days" in res.removed[0]["reason"]
    assert not view.exists()
    assert text_view.ensure_view(cache, data.stores.text, plan, progress=False) == (path, True)
    assert not gc(5).removed


def test_plan_aligns_view_chunks_with_image_chunks():
    image_rows = np.array([5, 0, 1, 4, 0, 9, 2, 2, 8, 1])  # chunks of 4 image rows: 6 samples, 2, 2
    plan = text_view.plan_view(image_rows, np.arange(10) * 10, image_chunk_rows=4, row_bytes=100)
    assert plan.chunk_rows == 6 and plan.image_rows_per_chunk == 4 and len(plan.rows) == 18
    chunk_of = plan.sample_rows // plan.chunk_rows
    assert (chunk_of == image_rows // 4).all()  # a sample's text sits in the view chunk of its image chunk
    assert (plan.rows[plan.sample_rows] == np.arange(10) * 10).all()  # and is its own text row
    assert (plan.rows == -1).sum() == 18 - 10
    # one image with very many texts: padding every chunk to it would blow the view up; contiguous rows instead
    skewed = text_view.plan_view(np.r_[np.zeros(100, int), np.arange(1, 40) * 4], np.arange(139), 4, 100)
    assert skewed.image_rows_per_chunk == 0 and len(skewed.rows) == 139
    assert (skewed.rows[skewed.sample_rows] == np.arange(139)).all()


def test_distill_trains_the_same_with_and_without_the_view(tiny_clip, tmp_path):
    from conftest import last_json, mad_inproc
    from safetensors.torch import load_file

    from mad_pipeline.shapes.formats import write_dataset

    cfg_file, weights = tiny_clip
    write_dataset(tmp_path / "world", size=16, seed=0)
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}

    def run(name: str, *more: str) -> tuple[list[dict], dict]:
        out = tmp_path / name
        last_json(mad_inproc("distill", "--task", "vqa", "--data-root", str(tmp_path / "world" / "vqa"), "--teacher",
                             "tiny-clip", "--weights", str(weights), "--out", str(out), "--steps", "3",
                             "--batch-size", "8", "--log-every", "1", "--vocab-min-count", "1", "--num-workers", "0",
                             "--json", *more, env=env))
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "eval" not in ln]
        latest = (out / "checkpoints" / "latest").read_text().strip()
        return [{k: v for k, v in r.items() if "time" not in k and "_s" not in k} for r in rows], \
            load_file(str(out / "checkpoints" / latest / "model.safetensors"))

    on_rows, on_weights = run("on")  # the default: --text-view auto
    views = list((tmp_path / "cache" / "derived" / "views").glob("*.zarr"))
    assert len(views) == 1
    off_rows, off_weights = run("off", "--text-view", "off")
    assert len(on_rows) == 3 and all("tok_t" in r and "total" in r for r in on_rows)
    assert on_rows == off_rows  # every logged loss term, bit for bit
    assert on_weights.keys() == off_weights.keys()
    assert all(bool((on_weights[k] == off_weights[k]).all()) for k in on_weights)
    assert list((tmp_path / "cache" / "derived" / "views").glob("*.zarr")) == views  # off builds nothing


def test_shard_rows_reads_what_zarr_reads(scaled):
    """Building a view reads the text store's shard files directly; the values are zarr's, for either text layout
    (one row per inner chunk, or the ~1 MB inner chunks of stores written before)."""
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.training.shard_rows import ShardRows

    _, _, stores = scaled
    rows = np.random.default_rng(0).integers(0, 222, 50)  # repeats and any order
    for layout in ("rows", "chunks"):
        src = open_store(stores["text"][layout]["path"])
        for name in text_view.FIELDS:
            fast = ShardRows.open(src.path, name)
            if fast is None:  # the old layout's small arrays are not sharded: read through zarr
                assert layout == "chunks" and name != "tokens", (layout, name)
                continue
            got, want = fast.rows(rows), np.asarray(src[name][:])[rows]
            assert got.dtype == want.dtype and np.array_equal(got, want), (layout, name)
    assert ShardRows.open(src.path, "text") is None  # variable-length strings: not a layout it reads
