"""Stage-1 storage options of the image tokens (``--storage fp16|int8|bitround:N``, ``--keep-tokens K``): each
round-trips through the real writer and reader (int8 within half a quantisation step, bitround exactly the
bit-rounded float16, kept tokens exactly the teacher's at the recorded positions), each has its own key while the
default's key and arrays are unchanged, old readers' views (open_features, verify) see float tokens, and a bad value
is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import mad_inproc, make_photos, write_manifest
from mad_pipeline.stages import extract as stage

from mad_pipeline.cache import make_key
from mad_pipeline.errors import InputError
from mad_pipeline.losses.selection import SELECTION_POLICIES
from mad_pipeline.store.reader import open_store
from mad_pipeline.store.storage import Storage, keep_indices

OPTIONS = {"fp16": {}, "int8": {"storage": "int8"}, "bitround7": {"storage": "bitround:7"},
           "keep4": {"keep_tokens": 4}, "int8-keep4": {"storage": "int8", "keep_tokens": 4}}


@pytest.fixture(scope="module")
def extracted(tiny_clip, tmp_path_factory):
    """One extraction of 6 photos per storage option into one cache: {option: ExtractResult}."""
    cfg_file, weights = tiny_clip
    root = tmp_path_factory.mktemp("storage-photos")
    rels = make_photos(root, 6, size=48)
    manifest = write_manifest(root / "m.jsonl", [{"id": f"s{i}", "image": r, "text": f"photo {i}"}
                                                 for i, r in enumerate(rels)])
    cache = tmp_path_factory.mktemp("storage-cache")
    out = {}
    for name, kw in OPTIONS.items():
        cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(weights), data_root=root, manifest=manifest,
                                  cache=cache, num_workers=0, batch_size=8, progress=False, **kw)
        out[name] = stage.run(cfg, log=lambda _: None)
    return {"results": out, "root": root, "manifest": manifest, "cache": cache, "weights": weights,
            "cfg_file": cfg_file}


def _store(extracted, name: str):
    return open_store(extracted["results"][name].stores["image"].path)


def _bytes(path: str, *arrays: str) -> int:
    return sum(f.stat().st_size for a in arrays for f in (Path(path) / a).rglob("*") if f.is_file()
               and f.name != "zarr.json")


def test_default_is_unchanged_and_every_option_has_its_own_key(extracted):
    res = extracted["results"]
    keys = {name: r.stores["image"].key for name, r in res.items()}
    assert len(set(keys.values())) == len(keys)  # one key per option
    fp16 = _store(extracted, "fp16")
    # the default's key is made of exactly what it was made of before storage options existed
    man = fp16.manifest
    assert keys["fp16"] == make_key("image", teacher={k: v for k, v in man["teacher"].items()
                                                      if k not in ("name", "tower")},
                                    inputs=man["inputs_sha256"])
    assert "storage" not in man and fp16.storage == Storage()
    assert not {"tokens_scale", "token_index"} & {name for name, _ in fp16.group.arrays()}
    assert fp16.group["tokens"].dtype == np.float16 and not fp16.group["tokens"].filters
    # the text and index stores do not depend on the image storage
    for name in res:
        assert res[name].stores["text"].key == res["fp16"].stores["text"].key
        assert res[name].stores["index"].key == res["fp16"].stores["index"].key
    assert _store(extracted, "int8").manifest["storage"]["tokens"] == "int8"
    assert _store(extracted, "keep4").manifest["storage"] == {"tokens": "fp16", "keep_tokens": 4,
                                                              "keep_policy": "teacher-saliency"}


def test_int8_round_trip_within_half_a_step(extracted):
    ref = np.asarray(_store(extracted, "fp16")["tokens"][:], np.float32)
    st = _store(extracted, "int8")
    got = st["tokens"][:]
    assert got.dtype == np.float16 and got.shape == ref.shape
    assert "tokens_scale" not in st.array_names() and st.group["tokens"].dtype == np.int8
    scale = np.asarray(st.group["tokens_scale"][:], np.float32)
    assert scale.shape == ref.shape[:2] and st.group["tokens_scale"].metadata.dimension_names == ("image", "token")
    np.testing.assert_allclose(scale, np.abs(ref).max(-1) / 127, rtol=1e-6)
    err = np.abs(got.astype(np.float32) - ref)
    bound = scale[..., None] / 2 + np.abs(ref) * 2.0**-11 + 1e-7  # half a step + float16 rounding of the result
    assert (err <= bound).all()
    # partial reads (a row, a token, a channel) dequantise the same way
    np.testing.assert_array_equal(st["tokens"][2], got[2])
    np.testing.assert_array_equal(st["tokens"][1:3, 5], got[1:3, 5])
    np.testing.assert_array_equal(st["tokens"][:, :, 7], got[:, :, 7])
    # smaller on disk than fp16 tokens, scale included
    assert _bytes(st.path, "tokens", "tokens_scale") < 0.75 * _bytes(_store(extracted, "fp16").path, "tokens")


def test_bitround_is_exactly_the_bit_rounded_float16(extracted):
    from numcodecs import BitRound

    ref = _store(extracted, "fp16")["tokens"][:]
    st = _store(extracted, "bitround7")
    got = st["tokens"][:]
    assert got.dtype == np.float16
    np.testing.assert_array_equal(got.view(np.int16), BitRound(keepbits=7).encode(ref).view(np.int16))
    assert (got.view(np.uint16) & 0b111).max() == 0  # the 3 lowest mantissa bits are gone
    assert _bytes(st.path, "tokens") < _bytes(_store(extracted, "fp16").path, "tokens")


def test_kept_tokens_are_the_teachers_at_their_positions(extracted):
    full = _store(extracted, "fp16")["tokens"][:]
    st = _store(extracted, "keep4")
    kept, idx = st["tokens"][:], np.asarray(st["token_index"][:])
    assert kept.shape == (full.shape[0], 5, full.shape[2]) and idx.dtype == np.int16
    assert (idx[:, 0] == 0).all() and (np.diff(idx, axis=1) > 0).all()  # CLS first, then grid order
    np.testing.assert_array_equal(kept, np.take_along_axis(full, idx.astype(np.int64)[..., None], axis=1))
    # the 4 patches are the top 4 by cos(patch, CLS)
    import torch

    x = torch.from_numpy(full).float()
    scores = SELECTION_POLICIES["teacher-saliency"].score(x[:, 1:], x[:, 0], None, None, None, None, 0)
    top = np.sort(torch.topk(scores, 4, dim=1).indices.numpy() + 1, axis=1)
    np.testing.assert_array_equal(idx[:, 1:], top)
    np.testing.assert_array_equal(keep_indices(full, 4, "teacher-saliency"), idx)
    # int8 of the kept tokens: the same positions, dequantised
    both = _store(extracted, "int8-keep4")
    np.testing.assert_array_equal(both["token_index"][:], idx)
    assert np.abs(both["tokens"][:].astype(np.float32) - kept).max() <= np.abs(kept).max() / 127


def test_other_readers_see_float_tokens(extracted, tmp_path):
    from mad_pipeline.features import open_features
    from mad_pipeline.store.verify import verify_store

    for name in ("int8", "int8-keep4"):
        st = _store(extracted, name)
        ds = open_features(st)
        assert "tokens_scale" not in ds and ds["tokens"].dtype == np.float16
        np.testing.assert_array_equal(ds["tokens"].values, st["tokens"][:])
        if "keep" in name:
            assert ds["token_index"].dims == ("image", "token")
        report = verify_store(st.path)
        assert report.ok, report
    # plain zarr still opens an int8 store (the scale is an ordinary array beside the tokens)
    g = zarr.open_group(_store(extracted, "int8").path, mode="r")
    assert g["tokens"].dtype == np.int8 and g["tokens_scale"].dtype == np.float32


def test_a_rerun_is_cached_and_a_bad_value_is_one_line(extracted, tmp_path):
    cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(extracted["weights"]), data_root=extracted["root"],
                              manifest=extracted["manifest"], cache=extracted["cache"], num_workers=0,
                              progress=False, storage="int8")
    again = stage.run(cfg, log=lambda _: None)
    assert again.stores["image"].cached and not again.teacher_loaded
    assert again.stores["image"].key == extracted["results"]["int8"].stores["image"].key
    for kw, msg in (({"storage": "int4"}, "--storage int4: expected fp16, int8 or bitround:N"),
                    ({"storage": "bitround:10"}, "--storage bitround:10: bitround keeps 1 to 9"),
                    ({"keep_tokens": -1}, "--keep-tokens -1"),
                    ({"keep_tokens": 4, "keep_policy": "random"}, "--keep-policy random: it does not rank")):
        with pytest.raises(InputError, match=msg.replace("(", r"\(")):
            Storage.parse(**kw)
    env = {"MAD_MODEL_CONFIGS": str(extracted["cfg_file"]), "MAD_CACHE": str(tmp_path / "c")}
    proc = mad_inproc("extract", "--teacher", "tiny-clip", "--weights", str(extracted["weights"]), "--manifest",
                      str(extracted["manifest"]), "--data-root", str(extracted["root"]), "--storage", "fp8",
                      env=env, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --storage fp8: expected fp16, int8 or bitround:N (N = 1..9 mantissa bits)"]


# ---------------------------------------------------------------------------------------------- stage 2


def test_kept_tokens_give_the_full_stores_targets_where_they_cover(extracted):
    import torch

    from mad_pipeline.losses import patch_centers
    from mad_pipeline.losses.targets import aligned_patches
    from mad_pipeline.training import kept

    full_st, keep_st = _store(extracted, "fp16"), _store(extracted, "keep4")
    grid = tuple(full_st.manifest["geometry"]["grid"])
    full = torch.from_numpy(full_st["tokens"][:])
    boxes = torch.from_numpy(np.asarray(full_st["crop_box"][:], np.float32))
    index = torch.from_numpy(np.asarray(keep_st["token_index"][:], np.int64))
    expanded = kept.expand(torch.from_numpy(keep_st["tokens"][:]), index, grid)
    for student_grid in (grid, (6, 6)):  # the teacher's own grid, and one whose centres fall between its patches
        centers = patch_centers(boxes, student_grid)
        ref, ref_mask = aligned_patches(full, grid, boxes, centers)
        got, mask = aligned_patches(expanded, grid, boxes, centers, student_mask=kept.covered(index, grid, boxes,
                                                                                               centers))
        assert mask.any() and (mask <= ref_mask).all()
        torch.testing.assert_close(got[mask], ref[mask], rtol=0, atol=0)
    # on the teacher's own grid, exactly the kept patches are covered
    cover = kept.covered(index, grid, boxes, patch_centers(boxes, grid))
    assert (cover.sum(1) == 4).all()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("storage-world")
    write_dataset(out, size=16, seed=0)
    return out


def _distill(extracted, world, out: Path, **kw):
    from mad_pipeline.stages.distill import DistillConfig
    from mad_pipeline.stages.distill import run as distill_run

    from mad_pipeline.training.config import TrainConfig

    cfg = DistillConfig(task="vqa", data_root=world / "vqa", out=out, teacher="tiny-clip",
                        weights=str(extracted["weights"]), vocab_min_count=1, cache=extracted["cache"],
                        progress=False, train=TrainConfig(steps=2, batch_size=8, log_every=1, num_workers=0), **kw)
    return distill_run(cfg, log=lambda m: None)


def test_distill_from_an_int8_keep_tokens_store(extracted, world, tmp_path):
    """One tiny training from a store that is both int8 (dequantised on read) and keeps 8 patches per image."""
    from mad_pipeline.losses import MADConfig
    from mad_pipeline.training import kept

    res = _distill(extracted, world, tmp_path / "run", keep_tokens=8, storage="int8")
    assert res.metrics["steps"] == 2
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["distill"] > 0 for r in rows if "eval" not in r)
    key = res.metrics["stores"]["train"]["image"]
    store = open_store(Path(extracted["cache"]) / "stores" / "image" / f"{key}.zarr")
    assert store.manifest["storage"] == {"tokens": "int8", "scale": "float32 per token: tokens = int8 * tokens_scale",
                                         "keep_tokens": 8, "keep_policy": "teacher-saliency"}
    # what the kept tokens cannot serve is refused in one line, before training (the run directory stays empty)
    with pytest.raises(InputError) as e:
        _distill(extracted, world, tmp_path / "refused", keep_tokens=8, storage="int8",
                 mad=MADConfig.from_switches("full", select="question-aware"))
    assert str(e.value) == (f"--select question-aware needs every image token; store {store.path} keeps 8 per image "
                            "(--keep-tokens), ranked by teacher-saliency; use --select teacher-saliency, all, random, "
                            "student-gap")
    assert not (tmp_path / "refused" / "run.json").exists()
    with pytest.raises(InputError, match=r"^--top-k 9 asks for more image tokens than the 8 kept: store .* keeps 8"):
        kept.check_selection(MADConfig.from_switches("full", select="teacher-saliency", top_k="9"), store)
    for ok in ("all", "random", "student-gap", "teacher-saliency"):
        kept.check_selection(MADConfig.from_switches("full", select=ok, top_k="8"), store)
