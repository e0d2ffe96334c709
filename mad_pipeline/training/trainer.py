"""A lightweight trainer for stage 2, in one readable file (in the spirit of nanoGPT's train.py).

What one step does: read ``grad_accum`` batches (store-fed: student inputs, targets and teacher features; or the
teacher run online on the batch), run the student, compute the task loss and the MAD objective
(:class:`mad_pipeline.losses.MADLoss`), backpropagate, clip, step AdamW with a warmup + cosine learning rate.

Around it: evaluation every ``eval_every`` steps with the task's official metric (VQA accuracy of the argmax answer,
SNLI-VE accuracy, VCR Q->A), metrics appended to ``metrics.jsonl``, a PNG plot of the curves, a final
``metrics.json``, and checkpoints every ``checkpoint_every`` steps that make a resume *exact*:

- ``model.safetensors`` (student + MAD projections), ``optimizer.pt`` and ``state.pt`` (step, the RNG states of
  torch, numpy and python, the generator behind random token selection, the log accumulators) -- saved with
  ``torch.save`` as plain tensors / numbers / lists and loaded with ``weights_only=True``; never pickled objects.
- The data order is a pure function of ``(seed, epoch, position)``: the chunk-aware sampler draws an epoch's order
  from ``(seed, epoch)`` and the batch sampler starts that order at the saved position. DataLoaders get their own
  ``torch.Generator``, so creating an iterator never consumes the global RNG.
- Checkpoints are written under a temporary name and renamed into place, then ``latest`` is updated atomically: a
  kill at any point leaves the previous checkpoint usable. Rerunning the same command resumes from it, and the
  resumed run ends with the same weights as an uninterrupted one (CPU, deterministic algorithms).

bf16 autocast is used on CUDA only (on CPU, fp32 is both faster and exact).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..data.snli_ve import LABELS
from ..errors import InputError
from ..hashing import to_jsonable
from ..losses import MADLoss, StudentBatch, TeacherBatch
from ..students.base import patch_centers, task_loss
from ..tasks.metrics import snli_ve_evaluate, vcr_evaluate, vqa_evaluate
from .data import Batch, Collate, DistillDataset, rationale_texts
from .sampler import ChunkShuffleSampler

PRIMARY_METRIC = {"vqa": "vqa_accuracy", "snli-ve": "accuracy", "vcr": "q2a"}


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 200  # optimizer steps
    batch_size: int = 32  # per micro-batch; the effective batch is batch_size * grad_accum
    lr: float = 1e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * min_lr_ratio
    decay: str = "cosine"  # "cosine" or "constant" after warmup
    warmup: int = 0  # linear warmup steps
    weight_decay: float = 0.01  # AdamW, on matrices only (not biases / norms)
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0  # max global grad norm; 0 = off
    grad_accum: int = 1
    eval_every: int = 0  # 0: evaluate at the end only
    eval_batch_size: int = 64
    checkpoint_every: int = 0  # 0: checkpoint at the end only
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    num_workers: int | str = "auto"  # DataLoader workers, or "auto" (resolve_num_workers)
    buffer_chunks: int = 8  # chunk-aware shuffling window (chunks of the image store)
    device: str = "auto"
    bf16: bool = True  # bf16 autocast on CUDA (never on CPU)
    deterministic: bool = True  # torch.use_deterministic_algorithms during training

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


NUM_WORKERS_HELP = "DataLoader worker processes, or auto (none on CPU; on CUDA one per free core, at most 8)."


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


# ----------------------------------------------------------------------------------------------------------------------
# Student outputs -> what the objective reads; the online teacher


def student_batch(task: str, out, batch: Batch) -> StudentBatch:
    """The student's side of the objective. VCR: the tokens of the pair whose text the teacher features describe
    (``batch.pair``), with the ``(B, C)`` choice logits."""
    vt, vc, tt, ts, pooled = out.visual_tokens, out.visual_centers, out.text_tokens, out.text_spans, out.pooled
    if task == "vcr":
        b, c = out.logits.shape
        rows = torch.arange(b, device=out.logits.device) * c + batch.pair.to(out.logits.device)
        vt, vc, tt, ts, pooled = (x[rows] for x in (vt, vc, tt, ts, pooled))
    return StudentBatch(visual_tokens=vt, visual_centers=vc, text_tokens=tt, text_spans=ts, pooled=pooled,
                        logits=out.logits)


class OnlineTeacher:
    """The teacher run inside the loop on the batch's images and texts: the same :class:`TeacherBatch` the stores
    give (CLS + patch tokens after the final norm, pooled embeddings, crop box; text tokens zeroed past their
    length, pooled, character spans). Zero-shot logits still come from the batch (the zero-shot store)."""

    def __init__(self, image_teacher, text_teacher=None):
        self.image = image_teacher
        self.text = text_teacher

    @torch.no_grad()
    def __call__(self, batch: Batch) -> TeacherBatch:
        if batch.teacher_pixels is None:
            raise ValueError("online teacher mode needs a dataset built with online=True")
        parts: dict[str, Any] = {}
        if batch.teacher is not None:
            parts.update(zs_logits=batch.teacher.zs_logits, zs_mask=batch.teacher.zs_mask)
        device = batch.pixel_values.device
        tokens, pooled = self.image.encode_image_tokens(batch.teacher_pixels)
        parts.update(image_tokens=tokens.to(device), image_pooled=pooled.to(device), image_grid=tuple(self.image.grid),
                     crop_box=batch.teacher_crop_box.to(device),
                     image_valid=torch.ones(len(batch), dtype=torch.bool, device=device))
        if self.text is not None:
            tb = self.text.tokenize(list(batch.teacher_texts))
            xt, xp = self.text.encode_text_tokens(tb)
            xt = xt.to(device) * tb.mask.to(device)[..., None]
            parts.update(text_tokens=xt, text_pooled=xp.to(device),
                         text_spans=torch.from_numpy(tb.spans.astype(np.int64)).to(device),
                         text_length=torch.from_numpy(tb.lengths.astype(np.int64)).to(device))
        return TeacherBatch(**parts)


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation with the official metrics


def _loader(dataset, collate, batch_size: int, num_workers: int, seed: int, device: torch.device,
            sampler=None, batch_sampler=None, persistent: bool = False) -> DataLoader:
    kw: dict[str, Any] = {}
    if batch_sampler is None:
        kw.update(batch_size=batch_size, shuffle=False, sampler=sampler)
    else:
        kw.update(batch_sampler=batch_sampler)
    return DataLoader(dataset, collate_fn=collate, num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=persistent and num_workers > 0,
                      generator=torch.Generator().manual_seed(seed), **kw)


@torch.no_grad()
def evaluate(student, dataset: DistillDataset, collate: Collate, *, vocab=None, batch_size: int = 64,
             num_workers: int | str = 0, device: torch.device | str = "cpu", bf16: bool = True,
             rationale: bool = True) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Predict every sample of ``dataset`` and score with the official metric.

    Returns ``(metrics, predictions)``: predictions in the task's official results format (VQA
    ``[{"question_id", "answer"}]``, SNLI-VE ``[{"pairID", "label"}]``, VCR ``[{"annot_id", "answer",
    "rationale"}]``); metrics None when the split has no labels. VCR: the student is trained on Q->A; its QA->R
    choice (``rationale=True``) scores the rationale texts, conditioned on the right answer as the official protocol
    does, with the same head.
    """
    device = torch.device(device)
    task = dataset.task
    was_training = student.training
    student.eval()
    preds: list[dict[str, Any]] = []
    loader = _loader(dataset, collate, batch_size, resolve_num_workers(num_workers, device), 0, device)
    try:
        for batch in loader:
            batch = batch.to(device)
            with autocast(device, bf16):
                out = student(batch.pixel_values, batch.crop_boxes, batch.text.input_ids, batch.text.attention_mask,
                              batch.text.char_spans)
            choice = out.logits.float().argmax(-1).cpu().tolist()
            for i, k in zip(batch.indices.tolist(), choice, strict=True):
                s = dataset.samples[i]
                if task == "vqa":
                    preds.append({"question_id": int(s.meta["question_id"]), "answer": vocab.answers[k]})
                elif task == "snli-ve":
                    preds.append({"pairID": s.id, "label": LABELS[k]})
                else:
                    preds.append({"annot_id": s.id, "answer": int(k), "rationale": 0})
            if task == "vcr" and rationale:
                _vcr_rationales(student, dataset, collate, batch, preds[-len(batch):], device, bf16)
    finally:
        student.train(was_training)
    return _score(task, dataset, preds), preds


