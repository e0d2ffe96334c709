"""The MAD objective, pinned part by part on hand-computable inputs."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from mad_pipeline.losses import (
    MADConfig,
    MADLoss,
    StudentBatch,
    TargetBuilder,
    TeacherBatch,
    TokenTargets,
    align_patches,
    align_text,
    alpha,
    build_targets,
    confidence_weights,
    fit_calibration,
    image_targets,
    logit_kd,
    parse_top_k,
    patch_centers,
    select_tokens,
    text_reference,
    text_targets,
    token_loss,
)

# ---------------------------------------------------------------------------------------------------------------------
# Alignment: vision

# A 2x2 teacher grid with distinct one-hot tokens (row-major: top-left, top-right, bottom-left, bottom-right).
GRID_TOKENS = torch.eye(4)[None]  # (1, 4, 4)


def test_patch_centers_cover_the_box_row_major():
    c = patch_centers(torch.tensor([0.0, 0.0, 2.0, 2.0]), (2, 2))
    assert torch.equal(c, torch.tensor([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5], [1.5, 1.5]]))
    c = patch_centers(torch.tensor([[10.0, 20.0, 14.0, 22.0]]), (1, 2))  # non-square, offset
    assert torch.equal(c, torch.tensor([[[11.0, 21.0], [13.0, 21.0]]]))


def test_align_patches_exact_at_teacher_centres():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    aligned, mask = align_patches(GRID_TOKENS, (2, 2), box, patch_centers(box, (2, 2)))
    assert mask.all()
    assert torch.allclose(aligned, GRID_TOKENS, atol=1e-6)


def test_align_patches_interpolates_and_masks():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    centres = torch.tensor([[[1.0, 0.5], [1.0, 1.0], [0.25, 0.5], [2.5, 1.0], [1.0, -0.1]]])
    aligned, mask = align_patches(GRID_TOKENS, (2, 2), box, centres)
    assert mask.tolist() == [[True, True, True, False, False]]
    assert torch.allclose(aligned[0, 0], torch.tensor([0.5, 0.5, 0.0, 0.0]))  # halfway between top two
    assert torch.allclose(aligned[0, 1], torch.full((4,), 0.25))  # the middle: all four equally
    assert torch.allclose(aligned[0, 2], torch.tensor([1.0, 0.0, 0.0, 0.0]))  # near the edge: the edge patch
    assert torch.equal(aligned[0, 3:], torch.zeros(2, 4))  # outside the crop: masked, zero


def test_align_patches_offset_and_scaled_box():
    # The teacher saw x in [10, 14], y in [20, 24] of the original image: patch centres at x 11, 13 and y 21, 23.
    box = torch.tensor([[10.0, 20.0, 14.0, 24.0]])
    centres = torch.tensor([[[11.0, 21.0], [13.0, 23.0], [12.0, 21.0], [11.0, 22.0], [9.0, 21.0]]])
    aligned, mask = align_patches(GRID_TOKENS, (2, 2), box, centres)
    assert mask.tolist() == [[True, True, True, True, False]]
    assert torch.allclose(aligned[0, 0], GRID_TOKENS[0, 0])
    assert torch.allclose(aligned[0, 1], GRID_TOKENS[0, 3])
    assert torch.allclose(aligned[0, 2], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(aligned[0, 3], torch.tensor([0.5, 0.0, 0.5, 0.0]))


def test_align_patches_non_square_grid_round_trip():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3 * 4, 5, generator=g)
    box = torch.tensor([[3.0, 1.0, 11.0, 7.0], [0.0, 0.0, 4.0, 3.0]])
    aligned, mask = align_patches(tokens, (3, 4), box, patch_centers(box, (3, 4)))
    assert mask.all()
    assert torch.allclose(aligned, tokens, atol=1e-5)
    with pytest.raises(ValueError, match="without CLS"):
        align_patches(tokens, (4, 4), box, patch_centers(box, (3, 4)))


# ---------------------------------------------------------------------------------------------------------------------
# Alignment: text


def test_align_text_by_span_overlap():
    # text "the red ball": teacher tokens "the"[0,3) " re"[3,6) "d"[6,7) " ball"[7,12) EOS(-1)
    teacher = torch.tensor([[[0, 3], [3, 6], [6, 7], [7, 12], [-1, -1]]])
    # student tokens "the"[0,3) "red"[4,7) "ball"[8,12) SEP(-1) "x"[20,21)
    student = torch.tensor([[[0, 3], [4, 7], [8, 12], [-1, -1], [20, 21]]])
    a, mask = align_text(teacher, student)
    assert mask.tolist() == [[True, True, True, False, False]]
    expected = torch.zeros(1, 5, 5)
    expected[0, 0, 0] = 1.0
    expected[0, 1, 1], expected[0, 1, 2] = 2 / 3, 1 / 3  # "red" overlaps " re" by 2 chars, "d" by 1
    expected[0, 2, 3] = 1.0
    assert torch.allclose(a, expected)


def test_align_text_without_teacher_spans_masks_the_sample():
    teacher = torch.tensor([[[0, 3], [3, 5]], [[-1, -1], [-1, -1]]])
    student = torch.tensor([[[0, 5]], [[0, 5]]])
    a, mask = align_text(teacher, student)
    assert mask.tolist() == [[True], [False]]
    assert torch.allclose(a[0, 0], torch.tensor([0.6, 0.4]))
    assert torch.equal(a[1], torch.zeros(1, 2))


# ---------------------------------------------------------------------------------------------------------------------
# Token selection

# cos with the reference [1, 0]: 1, 0, 0.707, -1
SAL_TOKENS = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]])
SAL_REF = torch.tensor([[1.0, 0.0]])


def test_teacher_saliency_top_k_fraction_and_count():
    full = torch.ones(1, 4, dtype=torch.bool)
    sel = select_tokens("teacher-saliency", 0.5, SAL_TOKENS, SAL_REF, full)
    assert sel.tolist() == [[True, False, True, False]]
    sel = select_tokens("teacher-saliency", 1, SAL_TOKENS, SAL_REF, full)
    assert sel.tolist() == [[True, False, False, False]]
    sel = select_tokens("teacher-saliency", 10, SAL_TOKENS, SAL_REF, full)  # count capped at the valid count
    assert sel.tolist() == [[True, True, True, True]]
    # only valid positions compete: ceil(0.5 * 3) = 2 of positions 1..3
    part = torch.tensor([[False, True, True, True]])
    sel = select_tokens("teacher-saliency", 0.5, SAL_TOKENS, SAL_REF, part)
    assert sel.tolist() == [[False, True, True, False]]
    sel = select_tokens("teacher-saliency", 0.01, SAL_TOKENS, SAL_REF, part)  # at least one
    assert sel.sum() == 1


def test_selection_fraction_rounding_ties_and_empty_samples():
    tokens = torch.ones(2, 10, 3)  # all tied
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1] = False
    sel = select_tokens("teacher-saliency", 0.3, tokens, torch.ones(2, 3), mask)
    assert sel[0].tolist() == [True] * 3 + [False] * 7  # 0.3 * 10 keeps 3 (not 4); ties: earliest positions
    assert not sel[1].any()
    assert torch.equal(select_tokens("all", 0.3, tokens, None, mask), mask)


def test_random_and_student_gap_policies():
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[:, 8:] = False
    tokens = torch.randn(3, 12, 4, generator=torch.Generator().manual_seed(1))
    a = select_tokens("random", 3, tokens, None, mask, generator=torch.Generator().manual_seed(7))
    b = select_tokens("random", 3, tokens, None, mask, generator=torch.Generator().manual_seed(7))
    c = select_tokens("random", 3, tokens, None, mask, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.sum(1).tolist() == [3, 3, 3] and not (a & ~mask).any()
    student = SAL_TOKENS.clone()
    student[0, 2] = torch.tensor([-1.0, -1.0])  # the largest gap from its teacher token
    sel = select_tokens("student-gap", 1, SAL_TOKENS, None, torch.ones(1, 4, dtype=torch.bool), student)
    assert sel.tolist() == [[False, False, True, False]]


@pytest.mark.parametrize("k", [0, 0.0, 1.5, -2, True, "3"])
def test_invalid_k_is_refused(k):
    with pytest.raises(ValueError):
        select_tokens("teacher-saliency", k, SAL_TOKENS, SAL_REF, torch.ones(1, 4, dtype=torch.bool))


def test_parse_top_k():
    assert parse_top_k("0.25") == 0.25 and isinstance(parse_top_k("8"), int) and parse_top_k("1.0") == 1.0
    with pytest.raises(ValueError):
        parse_top_k("0")


# ---------------------------------------------------------------------------------------------------------------------
# Token loss


def test_token_loss_cosine_and_smooth_l1():
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    both = torch.tensor([[True, True]])
    assert torch.allclose(token_loss(s, t, both), torch.tensor([0.5]))
    assert torch.allclose(token_loss(s, t, torch.tensor([[True, False]])), torch.tensor([0.0]))
    assert torch.equal(token_loss(s, t, torch.tensor([[False, False]])), torch.tensor([0.0]))
    # layer-normed: [2, 0] -> [1, -1], [0, 2] -> [-1, 1]; |diff| = 2 -> smooth-L1 = 2 - 0.5
    s2, t2 = torch.tensor([[[2.0, 0.0]]]), torch.tensor([[[0.0, 2.0]]])
    assert torch.allclose(token_loss(s2, t2, torch.tensor([[True]]), "smooth-l1"), torch.tensor([1.5]), atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------------
# Confidence weighting, calibration, logit KD

Z = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # softmax: [0.25, 0.75], [0.5, 0.5]


def test_confidence_hard_labels():
    y = torch.tensor([1, 0])
    raw = confidence_weights("prob", Z, y, tau=1.0, normalise=False)
    assert torch.allclose(raw, torch.tensor([0.75, 0.5]))
    assert torch.allclose(confidence_weights("prob", Z, y), torch.tensor([1.2, 0.8]))  # / mean 0.625
    assert torch.allclose(confidence_weights("prob", Z * 2, y, tau=2.0, normalise=False), torch.tensor([0.75, 0.5]))
    assert torch.equal(confidence_weights("none", Z, y), torch.ones(2))


def test_confidence_soft_scores_and_mask():
    scores = torch.tensor([[1.0, 0.3], [0.0, 0.6]])
    raw = confidence_weights("prob", Z, scores, normalise=False)
    assert torch.allclose(raw, torch.tensor([0.25 + 0.75 * 0.3, 0.5 * 0.6]))
    masked = confidence_weights("prob", Z, scores, normalise=False, mask=torch.tensor([True, False]))
    assert torch.allclose(masked, torch.tensor([0.475, 1.0]))
    w = confidence_weights("prob", Z, scores, mask=torch.tensor([True, False]))
    assert torch.allclose(w.mean(), torch.tensor(1.0)) and not w.requires_grad
    unknown = confidence_weights("prob", Z, torch.tensor([1, -1]), normalise=False)
    assert torch.allclose(unknown, torch.tensor([0.75, 1.0]))


def test_fit_calibration_snli_ve_three_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(100)
    s = (y.float() - 1.0) * 2.0 + 0.5 * torch.randn(300, generator=g) + 25.0  # similarity-like, offset scale
    cal = fit_calibration(s, y, num_classes=3)
    again = fit_calibration(s, y, num_classes=3)
    assert torch.equal(cal.weight, again.weight) and torch.equal(cal.bias, again.bias)
    probs = torch.softmax(cal.logits(s), dim=-1)
    assert (probs.argmax(-1) == y).float().mean() > 0.95
    assert torch.allclose(probs.mean(0), torch.full((3,), 1 / 3), atol=1e-3)  # MLE with an intercept
    assert cal.logits(torch.tensor([21.0, 25.0, 29.0])).argmax(-1).tolist() == [0, 1, 2]


def test_logit_kd_is_a_manual_kl():
    z = torch.tensor([[1.0, 2.0, 0.5]])
    o = torch.tensor([[0.0, 1.0, 1.0]])
    tau = 2.0
    p = torch.softmax(z / tau, -1)
    q = torch.softmax(o / tau, -1)
    manual = (p * (p.log() - q.log())).sum(-1) * tau**2
    assert torch.allclose(logit_kd(o, z, tau), manual)
    assert torch.allclose(logit_kd(z, z, tau), torch.zeros(1), atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Alpha schedules


def test_alpha_schedules():
    for sched, mid in (("constant", 2.0), ("linear", 1.0), ("cosine", 1.0)):
        at = [alpha(sched, s, 10, 2.0).item() for s in (0, 5, 10, 20)]
        end = 2.0 if sched == "constant" else 0.0
        assert at == pytest.approx([2.0, mid, end, end], abs=1e-6)
    assert alpha("cosine", 2, 10, 2.0).item() == pytest.approx(1 + math.cos(math.pi * 0.2))
    task = torch.tensor(2.0, requires_grad=True)
    dist = torch.tensor(0.25, requires_grad=True)
    a = alpha("adaptive", 0, 10, 99.0, task, dist, ratio=0.5)
    assert a.item() == pytest.approx(4.0) and not a.requires_grad
    assert (a * dist).item() == pytest.approx(0.5 * task.item())
    with pytest.raises(ValueError):
        alpha("adaptive", 0, 10, 1.0)


# ---------------------------------------------------------------------------------------------------------------------
# The module and its off switches

H, DV, DT, E = 4, 3, 5, 6


def make_batch(seed: int = 0, teacher_text_spans: bool = True):
    g = torch.Generator().manual_seed(seed)
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    spans = torch.tensor([[[0, 3], [4, 7], [-1, -1]]] * 2)
    teacher = TeacherBatch(
        image_tokens=torch.randn(2, 5, DV, generator=g).half(),  # stores are fp16
        image_pooled=torch.randn(2, E, generator=g),
        image_grid=(2, 2),
        crop_box=box,
        text_tokens=torch.randn(2, 3, DT, generator=g),
        text_pooled=torch.randn(2, E, generator=g),
        text_spans=spans if teacher_text_spans else torch.full_like(spans, -1),
        text_length=torch.tensor([3, 3]),
        zs_logits=torch.randn(2, 3, generator=g),
        zs_mask=torch.tensor([True, True]),
    )

    def leaf(*shape):
        return torch.randn(*shape, generator=g).requires_grad_()

    student = StudentBatch(
        visual_tokens=leaf(2, 4, H),
        visual_centers=patch_centers(box, (2, 2)),
        text_tokens=leaf(2, 3, H),
        text_spans=torch.tensor([[[0, 7], [-1, -1], [-1, -1]]] * 2),
        pooled=leaf(2, H),
        logits=leaf(2, 3),
    )
    return student, teacher


ALL_ON = MADConfig.full(logit_kd=True, alpha_schedule="constant", alpha0=2.0, k_v=1.0, k_t=1.0)


def run(cfg: MADConfig, **kw):
    torch.manual_seed(0)
    loss = MADLoss(cfg, H, DV, DT, E, E)
    student, teacher = make_batch(**kw)
    w = torch.ones(1, requires_grad=True)
    task = (w * 1.5).sum()
    out = loss(student, build_targets(cfg, teacher, student), task, target=torch.tensor([0, 2]), step=3,
               total_steps=10)
    out["total"].backward()
    return loss, student, out, task


def test_all_terms_on_reach_every_projection():
    loss, student, out, task = run(ALL_ON)
    for term in ("tok_v", "tok_t", "pool", "kd"):
        assert out[term].item() > 0, term
    for p in (loss.proj_v, loss.proj_t, loss.proj_g_image):
        assert p.weight.grad is not None and p.weight.grad.abs().sum() > 0
    assert loss.proj_g_text is loss.proj_g_image  # same pooled width: one P_g
    assert student.logits.grad is not None
    assert out["total"].item() == pytest.approx(task.item() + 2.0 * out["distill"].item(), rel=1e-6)


@pytest.mark.parametrize(
    ("switch", "term", "proj"),
    [
        ({"tokens_v": False}, "tok_v", "proj_v"),
        ({"tokens_t": False}, "tok_t", "proj_t"),
        ({"use_pooled": False}, "pool", "proj_g_image"),
        ({"logit_kd": False}, "kd", None),
    ],
)
def test_each_off_switch_removes_its_term(switch, term, proj):
    loss, student, out, _ = run(ALL_ON.replace(**switch))
    assert out[term].item() == 0.0 and not out[term].requires_grad
    if proj is not None:
        assert getattr(loss, proj).weight.grad is None
    else:
        assert student.logits.grad is None
    others = {"tok_v", "tok_t", "pool", "kd"} - {term}
    assert all(out[o].item() > 0 for o in others)


def test_text_without_teacher_spans_uses_pooled_only():
    # spans all -1: nothing aligns, the term is 0 and P_t's gradient is exactly zero (no host sync to skip it);
    # text_spans=None on either side skips the term altogether
    loss, _, out, _ = run(ALL_ON, teacher_text_spans=False)
    assert out["tok_t"].item() == 0.0 and not loss.proj_t.weight.grad.any()
    assert out["pool"].item() > 0


def test_confidence_switch_and_weighting():
    only_kd = ALL_ON.replace(tokens_v=False, tokens_t=False, use_pooled=False)
    _, student, out, _ = run(only_kd)
    _, teacher = make_batch()
    c = confidence_weights("prob", teacher.zs_logits, torch.tensor([0, 2]))
    expected = (c * logit_kd(student.logits.detach(), teacher.zs_logits)).mean()
    assert out["distill"].item() == pytest.approx(expected.item(), rel=1e-5)
    raw = confidence_weights("prob", teacher.zs_logits, torch.tensor([0, 2]), normalise=False)
    assert out["conf_mean"].item() == pytest.approx(raw.mean().item())
    _, _, plain, _ = run(only_kd.replace(confidence="none"))
    assert plain["distill"].item() == pytest.approx(plain["kd"].item(), rel=1e-6)
    assert plain["conf_mean"].item() == 1.0


def test_adaptive_balance_keeps_the_ratio():
    _, _, out, task = run(ALL_ON.replace(alpha_schedule="adaptive", alpha_ratio=0.5))
    assert (out["alpha"] * out["distill"]).item() == pytest.approx(0.5 * task.item(), rel=1e-5)


def test_baseline_preset_is_plain_finetuning():
    loss, student, out, task = run(MADConfig.baseline())
    assert out["total"] is task
    assert all(out[t].item() == 0.0 for t in ("tok_v", "tok_t", "pool", "kd", "distill", "alpha"))
    assert all(p.grad is None for p in loss.parameters())
    assert student.visual_tokens.grad is None and student.pooled.grad is None and student.logits.grad is None


def test_presets():
    naive = MADConfig.naive()
    assert (naive.select_v, naive.select_t) == ("all", "all")
    assert (naive.confidence, naive.alpha_schedule) == ("none", "constant")
    assert naive.use_pooled and naive.distill
    full = MADConfig.full()
    assert (full.select_v, full.select_t, full.confidence, full.alpha_schedule) == ("all", "all", "prob", "adaptive")
    paper = MADConfig.from_switches("full", select="teacher-saliency")  # the paper's selection: one switch away
    assert (paper.select_v, paper.select_t, paper.k_v) == ("teacher-saliency", "teacher-saliency", 0.5)
    assert paper.preset_name == "custom" and full.preset_name == "full"
    assert not MADConfig.baseline().distill
    with pytest.raises(ValueError):
        MADConfig(select_v="nope")


def test_kd_refuses_mismatched_candidates():
    loss = MADLoss(ALL_ON, H, DV, DT, E, E)
    student, teacher = make_batch()
    bad = dataclasses.replace(student, logits=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="answer classes"):
        loss(bad, build_targets(ALL_ON, teacher, bad), torch.tensor(1.0))


# ---------------------------------------------------------------------------------------------------------------------
# Teacher-side targets made ahead of the step (the data pipeline's TargetPlan)


def test_align_patches_equals_grid_sample_bilinear_with_border_clamping():
    """The embedding_bag alignment gives grid_sample's values (align_corners=False, border padding)."""
    g = torch.Generator().manual_seed(0)
    b, gh, gw, d = 3, 5, 7, 6
    tokens = torch.randn(b, gh * gw, d, generator=g)
    box = torch.tensor([[0.0, 0.0, 70.0, 50.0], [10.0, 5.0, 45.0, 30.0], [3.0, 3.0, 3.0, 9.0]])  # last: degenerate
    centers = torch.rand(b, 40, 2, generator=g) * 80 - 5  # some outside the box
    aligned, mask = align_patches(tokens, (gh, gw), box, centers)
    x0, y0, x1, y1 = box.unbind(-1)
    u = (centers[..., 0] - x0[:, None]) / (x1 - x0).clamp_min(1e-9)[:, None]
    v = (centers[..., 1] - y0[:, None]) / (y1 - y0).clamp_min(1e-9)[:, None]
    grid = torch.stack([2 * u - 1, 2 * v - 1], -1)[:, :, None, :]
    image = tokens.reshape(b, gh, gw, d).permute(0, 3, 1, 2)
    ref = torch.nn.functional.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    ref = ref[..., 0].transpose(1, 2)
    assert mask[:2].any() and not mask[2].any() and not mask.all()
    assert torch.allclose(aligned[mask], ref[mask], atol=1e-6)
    assert torch.equal(aligned[~mask], torch.zeros_like(aligned[~mask]))


