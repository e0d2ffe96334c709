"""Benchmark stage 1 (``mad extract``) image throughput on CPU: pipelined extraction vs teacher-forward-only vs a naive
sequential loop, plus where the time goes per image.

For each model (real open_clip ViT-B-16 / ViT-B-32 architectures at random weights, loaded through the teacher
registry exactly as ``mad extract --weights`` does) and the same real JPEG photos (crops of skimage.data photos,
COCO-sized), it measures images/s of

  forward   the teacher forward alone on batches already decoded and preprocessed in memory,
  pipeline  the real ``extract_images`` path (DataLoader decode workers, forward in the main process, background
            shard writer) into a real ``StoreWriter`` in a temp dir, including store creation and publication,
  naive     decode -> preprocess -> forward -> fp16 -> zarr write, one batch after the other in one process,

and a per-image breakdown: decode, preprocess (single process, 1 torch thread, as in a worker), forward, fp16
conversion, compression + write (``StoreWriter.write_shard`` on the produced arrays). Modes are interleaved within
each repeat (rotating their order) so load from other processes hits all of them alike; medians are reported, with
the load average and the CPU time other processes took during each measurement ("foreign cores").

    python bench/extract.py                          # both models, defaults below
    python bench/extract.py --num-workers 0,1,2      # compare decode-worker counts
    python bench/extract.py --json bench-extract.json
    python bench/extract.py --workers 1,2            # mad extract --workers N: scaling over dask worker processes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import measure  # bench/measure.py (python puts the script's folder on sys.path)
import numpy as np
import torch

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")


# --------------------------------------------------------------------------- measurement
@dataclass
class Sample:
    wall: float
    cpu: float  # this process + its finished children
    foreign: float  # cores used by other processes on average during the measurement
    load1: float
    phases: dict | None = None  # pipeline only: start-up, steady-state rate, tail
    forwards: dict | None = None  # forward only: first and later batch times


class Meter(measure.Meter):
    """:class:`measure.Meter` that also packs its figures into a :class:`Sample`."""

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self.sample = Sample(self.wall, self.cpu, self.foreign, self.load1)
        return False


def wait_quiet(max_s: float, below: float = 0.25) -> float:
    """Wait (at most ``max_s``) until other processes have used under ``below`` cores for a second; seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_s:
        m0 = measure.machine_busy_s()
        time.sleep(1.0)
        if measure.machine_busy_s() - m0 < below:
            break
    return time.perf_counter() - t0