def _vcr_rationales(student, dataset, collate, batch, preds, device, bf16) -> None:
    samples = [dataset.samples[i] for i in batch.indices.tolist()]
    texts = []
    for s, p in zip(samples, preds, strict=True):
        y = s.meta.get("answer_label")
        texts.append(rationale_texts(s, p["answer"] if y is None else int(y)))
    flat = collate.tokenize([t for ts in texts for t in ts]).to(device)
    b, c = len(texts), len(texts[0])
    with autocast(device, bf16):
        out = student(batch.pixel_values, batch.crop_boxes, flat.input_ids.view(b, c, -1),
                      flat.attention_mask.view(b, c, -1), flat.char_spans.view(b, c, -1, 2))
    for p, k in zip(preds, out.logits.float().argmax(-1).cpu().tolist(), strict=True):
        p["rationale"] = int(k)


def _score(task: str, dataset: DistillDataset, preds: list[dict[str, Any]]) -> dict[str, Any] | None:
    samples = dataset.samples
    if task == "vqa":
        anns = {int(s.meta["question_id"]): s.meta for s in samples if s.meta.get("answers")}
        if not anns:
            return None
        res = vqa_evaluate({p["question_id"]: p["answer"] for p in preds}, anns)
        res.pop("per_question", None)
        return {"metric": PRIMARY_METRIC[task], "value": res["overall"], **res}
    if task == "snli-ve":
        gold = {s.id: s.meta["gold_label"] for s in samples if s.meta.get("gold_label")}
        if not gold:
            return None
        res = snli_ve_evaluate({p["pairID"]: p["label"] for p in preds}, gold)
        return {"metric": PRIMARY_METRIC[task], "value": res["accuracy"], **res}
    gold = {s.id: (s.meta["answer_label"], s.meta["rationale_label"]) for s in samples
            if s.meta.get("answer_label") is not None and s.meta.get("rationale_label") is not None}
    if not gold:
        return None
    res = vcr_evaluate({p["annot_id"]: (p["answer"], p["rationale"]) for p in preds}, gold)
    return {"metric": PRIMARY_METRIC[task], "value": res["q2a"], **res}


