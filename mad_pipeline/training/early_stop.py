"""Converged budgets: a dev split carved from the training samples, and early stopping on its metric.

:func:`dev_split` holds out ``dev_fraction`` of the training samples (at least ``min_dev``), chosen by a hash of the
seed and the image, so the split is the same on every machine, the dev images never appear in training (the
questions of one image stay together), and the rest trains.

:class:`EarlyStop` is the trainer's hook: every ``dev_every`` steps (and at the last step) the student is evaluated on
the dev split with the task's headline metric, or the one ``dev_metric`` names (higher is better); a new best saves
the weights (student and MAD projections) under ``checkpoints/best/``; ``patience`` evaluations in a row without
improvement stop the run (``steps`` is the cap), but not before step ``min_steps`` (a plateau at the start of
training is not convergence). At the end the best weights are loaded back, so the saved student and every
evaluation after training are the selected checkpoint. Its state (best value and step, bad evaluations, the dev
curve, stopped or not) goes into each checkpoint, so a killed run resumes exactly; a best-weights file is removed
only once a checkpoint no longer refers to it.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .config import TrainConfig, dev_every

RUN_BUFFERS = ("conf_hist", "conf_moments")  # counts over the whole run, not weights: kept when the best is loaded


def dev_split(samples: Sequence, fraction: float, min_dev: int, seed: int) -> tuple[list, list]:
    """``(train, dev)``: whole images ranked by ``sha256("dev:{seed}:{image}")`` go to dev until it holds
    ``max(min_dev, ceil(fraction * n))`` samples; the rest trains (dataset order kept in both). ``fraction`` 0: no dev
    split. Too few samples for both is one :class:`InputError` line."""
    if not fraction:
        return list(samples), []
    n = len(samples)
    want = max(int(min_dev), math.ceil(fraction * n))
    if want >= n:
        raise InputError(f"--dev-fraction {fraction:g}: a dev split of at least {want} samples (--min-dev {min_dev}) "
                         f"leaves none of the {n} training samples to train on; lower --min-dev or use more data")
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault(str(s.image if s.image is not None else s.id), []).append(i)
    ranked = sorted(groups, key=lambda g: hashlib.sha256(f"dev:{seed}:{g}".encode()).hexdigest())
    dev_idx: set[int] = set()
    for g in ranked:
        if len(dev_idx) >= want:
            break
        dev_idx.update(groups[g])
    if len(dev_idx) >= n:
        raise InputError(f"--dev-fraction {fraction:g}: the {n} training samples show {len(groups)} image(s); the dev "
                         "split would take them all")
    return [s for i, s in enumerate(samples) if i not in dev_idx], [s for i, s in enumerate(samples) if i in dev_idx]


class EarlyStop:
    """Dev evaluations, the best checkpoint and the stopping rule of one run (see the module docstring).

    ``evaluator(student) -> (metrics, predictions)`` evaluates the dev split; ``best_dir`` holds the best weights;
    ``key``: the metrics' key that selects (None: the headline, ``metrics["value"]``).
    """

    def __init__(self, cfg: TrainConfig, evaluator: Callable, best_dir: Path, dev_samples: int,
                 key: str | None = None):
        self.key = key
        self.patience = cfg.patience
        self.every = dev_every(cfg)
        self.steps = cfg.steps
        self.min_steps = cfg.min_steps
        self.evaluator = evaluator
        self.dir = Path(best_dir)
        self.dev_samples = dev_samples
        self.metric: str | None = None
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad = 0
        self.stopped = False
        self.curve: list[list[float]] = []  # [step, value]
        self._kept: int | None = None  # the best step the newest checkpoint refers to

    # -- state ----------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What a checkpoint records (plain numbers and lists)."""
        self._kept = self.best_step
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "bad": self.bad,
                "stopped": self.stopped, "curve": [list(p) for p in self.curve]}

    def load(self, state: dict[str, Any] | None) -> None:
        state = state or {}
        self.metric, self.best, self.best_step = state.get("metric"), state.get("best"), state.get("best_step")
        self.bad, self.stopped = int(state.get("bad", 0)), bool(state.get("stopped", False))
        self.curve = [list(p) for p in state.get("curve", [])]
        self._kept = self.best_step

    def summary(self) -> dict[str, Any]:
        """``metrics.json``'s record: the metric, the best value and step, where the run stopped, the dev curve."""
        return {"metric": self.metric, "best": self.best, "best_step": self.best_step, "patience": self.patience,
                "min_steps": self.min_steps, "dev_every": self.every, "dev_samples": self.dev_samples,
                "stopped_early": self.stopped, "curve": [[int(s), v] for s, v in self.curve]}

    # -- the hook -------------------------------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.steps

    def evaluate(self, trainer) -> None:
        """Evaluate the dev split at ``trainer.step``: log it, keep a new best, count a bad evaluation, maybe stop."""
        step = trainer.step
        metrics, _ = self.evaluator(trainer.student)
        if metrics is None:
            raise InputError("the dev split has no labels to score: early stopping needs labelled training samples")
        value = float(metrics[self.key] if self.key else metrics["value"])
        self.metric = self.key or metrics["metric"]
        self.curve.append([step, value])
        if self.best is None or value > self.best:
            self.best, self.best_step, self.bad = value, step, 0
            if _is_main(trainer):  # (several processes: their weights are equal; rank 0 writes them)
                self._save(trainer.model, step)
        else:
            self.bad += 1
        # at the cap the run ends anyway: patience running out there (min_steps = steps) is not stopping early
        self.stopped = bool(self.patience) and self.bad >= self.patience and self.min_steps <= step < self.steps
        trainer._append({"step": step, "eval": metrics, "split": "dev", "best_step": self.best_step})
        note = f"; stopping (best at step {self.best_step})" if self.stopped else ""
        trainer.log(f"step {step}: dev {self.metric} = {value:.2f} (best {self.best:.2f} at step {self.best_step})"
                    f"{note}")

    def restore_best(self, trainer) -> None:
        """After the loop: checkpoint the state where training ended, then load the best weights into the model."""
        from .checkpoint import latest_step

        saved = trainer._saved if hasattr(trainer, "_saved") else latest_step(trainer.ckdir)  # (several processes)
        if saved != trainer.step:
            trainer.checkpoint()
        if self.best_step is None:
            return
        if _is_main(trainer):
            self._prune(None, keep=self.best_step)  # the final checkpoint refers to the best only
        from safetensors.torch import load_model

        # every weight and buffer of the best step, but the run's own counts (the confidence histograms)
        keep = {k: v.clone() for k, v in trainer.model.named_buffers() if k.rsplit(".", 1)[-1] in RUN_BUFFERS}
        load_model(trainer.model, str(self._path(self.best_step)), strict=True, device=str(trainer.device))
        with torch.no_grad():
            for k, v in trainer.model.named_buffers():
                if k in keep:
                    v.copy_(keep[k])

    # -- files ----------------------------------------------------------------------------------------------------
    def _path(self, step: int) -> Path:
        return self.dir / f"step_{step:06d}.safetensors"

    def _save(self, model, step: int) -> None:
        from safetensors.torch import save_model

        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-{step}-{os.getpid()}.safetensors"
        save_model(model, str(tmp))
        os.replace(tmp, self._path(step))
        self._prune(step, keep=self._kept)

    def _prune(self, before: int | None, keep: int | None) -> None:
        """Remove the best-weights files of steps before ``before`` (None: all) but ``keep`` (what the newest
        checkpoint names), and what a write killed midway left."""
        for old in self.dir.glob("step_*.safetensors"):
            s = int(old.stem.removeprefix("step_"))
            if (before is None or s < before) and s != keep:
                old.unlink(missing_ok=True)
        for stale in self.dir.glob(".tmp-*"):
            if not stale.name.endswith(f"-{os.getpid()}.safetensors"):
                stale.unlink(missing_ok=True)


def _is_main(trainer) -> bool:
    dist = getattr(trainer, "dist", None)
    return dist is None or bool(getattr(dist, "is_main", True))


__all__ = ["EarlyStop", "dev_split"]
