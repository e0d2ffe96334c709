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
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mad_pipeline import testhooks
from mad_pipeline.cache import Cache
from mad_pipeline.data import load_dataset
from mad_pipeline.data.splits import subsample
from mad_pipeline.errors import InputError
from mad_pipeline.hashing import to_jsonable
from mad_pipeline.jsonio import dump_json
from mad_pipeline.losses import MADConfig, MADLoss, TargetBuilder
from mad_pipeline.machine import machine
from mad_pipeline.settings import keyed, not_in_key
from mad_pipeline.settings import setting as _f
from mad_pipeline.store.reader import open_store
from mad_pipeline.students import INITS, image_preprocess, resolve_init
from mad_pipeline.tasks import Task, get_task, task_class
from mad_pipeline.tasks.vqa import DEFAULT_MIN_COUNT, vqa_eval_setting
from mad_pipeline.training import distributed, rundir, text_view
from mad_pipeline.training.collate import Collate, StudentTokenizer
from mad_pipeline.training.confidence import write_confidence
from mad_pipeline.training.config import TrainConfig, cpu_bf16_warning, resolve_device, resolve_num_workers
from mad_pipeline.training.dataset import DistillDataset, OnlineTeacherInput, SampleDataset, StorePaths
from mad_pipeline.training.distributed import Dist
from mad_pipeline.training.early_stop import EarlyStop, dev_split
from mad_pipeline.training.evaluate import evaluate
from mad_pipeline.training.kept import check_selection as check_kept_selection
from mad_pipeline.training.online import OnlineTeacher
from mad_pipeline.training.trainer import Trainer

from . import extract as extract_stage

RUN_FORMAT = 1
MAX_NPROC = 1024  # processes of one run
TARGET_CACHE_MB = 256.0  # per process: each image's targets, made once per image
STORAGE_FIELDS = {"storage": "fp16", "keep_tokens": None, "keep_policy": "teacher-saliency",  # stage 1's
                  "dense": False}


@dataclass(frozen=True)
class DistillConfig:
    task: str = _f(help="the task (see `mad_pipeline.tasks`): vqa, snli-ve, vcr or a plugin's")
    data_root: Path = _f(help="the task's data root (official file layout)")
    out: Path = _f(help="the run directory")
    teacher: str | None = _f("shapes-clip", "image(+text) teacher (see `mad teachers`); not needed by the baseline")
    weights: str | None = _f(None, "local checkpoint of the teacher")
    text_teacher: str | None = _f(None, "another text teacher (default: the teacher's own text tower)")
    text_weights: str | None = _f(None, "local weights of the text teacher")
    student: str = _f("vilt-tiny", "student preset")
    pretrained: str | None = _f(None, "student backbone weights (save_pretrained directory or hub id)")
    init: str = _f("scratch", "student initialisation: pretrained (the preset's own pretrained backbone: vilt-tiny "
                   "and vilt-mini-l3 the shipped shapes-vilt-tiny and shapes-vilt-mini-l3, vilt-b32 "
                   "dandelin/vilt-b32-mlm) or scratch; --pretrained wins",
                   choices=INITS)
    fresh_pooler: bool = _f(False, "draw the pretrained backbone's pooler (the [CLS] projection the task head reads) "
                            "afresh, as a RoBERTa-style head starts: for a student whose image-text matching "
                            "training left a pooled output that hardly varies between images")
    dataset: str | None = _f(None, "reader (default: the task's own)")
    train_split: str = _f("train", "training split")
    eval_split: str | None = _f(None, "evaluation split (default: the task's, e.g. val; SNLI-VE dev)")
    test_splits: tuple[str, ...] = _f((), "more splits evaluated at the end, predictions written", key=False)
    mad: MADConfig = _f(help="the objective", factory=MADConfig.full)
    train: TrainConfig = _f(help="the trainer", factory=TrainConfig)
    train_fraction: float = _f(1.0, "deterministic low-shot subset of the training split")
    subset_seed: int | None = _f(None, "seed of the train_fraction subset (default: the training seed)")
    vocab_min_count: int = _f(DEFAULT_MIN_COUNT, "VQA: answers seen at least this often in the training split")
    vqa_eval: str = vqa_eval_setting()
    online_teacher: bool = _f(False, "run the teacher in the loop instead of reading the stores")
    precision: str = _f("auto", "teacher precision (extraction and online teacher)")
    cache: Path | None = _f(None, "store cache root", key=False)
    extract_batch_size: int = _f(32, "teacher batch size at extraction", key=False)
    storage: str = _f("fp16", "image tokens as fp16, int8 or bitround:N at extraction (see mad extract --storage)")
    keep_tokens: int | None = _f(None, "store only each image's CLS + K best patches (mad extract --keep-tokens)",
                                 min=1)
    keep_policy: str = _f("teacher-saliency", "the selection policy that ranks the kept patches")
    dense: bool = _f(False, "also store dense joint-space patch features at extraction (mad extract --dense); "
                     "question-aware selection ranks by them")
    overwrite: bool = _f(False, "replace a different run in out", key=False)
    wait: bool = _f(False, "wait while another process uses out (default: stop with an error)", key=False)
    progress: bool = _f(True, "progress output", key=False)
    nproc: int = _f(1, "processes training together (torchrun + DDP; on GPUs one per device); --batch-size is "
                    "their global batch", key=False, min=1, max=MAX_NPROC)
    text_view: str = _f("auto", "where training reads the text features: auto, a cached copy of the text rows in "
                        "training order (built once per dataset and text store, under the cache's derived/views); "
                        "off, the text store itself", key=False, choices=text_view.MODES)


