"""Store format hardening: hash columns plain numpy searches correctly (the docs' join recipe runs here as a
doctest against real stores), a missing chunk file is corruption for every reader (open, reads, HTTP 404, verify, the
cache, which quarantines and rebuilds), and corrupt or absurd metadata is one `error:` line, never a traceback."""

from __future__ import annotations

import contextlib
import doctest
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import EXAMPLES, last_json, mad, mad_inproc, v1_copy

from mad_pipeline.errors import StoreError
from mad_pipeline.store.layout import image_arrays
from mad_pipeline.store.reader import open_store
from mad_pipeline.store.verify import verify_store
from mad_pipeline.store.writer import StoreWriter
from mad_pipeline.training.chunks import ChunkCache

DOC = Path(__file__).resolve().parents[1] / "docs" / "store-format.md"


@pytest.fixture(scope="module")
def extracted(tiny_clip, tmp_path_factory) -> dict:
    """`mad extract` of the example, in this process (image, text, index stores; 2 rows per shard: 3 shard files
    per array)."""
    cfg_file, weights = tiny_clip
    cache = tmp_path_factory.mktemp("integrity-cache")
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache), "MAD_SHARED_CACHE": "", "MAD_PULL": ""}
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest",
            str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--shard-rows", "2", "--json"]
    res = last_json(mad_inproc(*args, env=env))
    return {"cache": cache, "env": env, "args": args, "result": res,
            "paths": {k: Path(s["path"]) for k, s in res["stores"].items()}}


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name  # keeps the <key>.zarr name
    shutil.copytree(src, dst)
    return dst


def _edit_array_meta(store: Path, name: str, **fields) -> None:
    """Change an array's metadata both in its own zarr.json and in the consolidated copy."""
    own = json.loads((store / name / "zarr.json").read_text())
    own.update(fields)
    (store / name / "zarr.json").write_text(json.dumps(own))
    root = json.loads((store / "zarr.json").read_text())
    root["consolidated_metadata"]["metadata"][name].update(fields)
    (store / "zarr.json").write_text(json.dumps(root))




