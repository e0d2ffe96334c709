"""Predict every sample of a split with a student and score the predictions with the task's official metric (the
:class:`~mad_pipeline.tasks.Task` decides the results format, any follow-up question and the scoring)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..progress import progress_bar
from .collate import Collate, make_loader
from .config import autocast, resolve_num_workers
from .dataset import SampleDataset
from .distributed import Dist


@torch.no_grad()
def evaluate(student, dataset: SampleDataset, collate: Collate, *, batch_size: int = 64,
             num_workers: int | str = 0, device: torch.device | str = "cpu", bf16: bool = True, cpu_bf16: bool = False,
             follow_up: bool = True, progress: bool = False,
             description: str = "eval", dist: Dist | None = None) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Returns ``(metrics, predictions)``: predictions in the task's official results format (plus whatever the
    task keeps for its other files, written by :meth:`~mad_pipeline.tasks.Task.write_predictions`), metrics (with
    the headline ``metric`` and ``value`` first) None when the split has no labels. ``follow_up``: also answer the
    task's follow-up question (VCR's QA->R); without it (early stopping's dev evaluations, where only the headline
    selects) the metrics the follow-up scores (the task's ``study_metrics``) are left out, and the headline is the
    same. ``progress``: a bar of the batches with batches/s and ETA.

    ``dist`` (several processes): each rank predicts a contiguous part of the split, rank 0 gathers the records in
    the split's order and scores them; every rank gets the metrics, only rank 0 the predictions."""
    dist = dist or Dist()
    device = torch.device(device)
    task = dataset.task
    was_training = student.training
    student.eval()
    preds: list[dict[str, Any]] = []
    batches = None
    if dist.enabled:
        part = np.array_split(np.arange(len(dataset)), dist.world)[dist.rank].tolist()
        batches = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    loader = make_loader(dataset, collate, batch_size, resolve_num_workers(num_workers, device), 0, device,
                         batch_sampler=batches)
    try:
        with progress_bar(description, len(loader), unit="batch", enabled=progress) as bar:
            for batch in loader:
                batch = batch.to(device)
                with autocast(device, bf16, cpu_bf16):
                    out = student(*batch.student_args())
                samples = [dataset.samples[i] for i in batch.indices.tolist()]
                logits = out.logits.float().cpu().numpy()
                records = [task.prediction(s, k) for s, k in zip(samples, logits.argmax(-1).tolist(), strict=True)]
                if follow_up:
                    task.follow_up(samples, records, lambda texts, b=batch: _scores(student, collate, b, texts,
                                                                                    device, bf16, cpu_bf16), logits)
                preds += records
                bar.advance()
    finally:
        student.train(was_training)
    if not dist.enabled:
        return _metrics(task, dataset.samples, preds, follow_up), preds
    parts = dist.gather(preds)  # (all ranks get every part: one collective, then only rank 0 scores)
    if not dist.is_main:
        return dist.broadcast(None), []
    preds = [r for part in parts for r in part]
    return dist.broadcast(_metrics(task, dataset.samples, preds, follow_up)), preds


def _metrics(task, samples, preds, follow_up: bool) -> dict[str, Any] | None:
    """The task's headline metrics; without the follow-up question, not the figures only it would score."""
    metrics = task.headline(task.score(samples, preds))
    if metrics is None or follow_up:
        return metrics
    unscored = {k for k, _ in task.study_metrics} if _has_follow_up(task) else set()
    return {k: v for k, v in metrics.items() if k not in unscored}


def _has_follow_up(task) -> bool:
    from ..tasks.base import Task

    return type(task).follow_up is not Task.follow_up


def _scores(student, collate: Collate, batch, texts: list[list[str]], device, bf16: bool,
            cpu_bf16: bool) -> np.ndarray:
    """The student's ``(B, C)`` logits for the candidate texts ``texts[i]`` of each image of ``batch``."""
    flat = collate.tokenize([t for ts in texts for t in ts]).to(device)
    b, c = len(texts), len(texts[0])
    with autocast(device, bf16, cpu_bf16):
        out = student(batch.pixel_values, batch.crop_boxes, flat.input_ids.view(b, c, -1),
                      flat.attention_mask.view(b, c, -1), flat.char_spans.view(b, c, -1, 2))
    return out.logits.float().cpu().numpy()


__all__ = ["evaluate"]