def test_token_targets_compact_split_and_stack():
    selected = torch.tensor([[False, True, False, True], [True, False, False, False]])
    aligned = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    t = TokenTargets.from_selection(selected, aligned, "all", 0.5)
    assert torch.equal(t.index, torch.tensor([[1, 3], [0, 0]]))
    assert torch.equal(t.mask, torch.tensor([[True, True], [True, False]]))
    assert torch.equal(t.tokens, torch.stack([aligned[0, [1, 3]], torch.stack([aligned[1, 0], torch.zeros(2)])]))
    rows = t.rows()
    assert [r.index.shape[1] for r in rows] == [2, 1]
    again = TokenTargets.stack(rows)
    for name in ("index", "tokens", "mask"):
        assert torch.equal(getattr(again, name), getattr(t, name)), name
    with pytest.raises(ValueError, match="different selections"):
        TokenTargets.stack([rows[0], dataclasses.replace(rows[1], k=8)])


def test_precomputed_targets_give_the_objectives_own_values():
    """Targets made ahead by the data pipeline (per image, through the builder's cache, from the selection functions
    themselves) give MADLoss the values and gradients of targets made on the spot; targets made for another
    selection are refused."""
    for select, k in (("teacher-saliency", 0.5), ("teacher-saliency", 1), ("all", 0.5)):
        cfg = MADConfig.full(alpha_schedule="constant", alpha0=1.0, select_v=select, select_t=select, k_v=k, k_t=k)
        student, teacher = make_batch()
        manual = build_targets(cfg, teacher, student)
        manual = dataclasses.replace(
            manual,
            image=image_targets(select, k, teacher.image_tokens, teacher.image_grid, teacher.crop_box,
                                student.visual_centers),
            text=text_targets(select, k, teacher.text_tokens, teacher.text_spans,
                              text_reference(teacher.text_tokens, teacher.text_length, teacher.text_pooled),
                              student.text_spans),
        )
        builder = TargetBuilder(cfg, cache_mb=1.0)
        builder.build(teacher, student.visual_centers, student.text_spans, image_keys=[0, 1])  # fills the cache
        cached = builder.build(teacher, student.visual_centers, student.text_spans, image_keys=[0, 1])
        grads = []
        values = []
        for t in (build_targets(cfg, teacher, student), manual, cached):
            torch.manual_seed(0)
            loss = MADLoss(cfg, H, DV, DT, E, E)
            out = loss(student, t, torch.tensor(1.0), target=torch.tensor([0, 2]))
            out["total"].backward()
            values.append({k2: out[k2].item() for k2 in ("tok_v", "tok_t", "distill")})
            grads.append((loss.proj_v.weight.grad.clone(), loss.proj_t.weight.grad.clone()))
            student.visual_tokens.grad = student.text_tokens.grad = None
        assert values[0]["tok_v"] > 0 and values[0]["tok_t"] > 0
        # the cache keeps selected image targets in the teacher's dtype (fp16 here): equal to fp16 rounding
        for other, other_grads, rel in ((values[1], grads[1], 1e-6), (values[2], grads[2], 1e-3)):
            for k2 in values[0]:
                assert other[k2] == pytest.approx(values[0][k2], rel=rel, abs=1e-7), (select, k, k2)
            for a, b in zip(grads[0], other_grads, strict=True):
                assert torch.allclose(a, b, atol=1e-6 if rel == 1e-6 else 1e-3)
    other = MADConfig.full(k_v=0.25)
    with pytest.raises(ValueError, match="made for selection"):
        MADLoss(other, H, DV, DT, E, E)(student, cached, torch.tensor(1.0), target=torch.tensor([0, 2]))


def test_a_new_selection_policy_is_one_function():
    """docs/architecture.md's example: a registered scoring function is a --select value everywhere."""
    from mad_pipeline.losses import SELECTION_POLICIES, register_policy

    @register_policy("teacher-norm")
    def teacher_norm(tokens, ref, mask, proj, generator, index, positions):
        return tokens.float().norm(dim=-1)

    try:
        cfg = MADConfig.from_switches("full", select="teacher-norm", top_k="1")
        student, teacher = make_batch()
        targets = build_targets(cfg, teacher, student)
        assert targets.image.selected and targets.image.mask.sum(1).tolist() == [1, 1]
        norms = teacher.image_tokens[:, 1:].float().norm(dim=-1)  # the aligned tokens are the grid's own here
        assert targets.image.index[:, 0].tolist() == norms.argmax(1).tolist()
        out = MADLoss(cfg, H, DV, DT, E, E)(student, targets, torch.tensor(1.0), target=torch.tensor([0, 2]))
        assert out["tok_v"] > 0
    finally:
        SELECTION_POLICIES.pop("teacher-norm")