# ---------------------------------------------------------------------- hashes any numpy searches
def test_docs_join_recipe_runs_against_real_stores(extracted, tmp_path):
    paths = extracted["paths"]
    v1 = v1_copy(paths["image"], tmp_path / "v1.zarr")
    globs = {"image_store": str(paths["image"]), "index_store": str(paths["index"]), "v1_image_store": str(v1)}
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(>>> .*?)```", text, flags=re.S)
    assert len(blocks) >= 3, "the docs' join recipe is gone"
    # one session, as a reader runs the blocks one after the other
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), globs, "store-format.md", str(DOC), 0)
    runner, out = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS), []
    runner.run(test, out=out.append)
    assert runner.failures == 0 and runner.tries >= 10, "".join(out)


def test_hash_columns_search_correctly_with_plain_numpy(extracted):
    image = zarr.open_group(str(extracted["paths"]["image"]), mode="r")
    text = zarr.open_group(str(extracted["paths"]["text"]), mode="r")
    index = zarr.open_group(str(extracted["paths"]["index"]), mode="r")
    for col in (image["image_hash"], text["text_hash"], index["image_hash"], index["text_hash"]):
        assert col[:].dtype == np.dtype("<U64"), col.dtype
    for col in (image["image_hash"][:], text["text_hash"][:]):
        wanted = col.tolist()[::-1]  # Python str, as users hold them
        assert [int(np.searchsorted(col, h)) for h in wanted] == list(range(len(col)))[::-1]
        assert np.searchsorted(col, wanted).tolist() == list(range(len(col)))[::-1]


def test_format_v1_stores_stay_readable(extracted, tmp_path):
    v1 = v1_copy(extracted["paths"]["image"], tmp_path / extracted["paths"]["image"].name)
    new, old = open_store(extracted["paths"]["image"]), open_store(v1)
    assert old.hashes().dtype.kind == "U" and old.hashes().tolist() == new.hashes().tolist()
    wanted = new.hashes().tolist()[::-1] + ["0" * 64]
    assert old.rows_for(wanted).tolist() == new.rows_for(wanted).tolist() == [*range(len(wanted) - 1)][::-1] + [-1]
    rep = verify_store(str(v1))
    assert rep.ok, [p.describe() for p in rep.problems]


def test_every_chunk_is_written_and_recorded(tmp_path):
    """All-fill-value chunks (invalid images: zero tokens, valid False) are written too, and the record says so."""
    specs = image_arrays(3, 4, 2)
    w = StoreWriter(tmp_path / "partial.zarr", "image", 4, specs, "b" * 64, shard_rows=2)
    for i in range(w.n_shards):
        w.write_shard(i, {"image_hash": np.asarray([f"{2 * i + j:064x}" for j in range(2)], dtype=object),
                          "tokens": np.zeros((2, 3, 4), np.float16), "pooled": np.zeros((2, 2), np.float16),
                          "crop_box": np.zeros((2, 4), np.float32), "valid": np.zeros(2, bool)})
    final = w.finalize({"format_version": 2, "kind": "image", "cache_key": "b" * 64, "n_rows": 4,
                        "geometry": {"num_tokens": 3, "width": 4, "embed_dim": 2}}, tmp_path / f"{'b' * 64}.zarr")
    record = open_store(final).manifest["chunks"]
    assert set(record) == {s.name for s in specs} and all(r["files"] == 2 for r in record.values())
    for s in specs:
        assert sorted(p.relative_to(final / s.name).as_posix() for p in (final / s.name).rglob("*")
                      if p.is_file() and p.name != "zarr.json") == (["c/0/0/0", "c/1/0/0"] if s.big else
                                                                    ["c/0", "c/1"] if not s.row_shape else
                                                                    ["c/0/0", "c/1/0"])
    assert verify_store(str(final)).ok


# ---------------------------------------------------------------------- missing chunks
def test_missing_chunk_file_is_corruption_everywhere(extracted, tmp_path):
    store = _copy(extracted["paths"]["image"], tmp_path)
    gone = store / "tokens" / "c" / "1" / "0" / "0"
    gone.unlink()
    with pytest.raises(StoreError, match=r"corrupt store: tokens/c/1/0/0: missing chunk file"):
        open_store(store)
    proc = mad("store", "info", str(store), check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert str(gone) in proc.stderr
    rep = verify_store(str(store))
    assert [(p.array, p.chunk, p.file) for p in rep.problems] == [("tokens", "c/1/0/0", str(gone))]
    proc = mad_inproc("store", "verify", "-q", str(store), env={"COLUMNS": "250"}, check=False)
    assert proc.returncode == 1 and "missing chunk file" in proc.stdout, proc.stdout + proc.stderr


def test_chunk_removed_while_reading_is_an_error_not_zeros(extracted, tmp_path):
    """What `mad store gc` during training does: the reader already has the store open."""
    store = _copy(extracted["paths"]["image"], tmp_path)
    st = open_store(store)
    cache = ChunkCache()
    assert cache.rows(st["tokens"], np.asarray([0])).shape[0] == 1
    (store / "tokens" / "c" / "2" / "0" / "0").unlink()
    with pytest.raises(StoreError, match=r"tokens/c/2/0/0: missing chunk file"):
        cache.rows(st["tokens"], np.asarray([4, 5]))


def test_checksum_mismatch_while_reading_names_the_chunk_file(extracted, tmp_path):
    store = _copy(extracted["paths"]["image"], tmp_path)
    shard = store / "tokens" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0x01
    shard.write_bytes(bytes(data))
    st = open_store(store)  # same size: only a read (or verify) can tell
    with pytest.raises(StoreError) as e:
        ChunkCache().rows(st["tokens"], np.asarray([2]))
    assert f"{store}/tokens/c/1/0/0: cannot be read (checksum mismatch)" in str(e.value)


@contextlib.contextmanager
def _http_server(directory: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2).close()
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def test_http_404_for_a_shard_is_an_error_not_zeros(extracted, tmp_path):
    pytest.importorskip("aiohttp")
    www = tmp_path / "www"
    www.mkdir()
    store = _copy(extracted["paths"]["image"], www)
    (store / "tokens" / "c" / "1" / "0" / "0").unlink()
    with _http_server(www) as url:
        st = open_store(f"{url}/{store.name}")  # no listing over HTTP: the read finds out
        assert ChunkCache().rows(st["tokens"], np.asarray([0])).shape[0] == 1
        with pytest.raises(StoreError, match=r"/tokens/c/1/0/0: missing chunk file"):
            ChunkCache().rows(st["tokens"], np.asarray([3]))
        rep = verify_store(f"{url}/{store.name}")
        assert [(p.array, p.chunk) for p in rep.problems] == [("tokens", "c/1/0/0")]


def test_corrupt_local_store_is_quarantined_and_rebuilt(extracted, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(extracted["cache"], cache, ignore=shutil.ignore_patterns("locks"))
    path = cache / extracted["paths"]["image"].relative_to(extracted["cache"])
    (path / "pooled" / "c" / "0" / "0").unlink()
    proc = mad_inproc(*extracted["args"], env={**extracted["env"], "MAD_CACHE": str(cache)})
    res = last_json(proc)
    image = res["stores"]["image"]
    assert not image["cached"] and image["rows_computed"] == 6, image
    assert all(s["cached"] for k, s in res["stores"].items() if k != "image")
    warning = [ln for ln in (proc.stdout + proc.stderr).splitlines() if "quarantine" in ln]
    assert len(warning) == 1 and warning[0].startswith("warning: image store ") and "pooled/c/0/0" in warning[0]
    moved = list((cache / "quarantine" / "image").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith(image["key"]) and not (moved[0] / "pooled/c/0/0").exists()
    rebuilt, original = open_store(image["path"]), open_store(extracted["paths"]["image"])
    for name in original.array_names():
        np.testing.assert_array_equal(rebuilt[name][:], original[name][:], err_msg=name)


# ---------------------------------------------------------------------- lying and absurd metadata
def test_lying_row_shape_is_one_line_at_open(extracted, tmp_path):
    store = _copy(extracted["paths"]["image"], tmp_path)
    root = json.loads((store / "zarr.json").read_text())
    root["attributes"]["mad"]["geometry"]["width"] += 1  # the loss would get tokens of another width
    (store / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreError, match=r"tokens: row shape \(17, 64\) does not match the manifest geometry"):
        open_store(store)


@pytest.mark.parametrize("case, message", [
    ("rows", "chunk files"),  # 6e15 rows in shards of 2
    ("chunk", "would decode to"),  # one inner chunk of 1e9 rows
    ("negative", "not valid"),
])
def test_absurd_shapes_are_problems_not_crashes(extracted, tmp_path, case, message):
    store = _copy(extracted["paths"]["image"], tmp_path)
    if case == "rows":
        _edit_array_meta(store, "tokens", shape=[6 * 10**15, 17, 64])
    elif case == "chunk":  # shards and their inner chunks of 1e9 rows: 2 TB to decode for the first row
        codecs = json.loads((store / "tokens" / "zarr.json").read_text())["codecs"]
        codecs[0]["configuration"]["chunk_shape"] = [10**9, 17, 64]
        _edit_array_meta(store, "tokens", codecs=codecs,
                         chunk_grid={"name": "regular", "configuration": {"chunk_shape": [10**9, 17, 64]}})
    else:
        _edit_array_meta(store, "tokens", shape=[6, -17, 64])
    with pytest.raises(StoreError, match=message):
        open_store(store)
    proc = mad_inproc("store", "verify", "--json", str(store), check=False)
    assert proc.returncode == 1 and not proc.stderr.strip(), proc.stderr
    rep = json.loads(proc.stdout)
    assert any(p["array"] == "tokens" and message in p["message"] for p in rep["problems"]), rep["problems"]
    proc = mad_inproc("store", "info", str(store), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_pull_path_can_check_a_local_copy(extracted, tmp_path):
    """The function a transfer calls on a local copy: nothing for a whole store, the missing file otherwise."""
    from mad_pipeline.store.integrity import local_problems

    store = _copy(extracted["paths"]["text"], tmp_path)
    assert local_problems(store) == []
    os.remove(store / "length" / "c" / "0")
    assert [(p.array, p.chunk) for p in local_problems(store)] == [("length", "c/0")]
