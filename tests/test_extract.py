"""`mad extract` end to end through the real CLI: store format, plain-zarr/dask access, dedup, cache keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import EXAMPLES, TINY_CLIP, last_json, mad, mad_inproc, make_photos, save_open_clip, write_manifest


@pytest.fixture()
def env(tiny_clip, cache_dir):
    cfg_file, _ = tiny_clip
    return {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache_dir)}


def extract(env, *args, subprocess: bool = False):
    """`mad extract --json` in this process; ``subprocess=True``: the real console script in its own process."""
    return last_json((mad if subprocess else mad_inproc)("extract", "--teacher", "tiny-clip", "--json", *args, env=env))


def test_example_extracts_and_reruns_cached(tiny_clip, env):
    _, weights = tiny_clip
    args = ["--weights", str(weights), "--manifest", str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES)]
    first = extract(env, *args, subprocess=True)
    assert first["samples"] == 8 and first["images"] == 6 and first["texts"] == 8
    assert first["stores"]["image"]["rows_computed"] == 6  # 8 samples share 6 images: 6 forwards, not 8
    assert not any(s["cached"] for s in first["stores"].values())
    second = extract(env, *args)
    assert all(s["cached"] for s in second["stores"].values())
    assert second["teacher_loaded"] is False  # a cached rerun does not even load the teacher
    assert {k: s["key"] for k, s in first["stores"].items()} == {k: s["key"] for k, s in second["stores"].items()}

    info = mad_inproc("store", "info", first["stores"]["image"]["path"], env={**env, "COLUMNS": "200"})
    assert "tokens" in info.stdout and "(6, 17, 64)" in info.stdout and "image" in info.stdout


def test_store_opens_with_plain_zarr_and_dask_without_mad(tiny_clip, env):
    _, weights = tiny_clip
    res = extract(env, "--weights", str(weights), "--manifest", str(EXAMPLES / "manifest.jsonl"),
                  "--data-root", str(EXAMPLES))
    image, text = res["stores"]["image"]["path"], res["stores"]["text"]["path"]
    code = f"""
