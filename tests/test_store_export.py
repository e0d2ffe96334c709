"""`mad store export`: a store's pooled embeddings, with their ids in the same order, as clip-retrieval's npy layout,
a parquet file or a faiss index whose nearest neighbour of each stored embedding is the embedding itself; without
faiss installed, one error line names the extra to install."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from conftest import EXAMPLES, last_json, mad

from mad_pipeline.errors import MadError
from mad_pipeline.store.layout import image_arrays
from mad_pipeline.store.writer import StoreWriter


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """The shipped shapes-clip teacher over the example photos (6 images, 8 texts), extracted in process."""
    import mad_pipeline

    cache = tmp_path_factory.mktemp("export-cache")
    res = mad_pipeline.extract(teacher="shapes-clip", manifest=str(EXAMPLES / "manifest.jsonl"),
                               data_root=str(EXAMPLES), cache=str(cache), num_workers=0, progress=False,
                               log=lambda m: None)
    return {"cache": cache, **{k: Path(s.path) for k, s in res.stores.items()}}


def _env(stores) -> dict:
    return {"MAD_CACHE": str(stores["cache"]), "MAD_SHARED_CACHE": "", "MAD_PULL": ""}


def _mad_here(capsys, monkeypatch, stores, *args: str) -> tuple[int, str, str]:
    """The CLI's entry point in this process (faster than a subprocess): exit code, stdout, stderr."""
    from mad_pipeline.cli.main import main

    for k, v in _env(stores).items():
        monkeypatch.setenv(k, v)
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def _pooled(store: Path) -> tuple[np.ndarray, list[str]]:
    g = zarr.open_group(str(store), mode="r")
    col = "image_hash" if "image_hash" in g else "text_hash"
    return np.asarray(g["pooled"][:], dtype=np.float32), g[col][:].tolist()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["image", "text"])
def test_faiss_index_finds_each_pooled_embedding_itself(stores, tmp_path, kind, capsys, monkeypatch):
    import faiss

    out = tmp_path / f"{kind}-index"
    args = ["store", "export", str(stores[kind]), "--to", "faiss", "--normalize", "--out", str(out),
            "--batch-rows", "2", "--json"]
    if kind == "image":  # the real command line, in a subprocess
        res = last_json(mad(*args, env=_env(stores)))
    else:
        code, stdout, stderr = _mad_here(capsys, monkeypatch, stores, *args)
        assert code == 0, stderr
        res = json.loads(stdout.strip().splitlines()[-1])
    pooled, hashes = _pooled(stores[kind])
    assert res["rows"] == len(hashes) and res["dim"] == pooled.shape[1] and res["skipped"] == 0
    index = faiss.read_index(str(out / f"{kind}.index"))
    assert index.ntotal == len(hashes) and index.metric_type == faiss.METRIC_INNER_PRODUCT
    scores, nearest = index.search(_unit(pooled), 1)
    assert nearest[:, 0].tolist() == list(range(len(hashes)))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-3)
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta[f"{kind}_hash"] == hashes  # index row i is metadata row i is store row i
    if kind == "text":
        assert meta["caption"] == zarr.open_group(str(stores[kind]), mode="r")["text"][:].tolist()


def test_faiss_without_normalize_is_l2_and_a_trained_factory_works(stores, tmp_path):
    import faiss
    from mad_pipeline.stages import store_export

    pooled, hashes = _pooled(stores["text"])
    for factory in ("Flat", "IVF2,Flat"):
        out = tmp_path / factory.replace(",", "-")
        store_export.run(store_export.ExportConfig(store=str(stores["text"]), to="faiss", out=out,
                                                   index_factory=factory, train_rows=4, batch_rows=2, progress=False))
        index = faiss.read_index(str(out / "text.index"))
        assert index.metric_type == faiss.METRIC_L2 and index.ntotal == len(hashes)
        assert index.search(pooled, 1)[1][:, 0].tolist() == list(range(len(hashes)))


