"""train.length_buckets: a batch through the student as sub-batches of similar text length gives one forward's
outputs (up to rounding) and gradients, in the batch's order, and only cuts where it pays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mad_pipeline.students import build_student
from mad_pipeline.training.buckets import MIN_SAVING, padded_tokens, plan, student_forward

SHORT = "is the red circle left of the cube"
LONG = ("is the red circle left of the cube because the cube is on the right side of the picture next to a small "
        "green triangle")


def test_plan_cuts_two_kinds_of_length_apart_and_leaves_similar_ones_alone():
    vcr = np.array([14, 30, 15, 31, 16, 33, 13, 35])  # Q->A and QA->R items, shuffled together
    groups = plan(vcr, 16, 4)
    assert [sorted(vcr[g].tolist()) for g in groups] == [[13, 14, 15, 16], [30, 31, 33, 35]]
    assert sorted(np.concatenate(groups).tolist()) == list(range(8))  # every sample once
    assert all((np.diff(g) > 0).all() for g in groups)  # each group in the batch's order
    assert padded_tokens(vcr, groups, 16) < padded_tokens(vcr, [np.arange(8)], 16)
    assert len(plan(vcr, 16, 1)) == 1  # off
    vqa = np.array([7, 9, 8, 12, 10, 11, 9, 8])  # a few tokens apart: a cut would save under a tenth
    assert len(plan(vqa, 16, 4)) == 1
    assert len(plan(np.full(5, 9), 16, 4)) == 1
    # a cut is taken only when it saves MIN_SAVING of the batch's tokens: many image tokens make the same texts cheap
    whole = padded_tokens(vcr, [np.arange(8)], 400)
    saved = whole - padded_tokens(vcr, groups, 400)
    assert saved < MIN_SAVING * whole and len(plan(vcr, 400, 4)) == 1


def _inputs(student, texts_per_image: list[list[str]]):
    enc = student.tokenize([t for ts in texts_per_image for t in ts])
    b, c = len(texts_per_image), len(texts_per_image[0])
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(b, 3, student.image_size, student.image_size, generator=g)
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(b, 1)
    shape = (b, c, -1) if c > 1 else (b, -1)
    return (pixels, boxes, enc.input_ids.view(*shape), enc.attention_mask.view(*shape),
            enc.char_spans.view(*shape, 2))


@pytest.mark.parametrize("task", ["vcr", "vqa"])
def test_sub_batches_give_one_forwards_outputs_and_gradients(task):
    torch.manual_seed(0)
    student = build_student("vilt-mini-l3", task, 4 if task == "vcr" else 10)
    if task == "vcr":  # items of 4 choices: short ones (Q->A) and long ones (QA->R), mixed
        texts = [[SHORT + f" {k}" for k in range(4)] if i % 2 else [LONG + f" {k}" for k in range(4)]
                 for i in range(6)]
    else:
        texts = [[SHORT] if i % 3 else [LONG] for i in range(6)]
    args = _inputs(student, texts)
    assert len(plan(args[3].reshape(6, -1, args[3].shape[-1]).amax(1).sum(-1).tolist(), 16, 2)) == 2  # a cut

    def run(groups: int):
        student.zero_grad()
        out = student_forward(student, args, groups)
        (out.logits.square().sum() + out.visual_tokens.square().mean()
         + (out.text_tokens.square().sum(-1) * out.text_mask).mean()).backward()
        return out, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    plain, plain_grads = run(1)
    cut, cut_grads = run(2)
    torch.testing.assert_close(cut.logits, plain.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cut.pooled, plain.pooled, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cut.visual_tokens, plain.visual_tokens, rtol=1e-4, atol=1e-4)
    assert torch.equal(cut.visual_centers, plain.visual_centers)
    assert torch.equal(cut.text_mask, plain.text_mask) and torch.equal(cut.text_spans, plain.text_spans)
    mask = plain.text_mask
    torch.testing.assert_close(cut.text_tokens[mask], plain.text_tokens[mask], rtol=1e-4, atol=1e-4)
    assert not cut.text_tokens[~mask].any()  # a short group's padding comes back as zeros
    assert cut_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(cut_grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)
