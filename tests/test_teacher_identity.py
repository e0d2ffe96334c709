"""A teacher's identity (its cache keys) comes from what determines its outputs, read from files without building it:
the same tensors in any container give one key, a store served from a shared cache builds no model, ``--weights``
is loaded for every teacher (also one shipped as a local directory), and wrong weights give one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLES, TINY_CLIP, mad_inproc, save_open_clip

from mad_pipeline.errors import TeacherError
from mad_pipeline.teachers import load_teacher
from mad_pipeline.teachers.identity import LazyTeacher

SHAPES_CLIP = Path(__file__).resolve().parent.parent / "mad_pipeline" / "assets" / "teachers" / "shapes-clip"


def tensor_digest(path, memo):
    from mad_pipeline.teachers.digest import tensor_digest as digest  # (new in this version)

    return digest(path, memo)


def _containers(weights: Path, out: Path) -> dict[str, str]:
    """The same state dict as safetensors, torch.save, a wrapped torch.save and an open_clip local directory."""
    from safetensors.torch import load_file

    sd = load_file(str(weights))
    out.mkdir(parents=True, exist_ok=True)
    torch.save(sd, out / "w.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, out / "wrapped.pt")
    d = out / "local"
    d.mkdir(exist_ok=True)
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP}))
    torch.save(sd, d / "open_clip_pytorch_model.bin")
    return {"safetensors": str(weights), "pt": str(out / "w.pt"), "wrapped": str(out / "wrapped.pt"),
            "local-dir": f"local-dir:{d}"}


def _extract(cache: Path, weights: str, **kw):
    from mad_pipeline.stages import extract

    cfg = extract.ExtractConfig(teacher="tiny-clip", weights=weights, manifest=EXAMPLES / "manifest.jsonl",
                                data_root=EXAMPLES, cache=cache, device="cpu", num_workers=0, progress=False, **kw)
    return extract.run(cfg, log=lambda m: None)


def test_same_tensors_in_any_container_give_one_identity_and_one_store(tiny_clip, tmp_path):
    _, weights = tiny_clip
    kinds = _containers(weights, tmp_path / "w")
    ids = {}
    for kind, w in kinds.items():
        t = LazyTeacher("tiny-clip", w, "cpu", "auto", None, tmp_path / f"memo-{kind}")
        ids[kind] = (t.identity("image"), t.identity("text"))
        assert not t.loaded  # found without building the model
    assert all(v == ids["safetensors"] for v in ids.values()), {k: v[0]["weights_sha256"] for k, v in ids.items()}
    assert ids["safetensors"][0]["weights_sha256"] == tensor_digest(weights, None)["sha256"]

    # other tensors (same architecture) -> another identity
    _, other = save_open_clip("tiny-clip", TINY_CLIP, tmp_path, seed=1)
    t = LazyTeacher("tiny-clip", str(other), "cpu", "auto", None, tmp_path / "memo-other")
    assert t.identity("image")["weights_sha256"] != ids["safetensors"][0]["weights_sha256"]

    # one set of stores: built from the safetensors file, served from the cache for the other containers
    first = _extract(tmp_path / "cache", kinds["safetensors"])
    for kind in ("pt", "local-dir"):
        again = _extract(tmp_path / "cache", kinds[kind])
        assert {k: s.key for k, s in again.stores.items()} == {k: s.key for k, s in first.stores.items()}, kind
        assert all(s.cached for s in again.stores.values()) and not again.teacher_loaded, kind


def test_identity_preprocessing_is_what_the_loaded_model_uses(tiny_clip, tmp_path):
    _, weights = tiny_clip
    d = tmp_path / "squash"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                                                   "interpolation": "bilinear", "resize_mode": "squash"}}))
    shutil.copy(weights, d / "open_clip_model.safetensors")
    lazy = LazyTeacher("tiny-clip", f"local-dir:{d}", "cpu", "auto", None, tmp_path / "memo")
    ident = lazy.identity("image")
    model = lazy.get()
    pcfg = model.model.visual.preprocess_cfg
    assert ident["preprocess"] == {"image_size": model.image_size, "mean": list(pcfg["mean"]),
                                   "std": list(pcfg["std"]), "interpolation": pcfg["interpolation"],
                                   "resize_mode": pcfg["resize_mode"]}
    assert ident["preprocess"]["resize_mode"] == "squash" and model.image_identity() == ident


def test_shared_cache_hit_with_an_empty_local_cache_builds_no_model(tiny_clip, tmp_path, monkeypatch):
    import open_clip
    import safetensors

    _, weights = tiny_clip
    shared = tmp_path / "shared"
    built = _extract(shared, str(weights), task=None)
    assert built.teacher_loaded

    def no_model(*a, **k):
        raise AssertionError("a teacher model was built")

    for mod in (open_clip, open_clip.factory):
        monkeypatch.setattr(mod, "create_model", no_model)
        monkeypatch.setattr(mod, "create_model_and_transforms", no_model)
    opened = []
    real_open = safetensors.safe_open

    def counting_open(path, *a, **k):
        opened.append(Path(path).resolve())
        return real_open(path, *a, **k)

    monkeypatch.setattr(safetensors, "safe_open", counting_open)
    monkeypatch.setenv("MAD_SHARED_CACHE", str(shared))
    local = tmp_path / "empty-local"
    res = _extract(local, str(weights))
    assert all(s.cached and s.source.startswith("shared:") for s in res.stores.values()), res.stores
    assert not res.teacher_loaded
    assert opened.count(Path(weights).resolve()) <= 1  # read once, to digest it
    assert [s.key for s in res.stores.values()] == [s.key for s in built.stores.values()]

    opened.clear()  # the digest is memoised in the local cache: a second run does not read the weights at all
    _extract(local, str(weights))
    assert opened == []


def test_weights_are_loaded_for_a_teacher_shipped_as_a_local_dir(tmp_path):
    import open_clip
    from safetensors.torch import load_file, save_file

    from mad_pipeline.data.images import load_image

    # the shipped teacher (the demo's) is open_clip's own load of its directory: same weights, same preprocessing
    own = load_teacher("shapes-clip", device="cpu", precision="fp32")
    ref, _, ref_preprocess = open_clip.create_model_and_transforms(f"local-dir:{SHAPES_CLIP}")
    for k, v in ref.state_dict().items():
        assert torch.equal(own.model.state_dict()[k], v), k
    image = load_image(EXAMPLES / "images" / "coffee.jpg")
    assert torch.equal(own.preprocess(image), ref_preprocess(image))

    sd = load_file(str(SHAPES_CLIP / "open_clip_model.safetensors"))
    g = torch.Generator().manual_seed(0)
    sd = {k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v for k, v in sd.items()}
    other = tmp_path / "retrained.safetensors"
    save_file(sd, str(other))
    t = load_teacher("shapes-clip", weights=str(other), device="cpu", precision="fp32")
    got = t.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in sd.items())  # the given file, not the shipped one

    memo = tmp_path / "memo"
    given = LazyTeacher("shapes-clip", str(other), "cpu", "fp32", None, memo).identity("image")
    shipped = LazyTeacher("shapes-clip", None, "cpu", "fp32", None, memo).identity("image")
    assert given["weights_sha256"] == tensor_digest(other, None)["sha256"] != shipped["weights_sha256"]
    assert given["arch"] == shipped["arch"] and given["preprocess"] == shipped["preprocess"]


# ---------------------------------------------------------------------------------------------------- wrong weights
def test_wrong_architecture_checkpoint_is_one_line_naming_both(tiny_clip, tmp_path):
    wide = {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "width": 96, "patch_size": 16}}
    _, w = save_open_clip("tiny-clip-wide", wide, tmp_path)
    want = (r"^checkpoint .*tiny-clip-wide-seed0.safetensors \(--weights\) is tiny-clip-wide \(by its tensor "
            r"shapes\); teacher tiny-clip expects tiny-clip$")
    with pytest.raises(TeacherError, match=want):
        LazyTeacher("tiny-clip", str(w), "cpu", "auto", None, tmp_path / "memo").identity("image")
    with pytest.raises(TeacherError, match=want):
        load_teacher("tiny-clip", weights=str(w), device="cpu")
    from mad_pipeline.teachers.arch import check_clip, clip_from_config

    with pytest.raises(TeacherError, match=r"is image width 96 x 2 layers, patch 16 at 32 px; text width 32 x 2 "
                       r"layers \(by its tensor shapes\)"):  # an architecture open_clip has no config for
        check_clip({**tensor_digest(w, None)["shapes"], "visual.proj": [96, 33]}, TINY_CLIP, "w", "tiny-clip", "x")
    assert clip_from_config(wide) is not None


def test_wrong_architecture_names_the_checkpoints_open_clip_model():
    import open_clip

    from mad_pipeline.teachers.arch import check_clip

    with torch.device("meta"):  # the real ViT-B-32 tensor shapes, no memory
        model = open_clip.create_model("ViT-B-32", device="meta")
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    with pytest.raises(TeacherError) as e:
        check_clip(shapes, open_clip.get_model_config("ViT-L-14-quickgelu"), "b32.pt", "clip-vit-l",
                   "ViT-L-14-quickgelu")
    assert str(e.value) == ("checkpoint b32.pt is ViT-B-32 (by its tensor shapes); teacher clip-vit-l expects "
                            "ViT-L-14-quickgelu")
    check_clip(shapes, open_clip.get_model_config("ViT-B-32-quickgelu"), "b32.pt", "clip-vit-b32", "x")  # fits


def test_wrong_text_checkpoint_is_one_line(tmp_path):
    from mad_pipeline.teachers.hf_text import packaged_minilm_dir

    minilm = packaged_minilm_dir()
    with pytest.raises(TeacherError, match=r"checkpoint .* \(--text-weights\) is hidden 384 x 6 layers "
                       r"\(all-MiniLM-L6-v2\) \(by its tensor shapes\); teacher roberta-base expects hidden 768 x 12"):
        LazyTeacher("roberta-base", minilm, "cpu", "auto", None, tmp_path / "m", flag="--text-weights").identity(
            "text")
    bad = tmp_path / "bad"
    shutil.copytree(minilm, bad)
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**cfg, "hidden_size": 768}))
    with pytest.raises(TeacherError, match=r"is hidden 384 x 6 layers .*; its config.json says hidden 768 x 6"):
        load_teacher("minilm", weights=str(bad), device="cpu")


def test_text_teacher_that_cannot_load_names_text_weights(tmp_path):
    with pytest.raises(TeacherError, match=r"pass --text-weights PATH"):
        LazyTeacher("clip-vit-b32", None, "cpu", "auto", None, tmp_path / "m", flag="--text-weights").identity(
            "text")
    with pytest.raises(TeacherError, match=r"--text-weights /nonexistent: expected a transformers save_pretrained"):
        LazyTeacher("minilm", "/nonexistent", "cpu", "auto", None, tmp_path / "m", flag="--text-weights").identity(
            "text")


def test_cli_text_teacher_hint_and_wrong_weights_are_one_line(tiny_clip, tmp_path):
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    args = ["extract", "--teacher", "tiny-clip", "--manifest", str(EXAMPLES / "manifest.jsonl"),
            "--data-root", str(EXAMPLES), "--quiet"]
    p = mad_inproc(*args, "--weights", str(weights), "--text-teacher", "roberta-base", env=env, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--text-weights" in err[0], err
    p = mad_inproc(*args, "--weights", str(SHAPES_CLIP / "open_clip_model.safetensors"), env=env, check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1 and "(by its tensor shapes); teacher tiny-clip expects" in err[0], err


def test_extract_names_an_unknown_task_before_reading_the_data(tiny_clip, tmp_path):
    from mad_pipeline.stages import extract

    from mad_pipeline.errors import InputError

    def run(**kw):
        extract.run(extract.ExtractConfig(teacher="tiny-clip", data_root=tmp_path, cache=tmp_path / "c",
                                          progress=False, **kw), log=lambda m: None)

    with pytest.raises(InputError, match=r"^--task 'vqa2': expected one of vqa, snli-ve, vcr"):
        run(task="vqa2", dataset="vqa", split="val")  # not "questions file not found"
    with pytest.raises(InputError, match=r"^--task vqa needs --dataset vqa \(got --dataset jsonl\)$"):
        run(task="vqa", split="val")  # not "--manifest is required with --dataset jsonl"
