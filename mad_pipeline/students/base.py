"""What stage 2 needs from a student: the plug-in interface, its output, and the task losses.

A student is a cross-modal model (ViLT-like) fine-tuned on a task while being distilled from frozen teachers. The
MAD objective aligns the student's tokens with the teacher's by *position*, so a student must say
where each of its tokens comes from: each visual token's centre in the ORIGINAL image, each text token's character
span in its text. To plug in another student, implement :class:`Student` and register a builder in
``mad_pipeline.students.STUDENTS``:

``name``, ``task``, ``num_classes``
    registry name, the task's registry name (:mod:`mad_pipeline.tasks`) and the size of its label space (VQA:
    answer vocabulary; SNLI-VE: 3; a multiple-choice task such as VCR: the number of choices, 4).
``labels``
    the class names (:meth:`mad_pipeline.tasks.Task.label_names`, set by ``mad distill``), written into the saved
    directory (a transformers ``config.json``'s ``id2label``); None when unknown or for a multiple-choice task.
``hidden_size``
    width H of the tokens and the pooled vector (the MAD projections map H to the teachers' widths).
``image_size``, ``grid``
    side of the square pixel input, and the visual token grid ``(rows, cols)``; ``Ns = rows * cols``.
``max_text_length``
    the longest token sequence :meth:`Student.tokenize` returns.
``preprocess_image(image) -> (pixels (3, S, S) float tensor, crop_box (x0, y0, x1, y1))``
    deterministic; ``crop_box`` is the region of the original image (its pixel coordinates) that the square input
    shows. :func:`center_crop_box` gives it for shortest-side resize + centre crop.
``tokenize(texts) -> TextInput``
    ids, attention mask and character spans ``(B, L, 2)`` with -1 for special tokens and padding.
``forward(pixel_values, crop_boxes, input_ids, attention_mask, char_spans=None) -> StudentOutput``
    ``pixel_values (B, 3, S, S)``, ``crop_boxes (B, 4)``. Visual tokens must come out in row-major grid order
    (token ``i`` is grid cell ``(i // cols, i % cols)``) and ``visual_centers`` must give their positions, i.e.
    :func:`mad_pipeline.losses.patch_centers` of the crop boxes and the grid (the data pipeline aligns teacher
    patches to these positions ahead of the step; the trainer checks them on the first batch). For a multiple-choice
    task (VCR) the text inputs hold the ``C`` image-choice pairs of each sample (``(B * C, L)`` or ``(B, C, L)``);
    the per-token outputs then have leading dimension ``B * C`` and ``logits`` is ``(B, C)``.
``save(directory)`` / ``load(directory)`` (a classmethod)
    a directory that ``load`` restores exactly (same logits), written without pickle (safetensors, JSON,
    ``save_pretrained``). ``student.json`` in it names the ``family`` so :func:`mad_pipeline.students.load_student`
    can dispatch.

The task loss is the task's (:meth:`mad_pipeline.tasks.Task.loss`): every student's logits mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import MadError

STUDENT_FORMAT = 2  # version of the save() directory layout: 2 = transformers' layout (1: backbone/ + heads)
READABLE_FORMATS = (1, 2)


class StudentError(MadError):
    """A student could not be built, loaded or fed (unknown name, missing weights, wrong inputs)."""


@dataclass
class TextInput:
    """Tokenised texts. ``char_spans[b, l] = (start, end)`` into ``texts[b]``; ``(-1, -1)`` for special/padding."""

    input_ids: torch.Tensor  # (B, L) int64
    attention_mask: torch.Tensor  # (B, L) int64
    char_spans: torch.Tensor  # (B, L, 2) int64

    def to(self, device) -> TextInput:
        return TextInput(*(getattr(self, f.name).to(device) for f in fields(self)))


@dataclass
class StudentOutput:
    """One forward pass. ``N`` is the batch of image-text pairs (``B``, or ``B * C`` for a multiple-choice task)."""

    visual_tokens: torch.Tensor  # (N, Ns, H) final-layer patch tokens, row-major grid order, no CLS
    visual_centers: torch.Tensor  # (N, Ns, 2) (x, y) centre of each patch in original image pixels
    text_tokens: torch.Tensor  # (N, Lt, H) final-layer text tokens (incl. [CLS]/[SEP]/padding; see text_mask)
    text_spans: torch.Tensor  # (N, Lt, 2) character spans, -1 for special tokens and padding
    text_mask: torch.Tensor  # (N, Lt) bool, true for real (non-padding) tokens
    pooled: torch.Tensor  # (N, H)
    logits: torch.Tensor  # (B, num_classes), or (B, C) for a multiple-choice task


class Student(Protocol):
    name: str
    task: str
    num_classes: int
    labels: tuple[str, ...] | None
    hidden_size: int
    image_size: int
    grid: tuple[int, int]
    max_text_length: int

    def preprocess_image(self, image) -> tuple[torch.Tensor, tuple[float, float, float, float]]: ...
    def tokenize(self, texts: list[str]) -> TextInput: ...
    def forward(self, pixel_values: torch.Tensor, crop_boxes: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, char_spans: torch.Tensor | None = None) -> StudentOutput: ...
    def save(self, directory: str | Path) -> None: ...
    @classmethod
    def load(cls, directory: str | Path, map_location: Any = "cpu") -> Student: ...


# ----------------------------------------------------------------------------------------------- geometry
def center_crop_box(size: int, width: int, height: int) -> tuple[float, float, float, float]:
    """Region of a ``width x height`` image (original pixels) that torchvision ``Resize(size)`` (shortest side)
    followed by ``CenterCrop(size)`` keeps. Same arithmetic as torchvision (and open_clip's ``shortest`` mode):
    the long side becomes ``int(size * long / short)``, the crop offset ``int(round((resized - size) / 2))``."""
    short, long_ = (width, height) if width <= height else (height, width)
    new_long = int(size * long_ / short)
    rw, rh = (size, new_long) if width <= height else (new_long, size)
    left = int(round((rw - size) / 2.0))
    top = int(round((rh - size) / 2.0))
    sx, sy = width / rw, height / rh
    return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)


__all__ = ["READABLE_FORMATS", "STUDENT_FORMAT", "Student", "StudentError", "StudentOutput", "TextInput",
           "center_crop_box"]