@dataclass
class DistillResult:
    out: str
    metrics: dict[str, Any]
    predictions: dict[str, str]
    seconds: float
    main: bool = True  # False on the ranks other than 0 of a multi-process run (they return no results)

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "predictions": self.predictions, "seconds": round(self.seconds, 3), **self.metrics}


def fingerprint(cfg: DistillConfig) -> dict[str, Any]:
    """What identifies a run (a run directory resumes only the same run): every setting that changes the weights."""
    d = to_jsonable(dataclasses.asdict(cfg))
    for k in not_in_key(DistillConfig):
        d.pop(k, None)
    d["train"] = keyed(TrainConfig, d["train"])
    if "head_lr_mult" in d["train"] and (cfg.init != "scratch" or cfg.pretrained):
        d["train"]["head_lr_pooler"] = True  # a drawn pooler counts as created (earlier runs scaled the head only)
    for f in dataclasses.fields(DistillConfig):  # a task setting only for the tasks that read it (VQA: vqa_eval)
        if f.metadata.get("task_setting") and f.name not in task_class(cfg.task).keyed_settings:
            d.pop(f.name, None)
    d.update(task_class(cfg.task).training_key())  # what the task trains on changed (VCR: QA->R too)
    d["data_root"] = str(Path(cfg.data_root).resolve())
    d["out"] = str(Path(cfg.out).resolve())
    if d.get("init") == "scratch":  # random initialisation: the fingerprint it always had
        d.pop("init")
    if not d.get("fresh_pooler"):  # the pretrained pooler: the fingerprint it always had
        d.pop("fresh_pooler", None)
    for name in STORAGE_FIELDS:  # the default storage: the fingerprint it always had
        if d.get(name) == STORAGE_FIELDS[name]:
            d.pop(name, None)
    return d


@dataclass
class _Data:
    task: Task
    dataset: str
    train: list
    root: Path
    eval_split: str
    eval: Any
    tests: dict[str, Any]
    subset_seed: int
    references: dict[str, float]  # majority and chance levels on the evaluation split
    dev: list  # held out of the training subset for early stopping (TrainConfig.dev_fraction)


def run(cfg: DistillConfig, log=print) -> DistillResult:
    t0 = time.perf_counter()
    task = get_task(cfg.task, vocab_min_count=cfg.vocab_min_count, vqa_eval=cfg.vqa_eval)
    task.dev_metric(cfg.train.dev_metric)  # a metric the task does not report: one line, before any work
    distill = cfg.mad.distill
    if distill and not cfg.teacher:
        raise InputError("distillation needs --teacher (or use --no-distill for the plain-finetuning baseline)")
    if cfg.online_teacher and not distill:
        raise InputError("--online-teacher needs distillation (not --no-distill)")
    resolve_init(cfg.student, cfg.init, cfg.pretrained)  # a bad init or missing weights: one line, before any work
    out = Path(cfg.out)
    if not 1 <= cfg.nproc <= MAX_NPROC:
        raise InputError(f"--nproc {cfg.nproc}: expected 1 to {MAX_NPROC} processes")
    if cfg.train.batch_size < cfg.nproc:
        raise InputError(f"--batch-size {cfg.train.batch_size}: the global batch is split among the {cfg.nproc} "
                         "processes; give each at least one sample")
    if cfg.nproc > 1 and not distributed.in_group_env():  # start the processes; each runs this function
        return distributed.run_in_processes(cfg.nproc, f"{__name__}:run", cfg, cfg.train.device)
    d, device = distributed.setup(cfg.train.device)
    try:
        if d.enabled:  # this rank's device; only rank 0 logs, draws bars and writes into out
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device),
                                      progress=cfg.progress and d.is_main)
            log = log if d.is_main else (lambda m: None)
        if not d.is_main:
            return _run(cfg, task, out, t0, log, d)
        with rundir.locked(out, wait=cfg.wait, on_wait=lambda who: log(f"--out {out}: in use ({who}); waiting")):
            rundir.check(out, fingerprint(cfg), cfg.overwrite)  # before any work; writes nothing
            testhooks.pause("run-dir-locked")
            return _run(cfg, task, out, t0, log, d)
    finally:
        distributed.shutdown(d)