def test_npy_is_clip_retrievals_layout_with_ids_in_order(stores, tmp_path, capsys, monkeypatch):
    out = tmp_path / "emb"
    code, _, err = _mad_here(capsys, monkeypatch, stores, "store", "export", str(stores["image"]), "--to", "npy",
                             "--index", str(stores["index"]), "--out", str(out), "-q")
    assert code == 0, err
    emb = np.load(out / "img_emb" / "img_emb_0.npy")
    g = zarr.open_group(str(stores["image"]), mode="r")
    assert emb.dtype == np.float16 and np.array_equal(emb, g["pooled"][:])  # as stored: not normalised
    meta = pq.read_table(out / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta["image_hash"] == g["image_hash"][:].tolist()
    index = zarr.open_group(str(stores["index"]), mode="r")
    users = {h: sorted(str(s) for s, hh in zip(index["sample_id"][:], index["image_hash"][:], strict=True) if hh == h)
             for h in meta["image_hash"]}
    assert [sorted(x) for x in meta["sample_ids"]] == [users[h] for h in meta["image_hash"]]
    assert sorted(sum(meta["sample_ids"], [])) == sorted(str(s) for s in index["sample_id"][:])


def test_parquet_by_key_prefix_normalised(stores, tmp_path, capsys, monkeypatch):
    key = stores["text"].name[:10]
    out = tmp_path / "texts.parquet"
    code, stdout, stderr = _mad_here(capsys, monkeypatch, stores, "store", "export", key, "--to", "parquet",
                                     "--normalize", "--out", str(out), "-q")
    assert code == 0 and str(out) in stdout, stderr
    table = pq.read_table(out).to_pydict()
    pooled, hashes = _pooled(stores["text"])
    assert table["text_hash"] == hashes
    emb = np.asarray(table["embedding"], dtype=np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb, _unit(pooled), atol=1e-5)


def test_missing_faiss_is_one_line_naming_the_extra(stores, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if faiss-cpu were not installed: `import faiss` fails
    out = tmp_path / "idx"
    code, _, err = _mad_here(capsys, monkeypatch, stores, "store", "export", str(stores["image"]), "--to", "faiss",
                             "--out", str(out))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and "pip install 'mad-pipeline[faiss]'" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".idx.export-*"))


def test_user_mistakes_are_one_line(stores, tmp_path, capsys, monkeypatch):
    (tmp_path / "taken").mkdir()
    cases = [
        (["--to", "hdf5", "--out", str(tmp_path / "x")], "--to 'hdf5'"),
        (["--to", "npy", "--out", str(tmp_path / "taken")], "already exists"),
        (["--to", "faiss", "--index-factory", "Nonsense9", "--out", str(tmp_path / "y")], "--index-factory"),
    ]
    cases += [([str(stores["index"]), "--to", "npy", "--out", str(tmp_path / "z")], "no pooled embeddings"),
              (["0123abcd", "--to", "npy", "--out", str(tmp_path / "w")], "no published store with key 0123abcd")]
    for args, expected in cases:
        if not args[0].startswith("--"):
            store, args = args[0], args[1:]
        else:
            store = str(stores["image"])
        code, _, err = _mad_here(capsys, monkeypatch, stores, "store", "export", store, *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, err)
    assert not (tmp_path / "z").exists() and not (tmp_path / "w").exists()


def test_undecodable_images_are_left_out_and_ids_stay_aligned(tmp_path):
    """An image store's rows with valid=False (zero vectors) are not exported; the metadata lists the rows written."""
    from mad_pipeline.stages import store_export

    rng = np.random.default_rng(0)
    n, dim = 6, 8
    pooled = rng.standard_normal((n, dim)).astype(np.float16)
    valid = np.array([True, False, True, True, False, True])
    pooled[~valid] = 0
    hashes = [f"{i:064x}" for i in range(n)]
    w = StoreWriter(tmp_path / "partial.zarr", "image", n, image_arrays(3, 4, dim), "c" * 64, shard_rows=2)
    for i in range(w.n_shards):
        s = slice(2 * i, 2 * i + 2)
        w.write_shard(i, {"image_hash": np.asarray(hashes[s], dtype=object), "tokens": np.zeros((2, 3, 4), np.float16),
                          "pooled": pooled[s], "crop_box": np.zeros((2, 4), np.float32), "valid": valid[s]})
    store = w.finalize({"format_version": 2, "kind": "image", "cache_key": "c" * 64, "n_rows": n,
                        "geometry": {"num_tokens": 3, "width": 4, "embed_dim": dim}}, tmp_path / f"{'c' * 64}.zarr")
    res = store_export.run(store_export.ExportConfig(store=str(store), to="faiss", out=tmp_path / "idx",
                                                     normalize=True, progress=False))
    assert (res.rows, res.skipped) == (4, 2)
    meta = pq.read_table(tmp_path / "idx" / "metadata" / "metadata_0.parquet").to_pydict()
    assert meta["image_hash"] == [h for h, v in zip(hashes, valid, strict=True) if v]
    import faiss

    index = faiss.read_index(str(tmp_path / "idx" / "image.index"))
    kept = _unit(pooled[valid].astype(np.float32))
    assert index.search(kept, 1)[1][:, 0].tolist() == [0, 1, 2, 3]


def test_python_api_export_and_missing_faiss_in_process(stores, tmp_path, monkeypatch):
    import mad_pipeline

    res = mad_pipeline.export_store(str(stores["image"]), to="npy", out=str(tmp_path / "e"), normalize=True,
                                    progress=False)
    emb = np.load(tmp_path / "e" / "img_emb" / "img_emb_0.npy").astype(np.float32)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=2e-3)
    assert json.loads(json.dumps(res.as_dict()))["rows"] == len(emb)
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(MadError, match=r"pip install 'mad-pipeline\[faiss\]'"):
        mad_pipeline.export_store(str(stores["image"]), to="faiss", out=str(tmp_path / "f"), progress=False)
