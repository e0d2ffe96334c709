"""Benchmark stage 2 (``mad distill``) on CPU: what training from the feature stores costs.

In one run, with the ``vilt-tiny`` student on the VQA task of a generated shapes world, it measures

  (a) training step time (DataLoader batch + forward + losses + backward + clip + AdamW step) of plain finetuning
      (``MADConfig.baseline()``: task loss only, no store read) and of store-fed MAD (``MADConfig.full()``: teacher
      features read from real zarr stores), interleaved and repeated; the ratio MAD / plain (target: at most 1.15),
      and where the CPU time goes (data, student, teacher, loss, backward, optimizer);
  (b) store-fed MAD against online-teacher MAD (``--online-teacher``: the same objective with a ViT-B-16-sized
      teacher -- open_clip ``ViT-B-16-quickgelu`` at random weights saved to a temp file and loaded through the
      registry as ``load_teacher("clip-vit-b16", weights=...)`` -- run inside the loop); a few steps only;
  (c) loader throughput (samples/s) over an image store of ViT-B-16 rows (197 x 768 fp16 tokens + 512 pooled,
      written by the real ``StoreWriter`` with the real layout, random values) for chunk-aware shuffling
      (``ChunkShuffleSampler``) vs naive random access (``torch.utils.data.RandomSampler``), with the chunks decoded
      per epoch (``ChunkCache.reads``); and random reads of a text store (77 x 512), which is how training reads text
      rows whatever the sampler (they are ordered by content hash);
  (d) on CPU, bf16 autocast (``train.cpu_bf16`` / ``mad distill --cpu-bf16``) against fp32, plain and MAD, each
      precision in turn within each repeat: the fp32 / bf16 ratio of the step times (about 2 on CPUs with native
      bf16, AVX512-BF16 or AMX, whose flags the report names; below 1 on CPUs without).

What is timed is the real trainer: each run of (a) and (b) is built by the stage's own
``mad_pipeline.stages.distill.build_training`` (student, objective, dataset, collate, exactly as ``mad distill``
builds them) and trained by ``Trainer.fit()``, observed only through the trainer's public ``on_event`` hook: a step
is the time between consecutive ``"optimizer"`` events (the first from ``"start"``), and a phase (``"data"``,
``"student"``, ``"teacher"``, ``"loss"``, ``"backward"``, ``"optimizer"``) the time from the previous event to its
own, so the phases of a step add up to the step. The stores of (a) and (b) come from the real stage-1 path
(``stages.extract``: hashing, ``StoreWriter``, manifests, zero-shot store) with the ViT-B-16 teacher's forward
replaced by random outputs of the same shapes, so building them takes seconds rather than the minutes of a CPU
forward; the bytes stored and read are the same (random fp16 compresses no better than real features). Everything
runs offline in a temp dir that is removed at the end.

Measurement: one torch thread by default (``--threads``): on a shared machine multi-threaded torch is dominated by
other processes' load, and with one thread and in-process loading the process's CPU time per step is a load-robust
companion to the wall clock (both are reported; with ``--num-workers`` > 0 the CPU time covers the main process
only). Modes are interleaved within each repeat (rotating their order); step times are the median over the steps
after ``--warmup`` of each run, then the median over repeats; ratios are also given per repeat. The per-phase
breakdown is the median, phase by phase, over all the timed steps (after warmup) of a mode's runs. Each part prints
the load average and the cores other processes used meanwhile.

Old code against new (``--compare-with REF``, REF a commit, branch or tag of this repository): the commit's files
are exported with ``git archive`` and this checkout's working tree (uncommitted changes included) is copied, both
into a temp dir, each with a package tree that makes it importable without installing (``bench/gitref.py``). For
each of ``--repeats`` repeats, the two versions run one after the other, in alternating order (old, new), (new, old),
..., each in a child process that imports its own ``mad_pipeline`` and runs that version's own ``bench/distill.py
--skip online,loader --repeats 1`` with the same sizes (``--steps``, ``--warmup``, ``--batch-size``, ``--student``,
``--world-size``, ``--num-workers``, ``--threads``); every bench version times the same thing, the time between
consecutive optimizer steps of the real trainer. Reported per mode (plain, mad): the median wall and CPU ms/step of
old and new, the ratio new / old per repeat and overall (median new / median old), and whether it is within 5%
(0.95 to 1.05). Only (a) is compared; the parts (b) and (c) do not run. The temp dir goes at the end. REF needs a
bench/distill.py that runs against its own code (1d9bda5 does; the commits between the trainer refactor and this
bench's rewrite do not), and one that writes ``steps.<mode>.wall_ms`` / ``cpu_ms`` to ``--json``.

    nice -n 5 python bench/distill.py            # defaults: about 3 minutes on a 2-core machine
    python bench/distill.py --steps 40 --repeats 7 --json bench-distill.json
    python bench/distill.py --skip online,loader  # (a) only
    python bench/distill.py --compare-with 1d9bda5 --repeats 6 --json bench-compare.json  # old vs new code

On a GPU (``--device cuda``; ``bench/gpu.sh`` runs it after the stage-1 bench), (a) also reports the share of each
step the GPU was busy, not waiting for the loader (the event hook synchronises with the GPU, so the ``data`` phase is
GPU idle time), and nvidia-smi's mean utilisation:

    python bench/distill.py --device cuda --student vilt-b32 --skip online,loader --repeats 1 --steps 40 \
        --batch-size 64 --num-workers 8 --world-size 1024 --threads 0
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
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from measure import Meter  # noqa: E402  (bench/measure.py: python puts the script's folder on sys.path)

TASK = "vqa"
MODES = ("plain", "mad")
PRECISIONS = ("fp32", "bf16")  # (d): train.cpu_bf16 off and on
PHASES = ("data", "student", "teacher", "loss", "backward", "optimizer")
WITHIN = 0.05  # --compare-with: new / old within 5%


# --------------------------------------------------------------------------- measurement
def load_str() -> str:
    return "load avg " + " / ".join(f"{x:.2f}" for x in os.getloadavg())


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class EventClock:
    """The trainer's ``on_event`` hook: the wall and CPU clocks at each event, nothing else. On a GPU
    (``sync=True``) it first waits for the GPU's queued work, so each phase's wall time is the GPU's work of that
    phase, and the ``data`` phase (from the previous optimizer step to the batch in hand) is time the GPU spent idle
    waiting for the loader."""

    def __init__(self, sync: bool = False):
        self.marks: list[tuple[str, float, float]] = []
        self.sync = sync

    def __call__(self, name: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        self.marks.append((name, time.perf_counter(), time.process_time()))

    def steps(self) -> list[dict]:
        """One record per optimizer step: ``wall`` and ``cpu`` seconds since the previous step (the first: since
        ``"start"``), and ``phase_wall`` / ``phase_cpu``: the seconds from each event's predecessor to it, summed per
        event name over the step (with gradient accumulation a step has several micro-batches)."""
        out: list[dict] = []
        prev = step0 = None
        pw: dict[str, float] = defaultdict(float)
        pc: dict[str, float] = defaultdict(float)
        for name, wall, cpu in self.marks:
            if name == "start":
                prev = step0 = (wall, cpu)
                continue
            if prev is None:
                raise RuntimeError(f"trainer event {name!r} before 'start'")
            pw[name] += wall - prev[0]
            pc[name] += cpu - prev[1]
            prev = (wall, cpu)
            if name == "optimizer":
                out.append({"wall": wall - step0[0], "cpu": cpu - step0[1], "phase_wall": dict(pw),
                            "phase_cpu": dict(pc)})
                step0, pw, pc = prev, defaultdict(float), defaultdict(float)
        return out


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
    from mad_pipeline.training.dataset import StorePaths

    fake = RandomOutputs(teacher)
    real = identity.compute_identity  # identities are read from files: mark them here too

    def marked(*a, **k):
        return {t: v and {**v, "bench": "random outputs"} for t, v in real(*a, **k).items()}

    with mock.patch.object(identity, "load_teacher", lambda *a, **k: fake), \
            mock.patch.object(identity, "compute_identity", marked):
        res = extract_stage.run(extract_stage.ExtractConfig(
            teacher="clip-vit-b16", weights=str(weights), data_root=root, dataset=TASK, split="train", task=TASK,
            cache=cache, device="cpu", num_workers=0, progress=False), log=lambda m: None)
    return StorePaths(**{k: res.stores[k].path for k in ("image", "text", "index", "zeroshot")}), res


@dataclass
class Setup:
    root: Path
    samples: list
    stores: object
    teacher: object
    weights: Path
    tmp: Path
    student: str = "vilt-tiny"


def build_run(setup: Setup, mode: str, steps: int, args, out: Path, on_event):
    """The real ``Trainer`` for ``mode`` in (plain, mad, online), its student, objective, dataset and collate made
    by ``stages.distill.build_training`` from a ``DistillConfig`` as ``mad distill`` makes them (the task fitted on
    the training split, its confidence on the zero-shot store, then seeded), with ``on_event`` as its hook."""
    from mad_pipeline.stages.distill import DistillConfig, build_training, seed_everything

    from mad_pipeline.losses import MADConfig
    from mad_pipeline.tasks import get_task
    from mad_pipeline.training.config import TrainConfig
    from mad_pipeline.training.dataset import StorePaths
    from mad_pipeline.training.online import OnlineTeacher
    from mad_pipeline.training.trainer import Trainer

    distill = mode != "plain"
    train = TrainConfig(steps=steps, batch_size=args.batch_size, log_every=1, num_workers=args.num_workers,
                        device=args.device, seed=0, cpu_bf16=getattr(args, "cpu_bf16", False))
    cfg = DistillConfig(task=TASK, data_root=setup.root, out=out, teacher="clip-vit-b16", weights=str(setup.weights),
                        cache=setup.tmp / "cache",  # the text view goes beside the stores, in the temp dir
                        student=setup.student, mad=MADConfig.full() if distill else MADConfig.baseline(), train=train,
                        online_teacher=mode == "online", progress=False)
    stores = setup.stores if distill else StorePaths()
    online = OnlineTeacher(setup.teacher, setup.teacher) if mode == "online" else None
    task = get_task(TASK, vocab_min_count=cfg.vocab_min_count)
    task.fit(setup.samples, split=cfg.train_split)
    if stores.zeroshot is not None:
        task.fit_confidence(stores.zeroshot, setup.samples)
    seed_everything(train.seed)
    student, objective, data, collate = build_training(cfg, task, setup.samples, setup.root, stores, online)
    return Trainer(train, student, objective, data, collate, out, evaluator=None, online_teacher=online,
                   on_event=on_event)


# --------------------------------------------------------------------------- (a) and (b)
def _summary(runs: list[dict], batch_size: int) -> dict:
    wall, cpu = med(r["wall"] for r in runs), med(r["cpu"] for r in runs)
    return {"wall_ms": wall * 1000, "cpu_ms": cpu * 1000, "samples_per_s": batch_size / wall,
            "wall_ms_runs": [round(r["wall"] * 1000, 1) for r in runs],
            "cpu_ms_runs": [round(r["cpu"] * 1000, 1) for r in runs],
            "foreign_cores": [round(r["foreign"], 2) for r in runs], "load1": [round(r["load1"], 2) for r in runs]}


def timed_run(setup: Setup, mode: str, steps: int, skip: int, args, name: str) -> dict:
    """One ``Trainer.fit()`` of ``steps`` steps, observed through ``on_event``: the median wall and CPU seconds per
    step over the steps after the first ``skip``, each step's times, and the timed steps' per-phase times."""
    out = setup.tmp / "runs" / name
    cuda = args.device.startswith("cuda")
    clock = EventClock(sync=cuda)
    trainer = build_run(setup, mode, steps, args, out, clock)
    smi = contextlib.nullcontext()
    if cuda:
        from gpu_extract import GpuSampler  # bench/gpu_extract.py: nvidia-smi's utilisation every 100 ms

        smi = GpuSampler(torch.cuda.current_device())
    with Meter() as m, contextlib.redirect_stdout(sys.stderr), smi:
        trainer.fit()
    shutil.rmtree(out, ignore_errors=True)
    steps_ = clock.steps()
    if len(steps_) != steps:
        raise RuntimeError(f"{mode}: {len(steps_)} optimizer events for {steps} steps")
    timed = steps_[skip:] or steps_
    res = {"wall": statistics.median(s["wall"] for s in timed), "cpu": statistics.median(s["cpu"] for s in timed),
           "wall_steps": [s["wall"] for s in steps_], "cpu_steps": [s["cpu"] for s in steps_],
           "phases": timed, "foreign": m.foreign, "load1": m.load1}
    if cuda:  # the share of the step the GPU was not waiting for data (the events synchronise: see EventClock)
        res["gpu_busy"] = statistics.median(1 - s["phase_wall"].get("data", 0.0) / s["wall"] for s in timed)
        res["gpu_util_smi"] = smi.mean()
    return res


def breakdown(runs: list[dict], key: str) -> dict[str, float]:
    """Per phase, the median over every timed step of ``runs`` (ms); an event the trainer never sent counts 0."""
    steps = [s[key] for r in runs for s in r["phases"]]
    names = [*PHASES, *sorted({n for s in steps for n in s} - set(PHASES))]
    return {p: 1000 * statistics.median(s.get(p, 0.0) for s in steps) for p in names}


def bench_steps(setup: Setup, args) -> dict:
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode in MODES[rep % 2:] + MODES[: rep % 2]:
            r = timed_run(setup, mode, args.steps, args.warmup, args, f"{mode}-{rep}")
            runs[mode].append(r)
            log(f"  (a) repeat {rep + 1}/{args.repeats} {mode:5s}: {r['wall'] * 1000:7.1f} ms/step wall, "
                f"{r['cpu'] * 1000:7.1f} ms CPU (other processes {r['foreign']:.2f} cores, {load_str()})")
    out = {mode: _summary(rs, args.batch_size) for mode, rs in runs.items()}
    for mode, rs in runs.items():
        if "gpu_busy" in rs[0]:
            out[mode]["gpu_busy"] = med(r["gpu_busy"] for r in rs)
            smi = [r["gpu_util_smi"] for r in rs if r["gpu_util_smi"] is not None]
            out[mode]["gpu_util_smi"] = statistics.mean(smi) if smi else None
    pairs = list(zip(runs["plain"], runs["mad"], strict=True))
    out["ratio_wall"] = out["mad"]["wall_ms"] / out["plain"]["wall_ms"]
    out["ratio_cpu"] = out["mad"]["cpu_ms"] / out["plain"]["cpu_ms"]
    out["ratio_wall_runs"] = [round(m["wall"] / p["wall"], 3) for p, m in pairs]
    out["ratio_cpu_runs"] = [round(m["cpu"] / p["cpu"], 3) for p, m in pairs]
    # where the time goes: the same timed steps, phase by phase
    out["breakdown_steps"] = {mode: sum(len(r["phases"]) for r in rs) for mode, rs in runs.items()}
    out["breakdown_cpu_ms"] = {mode: breakdown(rs, "phase_cpu") for mode, rs in runs.items()}
    out["breakdown_wall_ms"] = {mode: breakdown(rs, "phase_wall") for mode, rs in runs.items()}
    return out


def bench_precision(setup: Setup, args) -> dict:
    """(d) bf16 autocast on CPU (``train.cpu_bf16``) against fp32: plain and MAD, each precision in turn within each
    repeat (the order alternating), the real trainer timed as in (a); per mode the fp32 / bf16 ratio of the median
    step times, and per repeat."""
    from mad_pipeline.machine import cpu_bf16_flags

    runs: dict[tuple[str, str], list[dict]] = {(m, p): [] for m in MODES for p in PRECISIONS}
    for rep in range(args.repeats):
        for mode in MODES:
            for prec in PRECISIONS[rep % 2:] + PRECISIONS[: rep % 2]:
                a = argparse.Namespace(**{**vars(args), "cpu_bf16": prec == "bf16"})
                r = timed_run(setup, mode, args.steps, args.warmup, a, f"{mode}-{prec}-{rep}")
                runs[(mode, prec)].append(r)
                log(f"  (d) repeat {rep + 1}/{args.repeats} {mode:5s} {prec}: {r['wall'] * 1000:7.1f} ms/step wall, "
                    f"{r['cpu'] * 1000:7.1f} ms CPU (other processes {r['foreign']:.2f} cores, {load_str()})")
    out: dict = {"cpu_flags": cpu_bf16_flags() or []}
    for mode in MODES:
        f32, b16 = runs[(mode, "fp32")], runs[(mode, "bf16")]
        out[mode] = {"fp32": _summary(f32, args.batch_size), "bf16": _summary(b16, args.batch_size)}
        for key in ("wall", "cpu"):
            out[mode][f"speedup_{key}"] = out[mode]["fp32"][f"{key}_ms"] / out[mode]["bf16"][f"{key}_ms"]
            out[mode][f"speedup_{key}_runs"] = [round(x[key] / y[key], 3) for x, y in zip(f32, b16, strict=True)]
        out[mode]["breakdown_cpu_ms"] = {p: breakdown(runs[(mode, p)], "phase_cpu") for p in PRECISIONS}
    return out


def bench_online(setup: Setup, args, store_fed: dict | None = None) -> dict:
    """A few steps of online-teacher MAD (the teacher's forward in every step; the first step is not counted),
    against store-fed MAD (from (a) when it ran, else measured here)."""
    res: dict = {}
    r = timed_run(setup, "online", args.online_steps + 1, 1, args, "b-online")
    res["online"] = {**_summary([r], args.batch_size), "wall_ms_steps": [round(x * 1000, 1) for x in r["wall_steps"]],
                     "breakdown_cpu_ms": breakdown([r], "phase_cpu")}
    log(f"  (b) online: {r['wall'] * 1000:9.1f} ms/step wall, {r['cpu'] * 1000:9.1f} ms CPU "
        f"(other processes {r['foreign']:.2f} cores, {load_str()})")
    if store_fed is None:
        store_fed = _summary([timed_run(setup, "mad", args.steps, args.warmup, args, "b-mad")], args.batch_size)
    res["mad"] = store_fed
    res["speedup_wall"] = res["online"]["wall_ms"] / res["mad"]["wall_ms"]
    res["speedup_cpu"] = res["online"]["cpu_ms"] / res["mad"]["cpu_ms"]
    return res


# --------------------------------------------------------------------------- --compare-with: old code vs new code
def child_args(args) -> list[str]:
    """What each version's own bench is run with: part (a) once, at this invocation's sizes."""
    return ["--skip", "online,loader,precision", "--repeats", "1", "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--batch-size", str(args.batch_size), "--student", args.student, "--world-size",
            str(args.world_size), "--num-workers", str(args.num_workers), "--threads", str(args.threads)]


def run_version(tree, name: str, rep: int, args, tmp: Path) -> dict:
    """One child: ``tree``'s own ``bench/distill.py`` for part (a); its plain and MAD ms/step."""
    from gitref import run_script

    out = tmp / f"{name}-{rep}.json"
    with Meter() as m:
        child = run_script(tree, "bench/distill.py", [*child_args(args), "--json", str(out)], tmp)
    if child.returncode != 0 or not out.exists():
        raise RuntimeError(f"{name} ({tree.label}): bench/distill.py failed (exit {child.returncode}):\n"
                           + "\n".join(child.stderr.splitlines()[-25:]))
    if child.outside or not child.imported_from or not child.imported_from.startswith(str(tree.pkg)):
        raise RuntimeError(f"{name} ({tree.label}): the child imported mad_pipeline from {child.imported_from}; "
                           f"modules from elsewhere: {child.outside}")
    steps = json.loads(out.read_text())["steps"]
    r = {mode: {k: steps[mode][k] for k in ("wall_ms", "cpu_ms")} for mode in MODES}
    r.update(seconds=m.wall, foreign=m.foreign, modules=child.modules)
    log(f"  repeat {rep + 1}/{args.repeats} {name}: plain {r['plain']['wall_ms']:7.1f} ms/step wall "
        f"{r['plain']['cpu_ms']:7.1f} CPU, mad {r['mad']['wall_ms']:7.1f} wall {r['mad']['cpu_ms']:7.1f} CPU "
        f"({m.wall:.0f} s; other processes {m.foreign:.2f} cores, {load_str()})")
    return r


def compare_figures(runs: dict[str, list[dict]]) -> dict:
    """Per mode: old and new medians and their runs, new / old overall and per repeat, and the verdicts."""
    out: dict = {}
    for mode in MODES:
        d: dict = {"old": {}, "new": {}}
        for key in ("wall", "cpu"):
            old = [r[mode][f"{key}_ms"] for r in runs["old"]]
            new = [r[mode][f"{key}_ms"] for r in runs["new"]]
            for side, xs in (("old", old), ("new", new)):
                d[side][f"{key}_ms"] = med(xs)
                d[side][f"{key}_ms_runs"] = [round(x, 1) for x in xs]
            ratio = med(new) / med(old)
            d[f"ratio_{key}"] = ratio
            d[f"ratio_{key}_runs"] = [round(n / o, 3) for o, n in zip(old, new, strict=True)]
            d[f"within_{key}"] = abs(ratio - 1.0) <= WITHIN
        out[mode] = d
    return out


def bench_compare(args) -> dict:
    import gitref

    tmp = Path(tempfile.mkdtemp(prefix="mad-bench-compare-"))
    try:
        trees = {"old": gitref.export_commit(args.compare_with, tmp / "old"),
                 "new": gitref.snapshot_worktree(tmp / "new")}
        res: dict = {"ref": args.compare_with, "within": WITHIN, "repeats": args.repeats, "order": [], "child_args":
                     child_args(args)}
        for name, tree in trees.items():
            where = gitref.probe(tree, tmp)
            res[f"{name}_version"] = {"label": tree.label, "commit": tree.commit, "dirty": tree.dirty}
            log(f"  {name}: {tree.label}; a child imports mad_pipeline from {where}")
        runs: dict[str, list[dict]] = {"old": [], "new": []}
        for rep in range(args.repeats):
            order = ("old", "new") if rep % 2 == 0 else ("new", "old")
            res["order"].append(list(order))
            for name in order:
                runs[name].append(run_version(trees[name], name, rep, args, tmp))
        res.update(compare_figures(runs))
        res["foreign_cores_runs"] = {n: [round(r["foreign"], 2) for r in rs] for n, rs in runs.items()}
        res["seconds_runs"] = {n: [round(r["seconds"], 1) for r in rs] for n, rs in runs.items()}
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
def report_steps(a: dict, args: dict) -> list[str]:
    lines = [f"(a) step time, plain finetuning vs store-fed MAD: median of {args['repeats']} runs x "
             f"{args['steps'] - args['warmup']} steps (real Trainer, timed through its on_event hook between "
             f"optimizer steps; wall clock, and this process's CPU time)",
             f"  {'':26s} {'ms/step':>9s} {'CPU ms':>8s} {'samples/s':>10s}   runs: wall ms / CPU ms"]
    for mode, name in (("plain", "plain (baseline)"), ("mad", "MAD store-fed (full)")):
        r = a[mode]
        runs = ", ".join(f"{x:.0f}/{y:.0f}" for x, y in zip(r["wall_ms_runs"], r["cpu_ms_runs"], strict=True))
        lines.append(f"  {name:26s} {r['wall_ms']:9.1f} {r['cpu_ms']:8.1f} {r['samples_per_s']:10.1f}   {runs}")
        if "gpu_busy" in r:
            smi = "n/a" if r["gpu_util_smi"] is None else f"{r['gpu_util_smi']:.0f}%"
            lines.append(f"  {'':26s} GPU busy {r['gpu_busy']:.0%} of the step (not waiting for data); "
                         f"nvidia-smi utilisation {smi}")
    for key, name in (("cpu", "CPU time"), ("wall", "wall clock")):
        ratio = a[f"ratio_{key}"]
        verdict = "within" if ratio <= 1.15 else "ABOVE"
        lines.append(f"  ratio MAD / plain ({name}): {ratio:.3f} ({verdict} the 1.15 target); per repeat "
                     + ", ".join(f"{x:.3f}" for x in a[f"ratio_{key}_runs"]))
    n = a.get("breakdown_steps", {})
    lines += ["  where the CPU time goes (ms/step; per phase, the median over the timed steps of the runs, "
              "from the trainer's events)",
              f"    {'':20s} " + "  ".join(f"{p:>9s}" for p in PHASES)]
    for mode in MODES:
        bd = a["breakdown_cpu_ms"][mode]
        label = f"{mode} ({n[mode]} steps)" if mode in n else mode
        lines.append(f"    {label:20s} " + "  ".join(f"{bd.get(p, 0.0):9.1f}" for p in PHASES))
    return [*lines, ""]


def report_precision(d: dict, args: dict) -> list[str]:
    flags = ", ".join(d["cpu_flags"]) or "none"
    lines = [f"(d) bf16 autocast on CPU (train.cpu_bf16) vs fp32: median of {args['repeats']} runs x "
             f"{args['steps'] - args['warmup']} steps per mode and precision (the CPU's native bf16: {flags})",
             f"  {'':26s} {'fp32 ms':>9s} {'bf16 ms':>9s} {'fp32/bf16':>10s}   per repeat (CPU time)"]
    for mode, name in (("plain", "plain (baseline)"), ("mad", "MAD store-fed (full)")):
        r = d[mode]
        runs = ", ".join(f"{x:.2f}" for x in r["speedup_cpu_runs"])
        lines.append(f"  {name + ', wall':26s} {r['fp32']['wall_ms']:9.1f} {r['bf16']['wall_ms']:9.1f} "
                     f"{r['speedup_wall']:10.2f}")
        lines.append(f"  {name + ', CPU':26s} {r['fp32']['cpu_ms']:9.1f} {r['bf16']['cpu_ms']:9.1f} "
                     f"{r['speedup_cpu']:10.2f}   {runs}")
    lines.append("  where the CPU time goes (ms/step, median per phase)   " + "  ".join(f"{p:>9s}" for p in PHASES))
    for mode in MODES:
        for prec in PRECISIONS:
            bd = d[mode]["breakdown_cpu_ms"][prec]
            lines.append(f"    {mode + ' ' + prec:50s} " + "  ".join(f"{bd.get(p, 0.0):9.1f}" for p in PHASES))
    return [*lines, ""]


def verdict(ratio: float) -> str:
    if abs(ratio - 1.0) <= WITHIN:
        return f"within {WITHIN:.0%}"
    return f"new {abs(ratio - 1.0):.0%} {'SLOWER' if ratio > 1 else 'FASTER'}"


def report_compare(c: dict, args: dict) -> list[str]:
    lines = [f"old code vs new code, part (a) only: old = {c['old_version']['label']}, new = "
             f"{c['new_version']['label']}",
             f"  each version's own bench/distill.py in its own process, {c['repeats']} repeats in alternating order "
             f"(old first in repeats 1, 3, ...), each {args['steps'] - args['warmup']} timed steps per mode",
             f"  {'':18s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}  {'verdict':16s}  "
             f"per repeat: new/old (old ms, new ms)"]
    for mode, name in (("plain", "plain"), ("mad", "MAD store-fed")):
        d = c[mode]
        for key, what in (("wall", "wall"), ("cpu", "CPU")):
            runs = ", ".join(f"{r:.3f} ({o:.0f}, {n:.0f})" for r, o, n in
                             zip(d[f"ratio_{key}_runs"], d["old"][f"{key}_ms_runs"], d["new"][f"{key}_ms_runs"],
                                 strict=True))
            lines.append(f"  {name + ' ' + what:18s} {d['old'][f'{key}_ms']:9.1f} {d['new'][f'{key}_ms']:9.1f} "
                         f"{d[f'ratio_{key}']:8.3f}  {verdict(d[f'ratio_{key}']):16s}  {runs}")
    lines.append(f"  verdict: new/old (median new / median old) within {WITHIN:.0%} means 0.95 to 1.05")
    return [*lines, ""]


def report_online(b: dict) -> list[str]:
    steps = ", ".join(f"{x / 1000:.1f}" for x in b["online"]["wall_ms_steps"])
    return ["(b) store-fed MAD vs online-teacher MAD (ViT-B-16 teacher forward in every step)",
            f"  online teacher {b['online']['wall_ms']:10.1f} ms/step  {b['online']['cpu_ms']:10.1f} CPU ms"
            f"   (steps: {steps} s; first not counted)",
            f"  store-fed      {b['mad']['wall_ms']:10.1f} ms/step  {b['mad']['cpu_ms']:10.1f} CPU ms",
            f"  the stores make a step {b['speedup_wall']:.1f}x faster (CPU time: {b['speedup_cpu']:.1f}x)", ""]


def report_loader(c: dict, args: dict) -> list[str]:
    lines = [f"(c) loader, one epoch per run, batch {args['batch_size']}, {c['num_workers']} DataLoader "
             f"workers, cold ChunkCache (32 chunks) per epoch, files in the OS page cache",
             f"  {'':44s} {'samples/s':>10s} {'per CPU-s':>10s} {'chunks decoded':>15s}   runs (samples/s)"]
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
    return [*lines, ""]


def report(res: dict) -> str:
    a, b, c, cmp, d = res.get("steps"), res.get("online"), res.get("loader"), res.get("compare"), res.get("precision")
    env, w, args = res["machine"], res.get("world"), res["args"]
    lines = [f"mad distill benchmark -- {env['cpu']}, {env['cores']} cores, torch {env['torch']} "
             f"({env['threads']} thread{'s' if env['threads'] > 1 else ''}), student {args['student']}, task {TASK}, "
             f"batch {args['batch_size']}, training DataLoader workers {args['num_workers']}"]
    if w:
        lines.append(f"teacher stores (stage 1, ViT-B-16 geometry: image 197x768 + 512, text 77x512 + 512, fp16): "
                     f"{w['train_samples']} samples, {w['images']} images, {w['texts']} texts")
    lines.append("")
    if cmp:
        lines += report_compare(cmp, args)
    if a:
        lines += report_steps(a, args)
    if d:
        lines += report_precision(d, args)
    if b:
        lines += report_online(b)
    if c:
        lines += report_loader(c, args)
    lines.append(f"machine: {res['load_start']} at the start, {res['load_end']} at the end; "
                 f"other processes used {res.get('foreign_cores', float('nan')):.2f} cores on average; "
                 f"total {res['seconds']:.0f} s")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="training steps per run in (a) (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="first steps of each run not timed (default 3)")
    p.add_argument("--batch-size", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved repeats of (a), (c) and (d) (default 5)")
    p.add_argument("--online-steps", type=int, default=1,
                   help="timed online-teacher steps in (b), after one untimed step (default 1)")
    p.add_argument("--student", default="vilt-tiny", help="student of (a) and (b) (default vilt-tiny)")
    p.add_argument("--device", default="cpu",
                   help="training device of (a) and (b): cpu (default) or cuda[:N]; on a GPU, (a) also reports the "
                        "share of the step the GPU was busy, not waiting for the loader")
    p.add_argument("--world-size", type=int, default=256, help="shapes-world training images (default 256)")
    p.add_argument("--num-workers", type=int, default=0, help="training DataLoader workers (default 0, as mad distill)")
    p.add_argument("--loader-rows", type=int, default=2000, help="rows of the (c) image store (default 2000)")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers in (c) (default 0)")
    p.add_argument("--buffer-chunks", type=int, default=8, help="(c) shuffle window in chunks (default 8)")
    p.add_argument("--text-rows", type=int, default=1000, help="rows of the (c) text store; 0: skip (default 1000)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: stable on a shared machine; 0 = torch's default)")
    p.add_argument("--skip", default="", help="comma list of parts to skip: steps, online, loader, "
                   "precision")
    p.add_argument("--compare-with", metavar="REF", default=None,
                   help="a commit, branch or tag of this repository: measure (a) with that version's code and bench "
                        "and with the working tree's, in alternating order, --repeats times; (b) and (c) do not run")
    p.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    return p.parse_args(argv)


def bench_parts(args, skip: set[str], tmp: Path, res: dict) -> None:
    """Parts (a), (b) and (c) of this version, into ``res``."""
    if not {"steps", "online"} <= skip:
        from mad_pipeline.data import load_dataset
        from mad_pipeline.shapes.formats import write_dataset
        from mad_pipeline.tasks import get_task

        write_dataset(tmp / "world", size=args.world_size, seed=0)
        root = tmp / "world" / TASK
        with Meter() as m:
            teacher, weights = make_teacher(tmp)
        log(f"  ViT-B-16 teacher (random weights) saved and loaded in {m.wall:.1f} s")
        with Meter() as m:
            stores, ex = build_stores(teacher, weights, root, tmp / "cache")
        log(f"  stage-1 stores built in {m.wall:.1f} s ({ex.samples} samples, {ex.images} images, {ex.texts} texts)")
        ds = load_dataset(TASK, root, split="train")
        setup = Setup(ds.root, ds.samples, stores, teacher, weights, tmp, args.student)
        task = get_task(TASK)
        task.fit(ds.samples)
        res["world"] = {"train_samples": ex.samples, "images": ex.images, "texts": ex.texts,
                        "answers": task.num_classes}
        if "steps" not in skip:
            log("(a) plain finetuning vs store-fed MAD")
            res["steps"] = bench_steps(setup, args)
        if "precision" not in skip and args.device == "cpu":
            log("(d) bf16 autocast on CPU vs fp32")
            res["precision"] = bench_precision(setup, args)
        if "online" not in skip:
            log("(b) online teacher vs stores")
            res["online"] = bench_online(setup, args, res["steps"]["mad"] if "steps" in res else None)
        del setup, teacher
    if "loader" not in skip:
        log("(c) loader: chunk-aware vs random access")
        res["loader"] = bench_loader(tmp, args)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare_with:
        from gitref import resolve

        try:
            resolve(args.compare_with)
        except ValueError as e:
            log(str(e))
            return 2
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
    whole = Meter().__enter__()
    if args.compare_with:
        log(f"old code ({args.compare_with}) vs new code (this working tree), part (a)")
        res["compare"] = bench_compare(args)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mad-bench-distill-"))
        try:
            bench_parts(args, skip, tmp, res)
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
