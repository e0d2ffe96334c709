"""Evaluate a trained student (a ``mad distill`` run directory) on a split; write official-format predictions.

The run directory's ``run.json`` says the task, the dataset reader and data root, and where the student is; the
task reads its own files there (VQA: the answer vocabulary). Predictions go to ``RUN/predictions/<split>.json`` (or
``out``) in the task's official results format, so ``mad score`` and the official tools read them (VCR: also the
leaderboard's per-choice probability CSV beside them, ``<split>.leaderboard.csv``, on a split without labels or with
``leaderboard``). Splits without labels get
predictions only. The metrics are the task's, under the same names as ``mad score`` gives them. ``vqa_eval`` picks
the VQA accuracy's rules (``official`` by default, whatever the run was trained with; other tasks ignore it).
``precision`` is the autocast the student runs under: ``trained`` (default) the run's own (its train config's ``bf16``
on CUDA, ``cpu_bf16`` on CPU), so every split is scored as the run's own evaluations scored its dev and test splits;
``fp32`` or ``bf16`` to choose.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.data import load_dataset
from mad_pipeline.errors import InputError
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks.vqa import vqa_eval_setting
from mad_pipeline.training.collate import Collate, StudentTokenizer
from mad_pipeline.training.config import autocast_of, resolve_device, uses_bf16
from mad_pipeline.training.dataset import SampleDataset
from mad_pipeline.training.evaluate import evaluate


@dataclass(frozen=True)
class EvalConfig:
    run: Path
    split: str
    data_root: Path | None = None  # default: the run's
    out: Path | None = None  # predictions file; default RUN/predictions/<split>.json
    batch_size: int = 64
    num_workers: int | str = "auto"  # a count, or auto: none on CPU, one per free core (at most 8) on CUDA
    device: str = "auto"
    vqa_eval: str = vqa_eval_setting()
    leaderboard: bool = False  # VCR: the leaderboard's CSV on a labelled split too (QA->R under all four answers)
    progress: bool = True  # a bar of the batches (batches/s, ETA) on stderr
    precision: str = "trained"  # trained (the run's own autocast), fp32 or bf16


PRECISIONS = ("trained", "fp32", "bf16")


def autocast_settings(run_dir: Path, precision: str) -> tuple[bool, bool]:
    """``(bf16, cpu_bf16)`` for :func:`~mad_pipeline.training.evaluate.evaluate`: ``trained`` reads the run's train
    config (its ``metrics.json``; a run without one, or from before ``cpu_bf16`` existed, trained at the defaults:
    bf16 on CUDA, fp32 on CPU)."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision {precision}: not one of {', '.join(PRECISIONS)}")
    if precision != "trained":
        return (precision == "bf16",) * 2
    try:
        train = json.loads((run_dir / "metrics.json").read_text()).get("train_config") or {}
    except (OSError, ValueError):
        train = {}
    return autocast_of(train)


def run(cfg: EvalConfig) -> dict[str, Any]:
    run_dir = Path(cfg.run)
    meta_path = run_dir / "run.json"
    if not meta_path.exists():
        raise InputError(f"--run {run_dir}: not a mad distill run directory (no run.json)")
    meta = json.loads(meta_path.read_text())
    bf16, cpu_bf16 = autocast_settings(run_dir, cfg.precision)  # a bad --precision: one line, before any loading
    student_dir = run_dir / meta.get("student_dir", "student")
    if not (student_dir / "student.json").exists():
        raise InputError(f"--run {run_dir}: no trained student yet ({student_dir} is missing; did training finish?)")
    task = get_task(meta["task"], vqa_eval=cfg.vqa_eval, leaderboard=cfg.leaderboard).load(run_dir)
    from mad_pipeline.students import image_preprocess, load_student

    device = resolve_device(cfg.device)
    student = load_student(student_dir, map_location=device)
    root = Path(cfg.data_root or meta["data_root"])
    ds = load_dataset(meta["dataset"], root, split=cfg.split)
    data = SampleDataset(ds.samples, ds.root, task, image_preprocess(student))
    metrics, preds = evaluate(student, data, Collate(task, StudentTokenizer(student)), batch_size=cfg.batch_size,
                              num_workers=cfg.num_workers, device=device, bf16=bf16, cpu_bf16=cpu_bf16,
                              progress=cfg.progress, description=f"eval {cfg.split}")
    out = Path(cfg.out) if cfg.out else run_dir / "predictions" / f"{cfg.split}.json"
    files = task.write_predictions(preds, out)
    return {"task": task.name, **task.settings_in_key(vars(cfg)), "split": cfg.split, "n": len(preds),
            "predictions": str(out), "files": files,
            "precision": "bf16" if uses_bf16(device, bf16, cpu_bf16) else "fp32",
            "metric": metrics["metric"] if metrics else None, "value": metrics["value"] if metrics else None,
            "metrics": metrics, "rows": task.report_rows(metrics) if metrics else []}


__all__ = ["PRECISIONS", "EvalConfig", "autocast_settings", "run"]
