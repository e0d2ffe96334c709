"""The typed records of the data path: one sample as read (:class:`Item`) and one batch as the step sees it
(:class:`Batch`). Every field has one meaning, whatever the mode (store-fed, online teacher, evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

from ..losses import DistillTargets, TeacherBatch, TokenTargets
from ..students.base import TextInput


@dataclass
class Item:
    """One sample as the dataset reads it.

    index: its position in the dataset; pixels (3, S, S) and box (4,) the student's input and the region of the
    original image it shows; texts: what the student reads (one text, or a multiple-choice task's C texts); target:
    the task's training target; choice: which of ``texts`` the teacher's text features describe; image_key: the
    image-store row (-1: none), which keys the per-image target cache; teacher: this sample's raw teacher features
    from the stores (arrays named as :class:`~mad_pipeline.losses.TeacherBatch` fields, without the batch axis);
    teacher_pixels / teacher_box: the online teacher's input and the region it shows; teacher_text: the text the
    online teacher encodes.
    """

    index: int
    pixels: torch.Tensor
    box: np.ndarray
    texts: list[str]
    target: Any
    choice: int = 0
    image_key: int = -1
    teacher: dict[str, Any] | None = None
    teacher_pixels: torch.Tensor | None = None
    teacher_box: np.ndarray | None = None
    teacher_text: str | None = None


@dataclass
class OnlineInputs:
    """What an online teacher needs for a batch: its pixels (B, 3, S, S), the crop boxes they show (B, 4) in
    original-image pixels, and the texts it encodes (one per sample)."""

    pixels: torch.Tensor
    boxes: torch.Tensor
    texts: list[str]

    def to(self, device, non_blocking: bool = False) -> OnlineInputs:
        return replace(self, pixels=self.pixels.to(device, non_blocking=non_blocking),
                       boxes=self.boxes.to(device, non_blocking=non_blocking))


@dataclass
class Batch:
    """One collated batch.

    indices (B,) dataset positions; pixel_values (B, 3, S, S) and crop_boxes (B, 4): the student's images; text: the
    student's tokenised texts, ``(B, L)`` or ``(B, C, L)`` for a multiple-choice task; target: the task's stacked
    targets; texts: the raw student texts; choice (B,): multiple choice only, which of the C texts the teacher's text
    features describe; targets: the objective's teacher targets (store-fed training; None for the baseline and for
    evaluation); raw_teacher: zero-shot logits for an online teacher's batch (its features are computed in the step);
    online: the online teacher's inputs.
    """

    indices: torch.Tensor
    pixel_values: torch.Tensor
    crop_boxes: torch.Tensor
    text: TextInput
    target: torch.Tensor
    texts: list[list[str]]
    choice: torch.Tensor | None = None
    targets: DistillTargets | None = None
    online: OnlineInputs | None = None

    def to(self, device, non_blocking: bool = False) -> Batch:
        def mv(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=non_blocking)
            if isinstance(x, (TextInput, TeacherBatch, DistillTargets)):
                return x.to(device)
            if isinstance(x, OnlineInputs):
                return x.to(device, non_blocking)
            return x

        return replace(self, **{f.name: mv(getattr(self, f.name)) for f in fields(self)})

    def student_args(self) -> tuple[torch.Tensor, ...]:
        """The student's forward arguments: pixels, crop boxes, token ids, attention mask, character spans."""
        return (self.pixel_values, self.crop_boxes, self.text.input_ids, self.text.attention_mask,
                self.text.char_spans)

    def pin_memory(self) -> Batch:
        return _pin(self)

    def __len__(self) -> int:
        return int(self.indices.shape[0])


def _pin(x):
    if isinstance(x, torch.Tensor):
        return x.pin_memory()
    if isinstance(x, (Batch, TextInput, TeacherBatch, DistillTargets, TokenTargets, OnlineInputs)):
        return replace(x, **{f.name: _pin(getattr(x, f.name)) for f in fields(x)})
    return x


__all__ = ["Batch", "Item", "OnlineInputs"]
