"""Items -> one :class:`~.batch.Batch`: the student's texts tokenised, inputs and targets stacked, and the teacher's
store features turned into the objective's targets by :class:`~mad_pipeline.losses.TargetBuilder` -- the one place of
the data path where that happens (in the DataLoader workers when there are any)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputError
from ..losses import DistillTargets, TargetBuilder, TeacherBatch, patch_centers
from ..students.base import TextInput
from ..tasks import Task
from . import kept
from .batch import Batch, Item, OnlineInputs


class StudentTokenizer:
    """A picklable stand-in for ``student.tokenize`` that does not carry the model to DataLoader workers: the
    student class's ``tokenize`` called on a namespace with only ``tokenizer`` and ``max_text_length`` (what the
    ViLT student's tokenize reads). Students whose ``tokenize`` needs more fall back to the bound method."""

    def __init__(self, student):
        if hasattr(student, "tokenizer") and hasattr(student, "max_text_length"):
            self.fn = type(student).tokenize
            self.ns = SimpleNamespace(tokenizer=student.tokenizer, max_text_length=student.max_text_length)
        else:
            self.fn, self.ns = None, student

    def __call__(self, texts: list[str]) -> TextInput:
        return self.fn(self.ns, texts) if self.fn is not None else self.ns.tokenize(texts)


class Collate:
    """Builds a :class:`Batch` from :class:`Item` records.

    ``targets``: the objective's :class:`TargetBuilder` (None: no teacher targets, e.g. the baseline or
    evaluation); ``student_grid``: the student's patch grid, whose cells over the student's crop box are its visual
    token positions (the Student interface's contract; the trainer checks it on the first batch);
    ``teacher_grid``: the teacher's patch grid (from the image store's manifest).
    """

    def __init__(self, task: Task, tokenize: Callable[[list[str]], TextInput], targets: TargetBuilder | None = None,
                 student_grid: tuple[int, int] | None = None, teacher_grid: tuple[int, int] | None = None):
        self.task = task
        self.tokenize = tokenize
        self.targets = targets
        self.student_grid = tuple(student_grid) if student_grid else None
        self.teacher_grid = tuple(teacher_grid) if teacher_grid else None

    def __call__(self, items: list[Item]) -> Batch:
        b = len(items)
        texts = [it.texts for it in items]
        text = self.tokenize([t for ts in texts for t in ts])
        choice = None
        if self.task.multiple_choice:
            c = len(texts[0])
            if any(len(ts) != c for ts in texts):
                raise InputError(f"{self.task.name} samples in one batch have different numbers of choices")
            text = TextInput(*(x.reshape(b, c, *x.shape[1:]) for x in (text.input_ids, text.attention_mask,
                                                                         text.char_spans)))
            choice = torch.tensor([it.choice for it in items], dtype=torch.long)
        batch = Batch(indices=torch.tensor([it.index for it in items], dtype=torch.long),
                      pixel_values=torch.stack([it.pixels for it in items]),
                      crop_boxes=torch.from_numpy(np.stack([it.box for it in items])),
                      text=text, target=self.task.stack_targets([it.target for it in items]), texts=texts,
                      choice=choice)
        if items[0].teacher_pixels is not None:
            batch.online = OnlineInputs(torch.stack([it.teacher_pixels for it in items]),
                                        torch.from_numpy(np.stack([it.teacher_box for it in items])),
                                        [it.teacher_text for it in items])
        if items[0].teacher:
            teacher = self.teacher_batch(items)
            if self.targets is None or batch.online is not None:  # zero-shot logits only
                batch.targets = DistillTargets(zs_logits=teacher.zs_logits, zs_mask=teacher.zs_mask)
            else:
                batch.targets = self._targets(teacher, batch, [it.image_key for it in items], kept.token_index(items))
        return batch

    def teacher_batch(self, items: list[Item]) -> TeacherBatch:
        """The items' raw store features, stacked."""
        t = items[0].teacher
        parts = {}
        for name, dtype in (("image_tokens", None), ("image_pooled", None), ("crop_box", np.float32),
                            ("text_tokens", None), ("text_pooled", None), ("text_spans", np.int64),
                            ("text_length", np.int64), ("zs_logits", None), ("zs_mask", bool), ("image_dense", None)):
            if name in t:
                parts[name] = torch.from_numpy(_stack([it.teacher[name] for it in items], dtype))
        if "image_tokens" in parts:
            parts.update(image_grid=self.teacher_grid, image_valid=torch.ones(len(items), dtype=torch.bool))
            index = kept.token_index(items)  # a keep-tokens store: the kept tokens back at their grid positions
            if index is not None and parts["image_tokens"].shape[1]:
                parts["image_tokens"] = kept.expand(parts["image_tokens"], index, self.teacher_grid)
        return TeacherBatch(**parts)

    def _targets(self, teacher: TeacherBatch, batch: Batch, image_keys: list[int],
                 kept_index: torch.Tensor | None = None) -> DistillTargets:
        centers = patch_centers(batch.crop_boxes, self.student_grid) if self.student_grid else None
        spans = batch.text.char_spans
        if batch.choice is not None:  # the spans of the choice the teacher text describes
            spans = spans[torch.arange(len(batch)), batch.choice]
        covered = None  # a keep-tokens store: targets only where the kept tokens alone make them
        if kept_index is not None and centers is not None:
            covered = kept.covered(kept_index, self.teacher_grid, teacher.crop_box, centers)
        return self.targets.build(teacher, centers, spans, visual_mask=covered, image_keys=image_keys)


def _stack(values: list, dtype) -> np.ndarray:
    """Stack per-sample arrays; a None (image tokens whose targets are cached) leaves its row as zeros, which the
    target builder never reads (an untouched ``np.zeros`` row costs no memory traffic)."""
    if all(v is not None for v in values):
        return np.stack([np.asarray(v, dtype) for v in values])
    present = [v for v in values if v is not None]
    if not present:  # every image's targets are cached: nothing reads the tokens
        return np.zeros((len(values), 0), np.float32)
    first = np.asarray(present[0], dtype)
    out = np.zeros((len(values), *first.shape), first.dtype)
    for j, v in enumerate(values):
        if v is not None:
            out[j] = v
    return out


def make_loader(dataset, collate: Collate, batch_size: int, num_workers: int, seed: int, device: torch.device,
                batch_sampler=None, persistent: bool = False) -> DataLoader:
    """A DataLoader over ``dataset`` in order (or ``batch_sampler``'s batches), with its own generator (creating an
    iterator never consumes the global RNG) and pinned memory on CUDA."""
    kw: dict[str, Any] = {"batch_sampler": batch_sampler} if batch_sampler is not None else {
        "batch_size": batch_size, "shuffle": False}
    return DataLoader(dataset, collate_fn=collate, num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator().manual_seed(seed), **kw)


__all__ = ["Collate", "StudentTokenizer", "make_loader"]
