"""What stage 2 needs from a student: the plug-in interface, its output, and the task losses.

A student is a cross-modal model (ViLT-like) fine-tuned on a task while being distilled from frozen teachers. The
MAD objective (SPEC section 5) aligns the student's tokens with the teacher's by *position*, so a student must say
where each of its tokens comes from: each visual token's centre in the ORIGINAL image, each text token's character
span in its text. To plug in another student, implement :class:`Student` and register a builder in
``mad_pipeline.students.STUDENTS``:

``name``, ``task``, ``num_classes``
    registry name, one of :data:`STUDENT_TASKS`, and the size of the label space (VQA: answer vocabulary;
    SNLI-VE: 3; VCR: the number of choices, 4).
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
    :func:`patch_centers` of the crop boxes and the grid (the data pipeline aligns teacher patches to these positions
    ahead of the step; the trainer checks them on the first batch). For VCR
    the text inputs hold the ``C`` image-choice pairs of each sample (``(B * C, L)`` or ``(B, C, L)``); the per-token
    outputs then have leading dimension ``B * C`` and ``logits`` is ``(B, C)``.
``save(directory)`` / ``load(directory)`` (a classmethod)
    a directory that ``load`` restores exactly (same logits), written without pickle (safetensors, JSON,
    ``save_pretrained``). ``student.json`` in it names the ``family`` so :func:`mad_pipeline.students.load_student`
    can dispatch.

The task losses are here, not in a student, because every student's logits mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from ..errors import MadError

STUDENT_TASKS = ("vqa", "snli-ve", "vcr")
STUDENT_FORMAT = 1  # version of the save() directory layout


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
    """One forward pass. ``N`` is the batch of image-text pairs (``B``, or ``B * C`` for VCR)."""

    visual_tokens: torch.Tensor  # (N, Ns, H) final-layer patch tokens, row-major grid order, no CLS
    visual_centers: torch.Tensor  # (N, Ns, 2) (x, y) centre of each patch in original image pixels
    text_tokens: torch.Tensor  # (N, Lt, H) final-layer text tokens (incl. [CLS]/[SEP]/padding; see text_mask)
    text_spans: torch.Tensor  # (N, Lt, 2) character spans, -1 for special tokens and padding
    text_mask: torch.Tensor  # (N, Lt) bool, true for real (non-padding) tokens
    pooled: torch.Tensor  # (N, H)
    logits: torch.Tensor  # (B, num_classes) for vqa / snli-ve, (B, C) for vcr


class Student(Protocol):
    name: str
    task: str
    num_classes: int
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


def patch_centers(crop_boxes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, 4)`` crop boxes -> ``(B, rows * cols, 2)`` (x, y) centres of the grid cells, row-major, in original
    image pixels: cell ``(r, c)`` covers ``[x0 + c * w / cols, x0 + (c + 1) * w / cols)`` and likewise in y."""
    rows, cols = grid
    boxes = crop_boxes.to(torch.float32)
    x0, y0, x1, y1 = boxes.unbind(-1)
    fy = (torch.arange(rows, dtype=torch.float32, device=boxes.device) + 0.5) / rows
    fx = (torch.arange(cols, dtype=torch.float32, device=boxes.device) + 0.5) / cols
    fy, fx = torch.meshgrid(fy, fx, indexing="ij")  # (rows, cols)
    cx = x0[:, None] + fx.reshape(1, -1) * (x1 - x0)[:, None]
    cy = y0[:, None] + fy.reshape(1, -1) * (y1 - y0)[:, None]
    return torch.stack([cx, cy], dim=-1)


# ----------------------------------------------------------------------------------------------- task losses
def vqa_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits on soft answer scores ``(B, num_answers)`` in [0, 1]; summed over answers, mean over the
    batch (as ViLT: ``BCE(mean) * num_answers``)."""
    return F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="sum") / logits.shape[0]


def snli_ve_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the three labels; ``target (B,)`` class indices."""
    return F.cross_entropy(logits.float(), target.long())


def vcr_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the choices: ``logits (B, C)``, ``target (B,)`` index of the right choice."""
    return F.cross_entropy(logits.float(), target.long())


TASK_LOSSES = {"vqa": vqa_loss, "snli-ve": snli_ve_loss, "vcr": vcr_loss}


def task_loss(task: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if task not in TASK_LOSSES:
        raise StudentError(f"unknown task {task!r}; expected one of {', '.join(STUDENT_TASKS)}")
    return TASK_LOSSES[task](logits, target)


__all__ = ["STUDENT_FORMAT", "STUDENT_TASKS", "TASK_LOSSES", "Student", "StudentError", "StudentOutput", "TextInput",
           "center_crop_box", "patch_centers", "snli_ve_loss", "task_loss", "vcr_loss", "vqa_loss"]