# ----------------------------------------------------------------------------------------------------------------------
# Data order: reproducible from (seed, epoch, position)


class ResumableBatches(Sampler[list[int]]):
    """Batches of an epoch's chunk-aware order, starting at batch ``position`` (set before each ``iter``)."""

    def __init__(self, sampler: ChunkShuffleSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.position = 0

    def set(self, epoch: int, position: int) -> None:
        self.sampler.set_epoch(epoch)
        self.position = position

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.sampler.order()
        for b in range(self.position, len(self)):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoints


class _Trainable(nn.Module):
    """Student + MAD projections under one state dict (``student.*``, ``mad.*``)."""

    def __init__(self, student: nn.Module, objective: nn.Module):
        super().__init__()
        self.student = student
        self.mad = objective


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
             "python": [py_state[0], list(py_state[1]), py_state[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckdir: Path, step: int, model: nn.Module, optimizer, state: dict[str, Any], keep: int) -> Path:
    """Write ``ckdir/step_NNNNNN`` atomically and point ``ckdir/latest`` at it; keep the newest ``keep``."""
    from safetensors.torch import save_model

    ckdir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = ckdir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(state, tmp / "state.pt")
    (tmp / "checkpoint.json").write_text(json.dumps({"step": step, "format": 1}) + "\n")
    final = ckdir / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest = ckdir / f".latest.tmp-{os.getpid()}"
    latest.write_text(name + "\n")
    os.replace(latest, ckdir / "latest")
    done = sorted(p for p in ckdir.glob("step_*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckdir: Path) -> Path | None:
    pointer = ckdir / "latest"
    if not pointer.exists():
        return None
    path = ckdir / pointer.read_text().strip()
    return path if (path / "checkpoint.json").exists() else None


def load_checkpoint(path: Path, model: nn.Module, optimizer, device: torch.device) -> dict[str, Any]:
    from safetensors.torch import load_model

    load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    return torch.load(path / "state.pt", map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------------------------------
# The trainer


class Trainer:
    """Trains ``student`` with ``objective`` on ``train_data``; see the module docstring.

    ``evaluator(student) -> (metrics, predictions)`` is called every ``eval_every`` steps and at the end;
    ``online_teacher`` (an :class:`OnlineTeacher`) replaces the stores' features when given.
    """

    def __init__(self, cfg: TrainConfig, student, objective: MADLoss, train_data: DistillDataset, collate: Collate,
                 out_dir: str | Path, evaluator: Callable | None = None, online_teacher: OnlineTeacher | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.task = train_data.task
        self.device = resolve_device(cfg.device)
        self.student = student.to(self.device)
        self.objective = objective.to(self.device)
        self.model = _Trainable(self.student, self.objective)
        self.train_data = train_data
        self.collate = collate
        self.out = Path(out_dir)
        self.evaluator = evaluator
        self.online = online_teacher
        self._grid_checked = False
        self.log = log or (lambda m: None)
        if len(train_data) == 0:
            raise InputError("no training samples")
        params = list(dict.fromkeys(p for p in self.model.parameters() if p.requires_grad))
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.params = params
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=cfg.betas, foreach=False)
        self.generator = torch.Generator().manual_seed(cfg.seed)  # random token selection
        chunk_rows = max(1, int(train_data.image_chunk_rows))
        self.sampler = ChunkShuffleSampler(train_data.image_rows(), chunk_rows, cfg.buffer_chunks, cfg.seed)
        self.batches = ResumableBatches(self.sampler, cfg.batch_size)
        workers = resolve_num_workers(cfg.num_workers, self.device)
        self.loader = _loader(train_data, collate, cfg.batch_size, workers, cfg.seed, self.device,
                              batch_sampler=self.batches, persistent=True)
        self.step = 0
        self.micro = 0  # micro-batches consumed: (epoch, position) = divmod(micro, batches per epoch)
        self.acc: dict[str, float] = {}
        self.last_eval: tuple[dict | None, list] | None = None

    # -- paths ---------------------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out / "metrics.jsonl"

    @property
    def ckdir(self) -> Path:
        return self.out / "checkpoints"

    def _append(self, row: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    # -- data stream ----------------------------------------------------------------------------------------------
    def _stream(self) -> Iterator[Batch]:
        per_epoch = len(self.batches)
        while True:
            epoch, position = divmod(self.micro, per_epoch)
            self.batches.set(epoch, position)
            yield from self.loader

    # -- checkpoint / resume ----------------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {"step": self.step, "micro": self.micro, "rng": _rng_state(self.generator),
                "acc": {k: float(v) for k, v in self.acc.items()}}

    def checkpoint(self) -> Path:
        return save_checkpoint(self.ckdir, self.step, self.model, self.optimizer, self._state(),
                               self.cfg.keep_checkpoints)

    def _resume(self) -> bool:
        for stale in self.ckdir.glob(".*tmp-*"):  # a checkpoint being written when a previous run was killed
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        path = latest_checkpoint(self.ckdir)
        if path is None:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            return False
        state = load_checkpoint(path, self.model, self.optimizer, self.device)
        self.step, self.micro = int(state["step"]), int(state["micro"])
        self.acc = dict(state.get("acc", {}))
        _set_rng_state(state["rng"], self.generator)
        if self.metrics_path.exists():  # drop rows logged after the checkpoint: the replay logs them again
            def keep(row: dict[str, Any]) -> bool:
                if row.get("step", 0) > self.step:
                    return False
                # a finished run's final evaluation is redone (its predictions are needed again)
                return not ("eval" in row and row.get("step") == self.step == self.cfg.steps)

            rows = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip() and keep(json.loads(ln))]
            self.metrics_path.write_text("".join(r + "\n" for r in rows))
        self.log(f"resumed from {path} (step {self.step})")
        return True

    # -- one step -------------------------------------------------------------------------------------------------
    def _micro_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        batch = batch.to(self.device, non_blocking=True)
        with autocast(self.device, cfg.bf16):
            out = self.student(batch.pixel_values, batch.crop_boxes, batch.text.input_ids,
                               batch.text.attention_mask, batch.text.char_spans)
            teacher = self.online(batch) if self.online is not None else batch.teacher
            loss_task = task_loss(self.task, out.logits, batch.target)
            sb = student_batch(self.task, out, batch)
            if not self._grid_checked and teacher is not None and teacher.image_targets is not None:
                self._check_grid(sb, batch)
            losses = self.objective(sb, teacher or TeacherBatch(), loss_task, target=batch.target, step=self.step,
                                    total_steps=cfg.steps, generator=self.generator)
        (losses["total"] / cfg.grad_accum).backward()
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
                             f"centres of its grid {grid} over its crop box, so image targets cannot be precomputed; "
                             "build the dataset without a TargetPlan")
        self._grid_checked = True

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

    # -- the loop -------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        prev_det = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
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
        stream = self._stream()
        t_run = time.perf_counter()
        steps_since = 0
        step_times: list[float] = []
        while self.step < cfg.steps:
            t_step = time.perf_counter()
            lr = lr_at(cfg, self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            for _ in range(cfg.grad_accum):
                losses = self._micro_step(next(stream))
                self.micro += 1
                for k, v in losses.items():
                    self.acc[k] = self.acc.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            if cfg.grad_clip > 0:
                norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip, foreach=False)
                self.acc["grad_norm"] = self.acc.get("grad_norm", 0.0) + float(norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.acc["_n"] = self.acc.get("_n", 0.0) + 1
            steps_since += 1
            step_times.append(time.perf_counter() - t_step)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                row = self._log_row(sum(step_times[-steps_since:]), steps_since)  # step time only, no eval
                self._append(row)
                self.log(f"step {self.step}/{cfg.steps}: loss {row.get('total', float('nan')):.4f} "
                         f"(task {row.get('task', float('nan')):.4f}, distill {row.get('distill', 0.0):.4f}) "
                         f"lr {row['lr']:.2e}")
                steps_since = 0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                self._evaluate()
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                self.checkpoint()
        train_seconds = time.perf_counter() - t_run
        self._evaluate()  # before the final checkpoint: a resumed finished run re-evaluates (see _resume)
        if _latest_step(self.ckdir) != self.step:
            self.checkpoint()
        _quietly(self.student.save, self.out / "student")
        from .plot import plot_metrics

        plot_metrics(self.metrics_path, self.out / "training.png")
        metrics, _ = self.last_eval if self.last_eval is not None else (None, [])
        # steady-state step time: the median, so DataLoader start-up and the first (slow) step do not count
        step_time = float(np.median(step_times)) if step_times else None
        summary = {"steps": self.step, "resumed": resumed, "train_seconds": round(train_seconds, 3),
                   "step_time_s": step_time, "samples_per_step": cfg.batch_size * cfg.grad_accum,
                   "train_samples": len(self.train_data), "eval": metrics, "train_config": to_jsonable(asdict(cfg))}
        last = _last_train_row(self.metrics_path)
        if last is not None:
            summary["final_train"] = last
        from .data import dump_json

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


def _latest_step(ckdir: Path) -> int:
    path = latest_checkpoint(ckdir)
    return -1 if path is None else json.loads((path / "checkpoint.json").read_text())["step"]


def _last_train_row(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    rows = [r for r in rows if "eval" not in r]
    return rows[-1] if rows else None


__all__ = ["PRIMARY_METRIC", "OnlineTeacher", "ResumableBatches", "TrainConfig", "Trainer", "evaluate",
           "latest_checkpoint", "load_checkpoint", "lr_at", "NUM_WORKERS_HELP", "parse_num_workers", "resolve_device",
           "resolve_num_workers", "save_checkpoint", "student_batch"]
