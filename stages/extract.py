"""Stage 1 — extract: run frozen teachers over a dataset once and publish token-level feature stores by key.

Three stores come out, each cached by its own content key:
  image  rows = unique images (by sha256 of the file bytes), key = image-teacher identity + the set of image hashes
  text   rows = unique texts (by sha256 of the UTF-8), key = text-teacher identity + the set of text hashes
  index  rows = samples, key = the dataset's samples (ids, content hashes, fields); teacher-independent
and, with --task, a zero-shot store (the teacher's logits for each sample's candidate texts).
A second text teacher therefore reuses the image store untouched, and reordering a manifest changes nothing.

``storage`` / ``keep_tokens`` / ``keep_policy`` choose how the image store holds its tokens (int8, bitround:N,
only the top-K tokens per image; :mod:`mad_pipeline.store.storage`): recorded in its manifest and key, read back as
float values. The default (fp16, every token) leaves the key and the bytes as they always were. ``dense`` adds the
image teacher's dense joint-space features (array ``dense``, :mod:`mad_pipeline.teachers.dense`), in the key when on.

With ``workers`` (a local dask cluster of that many worker processes, one per GPU on a GPU machine) or ``scheduler``
(an existing dask cluster), the image and text stores are computed one shard per task on the cluster's workers
(:mod:`mad_pipeline.extraction.distributed`); the stores, keys and manifests are the same.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from mad_pipeline.cache import Cache
from mad_pipeline.data import load_dataset
from mad_pipeline.data.splits import subsample
from mad_pipeline.errors import InputError
from mad_pipeline.extraction import stores as stores_lib
from mad_pipeline.extraction.build import StoreResult
from mad_pipeline.extraction.cluster import Pool
from mad_pipeline.extraction.device import parse_count
from mad_pipeline.extraction.inputs import hash_inputs
from mad_pipeline.extraction.stores import BuildContext
from mad_pipeline.progress import make_progress
from mad_pipeline.store.storage import Storage
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks.vqa import DEFAULT_MIN_COUNT
from mad_pipeline.teachers.identity import LazyTeacher

ON_ERROR = ("fail", "skip")


@dataclass(frozen=True)
class ExtractConfig:
    teacher: str
    data_root: Path
    dataset: str = "jsonl"
    manifest: Path | None = None
    split: str | None = None
    text_teacher: str | None = None  # default: the teacher's own text tower (if it has one)
    weights: str | None = None
    text_weights: str | None = None
    cache: Path | None = None
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | str = 32  # or "auto": from the GPU's memory (32 on CPU); see extraction/device.py
    num_workers: int | str = "auto"  # decode workers; "auto": 2 on CPU, one per core but one on CUDA
    on_error: str = "fail"
    max_text_length: int | None = None
    shard_rows: int | None = None  # rows per resumable shard (default: ~32 MB of tokens)
    task: str | None = None  # a task (vqa, snli-ve, vcr, ...): also write the teacher's zero-shot store
    zs_prompt: str = "auto"  # VQA candidates: auto | shapes | template
    zs_template: str | None = None  # VQA template prompt, e.g. "question: {q} answer: {a}"
    vocab_min_count: int = DEFAULT_MIN_COUNT  # VQA answer vocabulary (training split) for template prompts
    train_fraction: float = 1.0  # deterministic low-shot subset (by sample id and seed)
    seed: int = 0
    progress: bool = True
    workers: int | None = None  # a local dask cluster of this many worker processes (not in any key)
    scheduler: str | None = None  # an existing dask cluster's scheduler address (not in any key)
    storage: str = "fp16"  # image tokens: fp16 | int8 | bitround:N (in the image store's key unless fp16)
    keep_tokens: int | None = None  # store only each image's CLS + top-K patches (in the key when set)
    keep_policy: str = "teacher-saliency"  # the selection policy that ranks them
    dense: bool = False  # the image store also holds dense joint-space features (in its key when on)


@dataclass
class ExtractResult:
    stores: dict[str, StoreResult]
    samples: int
    images: int
    texts: int
    skipped: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    teacher_loaded: bool = False

    def as_dict(self) -> dict:
        return {"stores": {k: v.as_dict() for k, v in self.stores.items()}, "samples": self.samples,
                "images": self.images, "texts": self.texts, "skipped": self.skipped,
                "seconds": round(self.seconds, 3), "teacher_loaded": self.teacher_loaded}


def run(cfg: ExtractConfig, log=print) -> ExtractResult:
    t0 = time.perf_counter()
    if cfg.on_error not in ON_ERROR:
        raise InputError(f"--on-error {cfg.on_error!r}: expected one of {', '.join(ON_ERROR)}")
    storage = Storage.parse(cfg.storage, cfg.keep_tokens, cfg.keep_policy)
    batch_size = parse_count(cfg.batch_size, "--batch-size")
    num_workers = parse_count(cfg.num_workers, "--num-workers")
    pool = None
    if cfg.workers is not None or cfg.scheduler is not None:
        pool = Pool(cfg.workers, cfg.scheduler, cfg.device, log)
        if cfg.scheduler is not None:
            pool.connect()  # a wrong address fails now, not after hashing the dataset
    cache = Cache.at(cfg.cache)
    memo = cache.root / "identities"
    task = get_task(cfg.task, vocab_min_count=cfg.vocab_min_count) if cfg.task is not None else None
    if task is not None and task.dataset != cfg.dataset:  # checked before reading: an unknown task is named first
        raise InputError(f"--task {cfg.task} needs --dataset {task.dataset} (got --dataset {cfg.dataset})")
    ds = load_dataset(cfg.dataset, cfg.data_root, split=cfg.split, manifest=cfg.manifest, on_error=cfg.on_error)
    if cfg.train_fraction != 1.0:
        ds.samples = subsample(ds.samples, cfg.train_fraction, cfg.seed)

    image_teacher = LazyTeacher(cfg.teacher, cfg.weights, cfg.device, cfg.precision, cfg.max_text_length, memo)
    if cfg.text_teacher:
        text_teacher = LazyTeacher(cfg.text_teacher, cfg.text_weights, cfg.device, cfg.precision,
                                   cfg.max_text_length, memo, flag="--text-weights")
    else:
        text_teacher = image_teacher if "text" in image_teacher.towers else None
    has_image = "image" in image_teacher.towers
    if cfg.dense and (not has_image or image_teacher.spec.family != "open_clip"):
        raise InputError(f"--dense: teacher {cfg.teacher} is not an open_clip image teacher (dense joint-space "
                         "features are MaskCLIP's value path of an open_clip ViT)")

    stores: dict[str, StoreResult] = {}
    with make_progress(cfg.progress) as progress, pool or contextlib.nullcontext():
        ctx = BuildContext(cache, batch_size, num_workers, cfg.on_error, cfg.shard_rows, progress, log,
                           pool, storage, cfg.dense)
        inputs = hash_inputs(ds, progress if has_image else None)
        skipped = [s.as_dict() for s in ds.skipped]
        where = ds.image_source().where  # a file under the data root, or shard.tar:member, file.parquet:row N
        if inputs.missing and has_image:
            if cfg.on_error != "skip":
                rel, why = next(iter(inputs.missing.items()))
                sid = next(s.id for s in ds.samples if s.image == rel)
                raise InputError(f"{where(rel)}: {why} (sample {sid}; use --on-error skip to record and go on)")
            skipped += [{"source": str(where(s.image)), "sample_id": s.id, "reason": inputs.missing[s.image]}
                        for s in ds.samples if s.image in inputs.missing]
        if has_image:
            stores["image"] = stores_lib.image_store(ctx, image_teacher, ds, inputs)
        if text_teacher is not None and inputs.text_hash:
            stores["text"] = stores_lib.text_store(ctx, text_teacher, ds, inputs)
        stores["index"] = stores_lib.index_store(ctx, ds, inputs, skipped)
        if cfg.task is not None:
            if not has_image or "text" not in image_teacher.towers:
                raise InputError(f"--task needs a teacher with image and text towers (got {cfg.teacher})")
            samples = [s for s in ds.samples if s.image and s.image in inputs.image_hash]  # with a readable image
            setup = task.zeroshot_setup(samples, cfg.data_root, prompt=cfg.zs_prompt, template=cfg.zs_template)
            cands, prompt = setup.candidates, setup.prompt
            stores["zeroshot"] = stores_lib.zeroshot_store(ctx, image_teacher, ds, inputs, stores["image"], cfg.task,
                                                           cands, prompt)

    loaded = image_teacher.loaded or (text_teacher is not None and text_teacher.loaded)
    return ExtractResult(stores=stores, samples=len(ds.samples), images=len(inputs.unique_images()[0]),
                         texts=len(inputs.text_hash), skipped=skipped + stores_lib.decode_skips(stores.get("image")),
                         seconds=time.perf_counter() - t0, teacher_loaded=loaded)