class BatchClock:
    """Stands in for the rich progress bar ``extract_images`` accepts: records when each batch left the forward."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, task, advance: int = 0, **kwargs):
        self.marks.append((time.perf_counter(), advance))


class TimedTeacher:
    """The teacher, with the wall time of every forward recorded (to split pipeline time into forward and the rest)."""

    def __init__(self, teacher):
        self._teacher = teacher
        self.forward_s = 0.0
        self.batch_s: list[float] = []

    def __getattr__(self, name):
        return getattr(self._teacher, name)

    def encode_image_tokens(self, pixels):
        t0 = time.perf_counter()
        out = self._teacher.encode_image_tokens(pixels)
        self.batch_s.append(time.perf_counter() - t0)
        self.forward_s += self.batch_s[-1]
        return out


@dataclass
class Mode:
    name: str
    n_images: int
    samples: list[Sample] = field(default_factory=list)
    contended: list[Sample] = field(default_factory=list)  # runs rejected by --max-foreign

    def rates(self) -> list[float]:
        return [self.n_images / s.wall for s in self.samples]

    def summary(self) -> dict:
        r = self.rates()
        out = {"images_per_s": statistics.median(r), "min": min(r), "max": max(r), "runs": r,
               "cpu_cores_used": statistics.median(s.cpu / s.wall for s in self.samples),
               "foreign_cores": statistics.median(s.foreign for s in self.samples),
               "foreign_cores_runs": [round(s.foreign, 3) for s in self.samples],
               "load1": [round(s.load1, 2) for s in self.samples], "runs_rejected_as_contended": len(self.contended)}
        if self.samples and self.samples[0].forwards:
            out["batches"] = {k: statistics.median(s.forwards[k] for s in self.samples)
                              for k in self.samples[0].forwards}
        if self.samples and self.samples[0].phases:
            out["phases"] = {k: statistics.median(s.phases[k] for s in self.samples) for k in self.samples[0].phases}
        return out


# --------------------------------------------------------------------------- inputs
def make_photos(root: Path, n: int, seed: int = 0) -> list[str]:
    """n distinct real photos as JPEGs of COCO-like size (480-640 px on the long side, quality 90).

    Photo i depends only on (seed, i), so asking for more photos later keeps the first ones (and their files).
    """
    from PIL import Image
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    sources = None
    paths = []
    for i in range(n):
        p = root / f"{seed}-{i:05d}.jpg"
        paths.append(str(p))
        if p.exists():
            continue
        if sources is None:
            sources = [np.asarray(getattr(data, name)()) for name in PHOTOS]
        rng = np.random.default_rng([seed, i])
        src = sources[i % len(sources)]
        h, w = src.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        im = Image.fromarray(src[y : y + ch, x : x + cw])
        long_side = int(rng.integers(480, 641))
        aspect = rng.choice([4 / 3, 3 / 2, 1.0, 3 / 4])  # typical photo shapes
        size = (long_side, round(long_side / aspect)) if aspect >= 1 else (round(long_side * aspect), long_side)
        im.resize(size, Image.BICUBIC).save(p, quality=90)
    return paths


def build_teacher(name: str, tmp: Path, seed: int = 0):
    """The real open_clip architecture at random weights, saved to a file and loaded through the registry."""
    import open_clip
    from safetensors.torch import save_file

    from mad_pipeline.teachers import get_teacher_spec, load_teacher

    arch = get_teacher_spec(name).model  # e.g. ViT-B-16-quickgelu (the OpenAI CLIP architecture)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch)
    weights = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    return load_teacher(name, weights=str(weights), device="cpu", precision="fp32")


def predecode(teacher, paths: list[str], batch_size: int):
    """The exact batches the pipeline's DataLoader produces (same dataset class and collate), decoded up front."""
    from mad_pipeline.extraction.reader import ImageRows, collate

    ds = ImageRows(list(enumerate(paths)), teacher.preprocess, teacher.crop_box_fn, teacher.image_size)
    return [collate([ds[i] for i in range(lo, min(lo + batch_size, len(ds)))]) for lo in range(0, len(ds), batch_size)]


# --------------------------------------------------------------------------- the three modes
def run_forward(teacher, batches) -> dict:
    times = []
    for _rows, pixels, _boxes, _errors in batches:
        t0 = time.perf_counter()
        teacher.encode_image_tokens(pixels)
        times.append(time.perf_counter() - t0)
    return {"first_forward_s": times[0],
            "later_forwards_s": statistics.median(times[1:]) if len(times) > 1 else float("nan")}


def run_pipeline(teacher, paths: list[str], hashes: list[str], store: Path, batch_size: int, workers: int) -> dict:
    """The real stage-1 image pass: StoreWriter, extract_images (decode workers, forward, writer thread), publish."""
    from mad_pipeline.extraction.runner import extract_images
    from mad_pipeline.store.layout import image_arrays
    from mad_pipeline.store.writer import StoreWriter

    t_start = time.perf_counter()
    clock = BatchClock()
    timed = TimedTeacher(teacher)
    specs = image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim)
    writer = StoreWriter(store.with_name(store.name + ".partial"), "image", len(paths), specs, key=store.name)
    extract_images(timed, writer, hashes, paths, batch_size=batch_size, num_workers=workers, on_error="fail",
                   progress=clock)
    t_forward_done = clock.marks[-1][0]
    writer.finalize({"cache_key": store.name, "bench": True}, store)
    t_end = time.perf_counter()
    first_t, first_n = clock.marks[0]
    steady_n = sum(n for _, n in clock.marks[1:])
    return {"store": store, "phases": {
        "first_batch_s": first_t - t_start,  # writer set-up, worker start, decode of batch 1, its forward
        "steady_images_per_s": steady_n / (t_forward_done - first_t) if steady_n else float("nan"),
        "tail_s": t_end - t_forward_done,  # last shard's compression + write, consolidation, rename
        "in_forward_images_per_s": len(paths) / timed.forward_s,  # the forward's own speed inside the pipeline
        "outside_forward_s": t_end - t_start - timed.forward_s,  # waiting for batches, fp16, queueing, set-up, tail
        "forward_share": timed.forward_s / (t_end - t_start),  # fraction of the pipeline's wall time in the forward
        "first_forward_s": timed.batch_s[0],
        "later_forwards_s": statistics.median(timed.batch_s[1:]) if len(timed.batch_s) > 1 else float("nan"),
    }}


