"""Several processes training one student: torchrun, DDP and the global batch.

**Launching.** ``mad distill --nproc N`` runs :func:`launch` (``torch.distributed.run`` on this machine, a standalone
rendezvous on localhost) and every rank runs the same stage; plain ``torchrun --nproc-per-node N -m mad_pipeline.cli
distill ...`` (on one or several machines) works the same way: a process that finds ``WORLD_SIZE`` / ``RANK`` /
``LOCAL_RANK`` in its environment joins the group (:func:`setup`): gloo on CPU, nccl on CUDA with one device per local
rank.

**The global batch.** ``--batch-size`` is the batch of one optimizer (micro-)step for all processes together. The data
order is one process's (:class:`~.sampler.ChunkShuffleSampler`: a function of the seed alone); each rank takes a
contiguous part of every batch sorted by image-store row (:func:`share`), so the ranks read disjoint samples, a rank
keeps to a few chunks of the shuffling window, and the samples of a step are, as a set, those of one process's step.
The objective is computed with the statistics of the global batch (one all-reduce of a few numbers a micro-batch,
:mod:`mad_pipeline.losses.global_batch`), so the loss curve equals one process's to float precision (the
all-reduce orders the sums differently) and is bit-identical between reruns with the same process count.

**Who writes.** Rank 0 alone writes into the run directory (checkpoints, metrics, plots, predictions, the student);
every rank reads the checkpoint to resume (the run directory must be on a filesystem every machine sees).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import InputError, MadError

SETUP_TIMEOUT = datetime.timedelta(days=1)  # the other ranks wait this long while rank 0 extracts the stores
ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
DEBUG_BATCHES_ENV = "MAD_DEBUG_BATCHES"  # a folder: each rank appends the sample ids of its micro-batches


@dataclass(frozen=True)
class Dist:
    """This process's place in the group; ``Dist()`` is one process alone."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None  # a gloo group with a long timeout: barriers and Python objects

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- collectives (no-ops for one process) ------------------------------------------------------------------------
    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier(group=self.group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj, group=self.group)
        return out

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of a detached copy of ``t`` (on the default group: ``t``'s device)."""
        t = t.detach().clone()
        if self.enabled:
            torch.distributed.all_reduce(t)
        return t

    def in_turn(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 first, then on the first rank of each other machine, then on the rest: stage 1 runs once
        (the others find its stores in the cache)."""
        if not self.enabled:
            return fn()
        result = None
        for turn in (self.rank == 0, self.rank != 0 and self.local_rank == 0, self.rank != 0 and self.local_rank != 0):
            if turn:
                result = fn()
            self.barrier()
        return result


def in_group_env() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the same variables)."""
    return all(k in os.environ for k in ENV) and int(os.environ["WORLD_SIZE"]) > 1


def setup(device: str) -> tuple[Dist, str]:
    """Join the group torchrun started (``(Dist(), device)`` when there is none): gloo on CPU, nccl on CUDA with
    ``cuda:LOCAL_RANK`` as this rank's device. Returns the group and this rank's device setting."""
    if not in_group_env():
        return Dist(), device
    world, rank, local = (int(os.environ[k]) for k in ENV)
    from .config import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        if device not in ("auto", "cuda"):
            raise InputError(f"--device {device}: with several processes each takes cuda:LOCAL_RANK; use --device "
                             "cuda or auto (or CUDA_VISIBLE_DEVICES to choose the devices)")
        n = torch.cuda.device_count()
        if local >= n:
            raise InputError(f"LOCAL_RANK {local}: this machine has {n} CUDA device{'s' if n != 1 else ''}; start "
                             "at most one process per device (or use --device cpu)")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    group = torch.distributed.new_group(backend="gloo", timeout=SETUP_TIMEOUT)
    return Dist(rank, world, local, group), device


def shutdown(d: Dist) -> None:
    if d.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------------------------------
# the global batch


def share(batch: Sequence[int], rows: np.ndarray, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s part of a global batch: the batch sorted by store row (stable), cut in ``world`` contiguous
    parts of equal size (the first ``len % world`` one larger). A rank whose part is empty (a batch smaller than
    the group: an epoch's last) gets the batch's first sample, which :func:`share_size` says to weigh 0."""
    b = np.asarray(batch, dtype=np.int64)
    mine = np.array_split(b[np.argsort(rows[b], kind="stable")], world)[rank]
    return (mine if len(mine) else b[:1]).tolist()


def share_size(n: int, rank: int, world: int) -> int:
    """How many of a global batch of ``n`` samples are rank ``rank``'s (as :func:`share` cuts it)."""
    return n // world + (1 if rank < n % world else 0)


class RankBatches:
    """This rank's parts (:func:`share`) of the batches of a :class:`~.sampler.ResumableBatches`; ``set`` and
    ``len`` are the wrapped one's."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world

    def set(self, epoch: int, position: int) -> None:
        self.batches.set(epoch, position)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        rows = self.batches.sampler.rows
        for batch in self.batches:
            yield share(batch, rows, self.rank, self.world)


def global_batch(micro: int, n_samples: int, batch_size: int) -> int:
    """The size of the global batch of micro-batch ``micro`` (counted from the start of training)."""
    per_epoch = -(-n_samples // batch_size)
    position = micro % per_epoch
    return min(batch_size, n_samples - position * batch_size)


def record_batch(d: Dist, micro: int, ids: Callable[[], list[str]], real: bool) -> None:
    """With ``MAD_DEBUG_BATCHES=DIR``: append ``{micro, rank, ids, real}`` to ``DIR/batches-rank{rank}.jsonl`` (tests
    compare the samples of each step across process counts); ``ids()`` gives the micro-batch's sample ids."""
    folder = os.environ.get(DEBUG_BATCHES_ENV)
    if not folder:
        return
    import json

    with open(os.path.join(folder, f"batches-rank{d.rank}.jsonl"), "a") as f:
        f.write(json.dumps({"micro": micro, "rank": d.rank, "ids": ids(), "real": real}) + "\n")


# ----------------------------------------------------------------------------------------------------------------------
# the launcher


class RankFailed(MadError):
    """A rank stopped. ``reported``: it printed its own one-line error already (a user error, exit code 2)."""

    def __init__(self, message: str, reported: bool = False):
        super().__init__(message)
        self.reported = reported


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def launch(nproc: int, module: str, args: list[str], device: str = "auto") -> None:
    """Run ``python -m module args`` in ``nproc`` processes on this machine under torchrun (standalone rendezvous,
    no restarts). A rank that fails ends the others; that is one :class:`RankFailed`."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if device not in ("cpu",) and torch.cuda.is_available() and nproc > torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise InputError(f"--nproc {nproc}: this machine has {n} CUDA device{'s' if n != 1 else ''} (one process "
                         f"per device); use --nproc {n}, or --device cpu")
    # each process's intra-op threads: the machine's cores shared (torchrun would set 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    logs = tempfile.TemporaryDirectory(prefix="mad-torchrun-")  # torchrun's own default would stay behind
    config = parse_args(["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.1",
                         f"--log-dir={logs.name}", "-m", module, *args])
    _quiet_elastic_logs()
    try:
        run(config)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        if code == 2:
            raise RankFailed(f"--nproc {nproc}: rank {rank} stopped (its error is above)", reported=True) from None
        how = f"was killed by signal {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        raise RankFailed(f"--nproc {nproc}: rank {rank} {how}; the other ranks were stopped; rerun the same command "
                         "to resume from the last checkpoint") from None
    finally:
        logs.cleanup()


def run_in_processes(nproc: int, target: str, settings: Any, device: str = "auto") -> Any:
    """``target(settings, log=...)`` (``target``: ``"package.module:function"``) in ``nproc`` processes under torchrun
    (:func:`launch`, each running :mod:`.rank_main`); returns what rank 0's call returned."""
    import pickle
    import shutil
    import tempfile
    from pathlib import Path

    from .rank_main import CALL, RESULT

    folder = Path(tempfile.mkdtemp(prefix="mad-nproc-"))  # private (0700): pickles only this user can write
    try:
        with open(folder / CALL, "wb") as f:
            pickle.dump((target, settings), f)
        launch(nproc, "mad_pipeline.training.rank_main", [str(folder)], device=device)
        with open(folder / RESULT, "rb") as f:
            return pickle.load(f)  # noqa: S301 - written by rank 0 into the private folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _quiet_elastic_logs() -> None:
    """torchrun's agent logs each failure as a long record; the launcher reports it in one line instead."""
    import logging

    for name in ("torch.distributed.elastic", "torch.distributed.run", "torch.distributed.launcher.api",
                 "torch.distributed.elastic.multiprocessing.api", "torch.distributed.elastic.agent.server.api"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


__all__ = ["DEBUG_BATCHES_ENV", "Dist", "RankBatches", "RankFailed", "global_batch", "in_group_env", "launch",
           "record_batch", "run_in_processes", "setup", "share", "share_size", "shutdown"]