_SAID: set[str] = set()  # the one-line notes already given in this process


def _run(cfg: DistillConfig, task: Task, out: Path, t0: float, log, d: Dist) -> DistillResult:
    """:func:`run` with the run directory locked: read, extract, build, then claim ``out`` and train."""
    distill = cfg.mad.distill
    data = _load_data(cfg, task)
    t_extract = time.perf_counter()
    stores, eval_stores, store_keys = _extract_once(cfg, data, log, d) if distill else (StorePaths(), None, {})
    if stores.zeroshot is not None:
        task.fit_confidence(stores.zeroshot, data.train)
    extract_seconds = time.perf_counter() - t_extract

    device = resolve_device(cfg.train.device)
    if d.is_main and (note := cpu_bf16_warning(device, cfg.train.cpu_bf16)) and note not in _SAID:
        _SAID.add(note)  # once per process: a `mad run` study trains many runs
        log(note)
    online = _online_teacher(cfg, device)  # loaded before seeding: it must not shift the student's initialisation
    seed_everything(cfg.train.seed)
    student, objective, train_data, collate = build_training(cfg, task, data.train, data.root, stores, online,
                                                             dist=d, log=log)
    eval_data = SampleDataset(data.eval.samples, data.eval.root, task, image_preprocess(student))

    def evaluator(model, dataset=eval_data, split=data.eval_split, follow_up=True):
        return evaluate(model, dataset, collate, batch_size=cfg.train.eval_batch_size,
                        num_workers=cfg.train.num_workers, device=device, bf16=cfg.train.bf16,
                        cpu_bf16=cfg.train.cpu_bf16, progress=cfg.progress, description=f"eval {split}", dist=d,
                        follow_up=follow_up)

    teacher_zs = (task.teacher_zeroshot(eval_stores.zeroshot, eval_data.samples)
                  if eval_stores is not None and eval_stores.zeroshot is not None else None)
    references = task.reference_lines(data.references, teacher_zs)

    # the run has started: claim the directory (a failure before this point leaves nothing in it)
    if d.is_main:
        rundir.claim(out, _run_json(cfg, data, _distinct(train_data.samples), store_keys), cfg.overwrite)
        task.save(out)
    early = None
    if data.dev:  # selection on the dev split, never on the splits reported
        dev_data = SampleDataset(data.dev, data.root, task, image_preprocess(student))
        # only what selects is computed: the headline needs no follow-up question (VCR's Q->A; QA->R and Q->AR do)
        key = task.dev_metric(cfg.train.dev_metric)
        early = EarlyStop(cfg.train, lambda model: evaluator(model, dev_data, "dev", follow_up=key != task.metric_key),
                          out / "checkpoints" / "best", len(dev_data), key if cfg.train.dev_metric else None)
    trainer = Trainer(cfg.train, student, objective, train_data, collate, out, evaluator=evaluator,
                      online_teacher=online, log=log, progress=cfg.progress, references=references, early_stop=early,
                      dist=d)
    summary = trainer.fit()
    evals, predictions = {}, {}
    results = {data.eval_split: trainer.last_eval or (None, [])}
    for split, ds in data.tests.items():
        results[split] = evaluator(student, SampleDataset(ds.samples, ds.root, task, image_preprocess(student)), split)
    if not d.is_main:
        return DistillResult(out=str(out), metrics={}, predictions={}, seconds=time.perf_counter() - t0, main=False)
    for split, (m, p) in results.items():
        evals[split] = m
        predictions[split] = task.write_predictions(p, out / "predictions" / f"{split}.json")["predictions"]
    eval_metrics = evals[data.eval_split]
    metrics = {
        "task": task.name, **task.settings_in_key(vars(cfg)),  # the task's own settings (VQA: vqa_eval)
        "student": cfg.student, "teacher": cfg.teacher if distill else None,
        "text_teacher": cfg.text_teacher if distill else None, "objective": cfg.mad.preset_name,
        "mad": to_jsonable(dataclasses.asdict(cfg.mad)),
        "online_teacher": cfg.online_teacher, "train_split": cfg.train_split, "train_fraction": cfg.train_fraction,
        "subset_seed": data.subset_seed, "seed": cfg.train.seed, "train_samples": _distinct(train_data.samples),
        "train_items": len(train_data),  # what an epoch visits (VCR: each sample as Q->A and as QA->R)
        "dropped_samples": len({d["sample_id"] for d in train_data.dropped}), "eval_split": data.eval_split,
        "metric": eval_metrics["metric"] if eval_metrics else None,
        "value": eval_metrics["value"] if eval_metrics else None,
        "eval": evals, "teacher_zeroshot": teacher_zs,
        "references": references,  # the plots' reference lines on the evaluation split
        "stores": store_keys,
        "seconds": {"extract": round(extract_seconds, 3), "train": summary["train_seconds"],
                    "total": round(time.perf_counter() - t0, 3)},
        **{k: summary[k] for k in ("steps", "resumed", "step_time_s", "samples_per_step", "train_config")},
        "final_train": summary.get("final_train"),
        **({"early_stop": summary["early_stop"]} if "early_stop" in summary else {}),
        "machine": machine(),  # a long training's last bits depend on the kind of CPU (or GPU), not named in its key
    }
    if (conf := write_confidence(objective, out)) is not None:  # the raw confidences and weights (confidence.png)
        metrics["confidence"] = conf
    dump_json(out / "metrics.json", metrics)
    return DistillResult(out=str(out), metrics=metrics, predictions=predictions, seconds=time.perf_counter() - t0)


