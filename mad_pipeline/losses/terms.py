"""The terms of the MAD objective, each per sample: token and pooled losses, the teacher's confidence, logit
distillation, and the weight of the distillation term over training (``alpha``). Pure torch, no I/O.

This is the project's own formulation (see docs/method.md): per sample ``i``, a token loss over the selected
positions ``mean_k 1 - cos(P(S_k), V_k)`` (or smooth-L1 on layer-normed features), a pooled term
``1 - cos(P_g(s), pooled teacher)``, a confidence ``c_i = softmax(z_i / tau)[y_i]`` (soft targets: the expectation
under the target scores) and an optional logit KD ``tau^2 KL(softmax(z/tau) || softmax(o/tau))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

TOKEN_LOSSES = ("cosine", "smooth-l1")
CONFIDENCE_MODES = ("none", "prob")
ALPHA_SCHEDULES = ("constant", "linear", "cosine", "adaptive")

# ----------------------------------------------------------------------------------------------------------------------
# Token and pooled losses


COS_EPS = 1e-8


def cos(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity over the last dimension: the product of unit vectors (zero vectors give 0, as
    ``F.cosine_similarity``; fewer kernels and a cheaper backward)."""
    return (F.normalize(a, dim=-1, eps=COS_EPS) * F.normalize(b, dim=-1, eps=COS_EPS)).sum(-1)


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
        # 1 - cos(s, t) up to float rounding; a cheaper backward than normalising s)
        t_unit = F.normalize(t, dim=-1, eps=COS_EPS)
        per = 1 - (s * t_unit).sum(-1) / torch.linalg.vector_norm(s, dim=-1).clamp_min(COS_EPS)
    else:
        d = s.shape[-1]
        per = F.smooth_l1_loss(F.layer_norm(s, (d,)), F.layer_norm(t, (d,)), reduction="none").mean(-1)
    selected = selected.bool()
    per = torch.where(selected, per, torch.zeros_like(per))
    return per.sum(1) / selected.sum(1).clamp_min(1)


def pooled_loss(student_proj: Tensor, teacher_pooled: Tensor) -> Tensor:
    """Per-sample ``1 - cos(P_g(s), pooled teacher)``, ``(B,)``."""
    return 1 - cos(student_proj.float(), teacher_pooled.float().detach())


# ----------------------------------------------------------------------------------------------------------------------
# Confidence weighting and logit KD


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


CONF_BINS = 20  # histogram bins: raw confidences over [0, 1], normalised weights over [0, WEIGHT_TOP]
WEIGHT_TOP = 4.0
QUANTILES = (0.1, 0.5, 0.9)


def confidence_stats(raw: Tensor, weights: Tensor) -> dict[str, Tensor]:
    """The batch's distribution of the raw confidences ``c_i`` (before normalisation: ``conf_std``, ``conf_min``,
    ``conf_q10`` / ``q50`` / ``q90``, ``conf_max``) and of the weights the objective applies (``w_std``, ``w_min``,
    ``w_max``; their mean is 1 when normalised). 0-d float tensors, detached; std is 0 for one sample."""
    raw, weights = raw.detach().float(), weights.detach().float()
    q = torch.quantile(raw, torch.tensor(QUANTILES, device=raw.device))

    def std(x: Tensor) -> Tensor:
        return x.std() if x.numel() > 1 else torch.zeros((), device=x.device)

    out = {"conf_std": std(raw), "conf_min": raw.min(), "conf_max": raw.max()}
    out.update({f"conf_q{round(p * 100)}": q[i] for i, p in enumerate(QUANTILES)})
    out.update({"w_std": std(weights), "w_min": weights.min(), "w_max": weights.max()})
    return out


@torch.no_grad()
def confidence_histogram(hist: Tensor, moments: Tensor, raw: Tensor, weights: Tensor) -> None:
    """Add a batch to the running histograms ``hist (2, CONF_BINS)`` (row 0: raw confidences over [0, 1]; row 1:
    weights over [0, WEIGHT_TOP], larger ones in the last bin) and ``moments (2, 3)`` (count, sum, sum of squares)."""
    for row, (x, top) in enumerate(((raw, 1.0), (weights, WEIGHT_TOP))):
        x = x.detach().double().to(hist.device)
        idx = (x / top * CONF_BINS).floor().clamp(0, CONF_BINS - 1).long()
        hist[row].index_add_(0, idx, torch.ones_like(x))
        moments[row] += torch.stack([torch.tensor(float(x.numel()), dtype=x.dtype, device=x.device), x.sum(),
                                     (x * x).sum()])


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
# Adaptive balance


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


__all__ = ["ALPHA_SCHEDULES", "CONFIDENCE_MODES", "CONF_BINS", "COS_EPS", "QUANTILES", "TOKEN_LOSSES", "WEIGHT_TOP",
           "Calibration", "alpha", "confidence_histogram", "confidence_stats", "confidence_weights", "cos",
           "fit_calibration", "logit_kd", "pooled_loss", "token_loss"]
