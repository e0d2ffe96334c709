"""Stage 1 — extract: run frozen teachers over a dataset once and publish token-level feature stores by key.

Three stores come out, each cached by its own content key (SPEC section 4):
  image  rows = unique images (by sha256 of the file bytes), key = image-teacher identity + the set of image hashes
  text   rows = unique texts (by sha256 of the UTF-8), key = text-teacher identity + the set of text hashes
  index  rows = samples, key = the dataset's samples (ids, content hashes, fields); teacher-independent
A second text teacher therefore reuses the image store untouched, and reordering a manifest changes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mad_pipeline.cache import Cache, make_key
from mad_pipeline.data import load_dataset
from mad_pipeline.data.splits import subsample
from mad_pipeline.errors import InputError
from mad_pipeline.extraction.build import StoreResult, get_or_build
from mad_pipeline.extraction.inputs import hash_inputs, samples_digest
from mad_pipeline.extraction.runner import extract_images, extract_texts
from mad_pipeline.extraction.zeroshot import fill_zeroshot, zeroshot_arrays
from mad_pipeline.hashing import content_key, hash_of_set
from mad_pipeline.progress import make_progress
from mad_pipeline.store.layout import image_arrays, index_arrays, text_arrays
from mad_pipeline.tasks.zeroshot import snli_ve_candidates, vcr_candidates, vqa_candidates
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
    batch_size: int = 32
    num_workers: int = 2
    on_error: str = "fail"
    max_text_length: int | None = None
    shard_rows: int | None = None  # rows per resumable shard (default: ~32 MB of tokens)
    task: str | None = None  # vqa | snli-ve | vcr: also write the teacher's zero-shot store
    zs_prompt: str = "auto"  # VQA candidates: auto | shapes | template
    zs_template: str | None = None  # VQA template prompt, e.g. "question: {q} answer: {a}"
    vocab_min_count: int = 9  # VQA answer vocabulary (training split) for template prompts
    train_fraction: float = 1.0  # deterministic low-shot subset (by sample id and seed)
    seed: int = 0
    progress: bool = True


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
    if cfg.batch_size < 1:
        raise InputError("--batch-size must be at least 1")
    cache = Cache.at(cfg.cache)
    memo = cache.root / "identities"
    ds = load_dataset(cfg.dataset, cfg.data_root, split=cfg.split, manifest=cfg.manifest, on_error=cfg.on_error)
    if cfg.task is not None and cfg.task != cfg.dataset:
        raise InputError(f"--task {cfg.task} needs --dataset {cfg.task} (got --dataset {cfg.dataset})")
    if cfg.train_fraction != 1.0:
        ds.samples = subsample(ds.samples, cfg.train_fraction, cfg.seed)

    image_teacher = LazyTeacher(cfg.teacher, cfg.weights, cfg.device, cfg.precision, cfg.max_text_length, memo)
    if cfg.text_teacher:
        text_teacher = LazyTeacher(cfg.text_teacher, cfg.text_weights, cfg.device, cfg.precision,
                                   cfg.max_text_length, memo)
    else:
        text_teacher = image_teacher if "text" in image_teacher.towers else None
    has_image = "image" in image_teacher.towers

    stores: dict[str, StoreResult] = {}
    with make_progress(cfg.progress) as progress:
        inputs = hash_inputs(ds, progress if has_image else None)
        skipped = [s.as_dict() for s in ds.skipped]
        if inputs.missing and has_image:
            if cfg.on_error != "skip":
                rel, why = next(iter(inputs.missing.items()))
                sid = next(s.id for s in ds.samples if s.image == rel)
                raise InputError(f"{ds.root / rel}: {why} (sample {sid}; use --on-error skip to record and go on)")
            for s in ds.samples:
                if s.image in inputs.missing:
                    skipped.append({"source": str(ds.root / s.image), "sample_id": s.id,
                                    "reason": inputs.missing[s.image]})

        if has_image:
            hashes, rels = inputs.unique_images()
            paths = [str(ds.root / r) for r in rels]
            ident = image_teacher.identity("image")
            key = make_key("image", teacher=ident, inputs=hash_of_set(hashes))

            def fill_images(writer, _paths=paths, _hashes=hashes):
                t = image_teacher.get()
                return extract_images(t, writer, _hashes, _paths, batch_size=cfg.batch_size,
                                      num_workers=cfg.num_workers, on_error=cfg.on_error, progress=progress,
                                      pin_memory=str(getattr(t, "device", "cpu")).startswith("cuda"))

            def image_specs():
                t = image_teacher.get()
                return image_arrays(t.num_tokens, t.width, t.embed_dim)

            def image_manifest(writer):
                t = image_teacher.get()
                return {"teacher": {"name": cfg.teacher, "tower": "image", **ident},
                        "geometry": {"grid": list(t.grid), "image_size": t.image_size,
                                     "num_tokens": t.num_tokens, "width": t.width, "embed_dim": t.embed_dim,
                                     "token_order": "CLS, then patches row-major"},
                        "dataset": _dataset_identity(ds), "inputs_sha256": hash_of_set(hashes)}

            stores["image"] = get_or_build(cache, "image", key, len(hashes), image_specs, fill_images,
                                           image_manifest, shard_rows=cfg.shard_rows, log=log)

        if text_teacher is not None and inputs.text_hash:
            thashes, texts = inputs.unique_texts()
            tident = text_teacher.identity("text")
            tkey = make_key("text", teacher=tident, inputs=hash_of_set(thashes))

            def text_specs():
                t = text_teacher.get()
                return text_arrays(t.max_length, getattr(t, "text_width", t.width), t.embed_dim)

            def fill_texts(writer, _texts=texts, _hashes=thashes):
                return extract_texts(text_teacher.get(), writer, _hashes, _texts, batch_size=cfg.batch_size,
                                     progress=progress)

            def text_manifest(writer):
                t = text_teacher.get()
                return {"teacher": {"name": text_teacher.name, "tower": "text", **tident},
                        "geometry": {"max_length": t.max_length, "width": getattr(t, "text_width", t.width),
                                     "embed_dim": t.embed_dim},
                        "dataset": _dataset_identity(ds), "inputs_sha256": hash_of_set(thashes)}

            stores["text"] = get_or_build(cache, "text", tkey, len(thashes), text_specs, fill_texts,
                                          text_manifest, shard_rows=cfg.shard_rows, log=log)

        stores["index"] = _build_index(cache, ds, inputs, skipped, log)

        if cfg.task is not None:
            if "image" not in stores or "text" not in image_teacher.towers:
                raise InputError(f"--task needs a teacher with image and text towers (got {cfg.teacher})")
            stores["zeroshot"] = _build_zeroshot(cache, cfg, ds, inputs, image_teacher, stores["image"], progress,
                                                 log)

    loaded = image_teacher.loaded or (text_teacher is not None and text_teacher.loaded)
    return ExtractResult(stores=stores, samples=len(ds.samples), images=len(inputs.unique_images()[0]),
                         texts=len(inputs.text_hash), skipped=skipped + _decode_skips(stores),
                         seconds=time.perf_counter() - t0, teacher_loaded=loaded)


def _build_zeroshot(cache: Cache, cfg: ExtractConfig, ds, inputs, teacher, image_store, progress, log):
    samples = [s for s in ds.samples if s.image and s.image in inputs.image_hash]
    used_prompt = None
    if cfg.task == "vqa":
        vocab = None
        if cfg.zs_prompt == "template" or (cfg.zs_prompt == "auto" and not _all_shapes(samples)):
            from mad_pipeline.tasks.vqa import build_answer_vocab

            train = load_dataset("vqa", cfg.data_root, split="train")
            vocab = build_answer_vocab(train.samples, min_count=cfg.vocab_min_count)
        cands, used_prompt = vqa_candidates(samples, cfg.zs_prompt, cfg.zs_template, vocab)
    elif cfg.task == "snli-ve":
        cands = snli_ve_candidates(samples)
    else:
        cands = vcr_candidates(samples)
    ids = [s.id for s in samples]
    hashes = [inputs.image_hash[s.image] for s in samples]
    ident = teacher.identity("text")
    digest = content_key([[i, h, list(c.labels), list(c.texts)] for i, h, c in zip(ids, hashes, cands, strict=True)])
    key = make_key("zeroshot", teacher=ident, image_store=image_store.key, task=cfg.task, candidates=digest)
    kmax = max((len(c.texts) for c in cands), default=1)

    def fill(writer):
        return fill_zeroshot(writer, teacher.get(), image_store.path, ids, hashes, cands,
                             batch_size=max(cfg.batch_size, 64), progress=progress)

    def manifest(writer):
        return {"teacher": {"name": cfg.teacher, "tower": "image+text", **ident}, "task": cfg.task,
                "prompt": used_prompt, "template": cfg.zs_template, "image_store": image_store.key,
                "dataset": _dataset_identity(ds), "logits": "logit_scale * cos(image, text), CLIP convention"}

    return get_or_build(cache, "zeroshot", key, len(samples), lambda: zeroshot_arrays(kmax), fill, manifest, log=log)


def _all_shapes(samples) -> bool:
    from mad_pipeline.shapes.zeroshot import candidates

    return bool(samples) and all(candidates(s.texts[0]) for s in samples)


def _decode_skips(stores: dict[str, StoreResult]) -> list[dict]:
    img = stores.get("image")
    if img is None:
        return []
    if img.cached:  # the errors of a cached store are in its manifest
        from mad_pipeline.store.reader import open_store

        errs = open_store(img.path).manifest.get("errors", [])
    else:
        errs = img.errors
    return [{"source": e.get("path"), "sample_id": None, "reason": e.get("reason")} for e in errs]


def _dataset_identity(ds) -> dict:
    return {"reader": ds.name, "split": ds.split, "root": str(Path(ds.root).resolve()),
            "sources": [str(Path(p).resolve()) for p in ds.sources], "samples": len(ds.samples)}


def _build_index(cache: Cache, ds, inputs, skipped: list[dict], log) -> StoreResult:
    samples = [s for s in ds.samples if not (s.image and s.image in inputs.missing)]
    max_texts = max((len(s.texts) for s in samples), default=1)
    key = make_key("index", reader=ds.name, split=ds.split, samples=samples_digest(ds, inputs))

    def fill(writer):
        n = len(samples)
        th = np.full((n, max(max_texts, 1)), "", dtype=object)
        for i, s in enumerate(samples):
            for j, t in enumerate(s.texts):
                th[i, j] = inputs.text_hash[t]
        for shard in sorted(set(range(writer.n_shards)) - writer.done_shards()):
            lo, hi = writer.shard_range(shard)
            part = samples[lo:hi]
            writer.write_shard(shard, {
                "sample_id": np.asarray([s.id for s in part], dtype=object),
                "image_hash": np.asarray([inputs.image_hash.get(s.image, "") if s.image else "" for s in part],
                                         dtype=object),
                "text_hash": th[lo:hi],
                "meta_json": np.asarray([json.dumps(s.meta, sort_keys=True) for s in part], dtype=object),
            })
        return None

    def manifest(writer):
        return {"dataset": _dataset_identity(ds), "skipped": skipped}

    return get_or_build(cache, "index", key, len(samples), lambda: index_arrays(max_texts), fill, manifest,
                        log=log)
