"""The Python API: docs/python-api.md runs as a doctest (a real extraction with the shipped shapes-clip teacher, in a
directory laid out as the page says), stores open as lazy xarray Datasets indexed by content hash (format v1 stores
too), samples' features come through the index store, and `import mad_pipeline` stays light."""

from __future__ import annotations

import doctest
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import EXAMPLES, v1_copy

from mad_pipeline.errors import InputError, StoreError

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """docs/python-api.md run as one doctest session in a fresh directory holding photos/; its globals after."""
    work = tmp_path_factory.mktemp("python-api")
    shutil.copytree(EXAMPLES, work / "photos")
    blocks = re.findall(r"```python\n(>>> .*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6, "the page's examples are gone"
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.setenv("MAD_SHARED_CACHE", "")
    mp.delenv("MAD_CACHE", raising=False)
    try:
        globs: dict = {}
        test = doctest.DocTestParser().get_doctest("\n".join(blocks), globs, "python-api.md", str(DOC), 0)
        runner, out = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE), []
        runner.run(test, out=out.append, clear_globs=False)
    finally:
        mp.undo()
    return {"work": work, "failures": runner.failures, "tries": runner.tries, "report": "".join(out),
            "globs": test.globs, "result": test.globs.get("result")}


def test_docs_examples_run_as_written(session):
    assert session["failures"] == 0 and session["tries"] >= 25, session["report"]


def test_sel_by_hash_matches_the_zarr_row(session):
    import mad_pipeline as mad

    stores = session["result"].stores
    images = mad.open_features(stores["image"].path)
    raw = zarr.open_group(stores["image"].path, mode="r")
    for row, h in enumerate(raw["image_hash"][:].tolist()):
        assert np.array_equal(images.sel(image=h).tokens.values, raw["tokens"][row])
        assert np.array_equal(images.sel(image=h).pooled.values, raw["pooled"][row])
    texts = mad.open_features(stores["text"].path)
    raw = zarr.open_group(stores["text"].path, mode="r")
    assert texts.text.values.tolist() == raw["text_hash"][:].tolist()
    assert texts.text_string.values.tolist() == raw["text"][:].tolist()
    with pytest.raises(KeyError):
        images.sel(image="0" * 64)




def test_format_v1_stores_open_and_select_by_hash(session, tmp_path):
    import mad_pipeline as mad

    new_path = Path(session["result"].stores["image"].path)
    old = mad.open_features(v1_copy(new_path, tmp_path / new_path.name))
    new = mad.open_features(new_path)
    assert old.image.dtype.kind == "U" and old.image.values.tolist() == new.image.values.tolist()
    h = str(new.image.values[3])
    assert np.array_equal(old.sel(image=h).pooled.values, new.sel(image=h).pooled.values)


def test_features_for_joins_through_the_index(session, tmp_path):
    """Rows found by content hash in any store; a store that lacks a sample's image says so (found False, NaN)."""
    import mad_pipeline as mad

    stores, globs = session["result"].stores, session["globs"]
    ids = ["q7", "q2", "q5"]
    feats = mad.features_for(ids, index=stores["index"].path, image=stores["image"].path, text=stores["text"].path)
    index = zarr.open_group(stores["index"].path, mode="r")
    all_ids = index["sample_id"][:].tolist()
    images, texts = globs["images"], globs["texts"]
    for sid in ids:
        r = all_ids.index(sid)
        h, th = str(index["image_hash"][r]), str(index["text_hash"][r][0])
        assert str(feats.image_hash.sel(sample=sid).values) == h
        assert np.array_equal(feats.image_tokens.sel(sample=sid).values, images.sel(image=h).tokens.values)
        assert np.array_equal(feats.text_pooled.sel(sample=sid, text=0).values, texts.sel(text=th).pooled.values)
    # an image store that holds only some of the images: a store of two of the photos, same teacher
    sub = tmp_path / "photos"
    sub.mkdir()
    lines = (EXAMPLES / "manifest.jsonl").read_text().splitlines()[:2]
    (sub / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    small = mad.extract(teacher="shapes-clip", manifest=str(sub / "manifest.jsonl"), data_root=str(EXAMPLES),
                        cache=str(session["work"] / "mad-cache"), num_workers=0, progress=False, log=lambda m: None)
    part = mad.features_for(all_ids, index=stores["index"].path, image=small.stores["image"].key,
                            cache=str(session["work"] / "mad-cache"))
    held = set(zarr.open_group(small.stores["image"].path, mode="r")["image_hash"][:].tolist())
    expected = [str(h) in held for h in index["image_hash"][:]]
    assert part.image_found.values.tolist() == expected and 0 < sum(expected) < len(expected)
    pooled = part.image_pooled.values
    assert np.isnan(pooled[~np.asarray(expected)]).all() and not np.isnan(pooled[np.asarray(expected)]).any()
    assert not part.image_valid.values[~np.asarray(expected)].any()


def test_mistakes_are_clear(session):
    import mad_pipeline as mad

    stores = session["result"].stores
    with pytest.raises(InputError, match=r"no sample 'nope'"):
        mad.features_for(["q0", "nope"], index=stores["index"].path)
    with pytest.raises(InputError, match="expected an index store"):
        mad.features_for(["q0"], index=stores["image"].path)
    with pytest.raises(StoreError, match="no published store with key abcdef12"):
        mad.open_features("abcdef12", cache=str(session["work"] / "mad-cache"))
    with pytest.raises(StoreError, match="no such store"):
        mad.open_features(str(session["work"] / "nowhere.zarr"))
    with pytest.raises(TypeError, match="teachr"):
        mad.extract(teachr="shapes-clip", data_root=".")


def test_import_is_light_and_the_api_is_listed():
    code = ("import sys, mad_pipeline as mad; f = mad.open_features; "
            "print(sorted(set(mad.__all__) - set(dir(mad))), 'torch' in sys.modules, "
            "'mad_pipeline.stages.extract' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "False", "False"]


def test_a_dask_distributed_cluster_reads_the_lazy_arrays(session):
    """The arrays travel to worker processes as (store, array) and the workers open the store themselves."""
    from dask.distributed import Client, LocalCluster

    import mad_pipeline as mad

    path = session["result"].stores["image"].path
    images = mad.open_features(path)
    expected = np.asarray(zarr.open_group(path, mode="r")["tokens"][:], dtype=np.float32).mean(axis=(1, 2))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster):
        got = images.tokens.astype("float32").mean(("token", "channel")).compute()
    np.testing.assert_allclose(got.values, expected, rtol=1e-6)
    assert got.image.values.tolist() == images.image.values.tolist()
