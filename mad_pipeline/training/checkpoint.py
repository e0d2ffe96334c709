"""Checkpoints that make a resume exact.

A checkpoint directory ``step_NNNNNN`` holds ``model.safetensors`` (student + MAD projections), ``optimizer.pt`` and
``state.pt`` (step, micro-batch position, the RNG states of torch, numpy and python, the generator behind random
token selection, the log accumulators) -- saved with ``torch.save`` as plain tensors / numbers / lists and loaded
with ``weights_only=True``; never pickled objects. It is written under a temporary name and renamed into place, then
``latest`` is updated atomically: a kill at any point leaves the previous checkpoint usable, and a write that fails
(a full disk) is removed again and reported in one line.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import testhooks
from ..errors import MadError


class Trainable(nn.Module):
    """Student + MAD projections under one state dict (``student.*``, ``mad.*``)."""

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.mad = objective

    def forward(self, step):
        """``step()``: a data-parallel wrapper (DDP) calls the module, so the training step runs through here."""
        return step()


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckdir: Path, step: int, model: nn.Module, optimizer, state: dict[str, Any], keep: int) -> Path:
    """Write ``ckdir/step_NNNNNN`` atomically and point ``ckdir/latest`` at it; keep the newest ``keep``. A write that
    fails (a full disk) leaves the previous checkpoint as it was and is one :class:`MadError` line."""
    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    latest = ckdir / f".latest.tmp-{os.getpid()}"
    try:
        final = _write(ckdir, name, tmp, latest, step, model, optimizer, state)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        latest.unlink(missing_ok=True)
        before = latest_checkpoint(ckdir)
        kept = f"the last one ({before.name}) is intact" if before is not None else "there is no earlier one"
        raise MadError(f"cannot write checkpoint {ckdir / name}: {e.strerror or e}; {kept}: free space and rerun "
                       "the same command to resume") from None
    prune_checkpoints(ckdir, keep)
    return final


def prune_checkpoints(ckdir: Path, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints (a finished run keeps one: its last)."""
    done = sorted(p for p in ckdir.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _write(ckdir: Path, name: str, tmp: Path, latest: Path, step: int, model: nn.Module, optimizer,
           state: dict[str, Any]) -> Path:
    from safetensors.torch import save_model

    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    testhooks.fail("checkpoint", step)  # tests: a disk that fills up in the middle of a checkpoint
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(state, tmp / "state.pt")
    (tmp / "checkpoint.json").write_text(json.dumps({"step": step, "format": 1}) + "\n")
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest.write_text(name + "\n")
    os.replace(latest, ckdir / "latest")
    return final


def latest_checkpoint(ckdir: Path) -> Path | None:
    pointer = ckdir / "latest"
    if not pointer.exists():
        return None
    path = ckdir / pointer.read_text().strip()
    return path if (path / "checkpoint.json").exists() else None


def latest_step(ckdir: Path) -> int:
    path = latest_checkpoint(ckdir)
    return -1 if path is None else json.loads((path / "checkpoint.json").read_text())["step"]


def load_checkpoint(path: Path, model: nn.Module, optimizer, device: torch.device) -> dict[str, Any]:
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


def remove_stale(ckdir: Path) -> None:
    """Remove what a run killed while writing a checkpoint left behind."""
    for stale in ckdir.glob(".*tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


__all__ = ["Trainable", "latest_checkpoint", "latest_step", "load_checkpoint", "remove_stale", "rng_state",
           "save_checkpoint", "set_rng_state"]
