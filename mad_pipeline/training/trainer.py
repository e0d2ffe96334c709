"""The stage-2 training loop, in one readable file (in the spirit of nanoGPT's train.py).

One step reads ``grad_accum`` batches (store-fed: student inputs, task targets and the objective's teacher targets,
made by the data pipeline; or an online teacher run on the batch and its features turned into targets here), runs the
student, computes the task loss (the :class:`~mad_pipeline.tasks.Task`'s) and the MAD objective
(:class:`~mad_pipeline.losses.MADLoss`), backpropagates, clips, and steps AdamW with warmup + cosine decay.

Around it: evaluation every ``eval_every`` steps and at the end, metrics appended to ``metrics.jsonl``, a PNG of the
curves, a final ``metrics.json``, and checkpoints (:mod:`.checkpoint`) that make a resume exact: the data order is a
pure function of ``(seed, epoch, position)`` (:mod:`.sampler`), DataLoaders get their own generator, and the RNG
states are saved. Rerunning the same command resumes, and ends with the same weights as an uninterrupted run (CPU,
deterministic algorithms). bf16 autocast is used on CUDA (``bf16``) and, when asked (``cpu_bf16``), on CPU: about
twice as fast where the CPU has native bf16, but other weights than fp32's.

``on_event`` is the public hook for measuring the real loop (``bench/distill.py`` uses it): it is called with the
name of each phase as it ends -- ``"data"``, ``"student"``, ``"teacher"``, ``"loss"``, ``"backward"`` per micro-batch,
``"optimizer"`` per step -- and with ``"start"`` before the first batch is requested.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import testhooks
from ..errors import InputError
from ..hashing import to_jsonable
from ..jsonio import dump_json
from ..losses import MADLoss, StudentBatch, build_targets, patch_centers
from ..progress import Bar, progress_bar
from .batch import Batch
from .buckets import student_forward
from .checkpoint import (
    Trainable,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    remove_stale,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .collate import Collate, make_loader
from .config import (
    TrainConfig,
    adamw_kernel,
    autocast,
    created_here,
    lr_at,
    param_groups,
    resolve_device,
    resolve_num_workers,
)
from .dataset import DistillDataset
from .distributed import Dist, RankBatches, global_batch, record_batch, share_size
from .early_stop import EarlyStop
from .online import OnlineTeacher
from .sampler import ChunkShuffleSampler, ResumableBatches, text_lengths


def student_batch(out, batch: Batch) -> StudentBatch:
    """The student's side of the objective. Multiple choice: the tokens of the choice whose text the teacher
    features describe (``batch.choice``), with the ``(B, C)`` choice logits."""
    vt, vc, tt, ts, pooled = out.visual_tokens, out.visual_centers, out.text_tokens, out.text_spans, out.pooled
    if batch.choice is not None:
        b, c = out.logits.shape
        rows = torch.arange(b, device=out.logits.device) * c + batch.choice.to(out.logits.device)
        vt, vc, tt, ts, pooled = (x[rows] for x in (vt, vc, tt, ts, pooled))
    return StudentBatch(visual_tokens=vt, visual_centers=vc, text_tokens=tt, text_spans=ts, pooled=pooled,
                        logits=out.logits)


class Trainer:
    """Trains ``student`` with ``objective`` on ``train_data``; see the module docstring.

    ``evaluator(student) -> (metrics, predictions)`` is called every ``eval_every`` steps and at the end;
    ``online_teacher`` replaces the stores' features when given. ``progress``: a bar of the step budget with
    steps/s, ETA and the last logged loss and samples/s. ``references``: horizontal lines of the curves' plot
    (label -> value in the metric's percent: the teacher's zero-shot accuracy, majority, chance).
    """

    def __init__(self, cfg: TrainConfig, student, objective: MADLoss, train_data: DistillDataset, collate: Collate,
                 out_dir: str | Path, evaluator: Callable | None = None, online_teacher: OnlineTeacher | None = None,
                 log: Callable[[str], None] | None = None, on_event: Callable[[str], None] | None = None,
                 progress: bool = False, references: dict[str, float] | None = None,
                 early_stop: EarlyStop | None = None, dist: Dist | None = None):
        if len(train_data) == 0:
            raise InputError("no training samples")
        self.cfg = cfg
        self.dist = dist = dist or Dist()
        if cfg.batch_size < dist.world:
            raise InputError(f"--batch-size {cfg.batch_size}: the global batch is split among the {dist.world} "
                             "processes; give each at least one sample")
        self.task = train_data.task
        self.device = resolve_device(cfg.device)
        self.student = student.to(self.device)
        self.objective = objective.to(self.device)
        self.model = Trainable(self.student, self.objective)
        self.train_data = train_data
        self.out = Path(out_dir)
        self.evaluator = evaluator
        self.online = online_teacher
        self.log = log or (lambda m: None)
        self.event = on_event or (lambda name: None)
        self.show_progress = progress
        self.references = dict(references or {})
        self.early = early_stop  # dev evaluations, the best checkpoint, early stopping (None: a fixed budget)
        self._grid_checked = False
        self.params = list(dict.fromkeys(p for p in self.model.parameters() if p.requires_grad))
        groups = param_groups(self.params, created_here(self.student, self.objective), cfg)
        # each group's multiplier of the schedule's lr, from the config (a loaded checkpoint's groups may predate it)
        self.lr_mults = [g["lr_mult"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, **adamw_kernel(self.device))
        self.generator = torch.Generator().manual_seed(cfg.seed)  # random token selection
        sampler = ChunkShuffleSampler(train_data.image_rows(), max(1, int(train_data.image_chunk_rows)),
                                      cfg.buffer_chunks, cfg.seed)
        lengths = text_lengths([self.task.student_texts(s) for s in train_data.samples],
                               collate.tokenize) if cfg.group_by_length else None
        self.batches = ResumableBatches(sampler, cfg.batch_size, lengths, cfg.group_by_length)  # the global batches
        mine = RankBatches(self.batches, dist.rank, dist.world) if dist.enabled else self.batches
        workers = resolve_num_workers(cfg.num_workers, self.device)
        self.loader = make_loader(train_data, collate, cfg.batch_size, workers, cfg.seed, self.device,
                                  batch_sampler=mine, persistent=True)
        self.ddp = None  # several processes: DDP over student + projections (gradients averaged over the ranks)
        if dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None, find_unused_parameters=True)
        self._saved = -1  # the step of the newest checkpoint
        self.step = 0
        self.micro = 0  # micro-batches consumed: (epoch, position) = divmod(micro, batches per epoch)
        self.acc: dict[str, float] = {}
        self.last_eval: tuple[dict | None, list] | None = None
        self.metrics_path = self.out / "metrics.jsonl"
        self.ckdir = self.out / "checkpoints"

    # -- data, checkpoints, logs ---------------------------------------------------------------------------------
    def _stream(self) -> Iterator[Batch]:
        per_epoch = len(self.batches)
        while True:
            epoch, position = divmod(self.micro, per_epoch)
            self.batches.set(epoch, position)
            before = self.micro
            yield from self.loader
            if self.micro == before:  # (a StopIteration escaping the data path also ends a loader early)
                raise RuntimeError(f"the training data gave no batch at epoch {epoch}, position {position}")

    def checkpoint(self) -> Path:
        state = {"step": self.step, "micro": self.micro, "rng": rng_state(self.generator),
                 "acc": {k: float(v) for k, v in self.acc.items()},
                 **({"early": self.early.state()} if self.early is not None else {})}
        rngs = self.dist.gather(state["rng"])  # each rank's generators (one process: its own)
        if len(rngs) > 1:
            state["rng_ranks"] = rngs
        path = self.ckdir / f"step_{self.step:06d}"
        if self.dist.is_main:
            path = save_checkpoint(self.ckdir, self.step, self.model, self.optimizer, state,
                                   self.cfg.keep_checkpoints)
        self._saved = self.step
        self.dist.barrier()  # a checkpoint is complete when every rank has passed it
        if self.dist.enabled:
            testhooks.pause(f"checkpoint-rank{self.dist.rank}")
        return path

    def _resume(self) -> bool:
        main = self.dist.is_main
        if main:
            remove_stale(self.ckdir)
        path = self.dist.broadcast(latest_checkpoint(self.ckdir) if main else None)
        if path is None:
            if main:
                self.metrics_path.unlink(missing_ok=True)
            return False
        state = load_checkpoint(path, self.model, self.optimizer, self.device)
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self._saved = self.step
        self.acc = dict(state.get("acc", {}))
        rngs = state.get("rng_ranks") or [state["rng"]]  # another process count: the data order is kept, not RNGs
        set_rng_state(rngs[self.dist.rank] if len(rngs) == self.dist.world else state["rng"], self.generator)
        if self.early is not None:
            self.early.load(state.get("early"))
        done = self.step == self.cfg.steps or (self.early is not None and self.early.stopped)
        if main and self.metrics_path.exists():  # drop rows logged after the checkpoint: the replay logs them again
            def keep(row: dict[str, Any]) -> bool:
                if row.get("step", 0) > self.step:
                    return False
                # a finished run's final evaluation is redone (its predictions are needed again)
                return not ("eval" in row and row.get("split") != "dev" and row.get("step") == self.step and done)

            rows = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip() and keep(json.loads(ln))]
            self.metrics_path.write_text("".join(r + "\n" for r in rows))
        self.log(f"resumed from {path} (step {self.step})")
        return True

    def _append(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _log_row(self, t_elapsed: float, n_steps: int) -> dict[str, Any]:
        acc, self.acc = self.acc, {}
        n = max(1.0, acc.pop("_n", 1.0))
        row = {"step": self.step, "epoch": self.micro / max(1, len(self.batches)), "lr": lr_at(self.cfg, self.step - 1)}
        row.update({k: v / n for k, v in acc.items()})
        row["step_time_s"] = t_elapsed / max(1, n_steps)
        row["samples_per_s"] = self.cfg.batch_size * self.cfg.grad_accum * n_steps / max(t_elapsed, 1e-9)
        return row

    def _evaluate(self) -> None:
        if self.evaluator is None:
            return
        t0 = time.perf_counter()
        metrics, preds = self.evaluator(self.student)
        self.last_eval = (metrics, preds)
        self._append({"step": self.step, "eval": metrics, "eval_seconds": round(time.perf_counter() - t0, 3)})
        if metrics is not None:
            self.log(f"step {self.step}: eval {metrics['metric']} = {metrics['value']:.2f}")

    # -- one micro-batch --------------------------------------------------------------------------------------------
    def _micro_step(self, batch: Batch, last: bool = True) -> dict[str, torch.Tensor]:
        """One micro-batch forward and backward (``last``: the step's last, when DDP averages the gradients)."""
        cfg = self.cfg
        batch = batch.to(self.device, non_blocking=True)
        self.event("data")
        d = self.dist
        real = not d.enabled or share_size(global_batch(self.micro, len(self.train_data), cfg.batch_size), d.rank,
                                           d.world) > 0
        record_batch(d, self.micro, lambda: [self.train_data.samples[i].id for i in batch.indices.tolist()], real)
        sync = {"reduce": d.sum, "weight": float(real)} if d.enabled else {}
        if self.ddp is None:
            losses = self._forward(batch, sync)
            (losses["total"] / cfg.grad_accum).backward()
        else:  # gradients are averaged over the ranks at the step's last micro-batch only
            with contextlib.nullcontext() if last else self.ddp.no_sync():
                losses = self.ddp(lambda: self._forward(batch, sync))
                (losses.pop("share") * d.world / cfg.grad_accum).backward()
        self.event("backward")
        return losses

    def _forward(self, batch: Batch, sync: dict[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        with autocast(self.device, cfg.bf16, cfg.cpu_bf16):
            out = student_forward(self.student, batch.student_args(), cfg.length_buckets)
            sb = student_batch(out, batch)
            self.event("student")
            targets = batch.targets
            if self.online is not None:  # the live teacher's features, through the same target builder
                targets = build_targets(self.objective.config, self.online(batch), sb)
            elif not self._grid_checked and targets is not None and targets.image is not None:
                self._check_grid(sb, batch)
            self.event("teacher")
            loss_task = self.task.loss(out.logits, batch.target)
            losses = self.objective(sb, targets, loss_task, target=batch.target, step=self.step,
                                    total_steps=cfg.steps, generator=self.generator, **sync)
            self.event("loss")
        return losses

    def _check_grid(self, sb: StudentBatch, batch: Batch) -> None:
        """Image targets made by the data pipeline assume the student's visual tokens are its grid's cells over its
        crop box (the Student interface); check it once on the first batch."""
        grid = tuple(getattr(self.student, "grid", ()))
        expected = patch_centers(batch.crop_boxes, grid) if len(grid) == 2 else None
        got = sb.visual_centers
        if expected is None or got is None or got.shape != expected.shape or not torch.allclose(
                got.float(), expected.to(got.device), atol=1e-3):
            raise ValueError(f"student {getattr(self.student, 'name', '?')}: visual_centers are not the row-major "
                             f"centres of its grid {grid} over its crop box, so image targets cannot be precomputed")
        self._grid_checked = True

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        prev_det = torch.are_deterministic_algorithms_enabled()
        if self.cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit()
        finally:
            torch.use_deterministic_algorithms(prev_det)

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        resumed = self._resume()
        self.student.train()
        self.objective.train()
        self.event("start")
        stream = self._stream()
        with progress_bar("training", cfg.steps, unit="step", enabled=self.show_progress,
                          completed=self.step) as bar:
            t_run = time.perf_counter()
            step_times = self._loop(stream, bar)
            train_seconds = time.perf_counter() - t_run
            if self.early is not None:  # the selected checkpoint is what is evaluated and saved
                self.early.restore_best(self)
            self._evaluate()  # before the final checkpoint: a resumed finished run re-evaluates (see _resume)
        if self._saved != self.step:
            self.checkpoint()
        if self.dist.is_main:  # a finished run needs its last checkpoint only (to re-evaluate when rerun)
            prune_checkpoints(self.ckdir, 1)
        return self._finish(resumed, train_seconds, step_times)

    def _loop(self, stream: Iterator[Batch], bar: Bar) -> list[float]:
        """Steps until the budget is spent; returns each step's time."""
        cfg = self.cfg
        steps_since = 0
        step_times: list[float] = []
        while self.step < cfg.steps and not (self.early is not None and self.early.stopped):
            t_step = time.perf_counter()
            for group, mult in zip(self.optimizer.param_groups, self.lr_mults, strict=True):
                group["lr"] = lr_at(cfg, self.step) * mult
            for i in range(cfg.grad_accum):
                losses = self._micro_step(next(stream), last=i == cfg.grad_accum - 1)
                self.micro += 1
                for k, v in losses.items():
                    self.acc[k] = self.acc.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=False)
                self.acc["grad_norm"] = self.acc.get("grad_norm", 0.0) + float(norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.event("optimizer")
            self.step += 1
            self.acc["_n"] = self.acc.get("_n", 0.0) + 1
            steps_since += 1
            step_times.append(time.perf_counter() - t_step)
            bar.advance()
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = self._log_row(sum(step_times[-steps_since:]), steps_since)  # step time only, no eval
                self._append(row)
                self.log(f"step {self.step}/{cfg.steps}: loss {row.get('total', float('nan')):.4f} "
                         f"(task {row.get('task', float('nan')):.4f}, distill {row.get('distill', 0.0):.4f}) "
                         f"lr {row['lr']:.2e}")
                bar.info(f"loss {row.get('total', float('nan')):.4g}, {row['samples_per_s']:,.3g} samples/s")
                steps_since = 0
            if self.early is not None and self.early.due(self.step):
                self.early.evaluate(self)
            stopping = self.early is not None and self.early.stopped
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps and not stopping:
                self._evaluate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.checkpoint()
        return step_times

    def _finish(self, resumed: bool, train_seconds: float, step_times: list[float]) -> dict[str, Any]:
        """Save the student, plot the curves, write ``metrics.json`` (rank 0; the other ranks write nothing); returns
        its content."""
        from .plot import plot_metrics

        main = self.dist.is_main
        if main:
            _quietly(self.student.save, self.out / "student")
            plot_metrics(self.metrics_path, self.out / "training.png", references=self.references)
        metrics, _ = self.last_eval if self.last_eval is not None else (None, [])
        # steady-state step time: the median, so DataLoader start-up and the first (slow) step do not count
        summary = {"steps": self.step, "resumed": resumed, "train_seconds": round(train_seconds, 3),
                   "step_time_s": float(np.median(step_times)) if step_times else None,
                   "samples_per_step": self.cfg.batch_size * self.cfg.grad_accum,
                   "train_samples": len(self.train_data), "eval": metrics,
                   "train_config": to_jsonable(asdict(self.cfg)),
                   **({"early_stop": self.early.summary()} if self.early is not None else {})}
        if self.dist.enabled:
            summary["nproc"] = self.dist.world
        text = self.metrics_path.read_text() if main and self.metrics_path.exists() else ""
        rows = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        train_rows = [r for r in rows if "eval" not in r]  # (dev evaluations are "eval" rows too)
        if train_rows:
            summary["final_train"] = train_rows[-1]
        if main:
            dump_json(self.out / "metrics.json", summary)
        return summary


def _quietly(fn, *args):
    """Call ``fn`` without transformers' progress bars (``save_pretrained`` draws one per save)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return fn(*args)
    finally:
        if was:
            hf_logging.enable_progress_bar()


__all__ = ["Trainer", "student_batch"]