def run_naive(teacher, paths: list[str], out: Path, batch_size: int) -> None:
    """What one would write without a pipeline: everything in turn, one process, a compressed zarr write per batch."""
    import zarr

    from mad_pipeline.data.images import load_image
    from mad_pipeline.store.layout import codecs_for, image_arrays

    spec = {s.name: s for s in image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim)}
    group = zarr.open_group(str(out), mode="w")
    arrays = {
        name: group.create_array(name, shape=(len(paths), *spec[name].row_shape),
                                 chunks=(batch_size, *spec[name].row_shape), dtype="float16",
                                 compressors=codecs_for(spec[name]))
        for name in ("tokens", "pooled")
    }
    for lo in range(0, len(paths), batch_size):
        pixels = torch.stack([teacher.preprocess(load_image(p)) for p in paths[lo : lo + batch_size]])
        tokens, pooled = teacher.encode_image_tokens(pixels)
        arrays["tokens"][lo : lo + len(pixels)] = tokens.to(torch.float16).numpy()
        arrays["pooled"][lo : lo + len(pixels)] = pooled.to(torch.float16).numpy()


# --------------------------------------------------------------------------- breakdown
def breakdown(teacher, paths: list[str], batches, forward: Mode, tmp: Path) -> dict:
    """Per-image milliseconds of each step, measured alone (wall and CPU of this process)."""
    from mad_pipeline.data.images import load_image
    from mad_pipeline.store.layout import image_arrays
    from mad_pipeline.store.writer import StoreWriter

    out: dict[str, dict] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker (torch sets 1 thread there)
    try:
        dec = [Meter() for _ in paths]
        pre = [Meter() for _ in paths]
        for p, md, mp in zip(paths, dec, pre, strict=True):
            with md:
                im = load_image(p)
            with mp:
                teacher.preprocess(im)
    finally:
        torch.set_num_threads(threads)
    for key, ms in (("decode", dec), ("preprocess", pre)):
        out[key] = {"wall_ms": 1e3 * statistics.median(m.wall for m in ms),
                    "cpu_ms": 1e3 * statistics.median(m.cpu for m in ms)}

    n = sum(len(b[0]) for b in batches)
    results = [teacher.encode_image_tokens(pixels) for _rows, pixels, _boxes, _errors in batches]
    fwd = forward.summary()
    out["forward"] = {"wall_ms": 1e3 / fwd["images_per_s"],  # from the timed forward-only runs
                      "cpu_ms": 1e3 / fwd["images_per_s"] * fwd["cpu_cores_used"]}
    with Meter() as mc:
        tokens = np.concatenate([t.to(torch.float16).numpy() for t, _ in results])
        pooled = np.concatenate([p.to(torch.float16).numpy() for _, p in results])
    out["fp16"] = {"wall_ms": 1e3 * mc.wall / n, "cpu_ms": 1e3 * mc.cpu / n}

    specs = image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim)
    walls, cpus = [], []
    for r in range(2):  # the second is the steady-state figure (the first pays one-off codec set-up)
        writer = StoreWriter(tmp / f"write-{r}", "image", n, specs, key=f"write-{r}")
        boxes = np.concatenate([b[2] for b in batches])
        hashes = np.asarray([f"{i:064x}" for i in range(n)], dtype=object)
        with Meter() as mw:
            for s in range(writer.n_shards):
                lo, hi = writer.shard_range(s)
                writer.write_shard(s, {"image_hash": hashes[lo:hi], "tokens": tokens[lo:hi], "pooled": pooled[lo:hi],
                                       "crop_box": boxes[lo:hi], "valid": np.ones(hi - lo, bool)})
        walls.append(mw.wall)
        cpus.append(mw.cpu)
    stored = sum(f.stat().st_size for f in (tmp / "write-1" / "tokens").rglob("*") if f.is_file())
    out["compress_write"] = {"wall_ms": 1e3 * walls[-1] / n, "cpu_ms": 1e3 * cpus[-1] / n,
                             "tokens_mb_per_s": tokens.nbytes / walls[-1] / 1e6,
                             "compression_ratio": tokens.nbytes / max(stored, 1)}
    return out


