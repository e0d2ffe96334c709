"""The MAD objective: this project's own formulation (SPEC section 5).

The MAD paper (Wang et al., 2022, arXiv 2204.10496) describes its distillation as "a dynamically weighted objective
applied to adaptively selected tokens per instance", but its exact equations are not available to us. What follows is
*our* formulation of its three parts; nothing here claims to reproduce the paper's equations.

Per sample ``i``, with teacher image tokens ``V`` (``V[0]`` = CLS), teacher text tokens ``W``, teacher pooled
embeddings, teacher zero-shot logits ``z`` over ``K`` candidates, student visual tokens ``S_v``, text tokens ``S_t``,
pooled ``s`` and task logits ``o``; learned linear projections ``P_v``, ``P_t``, ``P_g`` from the student width to the
teacher widths:

1. **Alignment** (:mod:`.align`): student patches are matched to teacher patches by image position, student text
   tokens to teacher text tokens by character-span overlap.
2. **Adaptive token selection**: aligned positions are ranked by teacher saliency ``r_k = cos(V_k, V_ref)`` (``V_ref``
   = CLS for images, the EOS/pooled token for text) and the top-k are kept. Token loss: mean over the selected
   positions of ``1 - cos(P(S_k), V_k)`` (or smooth-L1 on layer-normed features). A pooled term
   ``1 - cos(P_g(s), pooled teacher)`` for the image and the text embedding.
3. **Confidence weighting**: ``c_i = softmax(z_i / tau)[y_i]`` (soft targets: the expectation under the target
   scores), detached, normalised to batch mean 1. Optional logit KD ``tau^2 KL(softmax(z/tau) || softmax(o/tau))``.
4. **Adaptive balance**: ``L = L_task + alpha(t) * mean_i c_i * (l_tok + l_pool + l_kd)``.

Every part has an off switch in :class:`MADConfig`; an off term is exactly zero and has no gradient path. Pure torch,
no I/O.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .align import align_patches, align_text

__all__ = [
    "ALPHA_SCHEDULES",
    "CONFIDENCE_MODES",
    "SELECTION_POLICIES",
    "TOKEN_LOSSES",
    "Calibration",
    "MADConfig",
    "MADLoss",
    "PRECOMPUTABLE_POLICIES",
    "StudentBatch",
    "TeacherBatch",
    "TokenTargets",
    "alpha",
    "confidence_weights",
    "fit_calibration",
    "image_targets",
    "logit_kd",
    "parse_top_k",
    "pooled_loss",
    "select_tokens",
    "text_reference",
    "text_targets",
    "token_loss",
]

SELECTION_POLICIES = ("teacher-saliency", "all", "random", "student-gap")
TOKEN_LOSSES = ("cosine", "smooth-l1")
CONFIDENCE_MODES = ("none", "prob")
ALPHA_SCHEDULES = ("constant", "linear", "cosine", "adaptive")


# ----------------------------------------------------------------------------------------------------------------------
# 2. Adaptive token selection


def parse_top_k(text: str | float | int) -> float | int:
    """``"0.25"`` -> 0.25 (a fraction), ``"8"`` -> 8 (a count). Validates like :func:`select_tokens`."""
    if isinstance(text, str):
        text = text.strip()
        value: float | int = int(text) if text.lstrip("+").isdigit() else float(text)
    else:
        value = text
    _check_k(value)
    return value


def _check_k(k: float | int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"top-k must be a fraction in (0, 1] or a count >= 1, got {k!r}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"top-k count must be >= 1, got {k}")
    if isinstance(k, float) and not 0.0 < k <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {k}")


def _keep_counts(k: float | int, n_valid: Tensor) -> Tensor:
    """Per-sample number of positions to keep: ceil(k * n) (at least 1) for a fraction, min(k, n) for a count."""
    _check_k(k)
    if isinstance(k, int):
        return n_valid.clamp_max(k)
    # The 1e-6 guards against float error, e.g. 0.3 * 10 = 3.0000000000000004 must keep 3, not 4.
    counts = torch.ceil(n_valid.double() * k - 1e-6).long().clamp_min(1)
    return torch.minimum(counts, n_valid)


def select_tokens(
    policy: str,
    k: float | int,
    teacher_tokens: Tensor,
    teacher_ref: Tensor | None,
    mask: Tensor,
    student_proj: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Which aligned positions to distil, per instance. Returns a bool mask ``(B, N)``, a subset of ``mask``.

    Args:
        policy: ``"teacher-saliency"`` (top-k by ``cos(V_k, V_ref)``), ``"all"`` (every valid position; naive token
            distillation), ``"random"`` (k valid positions drawn with ``generator``) or ``"student-gap"`` (top-k by
            ``1 - cos(P(S_k), V_k)``).
        k: a float in (0, 1] = fraction of the valid positions (rounded up, at least 1), or an int >= 1 = a count
            (capped at the number of valid positions). Ignored by ``"all"``.
        teacher_tokens: ``(B, N, D)`` teacher tokens aligned to the student positions.
        teacher_ref: ``(B, D)`` the reference token (teacher CLS for images; EOS/pooled for text). Saliency only.
        mask: ``(B, N)`` bool, valid (aligned) positions.
        student_proj: ``(B, N, D)`` projected student tokens. ``"student-gap"`` only.
        generator: random source for ``"random"`` (seed it for reproducible runs).

    Ties are broken deterministically by position (the earlier position wins). Scores are computed without gradient.
    """
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown token selection policy {policy!r}; choose one of {', '.join(SELECTION_POLICIES)}")
    mask = mask.bool()
    if policy == "all":
        return mask.clone()
    with torch.no_grad():
        if policy == "teacher-saliency":
            if teacher_ref is None:
                raise ValueError("teacher-saliency selection needs a teacher reference token (CLS / EOS)")
            # cos(V_k, V_ref) = (V_k . V_ref^) / |V_k|: one element-wise product with the unit reference and one
            # norm (faster on CPU than F.cosine_similarity or a batched gemv; each sample's scores depend on that
            # sample only, bit for bit, whatever else is in the batch -- the data pipeline relies on it)
            tokens = teacher_tokens.float()
            ref = F.normalize(teacher_ref.float(), dim=-1, eps=_COS_EPS)
            norm = torch.linalg.vector_norm(tokens, dim=-1).clamp_min(_COS_EPS)
            scores = (tokens * ref[:, None, :]).sum(-1) / norm
        elif policy == "student-gap":
            if student_proj is None:
                raise ValueError("student-gap selection needs the projected student tokens")
            scores = 1 - _cos(student_proj.detach().float(), teacher_tokens.float())
        else:  # random
            device = generator.device if generator is not None else mask.device
            scores = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
        scores = torch.where(mask, scores, torch.full_like(scores, -math.inf))
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, positions)
        keep = _keep_counts(k, mask.sum(1))
        return (rank < keep[:, None]) & mask


