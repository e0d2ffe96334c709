"""Adaptive token selection: a policy ranks the aligned positions of each sample and the top-k are kept (``k`` a
fraction or a count). Policies are a registry: a new one is one function decorated with :func:`register_policy`.

Built in: ``teacher-saliency`` (``cos(V_k, V_ref)`` against the teacher's CLS / EOS token), ``question-aware``
(``cos(proj(V_k), t)``: the patches in the teacher's joint image-text space against the teacher's embedding of the
sample's text; image tokens only), ``all`` (naive token distillation), ``random`` and ``student-gap`` (the largest
student-teacher distance). Pure torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .terms import COS_EPS, cos


@dataclass(frozen=True)
class Policy:
    """A token selection policy: ``score(teacher_tokens, teacher_ref, mask, student_proj, generator, index,
    positions) -> (B, N) scores`` (higher = kept first; None = keep every valid position) and where it can run:
    ``"teacher"`` (teacher data only: selected when the targets are built) or ``"step"`` (in the training step).
    ``text``: the ranking depends on the sample's text, not only on its image (selected per sample, not per image;
    the target builder passes the patches projected into the teacher's joint space as ``teacher_tokens`` and the
    text embedding as ``teacher_ref``)."""

    name: str
    score: Callable[..., Tensor | None]
    side: str = "teacher"
    text: bool = False


SELECTION_POLICIES: dict[str, Policy] = {}


def register_policy(name: str, side: str = "teacher", text: bool = False):
    """Decorator: register a scoring function as the selection policy ``name`` (``text``: it ranks by the sample's
    text, see :class:`Policy`)."""

    def deco(fn):
        SELECTION_POLICIES[name] = Policy(name, fn, side, text)
        return fn

    return deco


@register_policy("teacher-saliency")
def _saliency(tokens, ref, mask, proj, generator, index, positions):
    """``cos(V_k, V_ref)``: the teacher's own view of which tokens matter (CLS for images, EOS/pooled for text)."""
    if ref is None:
        raise ValueError("teacher-saliency selection needs a teacher reference token (CLS / EOS)")
    # one element-wise product with the unit reference and one norm (faster on CPU than F.cosine_similarity or a
    # batched gemv; each sample's scores depend on that sample only, bit for bit, whatever else is in the batch --
    # the per-image cache of the data pipeline relies on it)
    tokens = tokens.float()
    unit = F.normalize(ref.float(), dim=-1, eps=COS_EPS)
    return (tokens * unit[:, None, :]).sum(-1) / torch.linalg.vector_norm(tokens, dim=-1).clamp_min(COS_EPS)


@register_policy("question-aware", text=True)
def _question_aware(tokens, ref, mask, proj, generator, index, positions):
    """``cos(proj(V_k), t)``: each patch in the teacher's joint image-text space (``tokens``: the aligned patches
    already multiplied by the image teacher's visual projection) against the teacher's pooled embedding ``ref`` of
    the sample's text (VQA: the question; SNLI-VE: the hypothesis; VCR: the question and its answer), so each
    instance keeps the patches its text is about."""
    if ref is None:
        raise ValueError("question-aware selection needs the teacher's embedding of the sample's text")
    return _saliency(tokens, ref, mask, proj, generator, index, positions)


@register_policy("all")
def _all(tokens, ref, mask, proj, generator, index, positions):
    """Every aligned position: naive token distillation."""
    return None


@register_policy("random", side="step")
def _random(tokens, ref, mask, proj, generator, index, positions):
    """k positions drawn with the step's generator (one draw per student position, so the draw does not depend on
    which positions are aligned)."""
    device = generator.device if generator is not None else mask.device
    if index is None:
        return torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    draw = torch.rand((mask.shape[0], positions), generator=generator, device=device).to(mask.device)
    return draw.gather(1, index)


@register_policy("student-gap", side="step")
def _student_gap(tokens, ref, mask, proj, generator, index, positions):
    """The largest student-teacher distance ``1 - cos(P(S_k), V_k)``."""
    if proj is None:
        raise ValueError("student-gap selection needs the projected student tokens")
    return 1 - cos(proj.detach().float(), tokens.float())


def parse_top_k(text: str | float | int) -> float | int:
    """``"0.25"`` -> 0.25 (a fraction), ``"8"`` -> 8 (a count). Validates like :func:`select_tokens`."""
    if isinstance(text, str):
        text = text.strip()
        value: float | int = int(text) if text.lstrip("+").isdigit() else float(text)
    else:
        value = text
    check_k(value)
    return value


def check_k(k: float | int) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, float)):
        raise ValueError(f"top-k must be a fraction in (0, 1] or a count >= 1, got {k!r}")
    if isinstance(k, int) and k < 1:
        raise ValueError(f"top-k count must be >= 1, got {k}")
    if isinstance(k, float) and not 0.0 < k <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {k}")


def _keep_counts(k: float | int, n_valid: Tensor) -> Tensor:
    """Per-sample number of positions to keep: ceil(k * n) (at least 1) for a fraction, min(k, n) for a count."""
    check_k(k)
    if isinstance(k, int):
        return n_valid.clamp_max(k)
    # The 1e-6 guards against float error, e.g. 0.3 * 10 = 3.0000000000000004 must keep 3, not 4.
    counts = torch.ceil(n_valid.double() * k - 1e-6).long().clamp_min(1)
    return torch.minimum(counts, n_valid)


def select_tokens(policy: str, k: float | int, teacher_tokens: Tensor, teacher_ref: Tensor | None, mask: Tensor,
                  student_proj: Tensor | None = None, generator: torch.Generator | None = None,
                  index: Tensor | None = None, positions: int = 0) -> Tensor:
    """Which aligned positions to distil, per instance: a bool mask ``(B, N)``, a subset of ``mask``.

    ``teacher_tokens (B, N, D)`` aligned to the student positions; ``teacher_ref (B, D)`` (saliency);
    ``student_proj (B, N, D)`` projected student tokens (student-gap); ``generator`` (random). ``k``: a float in
    (0, 1] = fraction of the valid positions (rounded up, at least 1), or an int >= 1 = a count (capped at the number
    of valid positions); ignored by ``all``. When the N positions are candidates gathered at student positions
    ``index (B, N)`` out of ``positions``, random draws one number per student position. Ties are broken by
    position (the earlier wins); scores carry no gradient.
    """
    if policy not in SELECTION_POLICIES:
        raise ValueError(f"unknown token selection policy {policy!r}; choose one of {', '.join(SELECTION_POLICIES)}")
    mask = mask.bool()
    with torch.no_grad():
        scores = SELECTION_POLICIES[policy].score(teacher_tokens, teacher_ref, mask, student_proj, generator, index,
                                                  positions)
        if scores is None:
            return mask.clone()
        scores = torch.where(mask, scores, torch.full_like(scores, -math.inf))
        order = torch.sort(scores, dim=1, descending=True, stable=True).indices
        ranks = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(1, order, ranks)
        keep = _keep_counts(k, mask.sum(1))
        return (rank < keep[:, None]) & mask


__all__ = ["SELECTION_POLICIES", "Policy", "check_k", "parse_top_k", "register_policy", "select_tokens"]