import sys, json, zarr, dask.array as da
g = zarr.open_group({image!r}, mode="r")
t = da.from_zarr(g["tokens"])
assert t.shape == (6, 17, 64) and str(t.dtype) == "float16", (t.shape, t.dtype)
assert float(abs(t).sum().compute()) > 0
dims = {{name: list(a.metadata.dimension_names) for name, a in g.arrays()}}
tg = zarr.open_group({text!r}, mode="r")
dims.update({{"text/" + name: list(a.metadata.dimension_names) for name, a in tg.arrays()}})
man = dict(g.attrs)["mad"]
print(json.dumps({{"dims": dims, "manifest": man, "mad_imported": "mad_pipeline" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["mad_imported"] is False
    assert got["dims"]["tokens"] == ["image", "token", "channel"]
    assert got["dims"]["pooled"] == ["image", "embed"]
    assert got["dims"]["crop_box"] == ["image", "box"]
    assert got["dims"]["text/tokens"] == ["text", "token", "channel"]
    assert got["dims"]["text/char_span"] == ["text", "token", "span"]
    man = got["manifest"]
    assert man["format_version"] == 2 and man["kind"] == "image" and man["cache_key"] == res["stores"]["image"]["key"]
    assert len(man["teacher"]["weights_sha256"]) == 64 and man["teacher"]["preprocess"]["image_size"] == 32
    assert {"torch", "open_clip_torch", "zarr"} <= set(man["library_versions"])

    g = zarr.open_group(image, mode="r")
    codecs = json.dumps(g["tokens"].metadata.to_dict()["codecs"])
    assert "sharding_indexed" in codecs and "blosc" in codecs and "zstd" in codecs and "crc32c" in codecs
    root_meta = json.loads((Path(image) / "zarr.json").read_text())
    assert "consolidated_metadata" in root_meta  # written once, at the end
    hashes = g["image_hash"][:]
    assert list(hashes) == sorted(hashes)  # rows sorted by content hash
    assert bool(np.all(g["valid"][:]))
    box = g["crop_box"][:]
    assert np.all(box[:, 2] > box[:, 0]) and np.all(box[:, 3] > box[:, 1])


def test_crop_box_is_the_center_square_of_the_original(tiny_clip, env, tmp_path):
    from PIL import Image

    _, weights = tiny_clip
    Image.new("RGB", (200, 100), (10, 20, 30)).save(tmp_path / "wide.png")
    write_manifest(tmp_path / "m.jsonl", [{"id": 1, "image": "wide.png", "text": "a wide image"}])
    res = extract(env, "--weights", str(weights), "--manifest", str(tmp_path / "m.jsonl"),
                  "--data-root", str(tmp_path))
    box = zarr.open_group(res["stores"]["image"]["path"], mode="r")["crop_box"][0]
    np.testing.assert_allclose(box, [50, 0, 150, 100])  # shortest side -> 32 px, centre crop


def test_cache_key_properties(tiny_clip, env, tmp_path):
    cfg_file, weights = tiny_clip
    root = tmp_path / "data"
    rels = make_photos(root, 6)
    recs = [{"id": f"s{i}", "image": r, "text": f"photo number {i}"} for i, r in enumerate(rels)]
    write_manifest(root / "a.jsonl", recs)
    write_manifest(root / "b.jsonl", list(reversed(recs)))
    base = ["--weights", str(weights), "--data-root", str(root)]
    a = extract(env, *base, "--manifest", str(root / "a.jsonl"), "--batch-size", "4", "--num-workers", "0")
    # another order, batch size and worker count: the same image/text keys, served from the cache
    b = extract({**env, "MAD_CACHE": str(tmp_path / "other-cache")}, *base, "--manifest", str(root / "b.jsonl"),
                "--batch-size", "1", "--num-workers", "2")
    assert a["stores"]["image"]["key"] == b["stores"]["image"]["key"]
    assert a["stores"]["text"]["key"] == b["stores"]["text"]["key"]
    for kind in ("image", "text"):
        ga = zarr.open_group(a["stores"][kind]["path"], mode="r")
        gb = zarr.open_group(b["stores"][kind]["path"], mode="r")
        for name, arr in ga.arrays():
            x, y = arr[:], gb[name][:]
            if x.dtype == np.float16:  # BLAS blocking differs with batch size: at most fp16 rounding apart
                np.testing.assert_allclose(x.astype(np.float32), y.astype(np.float32), rtol=2e-3, atol=2e-4,
                                           err_msg=f"{kind}/{name}")
            else:
                np.testing.assert_array_equal(x, y, err_msg=f"{kind}/{name}")

    # one changed byte in one image -> another image key; the text key is untouched
    p = root / rels[3]
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01
    p.write_bytes(bytes(data))
    c = extract(env, *base, "--manifest", str(root / "a.jsonl"))
    assert c["stores"]["image"]["key"] != a["stores"]["image"]["key"]
    assert c["stores"]["text"]["key"] == a["stores"]["text"]["key"] and c["stores"]["text"]["cached"]

    # another weight file (same architecture) -> other keys
    _, weights2 = save_open_clip("tiny-clip", TINY_CLIP, tmp_path, seed=1)
    d = extract(env, "--weights", str(weights2), "--data-root", str(root), "--manifest", str(root / "a.jsonl"))
    assert d["stores"]["image"]["key"] != c["stores"]["image"]["key"]
    assert d["stores"]["text"]["key"] != c["stores"]["text"]["key"]

    # another preprocessing, same weights (open_clip's local-dir layout with its own preprocess_cfg) -> another
    # image key; the text key stays (text preprocessing did not change)
    def local_dir(name, resize_mode):
        d = tmp_path / name
        d.mkdir()
        (d / "open_clip_config.json").write_text(json.dumps({
            "model_cfg": json.loads(cfg_file.read_text()),
            "preprocess_cfg": {"image_size": 32, "mean": [0.48145466, 0.4578275, 0.40821073],
                               "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                               "resize_mode": resize_mode}}))
        (d / "open_clip_model.safetensors").write_bytes(weights2.read_bytes())
        return d

    keys = {}
    for mode in ("shortest", "squash"):
        e = extract(env, "--weights", f"local-dir:{local_dir(mode, mode)}", "--data-root", str(root),
                    "--manifest", str(root / "a.jsonl"))
        keys[mode] = (e["stores"]["image"]["key"], e["stores"]["text"]["key"])
    assert keys["shortest"][0] != keys["squash"][0]
    assert keys["shortest"][1] == keys["squash"][1]


def test_second_text_teacher_reuses_image_store_untouched(tiny_clip, env):
    _, weights = tiny_clip
    args = ["--weights", str(weights), "--manifest", str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES)]
    first = extract(env, *args)
    image = Path(first["stores"]["image"]["path"])
    before = {p: p.stat().st_mtime_ns for p in image.rglob("*") if p.is_file()}
    second = extract(env, *args, "--text-teacher", "minilm")
    assert second["stores"]["image"]["cached"] and second["stores"]["image"]["path"] == str(image)
    assert not second["stores"]["text"]["cached"]
    assert second["stores"]["text"]["key"] != first["stores"]["text"]["key"]
    assert {p: p.stat().st_mtime_ns for p in image.rglob("*") if p.is_file()} == before
    g = zarr.open_group(second["stores"]["text"]["path"], mode="r")
    assert g["tokens"].shape == (8, 64, 384) and dict(g.attrs)["mad"]["teacher"]["name"] == "minilm"