# Teacher-side targets. With the policies that rank by teacher data only, alignment and selection need no gradient
# and depend only on the teacher's features and the student's fixed patch grid / tokenisation, so the data pipeline
# can compute them ahead of the step (in DataLoader workers, once per image): MADLoss then only gathers, projects and
# compares the selected student tokens. MADLoss computes the same targets itself, with the same functions, when a
# batch does not bring them (online teacher, ``random`` / ``student-gap`` selection).

PRECOMPUTABLE_POLICIES = ("teacher-saliency", "all")


@dataclass(frozen=True)
class TokenTargets:
    """The teacher targets of one modality at the student positions selected for distillation.

    ``index (B, K)`` int64 student token positions (padding: 0), ``tokens (B, K, D)`` the aligned teacher tokens
    there (padding: 0), ``mask (B, K)`` bool (False = padding). ``policy`` and ``k`` record the selection they were
    made with (MADLoss refuses targets made for another configuration).
    """

    index: Tensor
    tokens: Tensor
    mask: Tensor
    policy: str
    k: float | int

    def to(self, device) -> TokenTargets:
        return _move(self, device)

    @property
    def nbytes(self) -> int:
        return self.index.nbytes + self.tokens.nbytes + self.mask.nbytes

    @classmethod
    def from_selection(cls, selected: Tensor, aligned: Tensor, policy: str, k: float | int) -> TokenTargets:
        """Compact a selection mask ``(B, N)`` over aligned teacher tokens ``(B, N, D)`` to the selected positions, in
        position order, padded to the largest per-sample count."""
        selected = selected.bool()
        kmax = max(1, int(selected.sum(1).max())) if selected.numel() else 1
        index = torch.sort(selected.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :kmax]
        mask = selected.gather(1, index)
        index = index * mask  # padding points at position 0
        tokens = aligned[torch.arange(index.shape[0], device=index.device)[:, None], index] * mask[..., None]
        return cls(index, tokens, mask, policy, k)

    def rows(self) -> list[TokenTargets]:
        """One ``TokenTargets`` per sample, without padding (for per-image caching)."""
        out = []
        for i in range(self.index.shape[0]):
            n = int(self.mask[i].sum())
            out.append(TokenTargets(self.index[i : i + 1, :n], self.tokens[i : i + 1, :n], self.mask[i : i + 1, :n],
                                    self.policy, self.k))
        return out

    @classmethod
    def stack(cls, rows: Sequence[TokenTargets]) -> TokenTargets:
        """Pad per-sample targets (as from :meth:`rows`) to one batch."""
        if not rows:
            raise ValueError("TokenTargets.stack needs at least one row")
        first = rows[0]
        kmax = max(1, max(r.index.shape[1] for r in rows))
        b, d = len(rows), first.tokens.shape[-1]
        index = torch.zeros(b, kmax, dtype=torch.long)
        tokens = torch.zeros(b, kmax, d, dtype=first.tokens.dtype)
        mask = torch.zeros(b, kmax, dtype=torch.bool)
        for i, r in enumerate(rows):
            if (r.policy, r.k) != (first.policy, first.k):
                raise ValueError("TokenTargets.stack: rows made with different selections")
            n = r.index.shape[1]
            index[i, :n], tokens[i, :n], mask[i, :n] = r.index[0], r.tokens[0], r.mask[0]
        return cls(index, tokens, mask, first.policy, first.k)


