"""Benchmark stage 2 (``mad distill``) on CPU: what training from the feature stores costs.

In one run, with the ``vilt-tiny`` student on the VQA task of a generated shapes world, it measures

  (a) training step time (DataLoader batch + forward + losses + backward + clip + AdamW step, through the real
      ``Trainer``) of plain finetuning (``MADConfig.baseline()``: task loss only, no store read) and of store-fed MAD
      (``MADConfig.full()``: teacher features read from real zarr stores through the real ``DistillDataset`` /
      ``Collate`` / ``DataLoader`` path), interleaved and repeated; the ratio MAD / plain (SPEC section 8 and issue 4:
      at most 1.15), and where the extra CPU time goes (data, student, loss, backward, optimizer);
  (b) store-fed MAD against online-teacher MAD (``--online-teacher``: the same objective with a ViT-B-16-sized
      teacher -- open_clip ``ViT-B-16-quickgelu`` at random weights saved to a temp file and loaded through the
      registry as ``load_teacher("clip-vit-b16", weights=...)`` -- run inside the loop); a few steps only;
  (c) loader throughput (samples/s) over an image store of ViT-B-16 rows (197 x 768 fp16 tokens + 512 pooled,
      written by the real ``StoreWriter`` with the real layout, random values) for chunk-aware shuffling
      (``ChunkShuffleSampler``) vs naive random access (``torch.utils.data.RandomSampler``), with the chunks decoded
      per epoch (``ChunkCache.reads``); and random reads of a text store (77 x 512), which is how training reads text
      rows whatever the sampler (they are ordered by content hash).

The stores of (a) and (b) come from the real stage-1 path (``stages.extract``: hashing, ``StoreWriter``, manifests,
zero-shot store) with the ViT-B-16 teacher's forward replaced by random outputs of the same shapes, so building them
takes seconds rather than the minutes of a CPU forward; the bytes stored and read are the same (random fp16
compresses no better than real features). Everything runs offline in a temp dir that is removed at the end.

Measurement: one torch thread by default (``--threads``): on a shared machine multi-threaded torch is dominated by
other processes' load, and with one thread and in-process loading the process's CPU time per step is a load-robust
companion to the wall clock (both are reported; with ``--num-workers`` > 0 the CPU time covers the main process
only). Modes are interleaved within each repeat (rotating their order); step times are the median over the steps
after ``--warmup`` of each run, then the median over repeats; ratios are also given per repeat. Each part prints the
load average and the cores other processes used meanwhile.

    nice -n 5 python bench/distill.py            # defaults: about 3 minutes on a 2-core machine
    python bench/distill.py --steps 40 --repeats 7 --json bench-distill.json
    python bench/distill.py --skip online,loader  # (a) only
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from measure import Meter  # noqa: E402  (bench/measure.py: python puts the script's folder on sys.path)

TASK = "vqa"


# --------------------------------------------------------------------------- measurement
def load_str() -> str:
    return "load avg " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the world, the teacher, the stores
def make_teacher(tmp: Path):
    """open_clip ViT-B-16-quickgelu with random weights saved to a file, loaded as ``clip-vit-b16 --weights``."""
    import open_clip
    from safetensors.torch import save_file

    from mad_pipeline.teachers import load_teacher

    weights = tmp / "vit-b-16-random.safetensors"
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16-quickgelu")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    return load_teacher("clip-vit-b16", str(weights), "cpu", "auto"), weights


class RandomOutputs:
    """The real teacher object with its forward passes replaced by random outputs of the same shapes (for building
    the stores quickly); its identity is marked so the store keys can never be mistaken for a real extraction's."""

    def __init__(self, teacher, seed: int = 0):
        self._t = teacher
        self._g = torch.Generator().manual_seed(seed)

    def __getattr__(self, name):
        return getattr(self._t, name)

    def image_identity(self):
        return {**self._t.image_identity(), "bench": "random outputs"}

    def text_identity(self):
        return {**self._t.text_identity(), "bench": "random outputs"}

    def encode_image_tokens(self, pixels):
        b, t = pixels.shape[0], self._t
        return (torch.randn(b, t.num_tokens, t.width, generator=self._g),
                torch.randn(b, t.embed_dim, generator=self._g))

    def encode_text_tokens(self, batch):
        b, n = batch.ids.shape
        t = self._t
        return torch.randn(b, n, t.text_width, generator=self._g), torch.randn(b, t.embed_dim, generator=self._g)


