"""Low-shot subsets and domain-shift splits, deterministic on every machine.

``subsample(samples, fraction, seed)`` ranks samples by sha256(f"{seed}:{id}") and keeps the first
ceil(fraction * n): the same ids on every run, machine and Python version (no RNG state involved), different seeds
give different subsets, and for one seed the subsets are nested (the 1% subset is inside the 5% one), so low-shot
curves compare like with like.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence

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


# --- domain shift ---------------------------------------------------------------------------------------------
def _question_type(s: Sample) -> str:
    return str(s.meta.get("question_type", ""))


SHIFTS: dict[str, Callable[[Sample], str]] = {
    "question-type": _question_type,  # VQA: hold out whole question types (e.g. "what color", "how many")
}


def domain_split(samples: Sequence[Sample], by: str, held_out: Sequence[str]) -> tuple[list[Sample], list[Sample]]:
    """(in-domain, held-out): samples whose ``by`` attribute is in ``held_out`` go to the second list.

    The shapes world ships its own attribute-combination shift as a split (``--split shift``; see docs/shapes.md).
    """
    if by not in SHIFTS:
        raise InputError(f"unknown domain shift {by!r}; known: {', '.join(SHIFTS)}")
    key = SHIFTS[by]
    held = set(held_out)
    inside = [s for s in samples if key(s) not in held]
    out = [s for s in samples if key(s) in held]
    return inside, out