def _aligned_patches(
    teacher_tokens: Tensor,
    grid: tuple[int, int] | None,
    crop_box: Tensor,
    student_centers: Tensor,
    valid: Tensor | None = None,
    student_mask: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Teacher patches (``teacher_tokens (B, 1 + Gh * Gw, D)``, CLS first; ``grid`` None = square) aligned to the
    student patch centres, with the mask of usable positions (inside the teacher's crop, valid image, real student
    patch)."""
    n = teacher_tokens.shape[1] - 1
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError("teacher image_grid is needed for a non-square patch grid")
        grid = (side, side)
    aligned, mask = align_patches(teacher_tokens[:, 1:].float(), grid, crop_box, student_centers)
    if student_mask is not None:
        mask = mask & student_mask.bool()
    if valid is not None:
        mask = mask & valid.bool()[:, None]
    return aligned, mask


def _aligned_text(teacher_tokens: Tensor, teacher_spans: Tensor, student_spans: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher text tokens aligned to the student's by character-span overlap, with the mask of aligned positions."""
    assign, mask = align_text(teacher_spans, student_spans)
    return assign @ teacher_tokens.float(), mask


def _check_teacher_side(policy: str) -> None:
    if policy == "student-gap":
        raise ValueError("student-gap selection ranks by the student's tokens: it has no teacher-side targets")


def image_targets(
    policy: str,
    k: float | int,
    teacher_tokens: Tensor,
    grid: tuple[int, int] | None,
    crop_box: Tensor,
    student_centers: Tensor,
    valid: Tensor | None = None,
    student_mask: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TokenTargets:
    """Align teacher patches to the student patches (:func:`.align.align_patches`), select with ``policy``
    (``teacher-saliency`` against the teacher CLS, ``all``, or ``random`` with ``generator``) and compact.
    ``teacher_tokens (B, 1 + Gh * Gw, D)`` CLS first; ``grid`` None = square. With the
    :data:`PRECOMPUTABLE_POLICIES` each sample's result depends on that sample only (bit for bit)."""
    _check_teacher_side(policy)
    aligned, mask = _aligned_patches(teacher_tokens, grid, crop_box, student_centers, valid, student_mask)
    sel = select_tokens(policy, k, aligned, teacher_tokens[:, 0].float(), mask, generator=generator)
    return TokenTargets.from_selection(sel, aligned, policy, k)


def text_targets(
    policy: str,
    k: float | int,
    teacher_tokens: Tensor,
    teacher_spans: Tensor,
    teacher_ref: Tensor | None,
    student_spans: Tensor,
    generator: torch.Generator | None = None,
) -> TokenTargets:
    """Align teacher text tokens to the student's by character-span overlap (:func:`.align.align_text`), select with
    ``policy`` (``teacher-saliency`` against ``teacher_ref``, ``all``, or ``random`` with ``generator``) and
    compact."""
    _check_teacher_side(policy)
    aligned, mask = _aligned_text(teacher_tokens, teacher_spans, student_spans)
    sel = select_tokens(policy, k, aligned, teacher_ref if policy == "teacher-saliency" else None, mask,
                        generator=generator)
    return TokenTargets.from_selection(sel, aligned, policy, k)


def text_reference(tokens: Tensor, length: Tensor | None, pooled: Tensor | None, ref: Tensor | None = None) -> Tensor:
    """The saliency reference of teacher text: ``ref`` if given, else the last real token (CLIP's EOS, ``[SEP]``,
    ``</s>``; from ``length``), else the pooled embedding when it has the token width."""
    if ref is not None:
        return ref.float()
    if length is not None:
        last = (length.long() - 1).clamp(0, tokens.shape[1] - 1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), last].float()
    if pooled is not None and pooled.shape[-1] == tokens.shape[-1]:
        return pooled.float()
    raise ValueError("text saliency needs the teacher's text_ref or text_length (to find the EOS token)")


# ----------------------------------------------------------------------------------------------------------------------
# Token and pooled losses


_COS_EPS = 1e-8


def _cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity over the last dimension: the product of unit vectors (zero vectors give 0, as
    ``F.cosine_similarity``; fewer kernels and a cheaper backward)."""
    return (F.normalize(a, dim=-1, eps=_COS_EPS) * F.normalize(b, dim=-1, eps=_COS_EPS)).sum(-1)


def token_loss(student_proj: Tensor, teacher_tokens: Tensor, selected: Tensor, kind: str = "cosine") -> Tensor:
    """Per-sample token loss ``(B,)``: the mean over selected positions of ``1 - cos(P(S_k), V_k)`` (``"cosine"``) or
    of the smooth-L1 distance between layer-normed (no affine) features (``"smooth-l1"``). A sample with no selected
    position contributes exactly 0."""
    if kind not in TOKEN_LOSSES:
        raise ValueError(f"unknown token loss {kind!r}; choose one of {', '.join(TOKEN_LOSSES)}")
    s = student_proj.float()
    t = teacher_tokens.float().detach()
    if kind == "cosine":
        # 1 - (s . t^) / |s|: the teacher side as a unit vector, the student's norm divided out afterwards (equal to
        # 1 - _cos(s, t) up to float rounding; a cheaper backward than normalising s)
        t_unit = F.normalize(t, dim=-1, eps=_COS_EPS)
        per = 1 - (s * t_unit).sum(-1) / torch.linalg.vector_norm(s, dim=-1).clamp_min(_COS_EPS)
    else:
        d = s.shape[-1]
        per = F.smooth_l1_loss(F.layer_norm(s, (d,)), F.layer_norm(t, (d,)), reduction="none").mean(-1)
    selected = selected.bool()
    per = torch.where(selected, per, torch.zeros_like(per))
    return per.sum(1) / selected.sum(1).clamp_min(1)


def pooled_loss(student_proj: Tensor, teacher_pooled: Tensor) -> Tensor:
    """Per-sample ``1 - cos(P_g(s), pooled teacher)``, ``(B,)``."""
    return 1 - _cos(student_proj.float(), teacher_pooled.float().detach())


# ----------------------------------------------------------------------------------------------------------------------
# 3. Confidence weighting and logit KD


def confidence_weights(
    mode: str,
    zs_logits: Tensor | None,
    target: Tensor | None,
    tau: float = 1.0,
    normalise: bool = True,
    mask: Tensor | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """Per-sample confidence of the teacher in the right answer, ``(B,)``, detached.

    Args:
        mode: ``"none"`` -> all ones; ``"prob"`` -> ``softmax(z / tau)[y]`` for hard labels ``target (B,)`` int, or
            ``sum_k softmax(z / tau)_k * target_k`` for soft scores ``target (B, K)`` (VQA answer scores).
        zs_logits: ``(B, K)`` teacher zero-shot logits (for SNLI-VE: :meth:`Calibration.logits` of the similarity).
        target: hard labels (negative = unknown) or soft scores.
        tau: temperature.
        normalise: divide by the batch mean so the weights average 1.
        mask: ``(B,)`` bool, False for samples without zero-shot logits (or with an unknown label): weight 1 before
            normalising.
    """
    if mode not in CONFIDENCE_MODES:
        raise ValueError(f"unknown confidence mode {mode!r}; choose one of {', '.join(CONFIDENCE_MODES)}")
    if mode == "none":
        ref = zs_logits if zs_logits is not None else target
        if ref is None:
            raise ValueError("confidence_weights needs zs_logits or target to know the batch size")
        return torch.ones(ref.shape[0], device=ref.device)
    if zs_logits is None or target is None:
        raise ValueError("confidence mode 'prob' needs the teacher's zero-shot logits and the task targets")
    with torch.no_grad():
        z = zs_logits.float()
        valid = torch.ones(z.shape[0], dtype=torch.bool, device=z.device) if mask is None else mask.bool().clone()
        valid &= torch.isfinite(z).any(-1)
        z = torch.where(valid[:, None], z, torch.zeros_like(z))
        probs = torch.softmax(z / tau, dim=-1)
        if target.dim() == 1:
            y = target.long()
            valid &= y >= 0
            conf = probs.gather(1, y.clamp_min(0)[:, None])[:, 0]
        else:
            conf = (probs * target.float()).sum(-1)
        conf = torch.where(valid, conf, torch.ones_like(conf))
        if normalise:
            conf = conf / conf.mean().clamp_min(eps)
    return conf


def logit_kd(student_logits: Tensor, teacher_logits: Tensor, tau: float = 1.0) -> Tensor:
    """Per-sample ``tau^2 * KL(softmax(z / tau) || softmax(o / tau))``, ``(B,)``. Meaningful only when the teacher's
    candidates are the task's answer classes (same ``K``, same order)."""
    log_p_teacher = torch.log_softmax(teacher_logits.float().detach() / tau, dim=-1)
    log_p_student = torch.log_softmax(student_logits.float() / tau, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(-1)
    return kl * tau**2


@dataclass(frozen=True)
class Calibration:
    """A 1-D multinomial logistic calibration ``logits = s * weight + bias`` (``weight``, ``bias``: ``(K,)``).

    Used for SNLI-VE, where the teacher gives one image-hypothesis similarity ``s`` but the task has three classes:
    fitted on the training split, its logits serve as ``z`` for the ``"prob"`` confidence mode (with ``tau = 1``).
    """

    weight: Tensor
    bias: Tensor

    def logits(self, similarities: Tensor) -> Tensor:
        s = similarities.float()
        return s[..., None] * self.weight.to(s.device) + self.bias.to(s.device)

    def to_dict(self) -> dict[str, list[float]]:
        return {"weight": self.weight.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Calibration:
        return cls(torch.tensor(d["weight"], dtype=torch.float32), torch.tensor(d["bias"], dtype=torch.float32))


def fit_calibration(
    similarities: Tensor,
    labels: Tensor,
    num_classes: int | None = None,
    l2: float = 1e-4,
    max_iter: int = 100,
    tol: float = 1e-10,
) -> Calibration:
    """Fit ``softmax(s * w + b)`` to ``labels`` by multinomial logistic regression on ``[s, 1]``.

    Damped Newton steps in float64 on the standardised similarity with a small L2 penalty (which makes the optimum
    unique despite softmax's shift invariance): deterministic, converges in a handful of iterations.
    """
    s = similarities.detach().double().flatten().cpu()
    y = labels.detach().long().flatten().cpu()
    if s.numel() != y.numel() or s.numel() == 0:
        raise ValueError("fit_calibration needs as many labels as similarities (and at least one)")
    k = int(num_classes) if num_classes is not None else int(y.max()) + 1
    mu, sd = s.mean(), s.std(unbiased=False).clamp_min(1e-12)
    x = torch.stack([(s - mu) / sd, torch.ones_like(s)], dim=1)  # (N, 2)
    onehot = F.one_hot(y, k).double()
    n = x.shape[0]
    w = torch.zeros(2, k, dtype=torch.float64)

    def objective(w: Tensor) -> Tensor:
        return -(onehot * torch.log_softmax(x @ w, dim=1)).sum(1).mean() + 0.5 * l2 * (w**2).sum()

    eye = torch.eye(2 * k, dtype=torch.float64)
    for _ in range(max_iter):
        p = torch.softmax(x @ w, dim=1)
        grad = x.T @ (p - onehot) / n + l2 * w  # (2, K)
        if grad.abs().max() < tol:
            break
        cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, K, K)
        hess = torch.einsum("nab,ni,nj->iajb", cov, x, x).reshape(2 * k, 2 * k) / n + l2 * eye
        step = torch.linalg.solve(hess, grad.reshape(-1)).reshape(2, k)
        f0, t = objective(w), 1.0
        while objective(w - t * step) > f0 - 1e-4 * t * (grad * step).sum() and t > 1e-10:
            t *= 0.5
        w = w - t * step
    weight = w[0] / sd
    bias = w[1] - w[0] * mu / sd
    return Calibration(weight.float(), bias.float())


# ----------------------------------------------------------------------------------------------------------------------
# 4. Adaptive balance


def alpha(
    schedule: str,
    step: int,
    total_steps: int,
    alpha0: float,
    task_loss: Tensor | None = None,
    distill_loss: Tensor | None = None,
    ratio: float | None = None,
    eps: float = 1e-8,
) -> Tensor:
    """The weight of the distillation term at ``step`` (a 0-d tensor, never carrying gradient).

    ``"constant"``: ``alpha0``. ``"linear"``: ``alpha0 * (1 - t)``. ``"cosine"``: ``alpha0 * (1 + cos(pi t)) / 2``,
    with ``t = step / total_steps`` clamped to [0, 1]. ``"adaptive"``: ``ratio * task / distill`` on detached values,
    so ``alpha * distill`` stays at ``ratio`` times the task loss whatever the scale of the distillation loss.
    """
    if schedule not in ALPHA_SCHEDULES:
        raise ValueError(f"unknown alpha schedule {schedule!r}; choose one of {', '.join(ALPHA_SCHEDULES)}")
    if schedule == "adaptive":
        if task_loss is None or distill_loss is None or ratio is None:
            raise ValueError("the adaptive alpha schedule needs task_loss, distill_loss and ratio")
        return (ratio * task_loss.detach().float() / distill_loss.detach().float().clamp_min(eps)).reshape(())
    if schedule == "constant":
        value = alpha0
    else:
        if total_steps <= 0:
            raise ValueError(f"the {schedule} alpha schedule needs total_steps > 0")
        t = min(max(step / total_steps, 0.0), 1.0)
        value = alpha0 * (1 - t) if schedule == "linear" else alpha0 * 0.5 * (1 + math.cos(math.pi * t))
    device = task_loss.device if task_loss is not None else None
    return torch.tensor(float(value), device=device)


# ----------------------------------------------------------------------------------------------------------------------
# Configuration and the module


@dataclass(frozen=True)
class MADConfig:
    """Every switch of the objective. Presets: :meth:`baseline`, :meth:`naive`, :meth:`full`."""

    distill: bool = True  # False: plain finetuning, total == task loss
    tokens_v: bool = True  # image token term
    tokens_t: bool = True  # text token term (needs character spans from both tokenizers)
    select_v: str = "teacher-saliency"
    k_v: float | int = 0.5
    select_t: str = "teacher-saliency"
    k_t: float | int = 0.5
    token_loss: str = "cosine"  # or "smooth-l1"
    use_pooled: bool = True
    confidence: str = "prob"  # or "none"
    conf_tau: float = 1.0  # zero-shot logits from CLIP already include its logit scale
    conf_normalise: bool = True
    logit_kd: bool = False  # only for tasks whose teacher candidates are the answer classes
    kd_tau: float = 1.0
    alpha_schedule: str = "adaptive"
    # Issue 4's feasibility run needed a constant alpha ~20 for the (small) cosine token loss to matter.
    alpha0: float = 20.0
    alpha_ratio: float = 1.0  # adaptive: alpha * distill == alpha_ratio * task (in value)

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("select_v", self.select_v, SELECTION_POLICIES),
            ("select_t", self.select_t, SELECTION_POLICIES),
            ("token_loss", self.token_loss, TOKEN_LOSSES),
            ("confidence", self.confidence, CONFIDENCE_MODES),
            ("alpha_schedule", self.alpha_schedule, ALPHA_SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"MADConfig.{name}={value!r}; choose one of {', '.join(allowed)}")
        _check_k(self.k_v)
        _check_k(self.k_t)
        if self.conf_tau <= 0 or self.kd_tau <= 0:
            raise ValueError("temperatures must be > 0")

    def replace(self, **changes) -> MADConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def baseline(cls, **overrides) -> MADConfig:
        """No distillation: plain finetuning."""
        return cls(distill=False).replace(**overrides)

    @classmethod
    def naive(cls, **overrides) -> MADConfig:
        """Naive distillation: every aligned token, no confidence weighting, constant alpha, pooled term on."""
        base = cls(select_v="all", select_t="all", confidence="none", alpha_schedule="constant", use_pooled=True)
        return base.replace(**overrides)

    @classmethod
    def full(cls, **overrides) -> MADConfig:
        """Full MAD: teacher-saliency top-50% tokens, prob confidence (normalised), adaptive alpha.

        Adaptive rather than cosine alpha: the cosine token loss is small and its scale depends on the teacher, the
        student and the task (issue 4's feasibility run needed a hand-tuned constant of ~20); the adaptive schedule
        pins the distillation term at ``alpha_ratio`` x the task loss, so it needs no per-setup tuning, and it shrinks
        with the task loss as training converges.
        """
        base = cls(
            select_v="teacher-saliency", select_t="teacher-saliency", confidence="prob", alpha_schedule="adaptive"
        )
        return base.replace(**overrides)


def _move(batch, device):
    fields = dataclasses.fields(batch)
    return dataclasses.replace(batch, **{f.name: _to(getattr(batch, f.name), device) for f in fields})


def _to(x, device):
    return x.to(device) if isinstance(x, (Tensor, TokenTargets)) else x


@dataclass(frozen=True)
class TeacherBatch:
    """Teacher features for one batch (from the stores, or from an online teacher). Any part may be None.

    image_tokens (B, T, Dv), CLS first then the ``image_grid`` patches row-major; image_pooled (B, Ev);
    image_grid (Gh, Gw) (default: square from T - 1); crop_box (B, 4) original-image x0, y0, x1, y1;
    image_valid (B,) bool; text_tokens (B, Lt, Dt); text_pooled (B, Et); text_spans (B, Lt, 2) (-1 = none);
    text_length (B,) real tokens per row; text_ref (B, Dt) saliency reference for text (default: the last real token,
    i.e. CLIP's EOS, ``[SEP]`` or ``</s>``; else text_pooled if its width is Dt); zs_logits (B, K); zs_mask (B,) bool.

    image_targets / text_targets: :class:`TokenTargets` computed ahead of the step by the data pipeline (alignment
    and selection done); when present the objective uses them instead of the raw tokens of that modality.
    """

    image_tokens: Tensor | None = None
    image_pooled: Tensor | None = None
    image_grid: tuple[int, int] | None = None
    crop_box: Tensor | None = None
    image_valid: Tensor | None = None
    text_tokens: Tensor | None = None
    text_pooled: Tensor | None = None
    text_spans: Tensor | None = None
    text_length: Tensor | None = None
    text_ref: Tensor | None = None
    zs_logits: Tensor | None = None
    zs_mask: Tensor | None = None
    image_targets: TokenTargets | None = None
    text_targets: TokenTargets | None = None

    def to(self, device) -> TeacherBatch:
        return _move(self, device)


@dataclass(frozen=True)
class StudentBatch:
    """Student outputs for one batch. Any part may be None.

    visual_tokens (B, Ns, H); visual_centers (B, Ns, 2) patch centres in original-image pixel coordinates;
    visual_mask (B, Ns) bool (False = padding); text_tokens (B, Ls, H); text_spans (B, Ls, 2) on the same text as the
    teacher's (-1 = none); pooled (B, H); logits (B, K).
    """

    visual_tokens: Tensor | None = None
    visual_centers: Tensor | None = None
    visual_mask: Tensor | None = None
    text_tokens: Tensor | None = None
    text_spans: Tensor | None = None
    pooled: Tensor | None = None
    logits: Tensor | None = None

    def to(self, device) -> StudentBatch:
        return _move(self, device)


class MADLoss(nn.Module):
    """The MAD objective with its learned projections (this project's formulation, SPEC section 5).

    Projections (created whenever the width is given, whatever the config, so parameter initialisation does not depend
    on the ablation; a switched-off term never touches its projection, which then gets no gradient):
    ``proj_v`` H -> Dv (image tokens), ``proj_t`` H -> Dt (text tokens), ``proj_g_image`` H -> Ev and
    ``proj_g_text`` H -> Et (the same module when Ev == Et).

    ``forward`` returns a dict of 0-d tensors: ``task``, ``tok_v``, ``tok_t``, ``pool``, ``kd`` (unweighted batch
    means), ``distill`` (= mean_i c_i (l_tok + l_pool + l_kd)), ``alpha``, ``conf_mean`` (mean raw teacher confidence
    before normalisation; 1 when off) and ``total`` (= task + alpha * distill; exactly ``task_loss`` with
    ``distill=False``).
    """

    def __init__(
        self,
        config: MADConfig,
        student_dim: int,
        teacher_image_dim: int | None = None,
        teacher_text_dim: int | None = None,
        teacher_image_pooled_dim: int | None = None,
        teacher_text_pooled_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        h = student_dim
        self.proj_v = nn.Linear(h, teacher_image_dim) if teacher_image_dim else None
        self.proj_t = nn.Linear(h, teacher_text_dim) if teacher_text_dim else None
        self.proj_g_image = nn.Linear(h, teacher_image_pooled_dim) if teacher_image_pooled_dim else None
        if teacher_text_pooled_dim and teacher_text_pooled_dim == teacher_image_pooled_dim:
            self.proj_g_text = self.proj_g_image
        else:
            self.proj_g_text = nn.Linear(h, teacher_text_pooled_dim) if teacher_text_pooled_dim else None

    # -- the terms, each (B,) ----------------------------------------------------------------------------------------

    def _image_tokens(self, s: StudentBatch, t: TeacherBatch, zeros: Tensor, generator) -> Tensor:
        cfg = self.config
        if not cfg.tokens_v or self.proj_v is None or s.visual_tokens is None:
            return zeros
        targets, mask = t.image_targets, None
        if targets is not None and cfg.select_v in PRECOMPUTABLE_POLICIES:  # made by the data pipeline
            _check_targets(targets, cfg.select_v, cfg.k_v, "image")
            if s.visual_mask is not None:
                mask = targets.mask & s.visual_mask.bool().gather(1, targets.index)
        else:
            if t.image_tokens is None:
                return zeros
            if s.visual_centers is None or t.crop_box is None:
                raise ValueError("image token distillation needs student visual_centers and the teacher crop_box")
            args = (t.image_tokens, t.image_grid, t.crop_box, s.visual_centers, t.image_valid, s.visual_mask)
            if cfg.select_v == "student-gap":  # ranks by the projected student tokens: project them all
                aligned, ok = _aligned_patches(*args)
                proj = self.proj_v(s.visual_tokens)
                sel = select_tokens(cfg.select_v, cfg.k_v, aligned, None, ok, proj, generator)
                return token_loss(proj, aligned, sel, cfg.token_loss)
            targets = image_targets(cfg.select_v, cfg.k_v, *args, generator=generator)
        return _targets_loss(self.proj_v, s.visual_tokens, targets, cfg.token_loss, mask)

    def _text_tokens(self, s: StudentBatch, t: TeacherBatch, zeros: Tensor, generator) -> Tensor:
        cfg = self.config
        if not cfg.tokens_t or self.proj_t is None or s.text_tokens is None:
            return zeros
        targets = t.text_targets
        if targets is not None and cfg.select_t in PRECOMPUTABLE_POLICIES:  # made by the data pipeline
            _check_targets(targets, cfg.select_t, cfg.k_t, "text")
        else:
            if t.text_tokens is None or s.text_spans is None or t.text_spans is None:
                return zeros  # no spans on one side: text is distilled through the pooled term only
            if cfg.select_t == "student-gap":
                aligned, ok = _aligned_text(t.text_tokens, t.text_spans, s.text_spans)
                proj = self.proj_t(s.text_tokens)
                sel = select_tokens(cfg.select_t, cfg.k_t, aligned, None, ok, proj, generator)
                return token_loss(proj, aligned, sel, cfg.token_loss)
            ref = None
            if cfg.select_t == "teacher-saliency":
                ref = text_reference(t.text_tokens, t.text_length, t.text_pooled, t.text_ref)
            targets = text_targets(cfg.select_t, cfg.k_t, t.text_tokens, t.text_spans, ref, s.text_spans, generator)
        return _targets_loss(self.proj_t, s.text_tokens, targets, cfg.token_loss)

    def _pooled(self, s: StudentBatch, t: TeacherBatch, zeros: Tensor) -> Tensor:
        if not self.config.use_pooled or s.pooled is None:
            return zeros
        out = zeros
        if t.image_pooled is not None and self.proj_g_image is not None:
            term = pooled_loss(self.proj_g_image(s.pooled), t.image_pooled)
            if t.image_valid is not None:
                term = torch.where(t.image_valid.bool(), term, torch.zeros_like(term))
            out = out + term
        if t.text_pooled is not None and self.proj_g_text is not None:
            out = out + pooled_loss(self.proj_g_text(s.pooled), t.text_pooled)
        return out

    def _kd(self, s: StudentBatch, t: TeacherBatch, zeros: Tensor) -> Tensor:
        cfg = self.config
        if not cfg.logit_kd or s.logits is None or t.zs_logits is None:
            return zeros
        if s.logits.shape != t.zs_logits.shape:
            raise ValueError(
                f"logit KD needs the teacher's candidates to be the task's answer classes: student logits "
                f"{tuple(s.logits.shape)} vs teacher zero-shot logits {tuple(t.zs_logits.shape)}"
            )
        ok = torch.isfinite(t.zs_logits).all(-1)
        if t.zs_mask is not None:
            ok = ok & t.zs_mask.bool()
        z = torch.where(ok[:, None], t.zs_logits.float(), torch.zeros_like(t.zs_logits, dtype=torch.float32))
        kd = logit_kd(s.logits, z, cfg.kd_tau)
        return torch.where(ok, kd, torch.zeros_like(kd))

    # -- forward ----------------------------------------------------------------------------------------------------

    def forward(
        self,
        student: StudentBatch,
        teacher: TeacherBatch,
        task_loss: Tensor,
        target: Tensor | None = None,
        step: int = 0,
        total_steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        cfg = self.config
        device = task_loss.device
        zero = torch.zeros((), device=device)
        if not cfg.distill:
            return {
                "task": task_loss,
                "tok_v": zero,
                "tok_t": zero,
                "pool": zero,
                "kd": zero,
                "distill": zero,
                "alpha": zero,
                "conf_mean": torch.ones((), device=device),
                "total": task_loss,
            }
        b = _batch_size(student)
        zeros = torch.zeros(b, device=device)
        tok_v = self._image_tokens(student, teacher, zeros, generator)
        tok_t = self._text_tokens(student, teacher, zeros, generator)
        pool = self._pooled(student, teacher, zeros)
        kd = self._kd(student, teacher, zeros)
        if cfg.confidence == "none":
            raw = torch.ones(b, device=device)
            conf = raw
        else:
            raw = confidence_weights(
                cfg.confidence, teacher.zs_logits, target, cfg.conf_tau, normalise=False, mask=teacher.zs_mask
            )
            conf = raw / raw.mean().clamp_min(1e-8) if cfg.conf_normalise else raw
        distill = (conf * (tok_v + tok_t + pool + kd)).mean()
        a = alpha(cfg.alpha_schedule, step, total_steps, cfg.alpha0, task_loss, distill, cfg.alpha_ratio)
        return {
            "task": task_loss,
            "tok_v": tok_v.mean(),
            "tok_t": tok_t.mean(),
            "pool": pool.mean(),
            "kd": kd.mean(),
            "distill": distill,
            "alpha": a,
            "conf_mean": raw.mean(),
            "total": task_loss + a * distill,
        }


def _targets_loss(proj: nn.Module, student: Tensor, targets: TokenTargets, kind: str, mask: Tensor | None = None):
    """:func:`token_loss` over the target positions only: the student tokens there are gathered and projected (with
    top-50% selection that halves the projection and its backward, MAD's largest cost)."""
    taken = student.gather(1, targets.index[..., None].expand(-1, -1, student.shape[-1]))
    return token_loss(proj(taken), targets.tokens, targets.mask if mask is None else mask, kind)


def _check_targets(targets: TokenTargets, policy: str, k: float | int, what: str) -> None:
    if (targets.policy, targets.k) != (policy, k):
        raise ValueError(f"{what} targets were made for selection {targets.policy} top-{targets.k}, but the objective "
                         f"selects {policy} top-{k}")


def _batch_size(s: StudentBatch) -> int:
    for x in (s.pooled, s.logits, s.visual_tokens, s.text_tokens):
        if x is not None:
            return x.shape[0]
    raise ValueError("StudentBatch is empty")
