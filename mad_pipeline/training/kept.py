"""Stage 2 from an image store that keeps only each image's top-K tokens (``mad extract --keep-tokens K``).

Such a store holds, per image, the CLS token and K patches with their positions (``token_index``, see
:mod:`mad_pipeline.store.storage`). Each image row serves every question about that image, so stage 2 can use only
what does not depend on the rest of the grid:

- the kept patches go back to their grid positions (:func:`expand`); a student position has a target only where its
  interpolation reads kept patches alone (:func:`covered`), so every target it gets is exactly the one a full store
  would give there;
- the selection then runs among those positions: ``all``, ``random`` or ``student-gap`` among them, or the store's
  own ``keep_policy`` with a count ``k <= K`` (a fraction is taken of the covered positions);
- a selection that ranks every patch of the grid (another teacher-side policy, a per-question one such as
  ``question-aware``) or asks for more than K is refused in one line (:func:`check_selection`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import InputError
from ..losses.align import align_patches

COVERED = 1 - 1e-4  # interpolation weight on kept patches at which a student position counts as covered
AMONG_KEPT = ("all", "random", "student-gap")  # selections that only choose among the positions they are given


def expand(tokens: Tensor, index: Tensor, grid: tuple[int, int]) -> Tensor:
    """Kept tokens ``(B, 1 + K, D)`` at their positions ``index (B, 1 + K)`` in a zero ``(B, 1 + Gh * Gw, D)``."""
    b, _, d = tokens.shape
    full = torch.zeros(b, 1 + int(grid[0]) * int(grid[1]), d, dtype=tokens.dtype)
    full.scatter_(1, index.long()[..., None].expand(-1, -1, d), tokens)
    return full


def covered(index: Tensor, grid: tuple[int, int], crop_box: Tensor, student_centers: Tensor) -> Tensor:
    """``(B, Ns)`` bool: the student positions whose bilinear interpolation reads kept patches only."""
    b = index.shape[0]
    kept = torch.zeros(b, 1 + int(grid[0]) * int(grid[1]), dtype=torch.float32)
    kept.scatter_(1, index.long(), 1.0)
    weight, mask = align_patches(kept[:, 1:, None], grid, crop_box, student_centers)
    return mask & (weight[..., 0] >= COVERED)


def check_selection(mad, store) -> None:
    """Refuse, in one line, an image selection that a keep-tokens ``store`` (a FeatureStore) cannot serve."""
    keep = store.storage.keep_tokens
    if not keep or not mad.distill or not mad.tokens_v:
        return
    policy, k = mad.select_v, mad.k_v
    where = f"store {store.path} keeps {keep} per image (--keep-tokens)"
    if policy not in AMONG_KEPT and policy != store.storage.keep_policy:
        raise InputError(f"--select {policy} needs every image token; {where}, ranked by "
                         f"{store.storage.keep_policy}; use --select {store.storage.keep_policy}, "
                         f"{', '.join(AMONG_KEPT)}")
    if policy == store.storage.keep_policy and isinstance(k, int) and k > keep:
        raise InputError(f"--top-k {k} asks for more image tokens than the {keep} kept: {where}")


def token_index(items) -> Tensor | None:
    """The items' kept-token positions stacked (None: a store with every token)."""
    if "image_token_index" not in items[0].teacher:
        return None
    return torch.from_numpy(np.stack([np.asarray(it.teacher["image_token_index"], np.int64) for it in items]))


__all__ = ["check_selection", "covered", "expand", "token_index"]
