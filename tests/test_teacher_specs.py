"""Teachers named by their library: ``open_clip:MODEL/PRETRAINED`` (any pair open_clip knows, with ``--weights`` a
local file) and ``hf:REPO`` (a transformers text encoder by hub id or directory) follow the registry's identity
rules: nothing is registered, the same weights under an alias and under the form give one store key, wrong weights
or unknown names are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, last_json, mad_inproc, write_manifest

from mad_pipeline.errors import TeacherError
from mad_pipeline.teachers import get_teacher_spec
from mad_pipeline.teachers.identity import LazyTeacher


@pytest.fixture(scope="session")
def b32_weights(tmp_path_factory):
    """ViT-B-32 (the smallest architecture the registry has an alias for) at random weights, saved as fp16."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32-quickgelu")
    path = tmp_path_factory.mktemp("b32") / "vit-b-32-random.safetensors"
    save_file({k: v.half().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _env(tmp_path) -> dict:
    return {"MAD_CACHE": str(tmp_path / "cache"), "MAD_MODEL_CONFIGS": ""}  # nothing registered


def test_open_clip_form_with_local_weights_has_the_alias_store_key(b32_weights, tmp_path):
    import open_clip
    from mad_pipeline.stages import extract

    from mad_pipeline.data.images import load_image
    from mad_pipeline.store.reader import open_store

    manifest = write_manifest(tmp_path / "one.jsonl", [{"id": "a", "image": "images/coffee.jpg",
                                                        "text": "a cup of coffee on a saucer"}])
    form = last_json(mad_inproc("extract", "--teacher", "open_clip:ViT-B-32/openai", "--weights", str(b32_weights),
                                "--manifest", str(manifest), "--data-root", str(EXAMPLES), "--device", "cpu",
                                "--num-workers", "0", "--json", env=_env(tmp_path)))
    assert not any(s["cached"] for s in form["stores"].values()) and form["teacher_loaded"]
    alias = extract.run(extract.ExtractConfig(teacher="clip-vit-b32", weights=str(b32_weights), manifest=manifest,
                                              data_root=EXAMPLES, cache=tmp_path / "cache", device="cpu",
                                              num_workers=0, progress=False), log=lambda m: None)
    assert {k: s["key"] for k, s in form["stores"].items()} == {k: s.key for k, s in alias.stores.items()}
    assert all(s.cached for s in alias.stores.values()) and not alias.teacher_loaded

    # what was extracted is the tag's architecture (QuickGELU, as the OpenAI weights were trained), not plain GELU
    store = open_store(form["stores"]["image"]["path"])
    assert store.manifest["teacher"]["name"] == "open_clip:ViT-B-32/openai"
    assert store.manifest["teacher"]["arch"]["quick_gelu"] is True
    got = torch.from_numpy(np.asarray(store.group["pooled"][:], dtype=np.float32))
    ref, _, pre = open_clip.create_model_and_transforms("ViT-B-32-quickgelu", pretrained=str(b32_weights))
    pixels = pre(load_image(EXAMPLES / "images" / "coffee.jpg"))[None]
    with torch.no_grad():
        quick = ref.eval().encode_image(pixels)
        for block in ref.visual.transformer.resblocks:
            block.mlp.gelu = torch.nn.GELU()
        gelu = ref.encode_image(pixels)
    err, other = float((got - quick).abs().max()), float((got - gelu).abs().max())
    assert err < 5e-3 and err < other / 3, (err, other)

    # without the tag it is open_clip's plain ViT-B-32 config: another architecture, another key
    plain = LazyTeacher("open_clip:ViT-B-32", str(b32_weights), "cpu", "auto", None, tmp_path / "memo")
    assert plain.identity("image")["arch"] != store.manifest["teacher"]["arch"]


def test_wrong_weights_for_an_open_clip_form_is_one_line(b32_weights, tmp_path):
    p = mad_inproc("extract", "--teacher", "open_clip:ViT-L-14-quickgelu/openai", "--weights", str(b32_weights),
                   "--manifest", str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--quiet",
                   env=_env(tmp_path), check=False)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0] == (f"error: checkpoint {b32_weights} (--weights) is ViT-B-32 (by its tensor shapes); "
                      "teacher open_clip:ViT-L-14-quickgelu/openai expects ViT-L-14-quickgelu")


def test_unknown_tag_through_the_cli_is_one_line_listing_the_models_tags(capsys):
    from mad_pipeline.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["extract", "--teacher", "open_clip:ViT-B-32/no-such-tag", "--manifest",
              str(EXAMPLES / "manifest.jsonl"), "--data-root", str(EXAMPLES), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and "no pretrained tag 'no-such-tag' for ViT-B-32" in err[0], err
    assert err[0].startswith("error: ") and "laion2b_s34b_b79k" in err[0]  # the model's own tags are listed


@pytest.mark.parametrize(("name", "message"), [
    ("open_clip:ViT-B-33/openai", r"open_clip has no model 'ViT-B-33' \(did you mean ViT-B-32.*list_pretrained"),
    ("open_clip:", r"expected open_clip:MODEL/PRETRAINED"),
    ("open_clip:RN50/openai", r"its image tower is a ResNet; mad reads token-level features from open_clip's own"),
    ("open_clip:ViT-B-16-SigLIP/webli", r"its image tower is the timm model"),
    ("hf:", r"expected hf:REPO"),
    ("hf:/no/such/encoder", r"directory /no/such/encoder not found"),
    ("clip-vit-xxl", r"unknown teacher 'clip-vit-xxl'; known: .*open_clip:MODEL/PRETRAINED, hf:REPO"),
])
def test_unknown_names_are_one_line_saying_where_to_look(name, message):
    with pytest.raises(TeacherError, match=message):
        get_teacher_spec(name)


def test_any_pretrained_pair_resolves_without_the_hub():
    spec = get_teacher_spec("open_clip:ViT-B-16/dfn2b")
    assert (spec.family, spec.model, spec.pretrained, spec.towers) == ("open_clip", "ViT-B-16", "dfn2b",
                                                                        ("image", "text"))
    with pytest.raises(ValueError, match="library forms"):
        from mad_pipeline.teachers import TeacherSpec, register_teacher

        register_teacher(TeacherSpec("open_clip:mine", "open_clip", "ViT-B-32"))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 2-layer BertModel at random weights with MiniLM's tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from mad_pipeline.teachers.hf_text import packaged_minilm_dir

    d = tmp_path_factory.mktemp("tiny-bert") / "encoder"
    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=64)).save_pretrained(d)
    AutoTokenizer.from_pretrained(packaged_minilm_dir()).save_pretrained(d)
    return d