def build_training(cfg: DistillConfig, task: Task, samples: list, root: Path, stores: StorePaths,
                   online: OnlineTeacher | None, dist: Dist | None = None, log=None):
    """The student (seeded by the caller), the objective with projections to the teacher widths read from the store
    manifests, the training dataset (with its text view, built first if needed: ``cfg.text_view``) and its collate
    function -- exactly as :func:`run` trains them."""
    from mad_pipeline.students import build_student

    student = build_student(cfg.student, task.name, task.num_classes,
                            resolve_init(cfg.student, cfg.init, cfg.pretrained))
    if cfg.fresh_pooler:
        if not hasattr(student, "reset_pooler"):
            raise InputError(f"--fresh-pooler: student {cfg.student!r} has no pooler to draw afresh")
        student.reset_pooler()
    student.labels = task.label_names()  # the saved student's id2label
    w = stores.widths()
    if stores.image is not None and online is None:  # a keep-tokens store serves only some selections
        check_kept_selection(cfg.mad, open_store(stores.image))
    objective = MADLoss(cfg.mad, student.hidden_size, w["image"], w["text"], w["image_pooled"], w["text_pooled"])
    online_input = OnlineTeacherInput(online.image.preprocess, online.image.crop_box_fn) if online else None
    from mad_pipeline.training.joint import joint_space  # the joint space of question-aware selection

    space = joint_space(cfg.mad, stores)
    builder = (TargetBuilder(cfg.mad, cache_mb=TARGET_CACHE_MB, joint_proj=space and space.proj,
                             dense=bool(space and space.dense)) if cfg.mad.distill else None)
    data = DistillDataset(task.training_samples(samples), root, task, image_preprocess(student), stores,
                          online_input, has_image_targets=builder.cached if builder else None,
                          read_dense=bool(builder and builder.dense))
    collate = Collate(task, StudentTokenizer(student), builder, getattr(student, "grid", None), data.grid)
    text_view.attach(data, Cache.at(cfg.cache).root, cfg.text_view, dist, log or (lambda m: None), cfg.progress)
    return student, objective, data, collate


# ----------------------------------------------------------------------------------------------------------------------


