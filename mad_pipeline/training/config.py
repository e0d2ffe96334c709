"""The trainer's settings (:class:`TrainConfig`), the learning-rate schedule and the device / worker choices.

Each field carries its help text and whether it changes the trained weights (:func:`mad_pipeline.settings.setting`):
fields that do not (evaluation and checkpoint intervals, workers, device) may differ when a run is resumed, and the
command line, the ``mad run`` YAML schema and the run fingerprint all read these annotations.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from ..errors import InputError
from ..settings import setting as _f

NUM_WORKERS_HELP = "DataLoader worker processes, or auto (none on CPU; on CUDA one per free core, at most 8)."


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(200, "optimizer steps", min=1)
    batch_size: int = _f(32, "samples per micro-batch", min=1)
    lr: float = _f(1e-3, "peak learning rate (AdamW)", min=0)
    min_lr_ratio: float = _f(0.1, "cosine decay floor / peak", min=0)
    decay: str = _f("cosine", "learning-rate decay after warmup", choices=("cosine", "constant"))
    warmup: int = _f(0, "linear warmup steps", min=0)
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices only, not biases / norms)", min=0)
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas", yaml=False)
    grad_clip: float = _f(1.0, "max global grad norm (0: off)", min=0)
    grad_accum: int = _f(1, "micro-batches per step", min=1)
    eval_every: int = _f(0, "evaluate every N steps (0: at the end only)", key=False, min=0)
    eval_batch_size: int = _f(64, "samples per evaluation batch", key=False, min=1)
    checkpoint_every: int = _f(0, "checkpoint every N steps (0: at the end only)", key=False, min=0)
    keep_checkpoints: int = _f(2, "checkpoints kept", key=False, min=1, yaml=False)
    log_every: int = _f(10, "log training metrics every N steps", key=False, min=1)
    seed: int = _f(0, "training seed", yaml=False)
    num_workers: int | str = _f("auto", NUM_WORKERS_HELP, key=False, yaml=False)
    buffer_chunks: int = _f(8, "chunk-aware shuffling window (chunks of the image store)", min=1)
    device: str = _f("auto", "auto, cpu, cuda, cuda:1 ...", key=False, yaml=False)
    bf16: bool = _f(True, "bf16 autocast on CUDA (never on CPU)")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms during training")

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "eval_batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.warmup < 0 or self.grad_clip < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise InputError("learning rate must be > 0; warmup, grad clip, eval/checkpoint intervals >= 0")
        if self.decay not in ("cosine", "constant"):
            raise InputError(f"--decay {self.decay!r}: expected cosine or constant")
        parse_num_workers(self.num_workers)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.decay == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))) * (cfg.lr - low)


def parse_num_workers(value: int | str) -> int | str:
    """``"auto"`` or a count >= 0 (ints, or their text as a command line gives them); anything else is one clear
    error."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            return int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InputError(f"--num-workers {value!r}: expected a count >= 0 or auto")


def resolve_num_workers(value: int | str, device: torch.device | str) -> int:
    """DataLoader workers for ``value``. ``"auto"``: none on CPU (the training step already uses every core, so
    workers would only compete with it); on CUDA one per free core up to 8, leaving one core to the training process
    (a small student on a GPU is otherwise bound by decoding, preprocessing and store reads in one process)."""
    value = parse_num_workers(value)
    if value != "auto":
        return int(value)
    if torch.device(device).type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cores - 1))


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


__all__ = ["NUM_WORKERS_HELP", "TrainConfig", "autocast", "lr_at", "parse_num_workers",
           "resolve_device", "resolve_num_workers"]
