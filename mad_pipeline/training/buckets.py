"""A batch through the student as a few sub-batches of similar text length (``train.length_buckets``).

A batch is padded to its longest text. Where the lengths within a batch differ a lot -- VCR, whose Q->A texts
(question and answer) are about half as long as its QA->R texts (question, answer and rationale) -- many of the short
texts' positions are padding, and a transformer student pays for each of them in every layer. With
``length_buckets`` N > 1 the step sorts the batch's samples by text length, cuts them into at most N groups, runs the
student once per group with the texts padded to the group's own longest, and puts the outputs back in the batch's
order; a group's text positions past its width come back as padding (zero tokens, no character span, masked out).
The batch, its targets and the loss are the same, and so is every output the loss reads, up to rounding: padding
is masked out of attention, so the real tokens see the same sequence (:func:`student_forward`). Unlike grouping by
length (``train.group_by_length``), which changes which samples share a batch, nothing about the run's data changes;
its bits do (other matrix shapes, other rounding), so a run with it has a key of its own.

Each group costs a call of the student (on a CPU, some milliseconds of fixed work per layer and pass), so a cut is
only made where it saves at least ``MIN_SAVING`` of the batch's padded tokens, image tokens included
(:func:`plan`). On VCR that is one cut, between Q->A and QA->R; on VQA and SNLI-VE, whose texts differ by a few
tokens, none, and the step is the plain one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..students.base import StudentOutput

MIN_SAVING = 0.1  # a cut must save this share of the batch's padded tokens (image tokens included)


def padded_tokens(lengths: np.ndarray, groups: Sequence[np.ndarray], image_tokens: int) -> int:
    """Tokens the student runs for ``groups`` of samples: each group's samples padded to its longest text."""
    return int(sum(len(g) * (int(lengths[g].max()) + image_tokens) for g in groups if len(g)))


def _cuts(values: np.ndarray, counts: np.ndarray, image_tokens: int, k: int) -> list[tuple[int, list[int]]]:
    """For each j = 1..k: the fewest padded tokens over the sorted distinct ``values`` (with ``counts`` samples
    each) cut into j contiguous groups, and where the groups end (indices into ``values``, exclusive). Dynamic
    programming over the distinct lengths (a few dozen), so its cost does not grow with the batch."""
    d = len(values)
    start = np.concatenate([[0], np.cumsum(counts)]).tolist()  # samples before each distinct value
    tokens = [int(v) + image_tokens for v in values]
    inf = float("inf")
    best = [[inf] * (d + 1) for _ in range(k + 1)]
    back = [[0] * (d + 1) for _ in range(k + 1)]
    best[0][0] = 0.0
    for j in range(1, k + 1):
        for i in range(j, d + 1):
            for p in range(j - 1, i):
                cost = best[j - 1][p] + (start[i] - start[p]) * tokens[i - 1]
                if cost < best[j][i]:
                    best[j][i], back[j][i] = cost, p
    found = []
    for j in range(1, k + 1):
        ends, i = [], d
        for jj in range(j, 0, -1):
            ends.append(i)
            i = back[jj][i]
        found.append((int(best[j][d]), ends[::-1]))
    return found


def plan(lengths: Sequence[int], image_tokens: int, max_groups: int) -> list[np.ndarray]:
    """Groups of batch positions (each in ascending order, shortest texts first) that run the batch with the
    fewest padded tokens, in at most ``max_groups`` groups; a further group is only taken where it saves at least
    ``MIN_SAVING`` of the one-group count. ``lengths``: each sample's text length (a multiple-choice sample: its
    longest choice); ``image_tokens``: the student's visual tokens per sample."""
    lengths = np.asarray(lengths, dtype=np.int64)
    every = [np.arange(len(lengths))]
    values, counts = np.unique(lengths, return_counts=True)
    if max_groups <= 1 or len(values) == 1:
        return every
    whole = padded_tokens(lengths, every, image_tokens)
    chosen, chosen_cost, chosen_ends = 1, float(whole), [len(values)]
    for k, (tokens, ends) in enumerate(_cuts(values, counts, image_tokens, min(max_groups, len(values))), 1):
        cost = tokens + (k - 1) * MIN_SAVING * whole
        if cost < chosen_cost:
            chosen, chosen_cost, chosen_ends = k, cost, ends
    if chosen == 1:
        return every
    bounds = [values[0] - 1, *(values[e - 1] for e in chosen_ends)]
    return [np.flatnonzero((lengths > lo) & (lengths <= hi)) for lo, hi in zip(bounds, bounds[1:], strict=False)]


def student_forward(student, args: Sequence[torch.Tensor], max_groups: int) -> StudentOutput:
    """``student(*args)`` (``Batch.student_args()``: pixels, crop boxes, token ids ``(B, L)`` or ``(B, C, L)``,
    attention mask, character spans), run as :func:`plan`'s groups when ``max_groups`` > 1 and a cut pays; the
    output is one forward's, in the batch's order, with the batch's text width."""
    pixels, boxes, ids, mask, spans = args
    if max_groups <= 1:
        return student(*args)
    b, width = ids.shape[0], ids.shape[-1]
    per_sample = mask.reshape(b, -1, width)
    real = per_sample.flip(-1).cumsum(-1).flip(-1) > 0  # positions up to each text's last real token
    lengths = real.sum(-1).amax(-1)  # (B,) the longest choice of each sample, padding on either side counted
    grid = getattr(student, "grid", (0, 0))
    groups = plan(lengths.tolist(), int(grid[0]) * int(grid[1]), max_groups)
    if len(groups) == 1:
        return student(*args)
    outs = []
    for g in groups:
        idx = torch.as_tensor(g, device=ids.device)
        w = int(lengths[idx].max())
        outs.append(student(pixels[idx], boxes[idx], ids[idx][..., :w], mask[idx][..., :w],
                            None if spans is None else spans[idx][..., :w, :]))
    return _merge(outs, groups, width, choices=per_sample.shape[1] if ids.dim() == 3 else 1)


def _merge(outs: list[StudentOutput], groups: list[np.ndarray], width: int, choices: int) -> StudentOutput:
    """The groups' outputs as one, in the batch's order; text fields padded back to ``width``."""
    order = np.concatenate(groups)
    device = outs[0].logits.device
    samples = torch.as_tensor(np.argsort(order, kind="stable"), device=device)
    pair_order = (order[:, None] * choices + np.arange(choices)).reshape(-1)
    pairs = torch.as_tensor(np.argsort(pair_order, kind="stable"), device=device)

    def cat(name: str, pad_value=None) -> torch.Tensor:
        parts = [getattr(o, name) for o in outs]
        if pad_value is not None:  # (N, w, ...) -> (N, width, ...)
            parts = [F.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1]), value=pad_value) for p in parts]
        return torch.cat(parts).index_select(0, pairs)

    return StudentOutput(
        visual_tokens=cat("visual_tokens"),
        visual_centers=cat("visual_centers"),
        text_tokens=cat("text_tokens", 0.0),
        text_spans=cat("text_spans", -1),
        text_mask=cat("text_mask", False),
        pooled=cat("pooled"),
        logits=torch.cat([o.logits for o in outs]).index_select(0, samples),
    )


__all__ = ["MIN_SAVING", "padded_tokens", "plan", "student_forward"]
