"""The real ViT-L-14 architecture (random weights saved to a file) through `mad extract --teacher clip-vit-l
--weights W`: tokens (N, 257, 1024) and pooled (N, 768) in fp16, equal to open_clip's own outputs; MiniLM text
tokens through the CLI equal transformers' last_hidden_state."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import zarr
from conftest import EXAMPLES, last_json, mad_inproc, write_manifest

from mad_pipeline.data.images import load_image

pytestmark = pytest.mark.slow

PHOTOS = ["astronaut.jpg", "coffee.jpg", "chelsea.jpg"]
TEXTS = ["an astronaut holding a helmet", "a cup of coffee", "A cat, looking left!"]


@pytest.fixture(scope="module")
def vitl(tmp_path_factory):
    """(weights file, the open_clip model those weights were saved from: the reference, built once)."""
    import open_clip
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("vitl")
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14-quickgelu")
    path = d / "ViT-L-14-random.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    yield path, model.eval()
    del model
    gc.collect()


def test_clip_vit_l_tokens_equal_open_clip(vitl, tmp_path):
    import open_clip

    vitl_weights, ref = vitl
    m = write_manifest(tmp_path / "m.jsonl", [{"id": i, "image": f"images/{p}", "text": t}
                                              for i, (p, t) in enumerate(zip(PHOTOS, TEXTS, strict=True))])
    env = {"MAD_CACHE": str(tmp_path / "cache")}
    res = last_json(mad_inproc("extract", "--teacher", "clip-vit-l", "--weights", str(vitl_weights), "--manifest",
                               str(m), "--data-root", str(EXAMPLES), "--batch-size", "2", "--json", env=env))
    img = zarr.open_group(res["stores"]["image"]["path"], mode="r")
    txt = zarr.open_group(res["stores"]["text"]["path"], mode="r")
    assert img["tokens"].shape == (3, 257, 1024) and img["tokens"].dtype == np.float16
    assert img["pooled"].shape == (3, 768) and img["pooled"].dtype == np.float16
    assert txt["tokens"].shape == (3, 77, 768) and txt["pooled"].shape == (3, 768)

    # open_clip's own inference preprocessing for this model (as create_model_and_transforms builds it)
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess = image_transform_v2(PreprocessCfg(**ref.visual.preprocess_cfg), is_train=False)
    from mad_pipeline.hashing import sha256_file

    rows = {h: i for i, h in enumerate(img["image_hash"][:])}
    order = [rows[sha256_file(EXAMPLES / "images" / p)] for p in PHOTOS]
    pixels = torch.stack([preprocess(load_image(EXAMPLES / "images" / p)) for p in PHOTOS])
    ids = open_clip.get_tokenizer("ViT-L-14-quickgelu")(TEXTS)
    with torch.no_grad():
        out = ref.forward_intermediates(image=pixels, text=ids, image_indices=1, text_indices=1,
                                        normalize_intermediates=True, image_output_fmt="NLC",
                                        image_output_extra_tokens=True)
        want_tok = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], 1)
        want_pool = ref.encode_image(pixels, normalize=False)
        want_ttok = out["text_intermediates"][-1]
        want_tpool = ref.encode_text(ids, normalize=False)

    def close(stored, want):  # fp16 storage: within fp16 rounding of the fp32 reference
        np.testing.assert_allclose(stored.astype(np.float32), want.numpy(), rtol=2e-3, atol=2e-3)

    close(img["tokens"][:][order], want_tok)
    close(img["pooled"][:][order], want_pool)
    trow = {t: i for i, t in enumerate(txt["text"][:])}
    torder = [trow[t] for t in TEXTS]
    lengths = txt["length"][:][torder]
    for k, n in enumerate(lengths):
        close(txt["tokens"][:][torder[k], :n], want_ttok[k, :n])
    close(txt["pooled"][:][torder], want_tpool)

    # MiniLM as a second text teacher: the ViT-L image store is reused, text tokens equal transformers'
    res2 = last_json(mad_inproc("extract", "--teacher", "clip-vit-l", "--weights", str(vitl_weights),
                                "--text-teacher", "minilm", "--manifest", str(m), "--data-root", str(EXAMPLES),
                                "--json", env=env))
    assert res2["stores"]["image"]["cached"] and res2["teacher_loaded"] is True
    from transformers import AutoModel, AutoTokenizer

    from mad_pipeline.teachers.hf_text import packaged_minilm_dir

    d = packaged_minilm_dir()
    tok, model = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()
    enc = tok(TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mt = zarr.open_group(res2["stores"]["text"]["path"], mode="r")
    mrow = {t: i for i, t in enumerate(mt["text"][:])}
    for k, t in enumerate(TEXTS):
        n = int(enc["attention_mask"][k].sum())
        assert mt["length"][mrow[t]] == n
        close(mt["tokens"][mrow[t], :n], hidden[k, :n])
