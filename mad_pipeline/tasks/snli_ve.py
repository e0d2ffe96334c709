"""SNLI-VE as a task: three labels, and the text the teacher scores zero-shot against the image.

The teacher scores the hypothesis against the image premise: one similarity per sample. Turning that 1-D score into
the three-way label (entailment / neutral / contradiction) needs a calibration fitted on the training split (SPEC §5.3);
this module only provides the label space and the candidate text.
"""

from __future__ import annotations

from ..data.base import Sample
from ..data.snli_ve import LABELS

NUM_LABELS = len(LABELS)


def label_index(label: str) -> int:
    """``"entailment"`` -> 0, ``"neutral"`` -> 1, ``"contradiction"`` -> 2."""
    try:
        return LABELS.index(label)
    except ValueError:
        raise ValueError(f"unknown SNLI-VE label {label!r}; labels: {', '.join(LABELS)}") from None


def candidate_texts(sample: Sample) -> list[str]:
    """The teacher scores the image against the hypothesis alone (3-way calibrated later)."""
    return [sample.texts[0]]


__all__ = ["LABELS", "NUM_LABELS", "candidate_texts", "label_index"]
