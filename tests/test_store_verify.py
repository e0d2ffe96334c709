"""`mad store verify`: a clean store passes; one flipped byte in one chunk (or shard index) fails and is named; the
manifest is checked against the arrays."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import EXAMPLES, last_json, mad, mad_inproc

from mad_pipeline.store.verify import verify_store


@pytest.fixture(scope="module")
def stores(tiny_clip, tmp_path_factory) -> dict[str, Path]:
    """The example's image, text and index stores, 2 rows per shard (several shard files per array)."""
    cfg_file, weights = tiny_clip
    cache = tmp_path_factory.mktemp("verify-cache")
    res = last_json(mad_inproc("extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest",
                               str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--shard-rows", "2",
                               "--json", env={"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache)}))
    return {k: Path(s["path"]) for k, s in res["stores"].items()}


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name  # keeps the <key>.zarr name, which verify checks against the manifest
    shutil.copytree(src, dst)
    return dst


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_clean_stores_pass(stores):
    rep = verify_store(str(stores["image"])).as_dict()
    assert rep["ok"] and rep["kind"] == "image" and rep["problems"] == []
    assert rep["chunk_files"] == 3 * 5 + 1  # 6 rows / 2 per shard, 5 arrays; visual_proj: one chunk
    for kind in ("text", "index"):
        r = verify_store(str(stores[kind]))
        assert r.ok, [p.describe() for p in r.problems]
    out = mad_inproc("store", "verify", "-q", str(stores["text"])).stdout
    assert out.startswith("OK ") and "text store" in out


def test_one_flipped_byte_in_a_shard_fails_and_is_named(stores, tmp_path):
    store = _copy(stores["image"], tmp_path)
    shard = store / "tokens" / "c" / "1" / "0" / "0"
    _flip(shard, len(shard.read_bytes()) // 3)  # inside the (only) inner chunk's compressed bytes
    proc = mad("store", "verify", "-q", str(store), env={"COLUMNS": "250"}, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "tokens" in proc.stdout and "c/1/0/0" in proc.stdout and "checksum mismatch" in proc.stdout
    assert str(shard) in proc.stdout
    rep = verify_store(str(store)).as_dict()
    assert not rep["ok"]
    assert [(p["array"], p["chunk"], p["file"]) for p in rep["problems"]] == [("tokens", "c/1/0/0", str(shard))]
    assert "rows 2-3" in rep["problems"][0]["message"]


def test_flipped_byte_in_an_unsharded_chunk_and_in_a_shard_index(stores, tmp_path):
    store = _copy(stores["text"], tmp_path)
    chunk = store / "pooled" / "c" / "2" / "0"
    _flip(chunk, 5)
    index_of = store / "tokens" / "c" / "0" / "0" / "0"
    _flip(index_of, len(index_of.read_bytes()) - 8)  # the shard index sits at the end of the file
    rep = verify_store(str(store))
    got = {(p.array, p.chunk): p.message for p in rep.problems}
    assert set(got) == {("pooled", "c/2/0"), ("tokens", "c/0/0/0")}, got
    assert "checksum mismatch" in got[("pooled", "c/2/0")] and "index" in got[("tokens", "c/0/0/0")]


def test_truncated_shard_and_missing_array(stores, tmp_path):
    store = _copy(stores["image"], tmp_path)
    shard = store / "tokens" / "c" / "2" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:-30])
    shutil.rmtree(store / "crop_box")
    rep = verify_store(str(store))
    msgs = [p.describe() for p in rep.problems]
    assert any(p.array == "tokens" and p.chunk == "c/2/0/0" for p in rep.problems), msgs
    assert any(p.array == "crop_box" and "metadata missing" in p.message for p in rep.problems), msgs


def test_inner_chunks_of_a_multi_chunk_shard_are_named(tmp_path):
    import zarr.codecs as zc

    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    a = g.create_array("x", shape=(8, 3), chunks=(2, 3), shards=(4, 3), dtype="float32",
                       compressors=[zc.Crc32cCodec()], dimension_names=["row", "col"])
    a[:] = np.arange(24, dtype="float32").reshape(8, 3)
    with pytest.warns(UserWarning):  # "consolidated metadata is not part of the v3 spec"
        zarr.consolidate_metadata(str(tmp_path / "s.zarr"))
    assert verify_store(str(tmp_path / "s.zarr")).chunks == 4
    shard = tmp_path / "s.zarr" / "x" / "c" / "1" / "0"
    _flip(shard, 2 * 3 * 4 + 4 + 1)  # second inner chunk of the second shard: chunk 3 = rows 6-7
    rep = verify_store(str(tmp_path / "s.zarr"))
    raw = [p for p in rep.problems if "inner chunk" in p.message]
    assert len(raw) == 1 and raw[0].chunk == "c/1/0" and "inner chunk 3,0 (rows 6-7)" in raw[0].message


def test_manifest_is_checked_against_the_arrays(stores, tmp_path):
    store = _copy(stores["image"], tmp_path)
    g = zarr.open_group(str(store), mode="r+", use_consolidated=False)
    hashes = g["image_hash"][:]
    g["image_hash"][0:2] = np.asarray([hashes[1], hashes[0]], dtype=object)  # unsorted, still valid chunks
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["mad"]["n_rows"] = 7
    meta["attributes"]["mad"]["geometry"]["width"] = 65
    (store / "zarr.json").write_text(json.dumps(meta))
    rep = verify_store(str(store))
    text = "\n".join(p.describe() for p in rep.problems)
    assert "image_hash: not sorted ascending and unique" in text
    assert "tokens: shape (6, 17, 64) does not have n_rows = 7 rows" in text
    assert "tokens: row shape (17, 64) does not match the manifest geometry (17, 65)" in text
    assert all(p.chunk == "" for p in rep.problems)  # every chunk itself is intact


def test_not_a_store_is_a_one_line_error(tmp_path):
    proc = mad_inproc("store", "verify", str(tmp_path), check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: {tmp_path}: not a zarr store (no zarr.json)"


def test_zeroshot_table_matches_the_writer():
    from mad_pipeline.extraction.zeroshot import zeroshot_arrays
    from mad_pipeline.store.layout import zarr_data_type
    from mad_pipeline.store.verify import ZEROSHOT_ARRAYS

    assert {s.name: (zarr_data_type(s.dtype), 1 + len(s.row_shape)) for s in zeroshot_arrays(3)} == ZEROSHOT_ARRAYS
