"""The MAD objective over a batch split among processes: the statistics of the whole (global) batch.

With one process :class:`~.mad.MADLoss` normalises the confidence weights to the batch mean, averages the terms over
the batch and sets the adaptive alpha from the batch's task and distillation losses. When the batch is split among
ranks those are statistics of the *global* batch: :func:`global_batch_losses` sums, in one all-reduce, the few numbers
they are made of (samples, confidence sum, confidence-weighted term sum, task loss sum, each term's sum), so every
rank logs the global values, and returns ``share``: this rank's part of the global loss (its samples' task loss and
weighted terms over the *global* count), whose gradients, summed over ranks, are one process's. A data-parallel
wrapper averages over ranks, so the trainer backpropagates ``share * world``.

``weight`` 0 marks a rank whose part of the batch is empty (it runs one placeholder sample that counts for nothing).
The task's loss must be a mean over its samples (cross-entropy, VQA's BCE sum / batch) -- every task's is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .config import MADConfig
from .terms import alpha


def global_batch_losses(cfg: MADConfig, task_loss: Tensor, rows: int, terms: dict[str, Tensor] | None,
                        raw: Tensor | None, reduce: Callable[[Tensor], Tensor], weight: float, step: int,
                        total_steps: int) -> dict[str, Tensor]:
    """``rows``: this rank's samples; ``terms``: the per-sample ``tok_v``, ``tok_t``, ``pool``, ``kd`` ``(B,)``
    (None without distillation); ``raw``: the raw confidence ``(B,)`` (ones with ``confidence none``);
    ``reduce``: the sum over ranks."""
    b = task_loss.detach().float().new_tensor(float(weight) * rows)
    names = ("tok_v", "tok_t", "pool", "kd")
    if terms is None:
        g = reduce(torch.stack([b, task_loss.detach().float() * b]))
        n = g[0].clamp_min(1.0)
        task = g[1] / n
        zero = torch.zeros((), device=task_loss.device)
        return {"task": task, **dict.fromkeys(names, zero), "distill": zero, "alpha": zero,
                "conf_mean": torch.ones((), device=task_loss.device), "total": task,
                "share": task_loss * b / n}
    per = terms["tok_v"] + terms["tok_t"] + terms["pool"] + terms["kd"]
    raw = raw.detach().float()
    w = float(weight)
    local = [b, raw.sum() * w, (raw * per.detach()).sum() * w, task_loss.detach().float() * b,
             *(terms[k].detach().float().sum() * w for k in names)]
    g = reduce(torch.stack(local))
    n = g[0].clamp_min(1.0)
    norm = (g[1] / n).clamp_min(1e-8) if cfg.confidence != "none" and cfg.conf_normalise else g[1].new_tensor(1.0)
    distill = g[2] / norm / n
    task = g[3] / n
    a = alpha(cfg.alpha_schedule, step, total_steps, cfg.alpha0, task, distill, cfg.alpha_ratio)
    share = (task_loss * b + a * (raw / norm * per).sum() * w) / n
    return {"task": task, **{k: g[4 + i] / n for i, k in enumerate(names)}, "distill": distill, "alpha": a,
            "conf_mean": g[1] / n, "total": task + a * distill, "share": share}


__all__ = ["global_batch_losses"]