def test_hf_dir_text_teacher_extracts_and_has_the_identity_rules(tiny_clip, tiny_bert, tmp_path):
    from mad_pipeline.stages import extract
    from transformers import AutoModel, AutoTokenizer

    from mad_pipeline.store.reader import open_store
    from mad_pipeline.teachers.hf_text import packaged_minilm_dir

    manifest = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "image": "images/coffee.jpg", "text": "a cup"}])
    cfg = extract.ExtractConfig(teacher="tiny-clip", weights=str(tiny_clip[1]), text_teacher=f"hf:{tiny_bert}",
                                manifest=manifest, data_root=EXAMPLES, cache=tmp_path / "cache", device="cpu",
                                num_workers=0, progress=False)
    res = extract.run(cfg, log=lambda m: None)
    store = open_store(res.stores["text"].path)
    assert store.manifest["teacher"]["name"] == f"hf:{tiny_bert}"
    assert store.manifest["teacher"]["family"] == "transformers"
    tok, model = AutoTokenizer.from_pretrained(tiny_bert), AutoModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        want = model(**tok(["a cup"], return_tensors="pt")).last_hidden_state.mean(1)
    got = torch.from_numpy(np.asarray(store.group["pooled"][:], dtype=np.float32))
    assert torch.allclose(got, want, atol=2e-2, rtol=1e-2)

    # the same directory under the registry alias and under hf: is one identity (the name is not in it)
    memo = tmp_path / "memo"
    minilm = packaged_minilm_dir()
    assert (LazyTeacher(f"hf:{minilm}", None, "cpu", "auto", None, memo).identity("text")
            == LazyTeacher("minilm", None, "cpu", "auto", None, memo).identity("text"))

    # weights of another size than the directory hf: names are one line naming both
    with pytest.raises(TeacherError, match=r"is hidden 384 x 6 layers \(all-MiniLM-L6-v2\) \(by its tensor shapes\); "
                       r"teacher hf:.* expects hidden 32 x 2 layers"):
        LazyTeacher(f"hf:{tiny_bert}", minilm, "cpu", "auto", None, memo, flag="--text-weights").identity("text")


def test_mad_teachers_lists_the_library_forms(tmp_path):
    from mad_pipeline.stages import teachers

    rows = {r["name"]: r for r in teachers.run(teachers.TeachersConfig())}
    assert rows["open_clip:MODEL/PRETRAINED"]["towers"] == ["image", "text"]
    assert rows["hf:REPO"]["towers"] == ["text"]
    assert "clip-vit-b32" in rows


def test_hf_hub_id_offline_is_one_line_with_a_hint(tmp_path):
    with pytest.raises(TeacherError, match=r"offline\? pass --weights PATH"):
        LazyTeacher("hf:someone/not-cached-encoder", None, "cpu", "auto", None, tmp_path / "m").identity("text")


def test_registering_an_open_clip_config_leaves_no_temporary_files(tmp_path, monkeypatch):
    """A registered config (dict or file) is kept by open_clip's registry, not by a file left in the temp folder
    (every process that registers the shipped configs used to leave a directory behind)."""
    import tempfile

    import open_clip
    from conftest import TINY_CLIP

    from mad_pipeline.teachers import register_open_clip_config

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    register_open_clip_config("tiny-clip-leak-check", TINY_CLIP)
    assert list(tmp.iterdir()) == []
    assert open_clip.get_model_config("tiny-clip-leak-check")["embed_dim"] == TINY_CLIP["embed_dim"]
    model = open_clip.create_model("tiny-clip-leak-check")  # built after its file is gone
    assert model.visual is not None and get_teacher_spec("tiny-clip-leak-check").family == "open_clip"
