"""Get-or-build each kind of store for a dataset: image, text, index, zero-shot.

Each function computes the store's key from what determines its values, and only touches the teacher (loading it,
running it) when the store is not already in the cache. An image or text store that must be built first copies the
rows that published stores of the same teacher identity already hold (``reuse.py``); the teacher is loaded only if
some row is left to compute.

With a dask pool (``BuildContext.pool``, see :mod:`.distributed`) the image and text stores are computed shard by
shard on the cluster's workers and the zero-shot store in one worker task; this process creates, finalises and
publishes the stores and never builds a teacher (the geometry is asked of a worker).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import Cache, make_key
from ..hashing import canonical_json, hash_of_set
from ..store.layout import image_arrays, index_arrays, text_arrays
from ..store.reader import open_store
from ..store.storage import Storage
from ..store.zeroshot import ROW_ORDER, SHARED, image_order, shared_columns, write_shared, zeroshot_arrays
from . import distributed as remote
from .build import StoreResult, get_or_build
from .device import plain_batch_size
from .geometry import image_geometry as _image_geometry
from .geometry import text_geometry as _text_geometry
from .inputs import DatasetInputs, samples_digest
from .projection import constants_manifest, write_visual_proj
from .reuse import ReusePlan, plan_reuse
from .runner import extract_images, extract_texts, rows_to_compute
from .zeroshot import fill_zeroshot


@dataclass
class BuildContext:
    cache: Cache
    batch_size: int = 32
    num_workers: int = 2
    on_error: str = "fail"
    shard_rows: int | None = None
    progress: object = None
    log: Callable[[str], None] = print
    pool: object = None  # a cluster.Pool: compute on dask workers (None: in this process)
    storage: Storage = Storage()  # how the image store holds its tokens (the default: fp16, every token)
    dense: bool = False  # the image store also holds dense joint-space features (in its key and manifest when on)


# what a --dense image store records (manifest and key): MaskCLIP's value path, see mad_pipeline.teachers.dense
DENSE_RECORD = {"array": "dense", "method": "maskclip-value-path",
                "formula": "ln_post(ls_1(out_proj(v(ln_1(x))))) @ proj at the last block"}


def dataset_identity(ds) -> dict:
    return {"reader": ds.name, "split": ds.split, "root": str(Path(ds.root).resolve()),
            "sources": [str(Path(p).resolve()) for p in ds.sources], "samples": len(ds.samples)}


class _Reuse:
    """The reuse plan of one store, made only when the store must be built (a cached store looks for no donor)."""

    def __init__(self, ctx: BuildContext, kind: str, key: str, ident: dict, hashes: list[str]):
        self.ctx, self.kind, self.key, self.ident, self.hashes = ctx, kind, key, ident, hashes
        self._plan: ReusePlan | None | bool = None if kind == "image" and ctx.dense else False  # donors lack dense

    @property
    def plan(self) -> ReusePlan | None:
        if self._plan is False:
            self._plan = plan_reuse(self.ctx.cache, self.kind, self.ident, self.hashes, log=self.ctx.log)
            if self._plan is not None:
                n = self._plan.covered()
                names = ", ".join(f"{d.key[:12]} ({d.source})" for d in self._plan.donors)
                self.ctx.log(f"{self.kind} store {self.key[:12]}: {n} of {len(self.hashes)} rows already extracted "
                             f"in {names}; copying them, computing {len(self.hashes) - n}")
        return self._plan

    def geometry(self, teacher, from_teacher) -> dict:
        """The store's geometry: from a donor (same identity, so the same geometry) or else from the teacher (on a
        dask worker when there is a pool)."""
        if self.plan is not None:
            return self.plan.geometry
        if self.ctx.pool is not None:
            return remote.geometry(self.ctx.pool, teacher, self.kind, self.ident)
        return from_teacher(teacher.get())

    def teacher_for(self, teacher, writer):
        """The loaded teacher if any row is left to compute, else None (nothing is loaded)."""
        return teacher.get() if rows_to_compute(writer, self.plan) else None

    def manifest(self, writer) -> dict:
        donors = writer.recorded_reuse()
        return {"reused": {"rows": sum(d["rows"] for d in donors.values()),
                           "stores": [{"key": k, **d} for k, d in sorted(donors.items())]}}


def image_store(ctx: BuildContext, teacher, ds, inputs: DatasetInputs) -> StoreResult:
    """Rows = unique images sorted by content hash; key = image-teacher identity + the set of image hashes (+ the
    storage, when it is not the default fp16 with every token: a default store's key is what it always was)."""
    hashes, rels = inputs.unique_images()
    paths = list(map(ds.image_source().where, rels))  # file paths, or tar members / parquet cells
    ident = teacher.identity("image")
    dense = {"dense": DENSE_RECORD} if ctx.dense else {}  # a default store's key is what it always was
    key = make_key("image", teacher=ident, inputs=hash_of_set(hashes), **ctx.storage.key_parts(), **dense)
    reuse = _Reuse(ctx, "image", key, ident, hashes)

    def specs():
        g = reuse.geometry(teacher, _image_geometry)
        return image_arrays(g["num_tokens"], g["width"], g["embed_dim"], ctx.storage, dense=ctx.dense)

    def fill(writer):
        write_visual_proj(writer, teacher)  # the joint-space projection (read from the weight file)
        if ctx.pool is not None:
            return remote.fill_images(ctx.pool, writer, teacher, ident, hashes, paths, reuse.plan,
                                      batch_size=ctx.batch_size, num_workers=ctx.num_workers, on_error=ctx.on_error,
                                      progress=ctx.progress)
        t = reuse.teacher_for(teacher, writer)
        return extract_images(t, writer, hashes, paths, batch_size=ctx.batch_size, num_workers=ctx.num_workers,
                              on_error=ctx.on_error, progress=ctx.progress, reuse=reuse.plan)

    def manifest(writer):
        return {"teacher": {"name": teacher.name, "tower": "image", **ident},
                "geometry": reuse.geometry(teacher, _image_geometry),
                "dataset": dataset_identity(ds), "inputs_sha256": hash_of_set(hashes), **reuse.manifest(writer),
                **constants_manifest(writer), **({} if ctx.storage.default else {"storage": ctx.storage.record()}),
                **dense}

    return get_or_build(ctx.cache, "image", key, len(hashes), specs, fill, manifest, shard_rows=ctx.shard_rows,
                        log=ctx.log)


def text_store(ctx: BuildContext, teacher, ds, inputs: DatasetInputs) -> StoreResult:
    """Rows = unique texts sorted by content hash; key = text-teacher identity + the set of text hashes."""
    hashes, texts = inputs.unique_texts()
    ident = teacher.identity("text")
    key = make_key("text", teacher=ident, inputs=hash_of_set(hashes))
    reuse = _Reuse(ctx, "text", key, ident, hashes)

    def specs():
        g = reuse.geometry(teacher, _text_geometry)
        return text_arrays(g["max_length"], g["width"], g["embed_dim"])

    def fill(writer):
        if ctx.pool is not None:
            return remote.fill_texts(ctx.pool, writer, teacher, ident, hashes, texts, reuse.plan,
                                     batch_size=ctx.batch_size, progress=ctx.progress)
        return extract_texts(reuse.teacher_for(teacher, writer), writer, hashes, texts, batch_size=ctx.batch_size,
                             progress=ctx.progress, reuse=reuse.plan)

    def manifest(writer):
        return {"teacher": {"name": teacher.name, "tower": "text", **ident},
                "geometry": reuse.geometry(teacher, _text_geometry),
                "dataset": dataset_identity(ds), "inputs_sha256": hash_of_set(hashes), **reuse.manifest(writer)}

    return get_or_build(ctx.cache, "text", key, len(hashes), specs, fill, manifest, shard_rows=ctx.shard_rows,
                        log=ctx.log)


def index_store(ctx: BuildContext, ds, inputs: DatasetInputs, skipped: list[dict]) -> StoreResult:
    """Rows = samples in dataset order, pointing at images and texts by content hash (teacher-independent)."""
    samples = [s for s in ds.samples if not (s.image and s.image in inputs.missing)]
    max_texts = max((len(s.texts) for s in samples), default=1)
    key = make_key("index", reader=ds.name, split=ds.split, samples=samples_digest(ds, inputs))

    def fill(writer):
        th = np.full((len(samples), max(max_texts, 1)), "", dtype=object)
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

    def manifest(writer):
        return {"dataset": dataset_identity(ds), "skipped": skipped}

    return get_or_build(ctx.cache, "index", key, len(samples), lambda: index_arrays(max_texts), fill, manifest,
                        log=ctx.log)


def zeroshot_store(ctx: BuildContext, teacher, ds, inputs: DatasetInputs, image: StoreResult, task: str,
                   candidates, prompt: dict) -> StoreResult:
    """The teacher's logits between each sample's image (from ``image``'s pooled) and its candidate texts. Rows are
    written by image (:mod:`mad_pipeline.store.zeroshot`); the key is over the samples in dataset order, as always."""
    samples = [s for s in ds.samples if s.image and s.image in inputs.image_hash]
    ids = [s.id for s in samples]
    hashes = [inputs.image_hash[s.image] for s in samples]
    ident = teacher.identity("text")
    key = make_key("zeroshot", teacher=ident, image_store=image.key, task=task,
                   candidates=candidates_digest(ids, hashes, candidates))
    kmax = max((len(c.texts) for c in candidates), default=1)
    shared = shared_columns(candidates)
    order = image_order(hashes).tolist()
    ids, hashes, candidates = [ids[i] for i in order], [hashes[i] for i in order], [candidates[i] for i in order]

    def fill(writer):
        write_shared(writer, shared, kmax)  # the columns every row shares: once, before the rows
        size = max(plain_batch_size(ctx.batch_size, teacher.device), 64)  # --batch-size auto: by device
        if ctx.pool is not None:
            return remote.fill_zeroshot_remote(ctx.pool, writer, teacher, ident, image.path, ids, hashes, candidates,
                                               batch_size=size)
        return fill_zeroshot(writer, teacher.get(), image.path, ids, hashes, candidates, batch_size=size,
                             progress=ctx.progress)

    def manifest(writer):
        return {"teacher": {"name": teacher.name, "tower": "image+text", **ident}, "task": task, **prompt,
                "image_store": image.key, "dataset": dataset_identity(ds),
                "logits": "logit_scale * cos(image, text), CLIP convention", "row_order": ROW_ORDER,
                **({"constants": sorted(SHARED[c] for c in shared)} if shared else {})}

    return get_or_build(ctx.cache, "zeroshot", key, len(samples), lambda: zeroshot_arrays(kmax, shared), fill,
                        manifest, log=ctx.log)


def candidates_digest(ids, hashes, candidates) -> str:
    """``content_key([[id, image hash, labels, texts], ...])`` in dataset order, computed as a stream (the same
    digest, without holding the whole JSON: at VQA v2 size with its vocabulary that would be tens of GB); a label or
    text tuple equal to the previous row's is serialised once."""
    h = hashlib.sha256(b"[")
    memo: dict[str, tuple] = {}

    def part(name: str, values) -> str:
        last = memo.get(name)
        if last is None or not (last[0] is values or last[0] == values):
            last = memo[name] = (values, canonical_json(list(values)))
        return last[1]

    for j, (i, hh, c) in enumerate(zip(ids, hashes, candidates, strict=True)):
        row = f"[{canonical_json(i)},{canonical_json(hh)},{part('labels', c.labels)},{part('texts', c.texts)}]"
        h.update((b"," if j else b"") + row.encode())
    h.update(b"]")
    return h.hexdigest()


def decode_skips(image: StoreResult | None) -> list[dict]:
    """Images that failed to decode (skip mode), from this run or from the cached store's manifest."""
    if image is None:
        return []
    errs = open_store(image.path).manifest.get("errors", []) if image.cached else image.errors
    return [{"source": e.get("path"), "sample_id": None, "reason": e.get("reason")} for e in errs]