def check_store(store: Path, teacher, batches) -> float:
    """The pipeline's store holds what the forward computes (max |diff| of tokens, fp16 storage)."""
    import zarr

    g = zarr.open_group(str(store), mode="r")
    rows, pixels, _, _ = batches[0]
    ref, _ = teacher.encode_image_tokens(pixels)
    got = g["tokens"][rows[0] : rows[-1] + 1]
    return float(np.abs(got.astype(np.float32) - ref.to(torch.float16).float().numpy()).max())


# --------------------------------------------------------------------------- main
def bench_model(name: str, args, tmp: Path, log) -> dict:
    log(f"[{name}] building the real architecture at random weights ...")
    teacher = build_teacher(name, tmp)
    log(f"[{name}] warm-up ...")
    first = predecode(teacher, make_photos(tmp / "photos", args.batch_size), args.batch_size)[0][1]
    teacher.encode_image_tokens(first)
    if args.images == "auto":  # about --run-seconds of forward per timed run, at least 3 batches
        t0 = time.perf_counter()
        teacher.encode_image_tokens(first)
        per_image = (time.perf_counter() - t0) / len(first)
        n = args.batch_size * min(64, max(3, round(args.run_seconds / per_image / args.batch_size)))
    else:
        n = int(args.images)
    paths = make_photos(tmp / "photos", n)
    hashes = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    mean_kb = float(np.mean([os.path.getsize(p) for p in paths]) / 1e3)
    log(f"[{name}] {n} JPEG photos, {mean_kb:.0f} kB on average, 480-640 px on the long side")
    batches = predecode(teacher, paths, args.batch_size)
    for w in args.num_workers:
        run_pipeline(teacher, paths[:2], hashes[:2], tmp / f"{name}-warm-{w}", 2, w)
    run_naive(teacher, paths[:2], tmp / f"{name}-warm-naive", 2)

    modes = {"forward": Mode("forward", n)}
    modes.update({f"pipeline-w{w}": Mode(f"pipeline-w{w}", n) for w in args.num_workers})
    if not args.no_naive:
        modes["naive"] = Mode("naive", n)
    order = list(modes)
    stores = {}
    deadline = time.perf_counter() + 60 * args.max_minutes
    rnd = 0
    while todo := [k for k in order if len(modes[k].samples) < args.repeats]:
        if args.max_foreign is not None and time.perf_counter() > deadline:
            log(f"[{name}] --max-minutes reached: filling up with the least contended of the rejected runs")
            for k in todo:
                extra = sorted(modes[k].contended, key=lambda s: s.foreign)[: args.repeats - len(modes[k].samples)]
                modes[k].samples.extend(extra)
                modes[k].contended = [s for s in modes[k].contended if s not in extra]
            break
        rot = rnd % len(todo)
        rnd += 1
        for key in todo[rot:] + todo[:rot]:  # rotate the order each round
            waited = wait_quiet(args.quiet_wait) if args.quiet_wait else 0.0
            phases = m_forward = None
            tag = f"{name}-{key}-{rnd}"
            with Meter() as m:
                if key == "forward":
                    m_forward = run_forward(teacher, batches)
                elif key == "naive":
                    run_naive(teacher, paths, tmp / tag, args.batch_size)
                else:
                    out = run_pipeline(teacher, paths, hashes, tmp / tag, args.batch_size, int(key.split("-w")[1]))
                    stores[key], phases = out["store"], out["phases"]
            m.sample.phases = phases
            m.sample.forwards = m_forward
            busy = args.max_foreign is not None and m.foreign > args.max_foreign
            (modes[key].contended if busy else modes[key].samples).append(m.sample)
            extra = "" if not phases else (
                f", first batch {phases['first_batch_s']:.2f} s, steady {phases['steady_images_per_s']:.2f} img/s,"
                f" tail {phases['tail_s']:.2f} s, forward inside {phases['in_forward_images_per_s']:.2f} img/s,"
                f" outside forward {phases['outside_forward_s']:.2f} s")
            log(f"[{name}] {key:<12} {n / m.wall:7.2f} img/s  "
                f"(cpu {m.cpu / m.wall:.2f} cores, others {m.foreign:.2f} cores, load1 {m.sample.load1:.2f}"
                f"{f', waited {waited:.0f} s for quiet' if waited >= 1.5 else ''}{extra})"
                f"{' -> rejected, others too busy' if busy else f' [{len(modes[key].samples)}/{args.repeats}]'}")
    log(f"[{name}] breakdown ...")
    parts = breakdown(teacher, paths, batches, modes["forward"], tmp / f"{name}-breakdown")
    max_diff = check_store(next(iter(stores.values())), teacher, batches)

    arch = teacher.model_name
    res = {"teacher": name, "arch": arch, "images": n, "photos_mean_kb": mean_kb,
           "tokens_per_image": [teacher.num_tokens, teacher.width],
           "modes": {k: m.summary() for k, m in modes.items()}, "breakdown_ms_per_image": parts,
           "store_max_abs_diff_vs_forward": max_diff}
    fwd = res["modes"]["forward"]["images_per_s"]
    for m in res["modes"].values():
        m["vs_forward"] = m["images_per_s"] / fwd
    # What overlap can at best reach on this machine: the forward keeps all cores busy, so decode/preprocess and
    # compression CPU time per image has to be taken from it (shared over the cores).
    other_cpu = sum(parts[k]["cpu_ms"] for k in ("decode", "preprocess", "fp16", "compress_write")) / 1e3
    ncores = len(os.sched_getaffinity(0))
    res["overlap_ceiling_images_per_s"] = 1.0 / (1.0 / fwd + other_cpu / ncores)
    res["sequential_estimate_images_per_s"] = 1.0 / (1.0 / fwd + other_cpu)
    return res