def build_stores(teacher, weights: Path, root: Path, cache: Path):
    """Stage 1 (``stages.extract``) on the training split, with the teacher's forward replaced by random outputs."""
    from unittest import mock

    from mad_pipeline.stages import extract as extract_stage

    from mad_pipeline.teachers import identity
    from mad_pipeline.training.data import StorePaths

    fake = RandomOutputs(teacher)
    with mock.patch.object(identity, "load_teacher", lambda *a, **k: fake):
        res = extract_stage.run(extract_stage.ExtractConfig(
            teacher="clip-vit-b16", weights=str(weights), data_root=root, dataset=TASK, split="train", task=TASK,
            cache=cache, device="cpu", num_workers=0, progress=False), log=lambda m: None)
    return StorePaths(**{k: res.stores[k].path for k in ("image", "text", "index", "zeroshot")}), res


@dataclass
class Setup:
    root: Path
    samples: list
    vocab: object
    stores: object
    teacher: object
    tmp: Path
    student: str = "vilt-tiny"


def build_run(setup: Setup, mode: str, steps: int, batch_size: int, num_workers: int, out: Path):
    """A fresh student, objective, dataset and real ``Trainer`` for ``mode`` in (plain, mad, online), built exactly
    as ``stages.distill.run`` builds them."""
    from mad_pipeline.stages.distill import seed_everything

    from mad_pipeline.losses import MADConfig, MADLoss
    from mad_pipeline.students import build_student
    from mad_pipeline.training.data import (
        Collate,
        DistillDataset,
        StorePaths,
        StudentTokenizer,
        TargetPlan,
        store_widths,
    )
    from mad_pipeline.training.trainer import OnlineTeacher, TrainConfig, Trainer

    distill = mode != "plain"
    cfg = MADConfig.full() if distill else MADConfig.baseline()
    stores = setup.stores if distill else StorePaths()
    online = OnlineTeacher(setup.teacher, setup.teacher) if mode == "online" else None
    seed_everything(0)
    student = build_student(setup.student, TASK, len(setup.vocab))
    w = store_widths(stores)
    objective = MADLoss(cfg, student.hidden_size, w["image"], w["text"], w["image_pooled"], w["text_pooled"])
    plan = None if online else TargetPlan.for_objective(cfg, student.grid)
    data = DistillDataset(setup.samples, setup.root, TASK, student.image_preprocess, stores=stores, vocab=setup.vocab,
                          features=distill, online=online is not None,
                          teacher_preprocess=setup.teacher.preprocess if online else None,
                          teacher_crop_box=setup.teacher.crop_box_fn if online else None, plan=plan)
    grid = tuple(setup.teacher.grid) if online else data.grid
    collate = Collate(TASK, StudentTokenizer(student), grid, plan)
    tcfg = TrainConfig(steps=steps, batch_size=batch_size, log_every=1, num_workers=num_workers, device="cpu", seed=0)
    return Trainer(tcfg, student, objective, data, collate, out, evaluator=None, online_teacher=online)


def fit_step_times(trainer) -> tuple[list[float], list[float]]:
    """``Trainer.fit()``; the wall and CPU seconds of each step, taken between consecutive optimizer steps (the
    optimizer's ``step`` is wrapped for this; nothing else of the trainer is touched). One step = a DataLoader batch,
    forward, losses, backward, clip and the AdamW step (plus a metrics row: ``log_every=1``)."""
    marks: list[tuple[float, float]] = []
    step = trainer.optimizer.step

    def timed_step(*a, **k):
        out = step(*a, **k)
        marks.append((time.perf_counter(), time.process_time()))
        return out

    trainer.optimizer.step = timed_step
    first: list[tuple[float, float]] = []
    stream = trainer._stream

    def stream_marked():  # the first step starts when the trainer starts pulling batches
        first.append((time.perf_counter(), time.process_time()))
        yield from stream()

    trainer._stream = stream_marked
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit()
    trainer.optimizer.step = step
    marks = first[:1] + marks
    wall = [b[0] - a[0] for a, b in zip(marks, marks[1:], strict=False)]
    cpu = [b[1] - a[1] for a, b in zip(marks, marks[1:], strict=False)]
    return wall, cpu


