"""VCR as a task: four choices for Q->A and for QA->R, and the texts the teacher scores zero-shot.

- Q->A: candidate ``i`` = ``"{question} {answer_i}"``.
- QA->R: candidate ``j`` = ``"{question} {right answer} {rationale_j}"`` (QA->R is conditioned on the right answer,
  as in the official protocol); on the unlabelled test split pass ``answer`` explicitly.

Texts are the reader's renderings (object references as ``person0``; see :mod:`mad_pipeline.data.vcr`).
"""

from __future__ import annotations

from ..data.base import Sample
from ..data.vcr import NUM_CHOICES

SUBTASKS = ("q2a", "qa2r")


def q2a_candidates(sample: Sample) -> list[str]:
    q = sample.meta["question"]
    return [f"{q} {a}" for a in sample.meta["answer_choices"]]


def qa2r_candidates(sample: Sample, answer: int | None = None) -> list[str]:
    """Rationale candidates given the answer (default: the sample's right answer)."""
    if answer is None:
        answer = sample.meta.get("answer_label")
        if answer is None:
            raise ValueError(f"VCR sample {sample.id}: no answer_label; pass the answer to condition on")
    if not 0 <= answer < NUM_CHOICES:
        raise ValueError(f"answer index must be 0-{NUM_CHOICES - 1}")
    q = sample.meta["question"]
    a = sample.meta["answer_choices"][answer]
    return [f"{q} {a} {r}" for r in sample.meta["rationale_choices"]]


def candidate_texts(sample: Sample) -> dict[str, list[str]]:
    """Both sub-tasks' candidates; ``qa2r`` is empty when the right answer is unknown (test split)."""
    out = {"q2a": q2a_candidates(sample), "qa2r": []}
    if sample.meta.get("answer_label") is not None:
        out["qa2r"] = qa2r_candidates(sample)
    return out


__all__ = ["NUM_CHOICES", "SUBTASKS", "candidate_texts", "q2a_candidates", "qa2r_candidates"]
