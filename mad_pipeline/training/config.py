"""The trainer's settings (:class:`TrainConfig`), the learning-rate schedule and the device / worker choices.

Each field carries its help text and whether it changes the trained weights (:func:`mad_pipeline.settings.setting`):
fields that do not (evaluation and checkpoint intervals, workers, device) may differ when a run is resumed, and the
command line, the ``mad run`` YAML schema and the run fingerprint all read these annotations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from ..machine import CPUINFO, cpu_bf16_flags
from ..settings import setting as _f

NUM_WORKERS_HELP = "DataLoader worker processes, or auto (none on CPU; on CUDA one per free core, at most 8)."
MAX_STEPS = 100_000_000  # more steps than any run finishes (over a day at 1 ms a step)
MAX_BATCH = 65_536  # samples in one (micro-)batch: far above what one device holds for these students
WORKERS_PER_CORE = 4  # DataLoader workers beyond this many per CPU core only compete for the cores
STEPS_WHY = "more steps than a run can finish"
BATCH_WHY = "more samples than one batch can hold"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = _f(200, "optimizer steps", min=1, max=MAX_STEPS, why=STEPS_WHY)
    batch_size: int = _f(32, "samples per micro-batch", min=1, max=MAX_BATCH, why=BATCH_WHY)
    lr: float = _f(1e-3, "peak learning rate (AdamW)", min=0)
    min_lr_ratio: float = _f(0.1, "cosine decay floor / peak", min=0)
    head_lr_mult: float = _f(1.0, "learning-rate multiplier of the parameters the run creates (the task head, a "
                             "pooler it draws, MAD's projections) over the student's backbone (ViLT fine-tunes its "
                             "heads at 10x)", min=0,
                             key="unless-default")
    decay: str = _f("cosine", "learning-rate decay after warmup", choices=("cosine", "constant"))
    warmup: float = _f(0.05, "linear warmup: a count of steps (a whole number), or a fraction of steps below 1 "
                       "(0.1: the first 10%)", min=0, max=MAX_STEPS, why=STEPS_WHY)
    weight_decay: float = _f(0.01, "AdamW weight decay (matrices only, not biases / norms)", min=0)
    betas: tuple[float, float] = _f((0.9, 0.999), "AdamW betas", yaml=False)
    grad_clip: float = _f(1.0, "max global grad norm (0: off)", min=0)
    grad_accum: int = _f(1, "micro-batches per step", min=1, max=MAX_BATCH, why=BATCH_WHY)
    eval_every: int = _f(0, "evaluate every N steps (0: at the end only)", key=False, min=0, max=MAX_STEPS,
                         why=STEPS_WHY)
    eval_batch_size: int = _f(64, "samples per evaluation batch", key=False, min=1, max=MAX_BATCH, why=BATCH_WHY)
    checkpoint_every: int = _f(0, "checkpoint every N steps (0: at the end only)", key=False, min=0, max=MAX_STEPS,
                               why=STEPS_WHY)
    keep_checkpoints: int = _f(2, "checkpoints kept", key=False, min=1, yaml=False)
    log_every: int = _f(10, "log training metrics every N steps", key=False, min=1, max=MAX_STEPS, why=STEPS_WHY)
    seed: int = _f(0, "training seed", yaml=False)
    num_workers: int | str = _f("auto", NUM_WORKERS_HELP, key=False, yaml=False)
    group_by_length: int = _f(0, "batches of similar text length, less padding: each run of N batches of the "
                              "shuffled order is sorted by text length and cut again (0: off); it also parts items "
                              "of different length (VCR: Q->A from the longer QA->R), which can change results: "
                              "measure it", min=0, max=MAX_BATCH, why=BATCH_WHY, key="unless-default")
    length_buckets: int = _f(1, "run each batch through the student as up to N sub-batches of similar text length, "
                             "each padded to its own longest text (1: one); the same batches and loss, less padding "
                             "where lengths differ (VCR), other rounding: a cut is made only where it saves a tenth "
                             "of the batch's padded tokens", min=1, max=8, why="each sub-batch costs a call",
                             key="unless-default")
    buffer_chunks: int = _f(8, "chunk-aware shuffling window (chunks of the image store)", min=1, max=MAX_BATCH,
                            why="more chunks than a shuffling window can hold")
    device: str = _f("auto", "auto, cpu, cuda, cuda:1 ...", key=False, yaml=False)
    bf16: bool = _f(True, "bf16 autocast on CUDA")
    cpu_bf16: bool = _f(False, "bf16 autocast on CPU as well: about twice as fast on CPUs with native bf16 "
                        "(AVX512-BF16, AMX), slower on others; trains other weights than fp32 (another run key)",
                        key="unless-default")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms during training")
    # early stopping (mad_pipeline.training.early_stop): a dev split carved from the training samples
    patience: int = _f(0, "stop after this many dev evaluations without improvement (0: never stop early)", min=0,
                       max=MAX_STEPS, why=STEPS_WHY)
    dev_fraction: float = _f(0.0, "fraction of the training samples held out (whole images) as the dev split (0: "
                             "none); the best checkpoint by the dev metric is the run's student", min=0, max=0.5,
                             why="at least half of the samples must train")
    min_dev: int = _f(64, "dev samples at least (with dev_fraction > 0)", min=1, max=MAX_BATCH * 16,
                      why="more dev samples than an evaluation should take")
    dev_every: int = _f(0, "evaluate the dev split every N steps (0: steps / 20)", min=0, max=MAX_STEPS,
                        why=STEPS_WHY)
    min_steps: int = _f(0, "early stopping never stops a run before this step (a plateau at the start of training is "
                        "not convergence)", min=0, max=MAX_STEPS, why=STEPS_WHY, key="unless-default")
    dev_metric: str = _f("", "the metric the dev split selects on: one the task reports (VCR: q2a, qa2r, q2ar); "
                         "empty: the task's headline", key="unless-default")

    def __post_init__(self) -> None:
        for f in fields(self):
            check_bounds(f, getattr(self, f.name), f"--{f.name.replace('_', '-')}")
        object.__setattr__(self, "warmup", parse_warmup(self.warmup, "--warmup"))
        if self.patience and not self.dev_fraction:
            raise InputError(f"--patience {self.patience}: early stopping needs a dev split (--dev-fraction, e.g. 0.1)")
        if self.lr <= 0:
            raise InputError(f"--lr {self.lr!r}: the learning rate must be > 0")
        parse_num_workers(self.num_workers)
        check_device(self.device)


def check_bounds(f, value, name: str) -> None:
    """``value`` against the ``min`` / ``max`` / ``choices`` of settings field ``f`` (numbers must be finite); one
    :class:`InputError` naming ``name`` (the option or YAML key)."""
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise InputError(f"{name} {value!r}: expected {' or '.join(map(str, meta['choices']))}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{name}: {value} is not a finite number")
    low, high = meta.get("min"), meta.get("max")
    if low is not None and value < low:
        raise InputError(f"{name} must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise InputError(f"{name} must be at most {high:,} ({meta.get('why', 'the largest value that works')}), "
                         f"got {value:.3g}")


def parse_warmup(value, name: str = "--warmup") -> int | float:
    """A warmup setting: a whole number of steps (``2.0`` is ``2``) or a fraction of the steps in (0, 1); anything
    else is one :class:`InputError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{name} {value!r}: expected a count of steps or a fraction of the steps below 1")
    if value == int(value):
        return int(value)
    if value > 1:
        raise InputError(f"{name} {value!r}: a count of steps is a whole number (a fraction of the steps is below 1)")
    return float(value)


def warmup_steps(cfg: TrainConfig) -> int:
    """The warmup in steps: ``warmup`` itself, or ``round(warmup * steps)`` for a fraction."""
    w = cfg.warmup
    return int(w) if w >= 1 or w == 0 else int(round(w * cfg.steps))


def dev_every(cfg: TrainConfig) -> int:
    """Steps between dev evaluations: ``dev_every``, or 1/20 of the steps when it is 0."""
    return cfg.dev_every or max(1, cfg.steps // 20)


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warmup to ``lr`` over the warmup steps (:func:`warmup_steps`), then cosine decay to
    ``lr * min_lr_ratio`` at ``steps``."""
    warmup = warmup_steps(cfg)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.decay == "constant":
        return cfg.lr
    t = (step - warmup) / max(1, cfg.steps - warmup)
    low = cfg.lr * cfg.min_lr_ratio
    return low + 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))) * (cfg.lr - low)


def created_here(student: torch.nn.Module, objective: torch.nn.Module) -> set[int]:
    """The ids of the parameters a run creates rather than loads: the student's (its ``created_parameters()``, else
    its task head ``student.head`` when it has one) and the objective's (MAD's projections)."""
    created, head = getattr(student, "created_parameters", None), getattr(student, "head", None)
    own = list(created()) if callable(created) else list(head.parameters()) if isinstance(head, torch.nn.Module) else []
    return {id(p) for p in [*own, *objective.parameters()]}


def param_groups(params: list, created: set[int], cfg: TrainConfig) -> list[dict]:
    """AdamW's groups: weight decay on matrices only; the parameters in ``created`` at ``head_lr_mult`` times the
    schedule's learning rate (``lr_mult`` of each group, which the trainer keeps). At the default
    multiplier 1 they are the two groups they always were, so earlier checkpoints resume."""
    created = created if cfg.head_lr_mult != 1.0 else set()
    groups = []
    for mult, ps in ((1.0, [p for p in params if id(p) not in created]),
                     (cfg.head_lr_mult, [p for p in params if id(p) in created])):
        for decay, sel in ((cfg.weight_decay, [p for p in ps if p.dim() >= 2]), (0.0, [p for p in ps if p.dim() < 2])):
            if sel:
                groups.append({"params": sel, "weight_decay": decay, "lr_mult": mult})
    return groups


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW's implementation for ``device``: fused (one pass over each parameter, all moments updated together) on
    CPU and CUDA; elsewhere the per-parameter loop. On CPU the loop spends most of its time on the word embedding's
    untouched rows (vilt-tiny: 14 ms of a 95 ms step on an AMD EPYC, 35 of 155 on an Intel Xeon; fused: 3-5 ms).
    The two differ only in rounding, like two CPU families; a run resumed from a checkpoint keeps the kernel it was
    saved with (the optimizer's state carries it)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {"foreach": False}


def parse_num_workers(value: int | str) -> int | str:
    """``"auto"`` or a count from 0 to :func:`max_workers` (ints, or their text as a command line gives them);
    anything else is one clear error."""
    count = None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        if text.isdigit():
            count = int(text)
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        count = value
    if count is None:
        raise InputError(f"--num-workers {value!r}: expected a count >= 0 or auto")
    if count > max_workers():
        raise InputError(f"--num-workers {count}: at most {max_workers()} ({WORKERS_PER_CORE} per CPU core on this "
                         "machine; more only compete for the cores)")
    return count


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_workers() -> int:
    """The most DataLoader workers a setting may ask for: :data:`WORKERS_PER_CORE` per usable CPU core."""
    return WORKERS_PER_CORE * max(1, _cores())


def resolve_num_workers(value: int | str, device: torch.device | str) -> int:
    """DataLoader workers for ``value``. ``"auto"``: none on CPU (the training step already uses every core, so
    workers would only compete with it); on CUDA one per free core up to 8, leaving one core to the training process
    (a small student on a GPU is otherwise bound by decoding, preprocessing and store reads in one process)."""
    value = parse_num_workers(value)
    if value != "auto":
        return int(value)
    if torch.device(device).type != "cuda":
        return 0
    return max(1, min(8, _cores() - 1))


def check_device(device: str) -> str:
    """``device`` if it names a device this machine has: ``auto``, ``cpu``, ``cuda`` / ``cuda:N`` (checked against
    ``torch.cuda.device_count()``) or another torch device type; else one :class:`InputError` line."""
    if not isinstance(device, str) or not device.strip():
        raise InputError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {device!r}: not a device (expected auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InputError(f"--device {device}: no CUDA device on this machine (use --device cpu or auto)")
        if dev.index is not None and dev.index >= n:
            raise InputError(f"--device {device}: this machine has {n} CUDA device{'s' if n > 1 else ''} "
                             f"(cuda:0{f' to cuda:{n - 1}' if n > 1 else ''})")
    return device


def resolve_device(device: str) -> torch.device:
    """The torch device of a setting (``auto``: CUDA when there is one); checked by :func:`check_device`."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_of(train: Mapping[str, Any]) -> tuple[bool, bool]:
    """``(bf16, cpu_bf16)`` of a train config given as a mapping (a run's recorded ``train_config``); a setting it
    lacks (a run from before the setting existed) at :class:`TrainConfig`'s default. ``autocast_of({})``: the
    defaults."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    return bool(train.get("bf16", defaults["bf16"])), bool(train.get("cpu_bf16", defaults["cpu_bf16"]))


def uses_bf16(device: torch.device, bf16: bool, cpu_bf16: bool = False) -> bool:
    """Whether :func:`autocast` runs bf16 on ``device``: on CUDA when ``bf16``, on CPU when ``cpu_bf16``."""
    return (bf16 and device.type == "cuda") or (cpu_bf16 and device.type == "cpu")


def autocast(device: torch.device, bf16: bool, cpu_bf16: bool = False):
    """bf16 autocast on CUDA when ``bf16``, on CPU when ``cpu_bf16``; otherwise fp32."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=uses_bf16(device, bf16, cpu_bf16))


def cpu_bf16_warning(device: torch.device, cpu_bf16: bool, cpuinfo: str | Path = CPUINFO) -> str | None:
    """One line for a run that asks for bf16 autocast on a CPU known to lack native bf16 (None otherwise): there
    autocast is emulated and far slower than fp32 (about 10x on a 2-core AMD EPYC with AVX2 only)."""
    if not uses_bf16(device, False, cpu_bf16) or cpu_bf16_flags(cpuinfo) != []:
        return None
    return ("train.cpu_bf16 (--cpu-bf16): this CPU has no native bf16 (neither avx512_bf16 nor amx_bf16 among its "
            "flags), so bf16 autocast is emulated and about 10x slower than fp32 here; leave it off for speed "
            "(another run, another cache key)")


__all__ = ["MAX_BATCH", "MAX_STEPS", "NUM_WORKERS_HELP", "TrainConfig", "autocast", "autocast_of",
           "check_bounds", "check_device", "cpu_bf16_warning", "created_here", "dev_every", "lr_at",
           "max_workers", "param_groups", "parse_num_workers", "parse_warmup", "resolve_device", "resolve_num_workers",
           "uses_bf16", "warmup_steps"]
