"""One-off predictions: a trained student (a ``mad distill`` run directory) on one image and one or more texts.

The run's ``run.json`` names the task and where the student is; the task gives the class names (VQA: the answer
vocabulary) and turns logits into the probabilities its loss trains (VQA: each answer's sigmoid score; SNLI-VE:
softmax over the three labels). The image goes through the student's own preprocessing, exactly as in ``mad eval``.

A classifier task (VQA, SNLI-VE): each text is one question (hypothesis), answered on its own, with the ``top_k``
classes. A multiple-choice task (VCR): the texts are the choices (``"question answer"``), scored together; the
prediction is the best one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mad_pipeline.errors import InputError
from mad_pipeline.tasks import Task, get_task
from mad_pipeline.training.config import resolve_device


@dataclass(frozen=True)
class PredictConfig:
    run: Path
    image: Path
    texts: tuple[str, ...]
    top_k: int = 5
    device: str = "auto"


def run(cfg: PredictConfig) -> dict[str, Any]:
    from mad_pipeline.data.images import ImageDecodeError, load_image
    from mad_pipeline.students import load_student

    if not cfg.texts:
        raise InputError("--text: give at least one text (a question; for a multiple-choice task, each choice)")
    if cfg.top_k < 1:
        raise InputError(f"--top-k must be at least 1, got {cfg.top_k}")
    task, student_dir = _open_run(Path(cfg.run))
    try:
        image = load_image(cfg.image)
    except ImageDecodeError as e:
        raise InputError(f"--image {cfg.image}: {e}") from None
    device = resolve_device(cfg.device)
    student = load_student(student_dir, map_location=device)
    pixels, box = student.preprocess_image(image)
    pixels, boxes = pixels[None].to(device), torch.tensor([box], dtype=torch.float32, device=device)
    texts = list(cfg.texts)
    head = {"run": str(cfg.run), "task": task.name, "image": str(cfg.image), "multiple_choice": task.multiple_choice}
    if task.multiple_choice:
        logits = _logits(student, pixels, boxes, texts, device, choices=True)  # (1, C)
        probs = task.probabilities(logits)[0].tolist()
        best = max(range(len(texts)), key=lambda i: logits[0, i].item())
        return {**head, "choice": best, "text": texts[best],
                "choices": [{"text": t, "logit": logits[0, i].item(), "score": probs[i]} for i, t in enumerate(texts)]}
    names = task.label_names() or [str(i) for i in range(student.num_classes)]
    preds = []
    for text in texts:  # one at a time: each question is its own prediction
        logits = _logits(student, pixels, boxes, [text], device)[0]
        probs = task.probabilities(logits)
        top = torch.topk(logits, min(cfg.top_k, logits.numel())).indices.tolist()
        preds.append({"text": text, "label": names[top[0]], "score": probs[top[0]].item(),
                      "top": [{"label": names[i], "logit": logits[i].item(), "score": probs[i].item()} for i in top]})
    return {**head, "predictions": preds}


def _logits(student, pixels: torch.Tensor, boxes: torch.Tensor, texts: list[str], device,
            choices: bool = False) -> torch.Tensor:
    """``(1, K)`` class logits of one text, or ``(1, C)`` choice logits of the C texts of one sample."""
    enc = student.tokenize(texts)
    ids, mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    if choices:  # (1, C, L): the C image-choice pairs of one sample
        ids, mask = ids[None], mask[None]
    with torch.no_grad():
        return student(pixels, boxes, ids, mask).logits.float().cpu()


def _open_run(run_dir: Path) -> tuple[Task, Path]:
    """The run's fitted task and its student directory; a one-line error for anything missing."""
    meta_path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise InputError(f"--run {run_dir}: no such directory")
    if not meta_path.exists():
        raise InputError(f"--run {run_dir}: not a mad distill run directory (no run.json)")
    try:
        meta = json.loads(meta_path.read_text())
        task_name = meta["task"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{meta_path}: unreadable run.json ({e})") from None
    student_dir = run_dir / meta.get("student_dir", "student")
    if not (student_dir / "student.json").exists():
        raise InputError(f"--run {run_dir}: no trained student yet ({student_dir} is missing; did training finish?)")
    return get_task(task_name).load(run_dir), student_dir


__all__ = ["PredictConfig", "run"]