PHASES = ("data", "student", "teacher", "loss", "backward", "optimizer")


def profile_steps(trainer, n: int) -> dict[str, float]:
    """Median CPU seconds per phase over ``n`` steps, mirroring ``Trainer._micro_step`` and the optimizer step with
    the trainer's own loader, student, objective and optimizer (first step dropped)."""
    from mad_pipeline.losses import TeacherBatch
    from mad_pipeline.students.base import task_loss
    from mad_pipeline.training.trainer import student_batch

    tr = trainer
    tr.student.train()
    tr.objective.train()
    stream = tr._stream()
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    clock = time.process_time
    for i in range(n + 1):
        t0 = clock()
        batch = next(stream).to(tr.device)
        tr.micro += 1
        t1 = clock()
        out = tr.student(batch.pixel_values, batch.crop_boxes, batch.text.input_ids, batch.text.attention_mask,
                         batch.text.char_spans)
        t2 = clock()
        teacher = tr.online(batch) if tr.online is not None else batch.teacher
        t3 = clock()
        loss_task = task_loss(tr.task, out.logits, batch.target)
        losses = tr.objective(student_batch(tr.task, out, batch), teacher or TeacherBatch(), loss_task,
                              target=batch.target, step=i, total_steps=n + 1, generator=tr.generator)
        t4 = clock()
        losses["total"].backward()
        t5 = clock()
        torch.nn.utils.clip_grad_norm_(tr.params, tr.cfg.grad_clip, foreach=False)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        t6 = clock()
        if i:
            for p, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                times[p].append(dt)
    return {p: statistics.median(v) for p, v in times.items()}


# --------------------------------------------------------------------------- (a) and (b)
def _summary(runs: list[dict], batch_size: int) -> dict:
    wall, cpu = med(r["wall"] for r in runs), med(r["cpu"] for r in runs)
    return {"wall_ms": wall * 1000, "cpu_ms": cpu * 1000, "samples_per_s": batch_size / wall,
            "wall_ms_runs": [round(r["wall"] * 1000, 1) for r in runs],
            "cpu_ms_runs": [round(r["cpu"] * 1000, 1) for r in runs],
            "foreign_cores": [round(r["foreign"], 2) for r in runs], "load1": [round(r["load1"], 2) for r in runs]}


def timed_run(setup: Setup, mode: str, steps: int, skip: int, args, name: str) -> dict:
    out = setup.tmp / "runs" / name
    tr = build_run(setup, mode, steps, args.batch_size, args.num_workers, out)
    with Meter() as m:
        wall, cpu = fit_step_times(tr)
    shutil.rmtree(out, ignore_errors=True)
    w, c = wall[skip:] or wall, cpu[skip:] or cpu
    return {"wall": statistics.median(w), "cpu": statistics.median(c), "wall_steps": wall, "cpu_steps": cpu,
            "foreign": m.foreign, "load1": m.load1}