def _load_data(cfg: DistillConfig, task: Task) -> _Data:
    """The training split (a deterministic ``train_fraction`` subset by ``subset_seed``; the task's label space is
    fitted on the *whole* split, so runs at every fraction share one), the evaluation and test splits."""
    dataset = cfg.dataset or task.dataset
    eval_split = cfg.eval_split or task.default_eval_split
    subset_seed = cfg.train.seed if cfg.subset_seed is None else cfg.subset_seed
    full = load_dataset(dataset, cfg.data_root, split=cfg.train_split)
    train, dev = dev_split(subsample(full.samples, cfg.train_fraction, subset_seed), cfg.train.dev_fraction,
                           cfg.train.min_dev, subset_seed)
    task.fit(full.samples, split=cfg.train_split)
    eval_ds = load_dataset(dataset, cfg.data_root, split=eval_split)
    tests = {s: load_dataset(dataset, cfg.data_root, split=s) for s in cfg.test_splits if s != eval_split}
    return _Data(task, dataset, train, full.root, eval_split, eval_ds, tests, subset_seed,
                 task.references(full.samples, eval_ds.samples), dev)


def _extract(cfg: DistillConfig, data: _Data, log) -> tuple[StorePaths, StorePaths, dict[str, Any]]:
    """Stage 1 (content-hash cached: a second run does no teacher work) on the training subset and the evaluation
    split, with the task's zero-shot store."""
    kinds = ("image", "text", "index", "zeroshot")
    tr = extract_stage.run(_extract_cfg(cfg, data.dataset, cfg.train_split, cfg.train_fraction, data.subset_seed),
                           log=log)
    ev = extract_stage.run(_extract_cfg(cfg, data.dataset, data.eval_split, 1.0, 0), log=log)
    stores = StorePaths(**{k: tr.stores[k].path for k in kinds if k in tr.stores})
    eval_stores = StorePaths(**{k: ev.stores[k].path for k in kinds if k in ev.stores})
    keys = {"train": {k: s.key for k, s in tr.stores.items()},
            data.eval_split: {k: s.key for k, s in ev.stores.items()}}
    return stores, eval_stores, keys


def _extract_once(cfg: DistillConfig, data: _Data, log, d: Dist):
    """:func:`_extract` on rank 0; the other ranks use its stores where they see them (a shared cache), else look them
    up (or extract them) themselves, the first rank of each machine first."""
    first = d.broadcast(_extract(cfg, data, log) if d.is_main else None)
    missing = [not all(_reachable(p) for s in first[:2] for p in dataclasses.astuple(s)) if not d.is_main else False]
    if not any(d.gather(missing[0])):
        return first
    return d.in_turn(lambda: _extract(cfg, data, log) if missing[0] else first)


def _reachable(path) -> bool:
    return path is None or "://" in str(path) or Path(path).exists()


def _online_teacher(cfg: DistillConfig, device: torch.device) -> OnlineTeacher | None:
    if not cfg.online_teacher:
        return None
    from mad_pipeline.teachers import load_teacher

    image_teacher = load_teacher(cfg.teacher, cfg.weights, str(device), cfg.precision)
    text_teacher = (load_teacher(cfg.text_teacher, cfg.text_weights, str(device), cfg.precision, flag="--text-weights")
                    if cfg.text_teacher else image_teacher)
    return OnlineTeacher(image_teacher, text_teacher)


# ----------------------------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _distinct(samples) -> int:
    """How many samples ``samples`` holds, a sample visited as several items (:meth:`Task.training_samples`) once."""
    return len({s.id for s in samples})


def _extract_cfg(cfg: DistillConfig, dataset: str, split: str, fraction: float, seed: int):
    return extract_stage.ExtractConfig(
        teacher=cfg.teacher, data_root=Path(cfg.data_root), dataset=dataset, split=split,
        text_teacher=cfg.text_teacher, weights=cfg.weights, text_weights=cfg.text_weights, cache=cfg.cache,
        device=cfg.train.device, precision=cfg.precision, batch_size=cfg.extract_batch_size,
        num_workers=resolve_num_workers(cfg.train.num_workers, resolve_device(cfg.train.device)), task=cfg.task,
        vocab_min_count=cfg.vocab_min_count,
        train_fraction=fraction, seed=seed, progress=cfg.progress, storage=cfg.storage, keep_tokens=cfg.keep_tokens,
        keep_policy=cfg.keep_policy, dense=cfg.dense)


def _run_json(cfg: DistillConfig, data: _Data, n_train: int, store_keys: dict) -> dict[str, Any]:
    return {"format": RUN_FORMAT, "task": cfg.task, "dataset": data.dataset,
            "data_root": str(Path(cfg.data_root).resolve()), "train_split": cfg.train_split,
            "eval_split": data.eval_split, "student_dir": "student", "task_files": list(data.task.files),
            "subset_seed": data.subset_seed, "train_samples": n_train, "stores": store_keys,
            "fingerprint": fingerprint(cfg)}


__all__ = ["DistillConfig", "DistillResult", "build_training", "fingerprint", "run", "seed_everything"]
