"""Rows are content-addressed, so an extraction copies the rows that a published store of the same teacher identity
already holds (a low-shot subset, an overlapping split; in the local cache or a shared one) and runs the teacher only
on the rest. The result is identical, array by array, to a fresh extraction in an empty cache, and self-contained."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import make_photos, write_manifest
from mad_pipeline.stages import extract as stage

from mad_pipeline.errors import StoreError
from mad_pipeline.store.reader import open_store
from mad_pipeline.store.verify import verify_store
from mad_pipeline.testhooks import FAIL_ENV

N = 16  # the full manifest: photos 0..15; the overlapping one: photos 8..23


@pytest.fixture(scope="module")
def corpus(tiny_clip, tmp_path_factory):
    """Photos, two overlapping manifests, and a cache holding the full manifest's stores (the donors)."""
    base = tmp_path_factory.mktemp("reuse")
    rels = make_photos(base / "data", N + 8, size=64)
    recs = [{"id": f"s{i}", "image": r, "text": f"photo number {i}"} for i, r in enumerate(rels)]
    full = write_manifest(base / "full.jsonl", recs[:N])
    other = write_manifest(base / "other.jsonl", recs[N // 2 :])
    c = {"base": base, "root": base / "data", "full": full, "other": other, "weights": tiny_clip[1]}
    c["donor"] = _run(c, base / "donor-cache", full)
    return c


def _run(c, cache: Path, manifest: Path, **kw) -> stage.ExtractResult:
    # batch size 1: every row is computed alone, so a fresh run and a copied row are bit-identical on any BLAS
    cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(c["weights"]), data_root=c["root"], manifest=manifest,
                              cache=cache, num_workers=0, batch_size=1, shard_rows=4, progress=False, **kw)
    return stage.run(cfg, log=lambda _: None)


def _assert_identical(got: stage.ExtractResult, fresh: stage.ExtractResult) -> None:
    assert set(got.stores) == set(fresh.stores)
    for kind, s in fresh.stores.items():
        assert got.stores[kind].key == s.key, kind
        a, b = zarr.open_group(got.stores[kind].path, mode="r"), zarr.open_group(s.path, mode="r")
        assert sorted(n for n, _ in a.arrays()) == sorted(n for n, _ in b.arrays())
        for name, arr in b.arrays():
            assert a[name].dtype == arr.dtype and a[name].chunks == arr.chunks, f"{kind}/{name}"
            np.testing.assert_array_equal(a[name][:], arr[:], err_msg=f"{kind}/{name}")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_subset_copies_every_row_and_never_loads_the_teacher(corpus, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(corpus["base"] / "donor-cache", cache)
    donor = corpus["donor"]
    sub = _run(corpus, cache, corpus["full"], train_fraction=0.5)
    assert sub.teacher_loaded is False  # nothing was missing: the teacher was not even loaded
    for kind in ("image", "text"):
        s = sub.stores[kind]
        assert not s.cached and s.rows == N // 2 and s.rows_computed == 0 and s.rows_reused == N // 2, s
        reused = open_store(s.path).manifest["reused"]
        assert reused == {"rows": N // 2, "stores": [{"key": donor.stores[kind].key, "source": "local",
                                                      "rows": N // 2}]}

    fresh = _run(corpus, tmp_path / "empty", corpus["full"], train_fraction=0.5)
    assert fresh.teacher_loaded and fresh.stores["image"].rows_computed == N // 2
    _assert_identical(sub, fresh)

    # self-contained: with the donor gone, the subset store still verifies and reads
    for kind in ("image", "text"):
        shutil.rmtree(cache / "stores" / kind / f"{donor.stores[kind].key}.zarr")
        rep = verify_store(sub.stores[kind].path)
        assert rep.ok, [p.describe() for p in rep.problems]
        assert open_store(sub.stores[kind].path)["tokens"][:].any()


def test_overlapping_split_computes_only_the_missing_rows(corpus, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    shutil.copytree(corpus["base"] / "donor-cache", cache)
    # first interrupted inside the image store (a full disk after its first shard), then resumed
    monkeypatch.setenv(FAIL_ENV, "store-write@20")
    with pytest.raises(StoreError, match="no space left"):
        _run(corpus, cache, corpus["other"])
    monkeypatch.delenv(FAIL_ENV)
    got = _run(corpus, cache, corpus["other"])
    assert got.teacher_loaded
    image, text = got.stores["image"], got.stores["text"]
    assert image.shards_resumed >= 1 and image.rows_reused + image.rows_computed < N, image
    assert text.rows == N and text.rows_reused == N // 2 and text.rows_computed == N // 2, text
    for s in (image, text):  # the manifest counts the rows of every shard, whichever run wrote it
        assert open_store(s.path).manifest["reused"]["rows"] == N // 2
    _assert_identical(got, _run(corpus, tmp_path / "empty", corpus["other"]))


def test_rows_are_reused_from_a_shared_cache_that_is_never_written(corpus, tmp_path, monkeypatch):
    shared = corpus["base"] / "donor-cache"
    before = _snapshot(shared)
    monkeypatch.setenv("MAD_SHARED_CACHE", str(shared))
    got = _run(corpus, tmp_path / "local", corpus["other"])
    for kind in ("image", "text"):
        s = got.stores[kind]
        assert s.rows_reused == N // 2 and s.rows_computed == N // 2, s
        stores = open_store(s.path).manifest["reused"]["stores"]
        assert stores == [{"key": corpus["donor"].stores[kind].key, "source": f"shared:{shared}", "rows": N // 2}]
        assert Path(s.path).is_relative_to(tmp_path / "local")  # the new store lives in the local cache
    assert _snapshot(shared) == before
    monkeypatch.delenv("MAD_SHARED_CACHE")
    _assert_identical(got, _run(corpus, tmp_path / "empty", corpus["other"]))


def test_rows_are_reused_through_zarr_over_fsspec_from_s3(corpus, tmp_path, monkeypatch):
    from test_sharing import moto_server

    with moto_server(tmp_path) as (endpoint, creds):
        for k, v in {**creds, "AWS_ENDPOINT_URL": endpoint, "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():
            monkeypatch.setenv(k, v)
        import s3fs
        from mad_pipeline.stages import store_share

        s3fs.S3FileSystem(skip_instance_cache=True).mkdir("reuse-bucket")
        store_share.push(store_share.PushConfig(source=str(corpus["base"] / "donor-cache"),
                                                dest="s3://reuse-bucket/cache"))
        monkeypatch.setenv("MAD_SHARED_CACHE", "s3://reuse-bucket/cache")
        got = _run(corpus, tmp_path / "local", corpus["full"], train_fraction=0.5)
    assert got.teacher_loaded is False
    for kind in ("image", "text"):
        s = got.stores[kind]
        assert s.rows_reused == N // 2 and s.rows_computed == 0, s
        assert open_store(s.path).manifest["reused"]["stores"][0]["source"] == "shared:s3://reuse-bucket/cache"
    monkeypatch.delenv("MAD_SHARED_CACHE")
    _assert_identical(got, _run(corpus, tmp_path / "empty", corpus["full"], train_fraction=0.5))


def test_another_teacher_identity_reuses_nothing(corpus, tmp_path):
    from conftest import TINY_CLIP, save_open_clip

    _, other_weights = save_open_clip("tiny-clip", TINY_CLIP, tmp_path, seed=1)
    cache = tmp_path / "cache"
    shutil.copytree(corpus["base"] / "donor-cache", cache)
    got = _run({**corpus, "weights": other_weights}, cache, corpus["full"], train_fraction=0.5)
    for kind in ("image", "text"):
        assert got.stores[kind].rows_reused == 0 and got.stores[kind].rows_computed == N // 2
        assert open_store(got.stores[kind].path).manifest["reused"] == {"rows": 0, "stores": []}