def bench_steps(setup: Setup, args) -> dict:
    runs: dict[str, list[dict]] = {"plain": [], "mad": []}
    modes = ["plain", "mad"]
    for rep in range(args.repeats):
        for mode in modes[rep % 2:] + modes[: rep % 2]:
            r = timed_run(setup, mode, args.steps, args.warmup, args, f"{mode}-{rep}")
            runs[mode].append(r)
            log(f"  (a) repeat {rep + 1}/{args.repeats} {mode:5s}: {r['wall'] * 1000:7.1f} ms/step wall, "
                f"{r['cpu'] * 1000:7.1f} ms CPU (other processes {r['foreign']:.2f} cores, {load_str()})")
    out = {mode: _summary(rs, args.batch_size) for mode, rs in runs.items()}
    pairs = list(zip(runs["plain"], runs["mad"], strict=True))
    out["ratio_wall"] = out["mad"]["wall_ms"] / out["plain"]["wall_ms"]
    out["ratio_cpu"] = out["mad"]["cpu_ms"] / out["plain"]["cpu_ms"]
    out["ratio_wall_runs"] = [round(m["wall"] / p["wall"], 3) for p, m in pairs]
    out["ratio_cpu_runs"] = [round(m["cpu"] / p["cpu"], 3) for p, m in pairs]
    # where the time goes (one instrumented run per mode, same objects as the Trainer's)
    out["breakdown_cpu_ms"] = {}
    for mode in modes:
        tr = build_run(setup, mode, args.steps, args.batch_size, args.num_workers, setup.tmp / "runs" / f"prof-{mode}")
        with contextlib.redirect_stdout(sys.stderr):
            ph = profile_steps(tr, max(8, args.steps // 2))
        out["breakdown_cpu_ms"][mode] = {k: v * 1000 for k, v in ph.items()}
        shutil.rmtree(setup.tmp / "runs" / f"prof-{mode}", ignore_errors=True)
    return out


def bench_online(setup: Setup, args, store_fed: dict | None = None) -> dict:
    """A few steps of online-teacher MAD (the teacher's forward in every step; the first step is not counted),
    against store-fed MAD (from (a) when it ran, else measured here)."""
    res: dict = {}
    r = timed_run(setup, "online", args.online_steps + 1, 1, args, "b-online")
    res["online"] = {**_summary([r], args.batch_size), "wall_ms_steps": [round(x * 1000, 1) for x in r["wall_steps"]]}
    log(f"  (b) online: {r['wall'] * 1000:9.1f} ms/step wall, {r['cpu'] * 1000:9.1f} ms CPU "
        f"(other processes {r['foreign']:.2f} cores, {load_str()})")
    if store_fed is None:
        store_fed = _summary([timed_run(setup, "mad", args.steps, args.warmup, args, "b-mad")], args.batch_size)
    res["mad"] = store_fed
    res["speedup_wall"] = res["online"]["wall_ms"] / res["mad"]["wall_ms"]
    res["speedup_cpu"] = res["online"]["cpu_ms"] / res["mad"]["cpu_ms"]
    return res


# --------------------------------------------------------------------------- (c) loader throughput
def build_row_store(path: Path, kind: str, rows: int, seed: int = 0) -> str:
    """A store of ViT-B-16 geometry (image: 197 x 768 tokens + 512 pooled; text: 77 x 512 + 512) written by the
    real ``StoreWriter`` with the real layout, random fp16 values (random fp16 compresses no better than features)."""
    from mad_pipeline.store.layout import FORMAT_VERSION, image_arrays, text_arrays
    from mad_pipeline.store.writer import StoreWriter

    specs = image_arrays(197, 768, 512) if kind == "image" else text_arrays(77, 512, 512)
    writer = StoreWriter(path.with_name(path.name + ".partial"), kind, rows, specs, key=f"bench-{kind}")
    rng = np.random.default_rng(seed)
    for i in range(writer.n_shards):
        lo, hi = writer.shard_range(i)
        n = hi - lo
        data = {}
        for spec in specs:
            shape = (n, *spec.row_shape)
            if spec.dtype == "str":
                data[spec.name] = np.asarray([f"{r:064x}" for r in range(lo, hi)], dtype=object).reshape(shape)
            elif spec.dtype == "float16":
                data[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
            elif spec.name == "length":
                data[spec.name] = np.full(shape, 16, np.int32)
            else:
                data[spec.name] = np.ones(shape, spec.dtype)
        writer.write_shard(i, data)
    geometry = ({"grid": [14, 14], "image_size": 224, "num_tokens": 197, "width": 768, "embed_dim": 512}
                if kind == "image" else {"max_length": 77, "width": 512, "embed_dim": 512})
    manifest = {"format_version": FORMAT_VERSION, "kind": kind, "cache_key": f"bench-{kind}", "n_rows": rows,
                "layout": {"chunk_rows": writer.chunk_rows, "shard_rows": writer.shard_rows}, "geometry": geometry}
    return str(writer.finalize(manifest, path))


READ_ARRAYS = {"image": ("tokens", "pooled", "crop_box"), "text": ("tokens", "pooled", "char_span", "length")}


class StoreRows(torch.utils.data.Dataset):
    """Store rows read as ``DistillDataset.__getitems__`` reads them (the same arrays): a whole batch through a
    per-process ``ChunkCache``; zarr opened lazily in the reading process."""

    def __init__(self, path: str, kind: str, cache_chunks: int = 32):
        from mad_pipeline.store.reader import open_store

        self.path, self.kind, self.cache_chunks = path, kind, cache_chunks
        store = open_store(path)
        self.n = store.n_rows
        self.chunk_rows = int(store["tokens"].chunks[0])
        self._h = None
        self._pid = None

    def __len__(self) -> int:
        return self.n

    def __getstate__(self):
        return {**self.__dict__, "_h": None, "_pid": None}

    def _open(self):
        if self._h is None or self._pid != os.getpid():
            from mad_pipeline.store.reader import open_store
            from mad_pipeline.training.chunks import ChunkCache

            s = open_store(self.path)
            self._h = (ChunkCache(self.cache_chunks), [s[name] for name in READ_ARRAYS[self.kind]])
            self._pid = os.getpid()
        return self._h

    def __getitems__(self, indices):
        cache, arrays = self._open()
        rows = np.asarray(list(indices), np.int64)
        info = torch.utils.data.get_worker_info()
        out = {name: torch.from_numpy(cache.rows(a, rows)) for name, a in zip(READ_ARRAYS[self.kind], arrays,
                                                                               strict=True)}
        return {**out, "reads": cache.reads, "worker": info.id if info else -1}


def _as_is(batch):
    return batch


def one_epoch(ds: StoreRows, mode: str, batch_size: int, num_workers: int, seed: int, buffer_chunks: int) -> dict:
    from torch.utils.data import DataLoader, RandomSampler

    from mad_pipeline.training.sampler import ChunkShuffleSampler

    if mode == "chunk-aware":
        sampler = ChunkShuffleSampler(np.arange(len(ds)), ds.chunk_rows, buffer_chunks, seed)
        sampler.set_epoch(seed)
    else:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    ds._h = None  # a cold cache for every epoch measured
    loader = DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=_as_is, num_workers=num_workers)
    reads: dict[int, int] = {}
    n = 0
    with Meter() as m:
        for b in loader:
            n += b["tokens"].shape[0]
            reads[b["worker"]] = max(reads.get(b["worker"], 0), b["reads"])
    return {"samples": n, "wall": m.wall, "cpu": m.cpu, "chunk_reads": sum(reads.values()),
            "foreign": m.foreign, "load1": m.load1}


def bench_loader(tmp: Path, args) -> dict:
    out: dict = {"num_workers": args.loader_workers, "buffer_chunks": args.buffer_chunks}
    cases = [("image", args.loader_rows, ("chunk-aware", "random"))]
    if args.text_rows:
        cases.append(("text", args.text_rows, ("random",)))
    for kind, rows, modes in cases:
        path = tmp / f"rows-{kind}.zarr"
        with Meter() as m:
            build_row_store(path, kind, rows)
        ds = StoreRows(str(path), kind)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        log(f"  (c) {kind} store: {rows} rows, {ds.chunk_rows} rows/chunk, {size / 2**20:.0f} MiB on disk, "
            f"written in {m.wall:.1f} s")
        one_epoch(ds, modes[0], args.batch_size, args.loader_workers, 99, args.buffer_chunks)  # warm-up
        runs: dict[str, list[dict]] = {k: [] for k in modes}
        for rep in range(args.repeats):
            for mode in modes[rep % len(modes):] + modes[: rep % len(modes)]:
                r = one_epoch(ds, mode, args.batch_size, args.loader_workers, rep, args.buffer_chunks)
                runs[mode].append(r)
                log(f"  (c) repeat {rep + 1}/{args.repeats} {kind} {mode:11s}: {r['samples'] / r['wall']:7.0f} "
                    f"samples/s ({r['samples'] / max(r['cpu'], 1e-9):.0f} per CPU-s), {r['chunk_reads']} chunks "
                    f"decoded (other processes {r['foreign']:.2f} cores, {load_str()})")
        res = {"rows": rows, "chunk_rows": ds.chunk_rows, "chunks": -(-rows // ds.chunk_rows),
               "store_mib": size / 2**20}
        for mode, rs in runs.items():
            res[mode] = {"samples_per_s": med(r["samples"] / r["wall"] for r in rs),
                         "samples_per_cpu_s": med(r["samples"] / max(r["cpu"], 1e-9) for r in rs),
                         "samples_per_s_runs": [round(r["samples"] / r["wall"], 1) for r in rs],
                         "chunk_reads_per_epoch": med(r["chunk_reads"] for r in rs),
                         "foreign_cores": [round(r["foreign"], 2) for r in rs]}
        if len(modes) == 2:
            res["speedup"] = res["chunk-aware"]["samples_per_s"] / res["random"]["samples_per_s"]
            res["speedup_cpu"] = res["chunk-aware"]["samples_per_cpu_s"] / res["random"]["samples_per_cpu_s"]
        out[kind] = res
        shutil.rmtree(path, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- report
def report(res: dict) -> str:
    a, b, c = res.get("steps"), res.get("online"), res.get("loader")
    env, w, args = res["machine"], res.get("world"), res["args"]
    lines = [f"mad distill benchmark -- {env['cpu']}, {env['cores']} cores, torch {env['torch']} "
             f"({env['threads']} thread{'s' if env['threads'] > 1 else ''}), student {args['student']}, task {TASK}, "
             f"batch {args['batch_size']}, training DataLoader workers {args['num_workers']}"]
    if w:
        lines.append(f"teacher stores (stage 1, ViT-B-16 geometry: image 197x768 + 512, text 77x512 + 512, fp16): "
                     f"{w['train_samples']} samples, {w['images']} images, {w['texts']} texts")
    lines.append("")
    if a:
        lines += [f"(a) step time, plain finetuning vs store-fed MAD: median of {args['repeats']} runs x "
                  f"{args['steps'] - args['warmup']} steps (real Trainer; wall clock, and this process's CPU time)",
                  f"  {'':26s} {'ms/step':>9s} {'CPU ms':>8s} {'samples/s':>10s}   runs: wall ms / CPU ms"]
        for mode, name in (("plain", "plain (baseline)"), ("mad", "MAD store-fed (full)")):
            r = a[mode]
            runs = ", ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(r["wall_ms_runs"], r["cpu_ms_runs"], strict=True))
            lines.append(f"  {name:26s} {r['wall_ms']:9.1f} {r['cpu_ms']:8.1f} {r['samples_per_s']:10.1f}   {runs}")
        for key, name in (("cpu", "CPU time"), ("wall", "wall clock")):
            ratio = a[f"ratio_{key}"]
            verdict = "within" if ratio <= 1.15 else "ABOVE"
            lines.append(f"  ratio MAD / plain ({name}): {ratio:.3f} ({verdict} the 1.15 target); per repeat "
                         + ", ".join(f"{x:.3f}" for x in a[f"ratio_{key}_runs"]))
        lines.append(f"  where the CPU time goes (ms/step): {'  '.join(f'{p:>9s}' for p in PHASES)}")
        for mode in ("plain", "mad"):
            bd = a["breakdown_cpu_ms"][mode]
            lines.append(f"    {mode:32s} " + "  ".join(f"{bd[p]:9.1f}" for p in PHASES))
        lines.append("")
    if b:
        steps = ", ".join(f"{x / 1000:.1f}" for x in b["online"]["wall_ms_steps"])
        lines += ["(b) store-fed MAD vs online-teacher MAD (ViT-B-16 teacher forward in every step)",
                  f"  online teacher {b['online']['wall_ms']:10.1f} ms/step  {b['online']['cpu_ms']:10.1f} CPU ms"
                  f"   (steps: {steps} s; first not counted)",
                  f"  store-fed      {b['mad']['wall_ms']:10.1f} ms/step  {b['mad']['cpu_ms']:10.1f} CPU ms",
                  f"  the stores make a step {b['speedup_wall']:.1f}x faster (CPU time: {b['speedup_cpu']:.1f}x)", ""]
    if c:
        lines.append(f"(c) loader, one epoch per run, batch {args['batch_size']}, {c['num_workers']} DataLoader "
                     f"workers, cold ChunkCache (32 chunks) per epoch, files in the OS page cache")
        lines.append(f"  {'':44s} {'samples/s':>10s} {'per CPU-s':>10s} {'chunks decoded':>15s}   runs (samples/s)")
        for kind in ("image", "text"):
            k = c.get(kind)
            if not k:
                continue
            lines.append(f"  {kind} store: {k['rows']} rows, {k['chunk_rows']} rows/chunk, {k['chunks']} chunks, "
                         f"{k['store_mib']:.0f} MiB on disk")
            for mode, name in (("chunk-aware", f"chunk-aware (ChunkShuffleSampler, {c['buffer_chunks']} chunks)"),
                               ("random", "naive random (RandomSampler)")):
                r = k.get(mode)
                if r:
                    lines.append(f"    {name:42s} {r['samples_per_s']:10.0f} {r['samples_per_cpu_s']:10.0f} "
                                 f"{r['chunk_reads_per_epoch']:15.0f}   "
                                 + ", ".join(f"{x:.0f}" for x in r["samples_per_s_runs"]))
            if "speedup" in k:
                fewer = k["random"]["chunk_reads_per_epoch"] / max(1, k["chunk-aware"]["chunk_reads_per_epoch"])
                lines.append(f"    chunk-aware: {k['speedup']:.2f}x the samples/s ({k['speedup_cpu']:.2f}x per CPU "
                             f"second), {fewer:.1f}x fewer chunks decoded")
        lines.append("")
    lines.append(f"machine: {res['load_start']} at the start, {res['load_end']} at the end; "
                 f"other processes used {res.get('foreign_cores', float('nan')):.2f} cores on average; "
                 f"total {res['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps per run in (a) (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="first steps of each run not timed (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of (a) and (c) (default 5)")
    p.add_argument("--online-steps", type=int, default=1,
                   help="timed online-teacher steps in (b), after one untimed step (default 1)")
    p.add_argument("--student", default="vilt-tiny", help="student of (a) and (b) (default vilt-tiny)")
    p.add_argument("--world-size", type=int, default=256, help="shapes-world training images (default 256)")
    p.add_argument("--num-workers", type=int, default=0, help="training DataLoader workers (default 0, as mad distill)")
    p.add_argument("--loader-rows", type=int, default=2000, help="rows of the (c) image store (default 2000)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers in (c) (default 0)")
    p.add_argument("--buffer-chunks", type=int, default=8, help="(c) shuffle window in chunks (default 8)")
    p.add_argument("--text-rows", type=int, default=1000, help="rows of the (c) text store; 0: skip (default 1000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: stable on a shared machine; 0 = torch's default)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: steps, online, loader")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    t0 = time.perf_counter()
    res: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                             "torch": torch.__version__, "threads": torch.get_num_threads(),
                             "python": platform.python_version()},
                 "load_start": load_str()}
    log(f"mad distill benchmark ({load_str()}, torch threads {torch.get_num_threads()})")
    tmp = Path(tempfile.mkdtemp(prefix="mad-bench-distill-"))
    whole = Meter().__enter__()
    try:
        if not {"steps", "online"} <= skip:
            from mad_pipeline.data import load_dataset
            from mad_pipeline.shapes.formats import write_dataset
            from mad_pipeline.tasks.vqa import build_answer_vocab

            write_dataset(tmp / "world", size=args.world_size, seed=0)
            root = tmp / "world" / TASK
            with Meter() as m:
                teacher, weights = make_teacher(tmp)
            log(f"  ViT-B-16 teacher (random weights) saved and loaded in {m.wall:.1f} s")
            with Meter() as m:
                stores, ex = build_stores(teacher, weights, root, tmp / "cache")
            log(f"  stage-1 stores built in {m.wall:.1f} s ({ex.samples} samples, {ex.images} images, "
                f"{ex.texts} texts)")
            ds = load_dataset(TASK, root, split="train")
            vocab = build_answer_vocab(ds.samples)
            setup = Setup(ds.root, ds.samples, vocab, stores, teacher, tmp, args.student)
            res["world"] = {"train_samples": ex.samples, "images": ex.images, "texts": ex.texts,
                            "answers": len(vocab)}
            if "steps" not in skip:
                log("(a) plain finetuning vs store-fed MAD")
                res["steps"] = bench_steps(setup, args)
            if "online" not in skip:
                log("(b) online teacher vs stores")
                res["online"] = bench_online(setup, args, res["steps"]["mad"] if "steps" in res else None)
            del setup, teacher
        if "loader" not in skip:
            log("(c) loader: chunk-aware vs random access")
            res["loader"] = bench_loader(tmp, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    whole.__exit__(None, None, None)
    res["load_end"] = load_str()
    res["foreign_cores"] = whole.foreign
    res["seconds"] = time.perf_counter() - t0
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
