"""The ViLT student: task heads, patch tokens in grid order (not ViLT's multinomial order), patch centres in
original-image coordinates, character spans, save/load, pretrained loading and determinism. All at vilt-tiny size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mad_pipeline.students import (
    STUDENTS,
    StudentError,
    build_student,
    center_crop_box,
    load_student,
)
from mad_pipeline.students.vilt import VILT_CONFIGS, grid_visual_embed
from mad_pipeline.tasks import get_task

TEXTS = ["What colour is the circle?", "Is there a red square left of it?"]


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (100, 60), (200, 30, 30)), Image.new("RGB", (48, 80), (30, 30, 200))]


def _batch(student, texts=TEXTS, images=None):
    pixels, boxes = zip(*(student.preprocess_image(im) for im in images or _images()), strict=True)
    text = student.tokenize(texts)
    return torch.stack(pixels), torch.tensor(boxes), text


@pytest.fixture(scope="module")
def vqa_student():
    torch.manual_seed(0)
    return build_student("vilt-tiny", "vqa", 7).eval()


def test_registry_and_unknown_names():
    assert set(STUDENTS) == {"vilt-tiny", "vilt-mini", "vilt-mini-l3", "vilt-b32"}
    with pytest.raises(StudentError, match="unknown student"):
        build_student("vilt-huge", "vqa", 3)
    with pytest.raises(StudentError, match="unknown task"):
        build_student("vilt-tiny", "nlvr2", 3)


def test_vilt_b32_is_the_standard_vilt_config():
    from transformers import ViltConfig

    default = ViltConfig()  # transformers' defaults are dandelin/vilt-b32-mlm's config
    for key, value in VILT_CONFIGS["vilt-b32"].items():
        assert getattr(default, key) == value, key


@pytest.mark.parametrize("task,num_classes", [("vqa", 7), ("snli-ve", 3)])
def test_classification_heads_shapes_and_loss(task, num_classes):
    torch.manual_seed(0)
    student = build_student("vilt-tiny", task, num_classes)
    pixels, boxes, text = _batch(student)
    out = student(pixels, boxes, text.input_ids, text.attention_mask, text.char_spans)
    length, hidden = text.input_ids.shape[1], student.hidden_size
    assert student.grid == (8, 8) and hidden == 128
    assert out.visual_tokens.shape == (2, 64, hidden)
    assert out.visual_centers.shape == (2, 64, 2)
    assert out.text_tokens.shape == (2, length, hidden)
    assert out.text_spans.shape == (2, length, 2)
    assert out.text_mask.shape == (2, length) and out.text_mask.dtype == torch.bool
    assert out.pooled.shape == (2, hidden)
    assert out.logits.shape == (2, num_classes)
    target = torch.rand(2, num_classes) if task == "vqa" else torch.tensor([0, 2])
    loss = get_task(task).loss(out.logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert student.backbone.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0


def test_vcr_scores_each_choice_pair():
    torch.manual_seed(0)
    student = build_student("vilt-tiny", "vcr", 4)
    choices = [f"{q} answer {i}" for q in TEXTS for i in range(4)]  # B * 4 texts, sample-major
    pixels, boxes, text = _batch(student, texts=choices)
    out = student(pixels, boxes, text.input_ids, text.attention_mask)
    assert out.logits.shape == (2, 4)
    assert out.visual_tokens.shape == (8, 64, 128) and out.pooled.shape == (8, 128)
    assert torch.equal(out.visual_centers[0], out.visual_centers[3])  # pairs of one sample share the image
    assert (out.text_spans == -1).all()  # no spans passed
    # (B, C, L) input gives the same logits
    out3 = student(pixels, boxes, text.input_ids.view(2, 4, -1), text.attention_mask.view(2, 4, -1))
    torch.testing.assert_close(out3.logits, out.logits)
    # the pair order is sample-major: logit [b, c] is the pair (image b, text b * 4 + c)
    single = student(pixels[1:], boxes[1:], text.input_ids[6:7], text.attention_mask[6:7])
    torch.testing.assert_close(single.logits[0, 0], out.logits[1, 2], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(get_task("vcr").loss(out.logits, torch.tensor([1, 3])))
    with pytest.raises(StudentError, match="texts for"):
        student(pixels, boxes, text.input_ids[:3], text.attention_mask[:3])


def test_task_losses_by_hand():
    logits = torch.zeros(2, 5)
    assert get_task("vqa").loss(logits, torch.rand(2, 5)).item() == pytest.approx(5 * math.log(2), rel=1e-6)
    assert get_task("snli-ve").loss(torch.zeros(2, 3), torch.tensor([0, 1])).item() == pytest.approx(math.log(3))
    assert get_task("vcr").loss(torch.zeros(2, 4), torch.tensor([0, 1])).item() == pytest.approx(math.log(4))


# ------------------------------------------------------------------------------------------ patch order
def test_vilt_visual_embed_permutes_patches_and_ours_keeps_grid_order(vqa_student):
    """ViLT's own visual_embed shuffles patches (multinomial) even with max_image_length=-1; ours equals it up to
    that permutation, in row-major order."""
    emb = vqa_student.backbone.embeddings
    pixels = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    with torch.no_grad():
        torch.manual_seed(1)
        theirs, _, (patch_index, _) = emb.visual_embed(pixels, mask, max_image_length=-1)
        ours, ours_mask = grid_visual_embed(emb, pixels)
    cells = patch_index[..., 0] * 8 + patch_index[..., 1]  # (B, 64) grid cell of each of their tokens
    assert not torch.equal(cells[0], torch.arange(64)), "transformers' ViLT no longer shuffles: simplify"
    assert ours.shape == theirs.shape == (2, 65, 128) and ours_mask.shape == (2, 65) and bool(ours_mask.all())
    torch.testing.assert_close(ours[:, 0], theirs[:, 0])  # image CLS
    for b in range(2):
        reordered = torch.empty_like(theirs[b, 1:])
        reordered[cells[b]] = theirs[b, 1:]
        torch.testing.assert_close(ours[b, 1:], reordered)


def test_visual_token_i_is_grid_cell_i(vqa_student):
    """Perturb the pixels of one grid cell: the final-layer token that changes most is that cell's index."""
    text = vqa_student.tokenize(["a shape"])
    base = torch.zeros(1, 3, 64, 64)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]])
    with torch.no_grad():
        ref = vqa_student(base, boxes, text.input_ids, text.attention_mask).visual_tokens[0]
        for r, c in [(0, 0), (0, 7), (3, 5), (7, 1)]:
            pixels = base.clone()
            pixels[:, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 1.0
            out = vqa_student(pixels, boxes, text.input_ids, text.attention_mask).visual_tokens[0]
            change = (out - ref).norm(dim=-1)
            assert int(change.argmax()) == r * 8 + c


# ------------------------------------------------------------------------------------------ geometry
def test_crop_box_matches_the_teacher_convention():
    from mad_pipeline.teachers.openclip import _crop_box

    for w, h in [(100, 60), (60, 100), (64, 64), (333, 127), (17, 500)]:
        assert center_crop_box(64, w, h) == pytest.approx(_crop_box("shortest", 64, w, h))
    # by hand: 100x60 -> resize to 106x64, crop 64 at x=21; back in original pixels x * 100/106
    assert center_crop_box(64, 100, 60) == pytest.approx((21 * 100 / 106, 0.0, 85 * 100 / 106, 60.0))


@pytest.mark.parametrize("size", [(100, 60), (60, 100), (90, 70)])
def test_visual_centers_point_at_the_patch_in_the_original_image(vqa_student, size):
    """A dot drawn at a patch centre (original pixels) lands in that patch of the preprocessed image."""
    _, box = vqa_student.preprocess_image(Image.new("RGB", size))
    x0, y0, x1, y1 = box
    assert (x1 - x0) == pytest.approx(y1 - y0, rel=0.02)  # square region of the original image
    centers = _centers(vqa_student, box)
    cw, ch = (x1 - x0) / 8, (y1 - y0) / 8
    assert tuple(centers[0].tolist()) == pytest.approx((x0 + cw / 2, y0 + ch / 2), rel=1e-5)
    assert tuple(centers[9].tolist()) == pytest.approx((x0 + 1.5 * cw, y0 + 1.5 * ch), rel=1e-5)
    assert tuple(centers[63].tolist()) == pytest.approx((x1 - cw / 2, y1 - ch / 2), rel=1e-5)
    for k in (0, 9, 27, 36, 54, 63):
        image = Image.new("RGB", size)
        cx, cy = centers[k].tolist()
        ImageDraw.Draw(image).ellipse([cx - 1.5, cy - 1.5, cx + 1.5, cy + 1.5], fill=(255, 255, 255))
        px, _ = vqa_student.preprocess_image(image)
        patch_mean = px.mean(0).unfold(0, 8, 8).unfold(1, 8, 8).mean((-1, -2)).flatten()  # (64,) row-major
        assert int(patch_mean.argmax()) == k


def _centers(student, box) -> torch.Tensor:
    from mad_pipeline.losses import patch_centers

    return patch_centers(torch.tensor([box]), student.grid)[0]


def test_forward_centers_come_from_the_crop_boxes(vqa_student):
    pixels, boxes, text = _batch(vqa_student)
    with torch.no_grad():
        out = vqa_student(pixels, boxes, text.input_ids, text.attention_mask)
    for b in range(2):
        torch.testing.assert_close(out.visual_centers[b], _centers(vqa_student, boxes[b].tolist()))
    # image 0 is 100x60 (landscape): centres span the middle 60x60, full height
    xs, ys = out.visual_centers[0, :, 0], out.visual_centers[0, :, 1]
    assert xs.min() > 20 and xs.max() < 80 and ys.min() == pytest.approx(60 / 16) and ys.max() < 60


# ------------------------------------------------------------------------------------------ text
def test_text_spans_point_into_the_text(vqa_student):
    texts = ["What colour is the circle?", "Naïve café: 2 shapes", ""]
    text = vqa_student.tokenize(texts)
    assert text.input_ids.shape[1] <= vqa_student.max_text_length == 40
    tokens = [vqa_student.tokenizer.convert_ids_to_tokens(row) for row in text.input_ids.tolist()]
    for b, t in enumerate(texts):
        n_real = 0
        for tok, (s, e), m in zip(tokens[b], text.char_spans[b].tolist(), text.attention_mask[b].tolist(),
                                  strict=True):
            if tok in ("[CLS]", "[SEP]", "[PAD]") or not m:
                assert (s, e) == (-1, -1)
                continue
            n_real += 1
            assert 0 <= s < e <= len(t)
            piece = t[s:e].lower().replace("ï", "i").replace("é", "e")  # uncased BERT strips accents
            assert piece == tok.removeprefix("##")
        assert n_real == int(text.attention_mask[b].sum()) - 2
    # truncation at max_position_embeddings
    long = vqa_student.tokenize(["word " * 100], padding="max_length")
    assert long.input_ids.shape == (1, 40) and long.char_spans[0, -1].tolist() == [-1, -1]


# ------------------------------------------------------------------------------------------ persistence
def test_save_load_round_trip_gives_identical_outputs(vqa_student, tmp_path):
    pixels, boxes, text = _batch(vqa_student)
    vqa_student.save(tmp_path / "s")
    files = {p.name for p in (tmp_path / "s").rglob("*") if p.is_file()}
    assert {"student.json", "model.safetensors", "config.json", "tokenizer.json", "README.md"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    loaded = load_student(tmp_path / "s")
    assert (loaded.name, loaded.task, loaded.num_classes, loaded.training) == ("vilt-tiny", "vqa", 7, False)
    with torch.no_grad():
        a = vqa_student(pixels, boxes, text.input_ids, text.attention_mask)
        b = loaded(pixels, boxes, text.input_ids, text.attention_mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.visual_tokens, b.visual_tokens)
    assert torch.equal(loaded.tokenize(TEXTS).input_ids, text.input_ids)
    with pytest.raises(StudentError, match="not a saved student"):
        load_student(tmp_path)


def test_pretrained_backbone_loads_through_from_pretrained(tmp_path):
    """The vilt-b32 path (``ViltModel.from_pretrained``) on a tiny config saved locally; never downloads."""
    from transformers import ViltConfig, ViltModel

    torch.manual_seed(3)
    cfg = ViltConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     image_size=32, patch_size=16, max_position_embeddings=24)
    ViltModel(cfg).save_pretrained(tmp_path / "vilt")
    saved = ViltModel.from_pretrained(tmp_path / "vilt").state_dict()
    student = build_student("vilt-b32", "snli-ve", 3, pretrained=tmp_path / "vilt")
    assert student.training
    assert (student.hidden_size, student.image_size, student.grid, student.max_text_length) == (32, 32, (2, 2), 24)
    for k, v in student.backbone.state_dict().items():
        assert torch.equal(v, saved[k]), k
    pixels, boxes, text = _batch(student)
    out = student(pixels, boxes, text.input_ids, text.attention_mask)
    assert out.visual_tokens.shape == (2, 4, 32) and out.logits.shape == (2, 3)
    with pytest.raises(StudentError, match="could not load ViLT weights"):
        build_student("vilt-b32", "vqa", 3, pretrained=Path(tmp_path / "missing"))


# ------------------------------------------------------------------------------------------ determinism
def test_fixed_seed_is_deterministic():
    def run(seed):
        torch.manual_seed(seed)
        student = build_student("vilt-tiny", "snli-ve", 3)
        pixels, boxes, text = _batch(student)
        out = student(pixels, boxes, text.input_ids, text.attention_mask)
        return out.logits.detach(), out.visual_tokens.detach()

    (la, va), (lb, vb), (lc, _) = run(0), run(0), run(1)
    assert torch.equal(la, lb) and torch.equal(va, vb)
    assert not torch.equal(la, lc)


def test_pretrained_vilt_with_heads_loads_without_a_load_report(tmp_path, capfd, caplog):
    """A checkpoint with MLM/ITM heads (the pretraining layout) loads into the backbone quietly: no multi-line load
    report of the unused head weights; a backbone weight the checkpoint lacks is one warning line."""
    import logging

    from safetensors.torch import load_file, save_file
    from transformers import ViltConfig, ViltForMaskedLM

    from mad_pipeline.students.vilt import VILT_CONFIGS, build_vilt

    ViltForMaskedLM(ViltConfig(**VILT_CONFIGS["vilt-tiny"])).save_pretrained(tmp_path)
    def warnings_of_loading():  # not another test's garbage collected now (asyncio's "Unclosed client session")
        return [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.split(".")[0] in
                ("mad_pipeline", "transformers", "safetensors", "torch")]

    with caplog.at_level(logging.WARNING):
        build_vilt("vilt-tiny", "vqa", 5, tmp_path)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "UNEXPECTED" not in err
    assert not warnings_of_loading()
    weights = tmp_path / "model.safetensors"
    state = load_file(str(weights))
    del state["vilt.encoder.layer.0.output.dense.bias"]
    save_file(state, str(weights), metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        build_vilt("vilt-tiny", "vqa", 5, tmp_path)
    warned = [r.getMessage() for r in warnings_of_loading()]
    assert len(warned) == 1 and "encoder.layer.0.output.dense.bias" in warned[0] and "\n" not in warned[0]
