"""Stage 2 -- distill: train a student on a task against the stage-1 feature stores, evaluate it officially.

``run(cfg)``:

1. reads the training split (a deterministic ``train_fraction`` subset by ``subset_seed``) and the evaluation split;
   VQA: the answer vocabulary of the *whole* training split (``vocab_min_count``), so runs at every fraction share
   one label space;
2. unless the objective is the plain-finetuning baseline, runs stage 1 (:mod:`.extract`, content-hash cached: a
   second run does no teacher work) on the training subset and the evaluation split with ``--task``, giving the
   image, text, index and zero-shot stores; SNLI-VE: fits the 1-D confidence calibration on the training split;
3. builds the student (seeded), the MAD objective with projections to the teacher widths read from the store
   manifests, and trains with :class:`mad_pipeline.training.trainer.Trainer` (store-fed, or with ``online_teacher``
   the teacher runs in the loop);
4. evaluates with the official metric and writes, under ``out``: ``metrics.json`` (final metrics, teacher zero-shot
   on the evaluation split, timings), ``metrics.jsonl`` (curves), ``training.png``, ``student/`` (the trained
   student, ``save_pretrained`` + safetensors), ``predictions/<split>.json`` (official results format),
   ``checkpoints/`` (exact resume), ``run.json`` (what ``mad eval`` needs) and ``vocab.json`` / ``calibration.json``.

Rerunning with the same settings and ``out`` resumes from the last checkpoint (or only re-evaluates a finished run);
other settings in an existing ``out`` are refused unless ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_pipeline.data import load_dataset
from mad_pipeline.data.splits import subsample
from mad_pipeline.errors import InputError
from mad_pipeline.hashing import to_jsonable
from mad_pipeline.losses import MADConfig, MADLoss, parse_top_k
from mad_pipeline.tasks import TASKS
from mad_pipeline.training.data import (
    DEFAULT_EVAL_SPLITS,
    Collate,
    DistillDataset,
    StorePaths,
    StudentTokenizer,
    TargetPlan,
    dump_json,
    fit_snli_calibration,
    store_widths,
)
from mad_pipeline.training.trainer import (
    OnlineTeacher,
    TrainConfig,
    Trainer,
    evaluate,
    resolve_device,
    resolve_num_workers,
)

from . import extract as extract_stage

PRESETS = ("full", "naive", "baseline")
RUN_FORMAT = 1
# settings that do not change the trained weights: a run directory may be resumed with other values
_NOT_IN_FINGERPRINT = {"progress", "overwrite", "cache", "test_splits", "extract_batch_size"}
_TRAIN_NOT_IN_FINGERPRINT = {"num_workers", "device", "eval_every", "eval_batch_size", "checkpoint_every",
                             "keep_checkpoints", "log_every"}


def build_mad_config(preset: str = "full", *, select: str | None = None, top_k: str | float | int | None = None,
                     confidence: str | None = None, alpha_schedule: str | None = None, alpha: float | None = None,
                     alpha_ratio: float | None = None, logit_kd: bool | None = None, token_loss: str | None = None,
                     image_tokens: bool | None = None, text_tokens: bool | None = None,
                     pooled: bool | None = None) -> MADConfig:
    """A preset (``full``, ``naive``, ``baseline``) with individual switches on top (None = the preset's value).
    ``select`` and ``top_k`` apply to both modalities; ``top_k`` is a fraction in (0, 1] or a count."""
    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    base = {"full": MADConfig.full, "naive": MADConfig.naive, "baseline": MADConfig.baseline}[preset]()
    changes: dict[str, Any] = {}
    if select is not None:
        changes.update(select_v=select, select_t=select)
    if top_k is not None:
        try:
            k = parse_top_k(top_k)
        except ValueError as e:
            raise InputError(f"--top-k {top_k}: {e}") from None
        changes.update(k_v=k, k_t=k)
    for name, value in (("confidence", confidence), ("alpha_schedule", alpha_schedule), ("alpha0", alpha),
                        ("alpha_ratio", alpha_ratio), ("logit_kd", logit_kd), ("token_loss", token_loss),
                        ("tokens_v", image_tokens), ("tokens_t", text_tokens), ("use_pooled", pooled)):
        if value is not None:
            changes[name] = value
    try:
        return base.replace(**changes)
    except ValueError as e:
        msg = str(e)
        for field_name, flag in (("select_v", "--select"), ("select_t", "--select"), ("alpha_schedule",
                                 "--alpha-schedule"), ("confidence", "--confidence"), ("token_loss", "--token-loss")):
            msg = msg.replace(f"MADConfig.{field_name}=", f"{flag} ")
        raise InputError(msg) from None


@dataclass(frozen=True)
class DistillConfig:
    task: str  # vqa | snli-ve | vcr
    data_root: Path
    out: Path  # the run directory
    teacher: str | None = "shapes-clip"  # image(+text) teacher; not needed for the baseline
    weights: str | None = None
    text_teacher: str | None = None  # default: the teacher's own text tower
    text_weights: str | None = None
    student: str = "vilt-tiny"
    pretrained: str | None = None  # student backbone weights (save_pretrained directory or hub id)
    dataset: str | None = None  # reader; default: the task's own
    train_split: str = "train"
    eval_split: str | None = None  # default: val (VQA, VCR), dev (SNLI-VE)
    test_splits: tuple[str, ...] = ()  # also evaluated at the end, predictions written
    mad: MADConfig = field(default_factory=MADConfig.full)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_fraction: float = 1.0
    subset_seed: int | None = None  # seed of the train_fraction subset; default: train.seed
    vocab_min_count: int = 9  # VQA answer vocabulary
    online_teacher: bool = False
    precision: str = "auto"  # teacher precision (extraction and online teacher)
    cache: Path | None = None
    extract_batch_size: int = 32
    overwrite: bool = False
    progress: bool = True


@dataclass
class DistillResult:
    out: str
    metrics: dict[str, Any]
    predictions: dict[str, str]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "predictions": self.predictions, "seconds": round(self.seconds, 3), **self.metrics}


def fingerprint(cfg: DistillConfig) -> dict[str, Any]:
    d = to_jsonable(dataclasses.asdict(cfg))
    for k in _NOT_IN_FINGERPRINT:
        d.pop(k, None)
    for k in _TRAIN_NOT_IN_FINGERPRINT:
        d["train"].pop(k, None)
    d["data_root"] = str(Path(cfg.data_root).resolve())
    d["out"] = str(Path(cfg.out).resolve())
    return d


def run(cfg: DistillConfig, log=print) -> DistillResult:
    t0 = time.perf_counter()
    task = cfg.task
    if task not in TASKS:
        raise InputError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    distill = cfg.mad.distill
    if distill and not cfg.teacher:
        raise InputError("distillation needs --teacher (or use --no-distill for the plain-finetuning baseline)")
    if cfg.online_teacher and not distill:
        raise InputError("--online-teacher needs distillation (not --no-distill)")
    dataset = cfg.dataset or task
    eval_split = cfg.eval_split or DEFAULT_EVAL_SPLITS[task]
    subset_seed = cfg.train.seed if cfg.subset_seed is None else cfg.subset_seed
    out = Path(cfg.out)
    _prepare_run_dir(out, cfg)

    # 1. data
    full = load_dataset(dataset, cfg.data_root, split=cfg.train_split)
    train_samples = subsample(full.samples, cfg.train_fraction, subset_seed)
    vocab = None
    if task == "vqa":
        from mad_pipeline.tasks.vqa import build_answer_vocab

        vocab = build_answer_vocab(full.samples, min_count=cfg.vocab_min_count)
        if len(vocab) == 0:
            raise InputError(f"no answer occurs {cfg.vocab_min_count} times in the {cfg.train_split} split; "
                             "lower --vocab-min-count")
        vocab.save(out / "vocab.json")
    eval_ds = load_dataset(dataset, cfg.data_root, split=eval_split)
    test_ds = {s: load_dataset(dataset, cfg.data_root, split=s) for s in cfg.test_splits if s != eval_split}

    # 2. stage 1 (cached)
    stores = StorePaths()
    eval_stores: StorePaths | None = None
    calibration = None
    store_keys: dict[str, Any] = {}
    t_extract = time.perf_counter()
    if distill:
        tr = extract_stage.run(_extract_cfg(cfg, dataset, cfg.train_split, cfg.train_fraction, subset_seed), log=log)
        stores = StorePaths(**{k: tr.stores[k].path for k in ("image", "text", "index", "zeroshot")
                               if k in tr.stores})
        ev = extract_stage.run(_extract_cfg(cfg, dataset, eval_split, 1.0, 0), log=log)
        eval_stores = StorePaths(**{k: ev.stores[k].path for k in ("image", "text", "index", "zeroshot")
                                    if k in ev.stores})
        store_keys = {"train": {k: s.key for k, s in tr.stores.items()},
                      eval_split: {k: s.key for k, s in ev.stores.items()}}
        if task == "snli-ve" and stores.zeroshot is not None:
            calibration = fit_snli_calibration(stores.zeroshot, train_samples)
            dump_json(out / "calibration.json", calibration.to_dict())
    extract_seconds = time.perf_counter() - t_extract

    # 3. teacher (online mode; loaded before seeding so it does not shift the student's initialisation), student
    device = resolve_device(cfg.train.device)
    online = None
    if cfg.online_teacher:
        from mad_pipeline.teachers import load_teacher

        image_teacher = load_teacher(cfg.teacher, cfg.weights, str(device), cfg.precision)
        text_teacher = (load_teacher(cfg.text_teacher, cfg.text_weights, str(device), cfg.precision)
                        if cfg.text_teacher else image_teacher)
        online = OnlineTeacher(image_teacher, text_teacher)
    seed_everything(cfg.train.seed)
    from mad_pipeline.students import build_student

    num_classes = {"vqa": len(vocab) if vocab else 0, "snli-ve": 3, "vcr": 4}[task]
    student = build_student(cfg.student, task, num_classes, cfg.pretrained)
    widths = store_widths(stores)
    objective = MADLoss(cfg.mad, student.hidden_size, widths["image"], widths["text"], widths["image_pooled"],
                        widths["text_pooled"])
    preprocess = getattr(student, "image_preprocess", None) or student.preprocess_image
    # teacher-side alignment and selection done by the data pipeline (in the workers), not in the step
    plan = None if cfg.online_teacher else TargetPlan.for_objective(cfg.mad, getattr(student, "grid", None))
    train_data = DistillDataset(
        train_samples, full.root, task, preprocess, stores=stores, vocab=vocab, calibration=calibration,
        features=distill, online=cfg.online_teacher,
        teacher_preprocess=online.image.preprocess if online else None,
        teacher_crop_box=online.image.crop_box_fn if online else None, plan=plan)
    grid = tuple(online.image.grid) if online else train_data.grid
    collate = Collate(task, StudentTokenizer(student), grid, plan)
    eval_data = DistillDataset(eval_ds.samples, eval_ds.root, task, preprocess, vocab=vocab, features=False)

    def evaluator(model):
        return evaluate(model, eval_data, collate, vocab=vocab, batch_size=cfg.train.eval_batch_size,
                        num_workers=cfg.train.num_workers, device=device, bf16=cfg.train.bf16)

    dump_json(out / "run.json", _run_json(cfg, dataset, eval_split, subset_seed, len(train_data), store_keys))

    # 4. train, evaluate, write
    trainer = Trainer(cfg.train, student, objective, train_data, collate, out, evaluator=evaluator,
                      online_teacher=online, log=log)
    summary = trainer.fit()
    eval_metrics, eval_preds = trainer.last_eval if trainer.last_eval else (None, [])
    (out / "predictions").mkdir(exist_ok=True)
    predictions = {eval_split: _write_predictions(out, eval_split, eval_preds)}
    evals = {eval_split: eval_metrics}
    for split, ds in test_ds.items():
        data = DistillDataset(ds.samples, ds.root, task, preprocess, vocab=vocab, features=False)
        m, p = evaluate(student, data, collate, vocab=vocab, batch_size=cfg.train.eval_batch_size,
                        num_workers=cfg.train.num_workers, device=device, bf16=cfg.train.bf16)
        evals[split] = m
        predictions[split] = _write_predictions(out, split, p)

    metrics = {
        "task": task, "student": cfg.student, "teacher": cfg.teacher if distill else None,
        "text_teacher": cfg.text_teacher if distill else None,
        "objective": "baseline" if not distill else _preset_name(cfg.mad),
        "mad": to_jsonable(dataclasses.asdict(cfg.mad)),
        "online_teacher": cfg.online_teacher, "train_split": cfg.train_split, "train_fraction": cfg.train_fraction,
        "subset_seed": subset_seed, "seed": cfg.train.seed, "train_samples": len(train_data),
        "dropped_samples": len(train_data.dropped), "eval_split": eval_split,
        "metric": eval_metrics["metric"] if eval_metrics else None,
        "value": eval_metrics["value"] if eval_metrics else None,
        "eval": evals,
        "teacher_zeroshot": _teacher_zeroshot(task, eval_stores, eval_data, calibration, vocab) if distill else None,
        "stores": store_keys,
        "seconds": {"extract": round(extract_seconds, 3), "train": summary["train_seconds"],
                    "total": round(time.perf_counter() - t0, 3)},
        **{k: summary[k] for k in ("steps", "resumed", "step_time_s", "samples_per_step", "train_config")},
        "final_train": summary.get("final_train"),
    }
    dump_json(out / "metrics.json", metrics)
    return DistillResult(out=str(out), metrics=metrics, predictions=predictions, seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _extract_cfg(cfg: DistillConfig, dataset: str, split: str, fraction: float, seed: int):
    return extract_stage.ExtractConfig(
        teacher=cfg.teacher, data_root=Path(cfg.data_root), dataset=dataset, split=split,
        text_teacher=cfg.text_teacher, weights=cfg.weights, text_weights=cfg.text_weights, cache=cfg.cache,
        device=cfg.train.device, precision=cfg.precision, batch_size=cfg.extract_batch_size,
        num_workers=resolve_num_workers(cfg.train.num_workers, resolve_device(cfg.train.device)), task=cfg.task,
        vocab_min_count=cfg.vocab_min_count,
        train_fraction=fraction, seed=seed, progress=cfg.progress)


def _prepare_run_dir(out: Path, cfg: DistillConfig) -> None:
    fp = fingerprint(cfg)
    marker = out / "run.json"
    if out.exists() and any(out.iterdir()):
        if cfg.overwrite:
            shutil.rmtree(out)
        elif not marker.exists():
            raise InputError(f"--out {out}: exists and is not a mad run directory; choose another --out")
        else:
            old = json.loads(marker.read_text()).get("fingerprint")
            if old != fp:
                diff = _first_difference(old or {}, fp)
                raise InputError(f"--out {out}: holds a run with other settings ({diff}); use another --out or "
                                 "--overwrite")
    out.mkdir(parents=True, exist_ok=True)
    if not marker.exists():  # claim the directory first (a killed run can then be resumed)
        dump_json(marker, {"format": RUN_FORMAT, "task": cfg.task, "fingerprint": fp})


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} there, {vb!r} now"
    return ""


def _run_json(cfg: DistillConfig, dataset: str, eval_split: str, subset_seed: int, n_train: int,
              store_keys: dict) -> dict[str, Any]:
    return {"format": RUN_FORMAT, "task": cfg.task, "dataset": dataset, "data_root": str(Path(cfg.data_root).resolve()),
            "train_split": cfg.train_split, "eval_split": eval_split, "student_dir": "student",
            "vocab": "vocab.json" if cfg.task == "vqa" else None, "subset_seed": subset_seed,
            "train_samples": n_train, "stores": store_keys, "fingerprint": fingerprint(cfg)}


def _write_predictions(out: Path, split: str, preds: list[dict]) -> str:
    path = out / "predictions" / f"{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    dump_json(path, preds)
    return str(path)


def _preset_name(mad: MADConfig) -> str:
    for name in ("full", "naive"):
        if mad == getattr(MADConfig, name)():
            return name
    return "custom"


def _teacher_zeroshot(task: str, stores: StorePaths | None, data: DistillDataset, calibration, vocab):
    """The teacher's zero-shot accuracy on the evaluation split, on the same official scale as the student."""
    if stores is None or stores.zeroshot is None:
        return None
    from mad_pipeline.data.snli_ve import LABELS
    from mad_pipeline.extraction.zeroshot import zeroshot_results
    from mad_pipeline.store.reader import open_store
    from mad_pipeline.tasks.metrics import snli_ve_evaluate, vcr_evaluate, vqa_evaluate

    samples = {s.id: s for s in data.samples}
    if task == "snli-ve":
        if calibration is None:
            return None
        zs = open_store(stores.zeroshot)
        ids = np.asarray(zs["sample_id"][:], dtype=object).astype(str).tolist()
        sims = torch.tensor(np.asarray(zs["logits"][:, 0], np.float32))
        pred = calibration.logits(sims).argmax(-1).tolist()
        preds = {i: LABELS[k] for i, k in zip(ids, pred, strict=True) if i in samples}
        gold = {i: samples[i].meta["gold_label"] for i in preds if samples[i].meta.get("gold_label")}
        if not gold:
            return None
        res = snli_ve_evaluate(preds, gold)
        return {"metric": "accuracy", "value": res["accuracy"], **res, "note": "calibrated on the training split"}
    _, results = zeroshot_results(stores.zeroshot)
    if task == "vqa":
        preds = {r["question_id"]: r["answer"] for r in results}
        anns = {int(s.meta["question_id"]): s.meta for s in data.samples
                if s.meta.get("answers") and int(s.meta["question_id"]) in preds}
        if not anns:
            return None
        res = vqa_evaluate(preds, anns)
        res.pop("per_question", None)
        return {"metric": "vqa_accuracy", "value": res["overall"], **res}
    preds = {r["annot_id"]: (r["answer"], r["rationale"]) for r in results if r["annot_id"] in samples}
    gold = {i: (samples[i].meta["answer_label"], samples[i].meta["rationale_label"]) for i in preds
            if samples[i].meta.get("answer_label") is not None}
    if not gold:
        return None
    res = vcr_evaluate(preds, gold)
    return {"metric": "q2a", "value": res["q2a"], **res}


__all__ = ["PRESETS", "DistillConfig", "DistillResult", "build_mad_config", "fingerprint", "run", "seed_everything"]
