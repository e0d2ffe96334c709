"""Zero-shot stores on the shapes world (official formats): image store shared across VQA / SNLI-VE / VCR,
teacher zero-shot predictions scored by `mad score`; deterministic low-shot subsets."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest
import zarr
from conftest import last_json, mad_inproc

from mad_pipeline.data import load_dataset
from mad_pipeline.data.splits import subsample


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes")
    write_dataset(out, size=200, seed=0)
    return out


def test_zeroshot_stores_share_one_image_store(tiny_clip, shapes_root, tmp_path, monkeypatch):
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    res = {}
    for ds, split in (("vqa", "val"), ("snli-ve", "dev"), ("vcr", "val")):
        res[ds] = last_json(mad_inproc("extract", "--teacher", "tiny-clip", "--weights", str(weights), "--dataset",
                                       ds, "--split", split, "--data-root", str(shapes_root / ds), "--task", ds,
                                       "--json", env=env))
        assert set(res[ds]["stores"]) == {"image", "text", "index", "zeroshot"}
    image_keys = {r["stores"]["image"]["key"] for r in res.values()}
    assert len(image_keys) == 1  # the same image bytes under three official layouts: one image store
    assert res["vqa"]["stores"]["image"]["rows_computed"] > 0
    for ds in ("snli-ve", "vcr"):  # no second image forward
        assert res[ds]["stores"]["image"]["cached"] and res[ds]["stores"]["image"]["rows_computed"] == 0

    zs = zarr.open_group(res["vqa"]["stores"]["zeroshot"]["path"], mode="r")
    n = res["vqa"]["samples"]
    assert zs["logits"].shape[0] == n and zs["candidate_text"].shape == zs["logits"].shape
    labels, logits = zs["candidate_label"][:], zs["logits"][:]
    assert np.all(np.isnan(logits) == (labels == ""))  # padding is NaN, every real candidate has a logit
    vcr = zarr.open_group(res["vcr"]["stores"]["zeroshot"]["path"], mode="r")
    # every VCR row has the same labels: stored once, no per-row copy (the texts differ per question: per row)
    assert list(vcr["shared_label"][:]) == ["a0", "a1", "a2", "a3", "r0", "r1", "r2", "r3"]
    assert "candidate_label" not in vcr and vcr["candidate_text"].shape == vcr["logits"].shape

    q = shapes_root / "vqa" / "v2_OpenEnded_mscoco_val2014_questions.json"
    a = shapes_root / "vqa" / "v2_mscoco_val2014_annotations.json"
    out = tmp_path / "zs.json"
    score = last_json(mad_inproc("score", "--task", "vqa", "--zeroshot", res["vqa"]["stores"]["zeroshot"]["path"],
                                 "--questions", str(q), "--annotations", str(a), "--write-predictions", str(out),
                                 "--json", env=env))
    assert score["n"] == n and 0 <= score["overall"] <= 100 and out.exists()
    # the written predictions are the official results format and score the same through --predictions
    again = last_json(mad_inproc("score", "--task", "vqa", "--predictions", str(out), "--questions", str(q),
                                 "--annotations", str(a), "--json", env=env))
    assert again["overall"] == score["overall"]
    tmp = tmp_path / "tmp"  # without --write-predictions the predictions do not outlive the command
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    vcr_score = last_json(mad_inproc("score", "--task", "vcr", "--zeroshot",
                                     res["vcr"]["stores"]["zeroshot"]["path"],
                                     "--annotations", str(shapes_root / "vcr" / "val.jsonl"), "--json", env=env))
    assert {"q2a", "qa2r", "q2ar"} <= set(vcr_score)
    assert vcr_score["predictions"] is None and list(tmp.iterdir()) == []


def test_train_fraction_is_deterministic_nested_and_seeded(shapes_root):
    ds = load_dataset("vqa", shapes_root / "vqa", split="train")
    ids = lambda f, s: [x.id for x in subsample(ds.samples, f, s)]  # noqa: E731
    a = ids(0.01, 3)
    assert a == ids(0.01, 3) and len(a) == int(np.ceil(0.01 * len(ds.samples)))
    assert a != ids(0.01, 4)
    assert set(ids(0.05, 3)) >= set(a)  # nested: the 1% subset is inside the 5% one
    # the same ids on every machine: pinned by value
    import hashlib

    expected = sorted(ds.samples, key=lambda x: hashlib.sha256(f"3:{x.id}".encode()).hexdigest())[: len(a)]
    assert sorted(a) == sorted(x.id for x in expected)


def test_train_fraction_through_extract(tiny_clip, shapes_root, tmp_path):
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--dataset", "vqa", "--split", "train",
            "--data-root", str(shapes_root / "vqa"), "--train-fraction", "0.1", "--json"]
    r1 = last_json(mad_inproc(*args, "--seed", "3", env=env))
    r2 = last_json(mad_inproc(*args, "--seed", "3", env=env))
    r3 = last_json(mad_inproc(*args, "--seed", "4", env=env))
    assert r1["stores"]["index"]["key"] == r2["stores"]["index"]["key"] and r2["stores"]["index"]["cached"]
    assert r1["stores"]["index"]["key"] != r3["stores"]["index"]["key"]
    a = set(zarr.open_group(r1["stores"]["index"]["path"], mode="r")["sample_id"][:])
    b = set(zarr.open_group(r3["stores"]["index"]["path"], mode="r")["sample_id"][:])
    assert len(a) == len(b) and a != b