def machine() -> dict:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    import open_clip
    import zarr

    return {"cpu": info.get("model name", platform.processor() or "unknown"),
            "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
            "virtualised": "hypervisor" in flags, "avx512": "avx512f" in flags,
            "nproc": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "zarr": zarr.__version__, "python": platform.python_version(), "platform": platform.platform()}


def print_tables(results: list[dict], mach: dict, args) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(150, Console().width))
    t = Table(title=f"mad extract on CPU: images/s (median of {args.repeats} runs over the same photos, "
                    f"batch {args.batch_size}, {mach['torch_threads']} torch threads, {mach['usable_cores']} cores)")
    for col in ("model", "mode", "img/s", "range", "vs forward", "cpu cores", "others' cores", "runs"):
        t.add_column(col, justify="left" if col in ("model", "mode") else "right")
    labels = {"forward": "forward only (pre-decoded batches)", "naive": "naive sequential loop"}
    labels.update({k: f"pipeline, {k.split('-w')[1]} decode worker(s)" for k in results[0]["modes"] if "-w" in k})
    for res in results:
        for k, m in res["modes"].items():
            t.add_row(f"{res['teacher']} ({res['images']} img)", labels[k], f"{m['images_per_s']:.2f}",
                      f"{m['min']:.2f}-{m['max']:.2f}",
                      f"{m['vs_forward']:.3f}", f"{m['cpu_cores_used']:.2f}", f"{m['foreign_cores']:.2f}",
                      f"{len(m['runs'])}" + (f" (+{m['runs_rejected_as_contended']} rejected)"
                                             if m["runs_rejected_as_contended"] else ""))
        t.add_row(f"{res['teacher']} ({res['images']} img)", "[dim]ceiling: free overlap, shared cores[/dim]",
                  f"[dim]{res['overlap_ceiling_images_per_s']:.2f}[/dim]", "",
                  f"[dim]{res['overlap_ceiling_images_per_s'] / res['modes']['forward']['images_per_s']:.3f}[/dim]",
                  "", "", end_section=True)
    con.print(t)
    b = Table(title="where the time goes, ms per image (each step alone; decode/preprocess with 1 torch thread)")
    for col in ("model", "decode", "preprocess", "forward", "fp16", "compress+write", "write MB/s", "compr.", "tokens"):
        b.add_column(col, justify="left" if col == "model" else "right")
    for res in results:
        p = res["breakdown_ms_per_image"]
        cell = {k: f"{p[k]['wall_ms']:.1f} ({p[k]['cpu_ms']:.1f})" for k in p}
        b.add_row(res["teacher"], cell["decode"], cell["preprocess"], cell["forward"], cell["fp16"],
                  cell["compress_write"], f"{p['compress_write']['tokens_mb_per_s']:.0f}",
                  f"{p['compress_write']['compression_ratio']:.2f}x", "x".join(map(str, res["tokens_per_image"])))
    con.print(b)
    ph = Table(title="pipeline phases (median): first batch and tail are paid once per store; 1 fwd batch: the "
                     "forward of one batch alone; fwd inside: the forward's own speed within the pipeline")
    for col in ("model", "workers", "first batch s", "1 fwd batch s", "steady img/s", "steady/fwd", "tail s",
                "fwd inside img/s", "outside fwd s", "wall in fwd"):
        ph.add_column(col, justify="left" if col == "model" else "right")
    for res in results:
        fwd = res["modes"]["forward"]["images_per_s"]
        for k, m in res["modes"].items():
            if "phases" in m:
                p = m["phases"]
                ph.add_row(res["teacher"], k.split("-w")[1], f"{p['first_batch_s']:.2f}",
                           f"{args.batch_size / fwd:.2f}", f"{p['steady_images_per_s']:.2f}",
                           f"{p['steady_images_per_s'] / fwd:.3f}", f"{p['tail_s']:.2f}",
                           f"{p['in_forward_images_per_s']:.2f}", f"{p['outside_forward_s']:.2f}",
                           f"{p['forward_share']:.1%}")
    con.print(ph)
    con.print("wall ms (CPU ms of this process in brackets). "
              f"machine: {mach['cpu']} (family/model {mach['cpu_family_model']}"
              f"{', virtual machine' if mach['virtualised'] else ''}{', AVX-512' if mach['avx512'] else ''}), "
              f"nproc {mach['nproc']}, torch {mach['torch']} with "
              f"{mach['torch_threads']} intra-op threads; DataLoader workers run 1 torch thread each.")
    con.print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default="clip-vit-b16,clip-vit-b32", help="comma-separated registry teacher names")
    ap.add_argument("--images", default="auto",
                    help="photos per model; auto (default): enough for about --run-seconds of forward, >= 3 batches")
    ap.add_argument("--run-seconds", type=float, default=10.0, help="target length of one timed run (--images auto)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--num-workers", default="1", help="decode workers for the pipeline; a comma list compares them")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive sequential loop")
    ap.add_argument("--quiet-wait", type=float, default=0.0,
                    help="before each timed run, wait up to this many seconds for other processes to go idle")
    ap.add_argument("--max-foreign", type=float, default=None,
                    help="discard and redo a timed run during which other processes used more than this many cores")
    ap.add_argument("--max-minutes", type=float, default=30.0,
                    help="with --max-foreign: stop redoing contended runs after this many minutes per model")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    ap.add_argument("--workers", default=None, help="instead: image store on local dask clusters of these worker "
                    "counts (e.g. 1,2) and in one process; first model only (see extract_workers.py)")
    ap.add_argument("--shard-rows", type=int, default=8, help="with --workers: rows per shard (one dask task each)")
    args = ap.parse_args(argv)
    args.num_workers = [int(w) for w in str(args.num_workers).split(",")]
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "No pretrained weights loaded" (we load them next)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if args.workers:
        return _main_workers(args, log)
    mach = machine()
    log(f"machine: {mach['cpu']} x{mach['usable_cores']}, torch threads {mach['torch_threads']}, "
        f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="mad-bench-extract-") as d:
        tmp = Path(d)
        for name in args.models.split(","):
            results.append(bench_model(name.strip(), args, tmp, log))
    out = {"machine": mach, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "seconds": time.perf_counter() - t0, "load_avg_end": os.getloadavg(),
           "results": results}
    print_tables(results, mach, args)
    print(f"total bench time {out['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"figures written to {args.json}")
    return 0


def _main_workers(args, log) -> int:
    from extract_workers import bench_workers, print_workers  # bench/extract_workers.py

    args.workers = [int(w) for w in str(args.workers).split(",")]
    res = bench_workers(args, make_photos, log)
    print_workers(res, args.repeats)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
