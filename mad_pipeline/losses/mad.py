"""The MAD objective: this project's own formulation of the paper's adaptive distillation.

The MAD paper (Wang et al., 2022, arXiv 2204.10496) describes its distillation as "a dynamically weighted objective
applied to adaptively selected tokens per instance", but its exact equations are not available to us. What follows is
*our* formulation of its parts; nothing here claims to reproduce the paper's equations.

Per sample ``i``, with the teacher's targets (:mod:`.targets`: aligned, selected teacher tokens per modality, pooled
embeddings, zero-shot logits ``z``) and the student's visual tokens ``S_v``, text tokens ``S_t``, pooled ``s`` and
task logits ``o``; learned linear projections ``P_v``, ``P_t``, ``P_g`` from the student width to the teacher widths:

1. **Token terms** (:func:`.terms.token_loss`): the student tokens at the target positions are projected and
   compared, ``mean_k 1 - cos(P(S_k), V_k)``; a **pooled term** ``1 - cos(P_g(s), pooled teacher)`` per embedding.
2. **Confidence weighting**: ``c_i = softmax(z_i / tau)[y_i]`` (soft targets: the expectation under the target
   scores), detached, normalised to batch mean 1. Optional logit KD ``tau^2 KL(softmax(z/tau) || softmax(o/tau))``.
3. **Adaptive balance**: ``L = L_task + alpha(t) * mean_i c_i * (l_tok + l_pool + l_kd)``.

Every part has an off switch in :class:`~.config.MADConfig`; an off term is exactly zero and has no gradient path.
Pure torch, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import MADConfig
from .global_batch import global_batch_losses
from .selection import select_tokens
from .targets import DistillTargets, TokenTargets, _move
from .terms import (
    CONF_BINS,
    alpha,
    confidence_histogram,
    confidence_stats,
    confidence_weights,
    logit_kd,
    pooled_loss,
    token_loss,
)


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
    """The MAD objective with its learned projections.

    Projections (created whenever the width is given, whatever the config, so parameter initialisation does not depend
    on the ablation; a switched-off term never touches its projection, which then gets no gradient):
    ``proj_v`` H -> Dv (image tokens), ``proj_t`` H -> Dt (text tokens), ``proj_g_image`` H -> Ev and
    ``proj_g_text`` H -> Et (the same module when Ev == Et).

    ``forward(student, targets, task_loss, ...)`` reads the teacher only through ``targets``
    (:class:`~.targets.DistillTargets`, made by :class:`~.targets.TargetBuilder`) and returns a dict of 0-d tensors:
    ``task``, ``tok_v``, ``tok_t``, ``pool``, ``kd`` (unweighted batch means), ``distill``
    (= mean_i c_i (l_tok + l_pool + l_kd)), ``alpha``, ``conf_mean`` (mean raw teacher confidence before
    normalisation; 1 when off) and ``total`` (= task + alpha * distill; exactly ``task_loss`` with ``distill=False``).
    With confidence weighting on, also the batch's distribution of the raw confidences (``conf_std``, ``conf_min``,
    ``conf_q10``, ``conf_q50``, ``conf_q90``, ``conf_max``) and of the weights applied (``w_std``, ``w_min``,
    ``w_max``): :func:`~.terms.confidence_stats`.

    ``conf_hist`` (a buffer, so checkpoints carry it and a resumed run counts exactly): training-time histograms of the
    raw confidences (row 0, :data:`~.terms.CONF_BINS` bins over [0, 1]) and of the weights (row 1, bins over [0, 4],
    the last one open); ``conf_moments``: their counts, sums and sums of squares.
    """

    def __init__(self, config: MADConfig, student_dim: int, teacher_image_dim: int | None = None,
                 teacher_text_dim: int | None = None, teacher_image_pooled_dim: int | None = None,
                 teacher_text_pooled_dim: int | None = None) -> None:
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
        self.register_buffer("conf_hist", torch.zeros(2, CONF_BINS, dtype=torch.float64))
        self.register_buffer("conf_moments", torch.zeros(2, 3, dtype=torch.float64))

    # -- the terms, each (B,) ----------------------------------------------------------------------------------------

    def _tokens(self, proj: nn.Module | None, student: Tensor | None, targets: TokenTargets | None, policy: str,
                k: float | int, what: str, zeros: Tensor, generator, student_mask: Tensor | None = None) -> Tensor:
        """The token term over the target positions: the student tokens there are gathered and projected (with
        top-50% selection that halves the projection and its backward, MAD's largest cost); a step-side policy
        selects among the candidates here."""
        if proj is None or student is None or targets is None:
            return zeros
        if (targets.policy, targets.k) != (policy, k):
            raise ValueError(f"{what} targets were made for selection {targets.policy} top-{targets.k}, but the "
                             f"objective selects {policy} top-{k}")
        taken = proj(student.gather(1, targets.index[..., None].expand(-1, -1, student.shape[-1])))
        mask = targets.mask
        if student_mask is not None:
            mask = mask & student_mask.bool().gather(1, targets.index)
        if not targets.selected:
            mask = select_tokens(policy, k, targets.tokens, None, mask, taken, generator, targets.index,
                                 targets.positions)
        return token_loss(taken, targets.tokens, mask, self.config.token_loss)

    def _pooled(self, s: StudentBatch, t: DistillTargets, zeros: Tensor) -> Tensor:
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

    def _kd(self, s: StudentBatch, t: DistillTargets, zeros: Tensor) -> Tensor:
        if not self.config.logit_kd or s.logits is None or t.zs_logits is None:
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
        kd = logit_kd(s.logits, z, self.config.kd_tau)
        return torch.where(ok, kd, torch.zeros_like(kd))

    # -- forward ----------------------------------------------------------------------------------------------------

    def forward(self, student: StudentBatch, targets: DistillTargets, task_loss: Tensor, target: Tensor | None = None,
                step: int = 0, total_steps: int = 1, generator: torch.Generator | None = None,
                reduce=None, weight: float = 1.0) -> dict[str, Tensor]:
        """``reduce`` (a sum over processes) and ``weight``: a batch split among processes, see :mod:`.global_batch`
        (the result then also holds ``share``, what this process backpropagates)."""
        cfg = self.config
        device = task_loss.device
        zero = torch.zeros((), device=device)
        if reduce is not None and not cfg.distill:
            return global_batch_losses(cfg, task_loss, _batch_size(student), None, None, reduce, weight, step,
                                       total_steps)
        if not cfg.distill:
            return {"task": task_loss, "tok_v": zero, "tok_t": zero, "pool": zero, "kd": zero, "distill": zero,
                    "alpha": zero, "conf_mean": torch.ones((), device=device), "total": task_loss}
        b = _batch_size(student)
        zeros = torch.zeros(b, device=device)
        tok_v = zeros if not cfg.tokens_v else self._tokens(
            self.proj_v, student.visual_tokens, targets.image, cfg.select_v, cfg.k_v, "image", zeros, generator,
            student.visual_mask)
        tok_t = zeros if not cfg.tokens_t else self._tokens(
            self.proj_t, student.text_tokens, targets.text, cfg.select_t, cfg.k_t, "text", zeros, generator)
        pool = self._pooled(student, targets, zeros)
        kd = self._kd(student, targets, zeros)
        if cfg.confidence == "none":
            raw = torch.ones(b, device=device)
            conf = raw
        else:
            raw = confidence_weights(cfg.confidence, targets.zs_logits, target, cfg.conf_tau, normalise=False,
                                     mask=targets.zs_mask)
            conf = raw / raw.mean().clamp_min(1e-8) if cfg.conf_normalise else raw
        stats = {} if cfg.confidence == "none" else confidence_stats(raw, conf)
        if stats and self.training:
            confidence_histogram(self.conf_hist, self.conf_moments, raw, conf)
        if reduce is not None:
            return {**global_batch_losses(cfg, task_loss, b, {"tok_v": tok_v, "tok_t": tok_t, "pool": pool, "kd": kd},
                                          raw, reduce, weight, step, total_steps), **stats}
        distill = (conf * (tok_v + tok_t + pool + kd)).mean()
        a = alpha(cfg.alpha_schedule, step, total_steps, cfg.alpha0, task_loss, distill, cfg.alpha_ratio)
        return {"task": task_loss, "tok_v": tok_v.mean(), "tok_t": tok_t.mean(), "pool": pool.mean(),
                "kd": kd.mean(), "distill": distill, "alpha": a, "conf_mean": raw.mean(),
                "total": task_loss + a * distill, **stats}


def _batch_size(s: StudentBatch) -> int:
    for x in (s.pooled, s.logits, s.visual_tokens, s.text_tokens):
        if x is not None:
            return x.shape[0]
    raise ValueError("StudentBatch is empty")


__all__ = ["MADLoss", "StudentBatch"]
