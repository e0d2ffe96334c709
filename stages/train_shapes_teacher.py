"""Train the shipped ``shapes-clip`` teacher (``mad teacher train-shapes``): a tiny open_clip CLIP trained
contrastively on the shapes world, written in open_clip's ``local-dir:`` layout, with its zero-shot accuracy per
question type measured on held-out generated questions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.progress import make_progress
from mad_pipeline.shapes.train import TrainSettings, save_teacher, train


@dataclass(frozen=True)
class TrainShapesTeacherConfig:
    out: Path = Path("shapes-clip")
    seed: int = 0
    steps: int = TrainSettings.steps
    probe_steps: int = TrainSettings.probe_steps
    batch_size: int = TrainSettings.batch_size
    pool_size: int = TrainSettings.pool_size
    lr: float = TrainSettings.lr
    precision: str = TrainSettings.precision
    eval_seed: int = 0  # zero-shot report on the val and shift splits of `mad datasets make shapes --seed S`
    eval_size: int = 2000  # ... --size N (0: no report)
    progress: bool = True


@dataclass
class TrainShapesTeacherResult:
    out: Path
    zeroshot: dict[str, Any]
    timing: dict[str, float]
    final: dict[str, float]

    def as_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "zeroshot": self.zeroshot, "timing": self.timing, "final": self.final}


def run(cfg: TrainShapesTeacherConfig) -> TrainShapesTeacherResult:
    if cfg.steps < 1 or cfg.probe_steps < 0 or cfg.batch_size < 2 or cfg.pool_size < cfg.batch_size:
        raise InputError("need --steps >= 1, --probe-steps >= 0, --batch-size >= 2 and a pool of at least one batch")
    if cfg.precision not in ("bf16", "fp32"):
        raise InputError(f"--precision {cfg.precision!r}: bf16 or fp32")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    s = TrainSettings(seed=cfg.seed, steps=cfg.steps, probe_steps=cfg.probe_steps, batch_size=cfg.batch_size,
                      pool_size=cfg.pool_size, lr=cfg.lr, precision=cfg.precision)
    t0 = time.time()
    with make_progress(cfg.progress) as progress:
        tasks: dict[str, Any] = {}

        def report(phase: str, done: int, total: int, info: dict) -> None:
            if not progress:
                return
            names = {"render": "rendering scenes", "probe": "phase 1: probe", "train": "phase 2: contrastive"}
            if phase not in tasks:
                tasks[phase] = progress.add_task(names[phase], total=total,
                                                 unit="img" if phase == "render" else "step")
            desc = names[phase] + (f" (loss {info['loss']:.3f})" if "loss" in info else "")
            progress.update(tasks[phase], completed=done, description=desc)

        model, hist = train(s, report)
    zeroshot: dict[str, Any] = {}
    if cfg.eval_size > 0:
        import open_clip

        from mad_pipeline.shapes.train import MODEL_CFG
        from mad_pipeline.shapes.zeroshot import evaluate_generated

        tok = open_clip.get_tokenizer("ViT-B-32", context_length=MODEL_CFG["text_cfg"]["context_length"])
        zeroshot = evaluate_generated(model, tok, seed=cfg.eval_seed, size=cfg.eval_size)
    timing = {**hist["timing"], "total_s": round(time.time() - t0, 1)}
    final = {k: round(v, 4) for k, v in hist["history"][-1].items() if k != "phase"}
    save_teacher(model, out, s, {"zeroshot": zeroshot, "zeroshot_eval": {"seed": cfg.eval_seed,
                                                                          "size": cfg.eval_size},
                                 "timing": timing, "final": final})
    return TrainShapesTeacherResult(out, zeroshot, timing, final)
