"""Low-shot subsets, deterministic on every machine.

``subsample(samples, fraction, seed)`` ranks samples by sha256(f"{seed}:{id}") and keeps the first
ceil(fraction * n): the same ids on every run, machine and Python version (no RNG state involved), different seeds
give different subsets, and for one seed the subsets are nested (the 1% subset is inside the 5% one), so low-shot
curves compare like with like.

Domain shift is not a subset of a split: the shapes world ships its held-out colour+shape combinations as a split of
their own (``--split shift``; see docs/shapes.md).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from ..errors import InputError
from .base import Sample


def subsample(samples: Sequence[Sample], fraction: float, seed: int) -> list[Sample]:
    if not 0 < fraction <= 1:
        raise InputError(f"--train-fraction {fraction}: expected a number in (0, 1]")
    if fraction == 1:
        return list(samples)
    n = max(1, math.ceil(fraction * len(samples)))

    def rank(s: Sample) -> str:
        return hashlib.sha256(f"{seed}:{s.id}".encode()).hexdigest()

    keep = set(sorted((rank(s), s.id) for s in samples)[:n])
    ids = {sid for _, sid in keep}
    return [s for s in samples if s.id in ids]  # dataset order kept

