"""Measure a CLIP teacher's zero-shot VQA accuracy per question type on a written shapes world
(``mad teacher eval-shapes``), against the majority-answer baseline of the training split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.shapes.zeroshot import evaluate_dir
from mad_pipeline.teachers import get_teacher_spec, load_teacher


@dataclass(frozen=True)
class ZeroShotShapesConfig:
    data: Path  # a folder written by `mad datasets make shapes` (or its vqa/ folder)
    split: str = "val"  # train, val, test or shift
    teacher: str = "shapes-clip"
    weights: str | None = None
    device: str = "cpu"


def run(cfg: ZeroShotShapesConfig) -> dict[str, Any]:
    if get_teacher_spec(cfg.teacher).family != "open_clip":
        raise InputError(f"--teacher {cfg.teacher}: zero-shot VQA needs an image+text (open_clip) teacher")
    if not Path(cfg.data).is_dir():
        raise InputError(f"{cfg.data}: not a directory")
    teacher = load_teacher(cfg.teacher, weights=cfg.weights, device=cfg.device, precision="fp32")
    rep = evaluate_dir(Path(cfg.data), cfg.split, teacher)
    return {"teacher": cfg.teacher, "split": cfg.split, "data": str(cfg.data), "report": rep}
