"""Stage 1 on one GPU: ``mad extract``'s image pass end to end vs the teacher forward alone, where the time goes, and
whether channels-last / ``torch.compile`` help. ``bench/gpu.sh`` runs it on a GPU machine; it also runs on CPU with
tiny sizes, so the GPU run is only a rerun.

For each teacher (real open_clip architectures at random weights, saved to a safetensors file and loaded through the
registry exactly as ``mad extract --weights`` does) and the same generated COCO-sized JPEGs (640x480), it reports

  end to end    the real ``extract_images`` pass (decode pool, pinned batches, forward with bf16 autocast on CUDA,
                side-stream copies, writer threads) into a real store, created and published; images/s over the
                whole pass and in steady state (after the first batch), with the tokens written (stored bytes),
  forward only  the teacher on pre-decoded pinned batches (host-to-device copy + forward), and on one batch already
                on the device (the compute ceiling),
  GPU busy      GPU time of the forwards (CUDA events) / wall time of the pass, and nvidia-smi's mean utilisation,
  time split    ms per image: decode + preprocess (one core, alone), waiting for decoded batches, host-to-device,
                forward, device-to-host (CUDA events), compression (one core, alone), compression + write (summed over
                the writer threads), and how long the forward waited on the writer (its queue full),
  switches      forward only with channels-last and with ``torch.compile`` of the residual blocks (skipped when the
                time budget is spent).

Everything it writes lives in one run folder (``--workdir``, removed at the end unless ``--keep``); each store is
deleted right after it is measured, so the disk holds at most the JPEGs, one weight file and one store.

    python bench/gpu_extract.py --device cuda --images 3000 --json gpu.json          # what bench/gpu.sh runs
    python bench/gpu_extract.py --device cpu --images 64 --models tiny --batch-size 16  # a quick check on CPU
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

TINY = {"embed_dim": 64, "vision_cfg": {"image_size": 64, "layers": 2, "width": 128, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
LABELS = {"clip-vit-l": "ViT-L/14", "clip-vit-b16": "ViT-B/16", "clip-vit-b32": "ViT-B/32", "tiny": "tiny ViT"}


# --------------------------------------------------------------------------- inputs
def _jpeg(args) -> None:
    """One COCO-like JPEG: smooth colour fields, a few shapes and sensor noise, 640x480, quality 90."""
    from PIL import Image, ImageDraw

    path, seed, w, h = args
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    arr = np.asarray(im, np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def make_jpegs(root: Path, n: int, size=(640, 480), procs: int = 1) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    todo = [(str(root / f"{i:06d}.jpg"), i, *size) for i in range(n)]
    missing = [t for t in todo if not os.path.exists(t[0])]
    if procs > 1 and len(missing) > 64:
        with ProcessPoolExecutor(procs) as ex:
            list(ex.map(_jpeg, missing, chunksize=32))
    else:
        for t in missing:
            _jpeg(t)
    return [t[0] for t in todo]


def build_teacher(name: str, tmp: Path, device: str, precision: str):
    """The real architecture at random weights, saved to a file and loaded through the registry."""
    import open_clip
    from safetensors.torch import save_file

    from mad_pipeline.teachers import get_teacher_spec, load_teacher, register_open_clip_config

    if name == "tiny":
        register_open_clip_config("tiny", TINY)
    arch = get_teacher_spec(name).model
    torch.manual_seed(0)
    model = open_clip.create_model(arch)
    weights = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    return load_teacher(name, weights=str(weights), device=device, precision=precision), weights


# --------------------------------------------------------------------------- measurements
def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def predecode(teacher, paths: list[str], batch: int, workers: int, pin: bool) -> tuple[list, float]:
    """The pipeline's own batches (same dataset class and collate), decoded by the decode pool; images/s of the pool."""
    from torch.utils.data import DataLoader

    from mad_pipeline.extraction.reader import ImageRows, collate

    ds = ImageRows(list(enumerate(paths)), teacher.preprocess, teacher.crop_box_fn, teacher.image_size)
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=collate, pin_memory=pin,
                        prefetch_factor=4 if workers else None)
    t0 = time.perf_counter()
    out = [(rows, pixels) for rows, pixels, _boxes, _errors in loader]
    return out, len(paths) / (time.perf_counter() - t0)


def decode_ms(teacher, paths: list[str]) -> float:
    """CPU ms per image of decode + preprocess in one process with one torch thread (as in a decode worker)."""
    from mad_pipeline.data.images import load_image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.process_time()
        for p in paths:
            teacher.preprocess(load_image(p))
        return 1e3 * (time.process_time() - t0) / len(paths)
    finally:
        torch.set_num_threads(threads)


def forward_only(teacher, batches: list, dev: torch.device, channels_last: bool = False) -> dict:
    """Images/s of host-to-device + forward over pre-decoded (pinned) batches, and of the forward alone on a batch
    already on the device (as many forwards)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def put(px):
        return px.to(dev, non_blocking=True).contiguous(memory_format=fmt)

    teacher.encode_image_tokens(put(batches[0][1]))  # warm-up (cuDNN/cuBLAS choice, compilation)
    sync(dev)
    n = sum(len(rows) for rows, _ in batches)
    t0 = time.perf_counter()
    for _rows, px in batches:
        teacher.encode_image_tokens(put(px))
    sync(dev)
    with_copy = n / (time.perf_counter() - t0)
    x = put(batches[0][1])
    t0 = time.perf_counter()
    for _ in batches:
        teacher.encode_image_tokens(x)
    sync(dev)
    resident = len(batches) * len(x) / (time.perf_counter() - t0)
    return {"images_per_s": with_copy, "resident_images_per_s": resident}


class GpuSampler:
    """nvidia-smi's utilisation of one GPU every 100 ms while the context is open (None without nvidia-smi)."""

    def __init__(self, index: int):
        self.index, self.samples, self.proc = index, [], None

    def __enter__(self):
        exe = shutil.which("nvidia-smi")
        if exe:
            self.proc = subprocess.Popen([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "100", "-i", str(self.index)], stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):  # a blank or "[N/A]" line
                self.samples.append(float(line.strip()))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        return False

    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


from extract import BatchClock  # noqa: E402  (bench/extract.py, beside this script)


def end_to_end(teacher, paths, hashes, fast, batch: int, workers: int, shard_rows: int | None, tmp: Path) -> dict:
    """The real stage-1 image pass into a real store (created, filled, published), then deleted."""
    from mad_pipeline.extraction.runner import extract_images
    from mad_pipeline.store.layout import image_arrays
    from mad_pipeline.store.writer import StoreWriter

    final = tmp / "e2e.zarr"
    shutil.rmtree(final, ignore_errors=True)
    clock = BatchClock()
    dev = fast.device
    with GpuSampler(dev.index or 0) if dev.type == "cuda" else _Null() as smi:
        t0 = time.perf_counter()
        specs = image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim)
        writer = StoreWriter(tmp / "e2e.partial", "image", len(paths), specs, key="bench", shard_rows=shard_rows)
        stats = extract_images(teacher, writer, hashes, paths, batch_size=batch, num_workers=workers,
                               on_error="fail", progress=clock, fast=fast)
        writer.finalize({"cache_key": "bench", "bench": True}, final)
        wall = time.perf_counter() - t0
    stored = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
    shutil.rmtree(final, ignore_errors=True)
    (t_first, n_first), t_last = clock.marks[0], clock.marks[-1][0]
    steady = (len(paths) - n_first) / (t_last - t_first) if t_last > t_first else float("nan")
    n, tm = len(paths), stats.timings
    return {"images_per_s": n / wall, "steady_images_per_s": steady, "wall_s": wall, "stored_mb": stored / 1e6,
            "tokens_mb": n * teacher.num_tokens * teacher.width * 2 / 1e6, "writers": tm.get("writers"),
            "gpu_busy_events": tm.get("forward", 0.0) / wall if dev.type == "cuda" else None,
            "gpu_util_smi": smi.mean() if dev.type == "cuda" else None,
            "ms_per_image": {k: 1e3 * tm.get(k, 0.0) / n for k in ("input_wait", "h2d", "forward", "d2h", "to_host",
                                                                   "write_s", "blocked_s")}}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def compress_ms(teacher, batch_pixels, fast) -> dict:
    """ms per image of the store's token codec alone, one core, on real token rows (chunked as the store is)."""
    import numcodecs

    from mad_pipeline.store.layout import image_arrays, rows_per_chunk

    tokens, _ = teacher.encode_image_tokens(batch_pixels.to(fast.device))
    tokens = tokens.to(torch.float16).cpu().numpy()
    rows = rows_per_chunk(image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim))
    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE, typesize=2)  # as codecs_for
    t0 = time.perf_counter()
    size = sum(len(codec.encode(np.ascontiguousarray(tokens[i : i + rows]))) for i in range(0, len(tokens), rows))
    dt = time.perf_counter() - t0
    return {"ms": 1e3 * dt / len(tokens), "mb_per_s": tokens.nbytes / dt / 1e6, "ratio": tokens.nbytes / size}


# --------------------------------------------------------------------------- one model
def bench_model(name: str, args, tmp: Path, paths: list[str], hashes: list[str], log, t_start: float) -> dict:
    from mad_pipeline.extraction import device as fast_lib

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t_start)

    label = LABELS.get(name, name)
    t0 = time.perf_counter()
    teacher, weights = build_teacher(name, tmp, args.device, args.precision)
    fast = fast_lib.FastPath.for_device(teacher.device, writers=args.writers)
    batch = fast_lib.resolve_batch_size(args.batch_size, teacher, fast)
    workers = fast_lib.decode_workers(args.num_workers, fast.device)
    shard_rows = {"batch": batch, "store": None}[args.shard_rows] if args.shard_rows in ("batch", "store") \
        else int(args.shard_rows)
    res = {"teacher": name, "label": label, "arch": teacher.model_name, "precision": teacher.precision,
           "batch_size": batch, "shard_rows": shard_rows, "decode_workers": workers, "writers": fast.writers,
           "images": len(paths), "tokens_per_image": [teacher.num_tokens, teacher.width],
           "build_s": time.perf_counter() - t0}
    log(f"[{label}] built in {res['build_s']:.1f} s; batch {batch}, shards of {shard_rows or 'default'} rows, "
        f"{workers} decode workers, {fast.writers} writers, precision {teacher.precision}")
    res["decode_cpu_ms"] = decode_ms(teacher, paths[: args.decode_sample])
    batches, res["decode_pool_images_per_s"] = predecode(teacher, paths, batch, workers, fast.pin_memory)
    log(f"[{label}] decode: {res['decode_cpu_ms']:.1f} CPU ms/img on one core; pool of {workers}: "
        f"{res['decode_pool_images_per_s']:.0f} img/s")
    res["forward"] = forward_only(teacher, batches, fast.device)
    log(f"[{label}] forward only: {res['forward']['images_per_s']:.1f} img/s "
        f"(on-device batch {res['forward']['resident_images_per_s']:.1f})")
    res["compress"] = compress_ms(teacher, batches[0][1], fast)
    end_to_end(teacher, paths[: max(batch, 2)], hashes[: max(batch, 2)], fast, batch, workers, shard_rows, tmp)
    runs = [end_to_end(teacher, paths, hashes, fast, batch, workers, shard_rows, tmp)
            for _ in range(args.repeats)]
    res["end_to_end"] = max(runs, key=lambda r: r["images_per_s"])
    res["end_to_end_runs"] = [r["images_per_s"] for r in runs]
    e = res["end_to_end"]
    res["ratio"] = e["images_per_s"] / res["forward"]["images_per_s"]
    res["steady_ratio"] = e["steady_images_per_s"] / res["forward"]["images_per_s"]
    log(f"[{label}] end to end: {e['images_per_s']:.1f} img/s (steady {e['steady_images_per_s']:.1f}), "
        f"{res['ratio']:.3f} of forward only; {e['stored_mb']:.0f} MB stored")
    del batches[args.switch_batches :]  # the switches run on fewer batches
    for switch in ("channels_last", "compile"):
        if switch in args.skip or fast.device.type != "cuda":
            continue
        if left() < args.switch_reserve_s:
            log(f"[{label}] {switch}: skipped, {left():.0f} s of the budget left")
            continue
        sw = fast_lib.FastPath.for_device(fast.device, channels_last=switch == "channels_last",
                                          compile=switch == "compile")
        visual = teacher.model.visual
        visual._mad_fast = None
        visual.to(memory_format=torch.contiguous_format)
        t1 = time.perf_counter()
        fast_lib.prepare(teacher, sw)
        res[switch] = forward_only(teacher, batches, fast.device, channels_last=sw.channels_last)
        res[switch]["total_s"] = time.perf_counter() - t1  # switching, warm-up (compilation) and the timed run
        res[switch]["vs_eager"] = res[switch]["images_per_s"] / res["forward"]["images_per_s"]
        log(f"[{label}] forward only with {switch}: {res[switch]['images_per_s']:.1f} img/s "
            f"({res[switch]['vs_eager']:.3f}x eager; {res[switch]['total_s']:.0f} s with warm-up and compilation)")
    weights.unlink(missing_ok=True)
    del teacher
    if fast.device.type == "cuda":
        torch.cuda.empty_cache()
    return res


# --------------------------------------------------------------------------- report
def print_tables(results: list[dict], mach: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(140, Console().width))
    t = Table(title=f"mad extract on {mach['device_name']}: images/s")
    for col in ("teacher", "batch", "end to end", "steady", "forward only", "e2e / fwd", "on-device fwd",
                "GPU busy (events)", "GPU util (smi)", "tokens MB", "stored MB"):
        t.add_column(col, justify="left" if col == "teacher" else "right")
    for r in results:
        e, f = r["end_to_end"], r["forward"]
        busy = "-" if e["gpu_busy_events"] is None else f"{e['gpu_busy_events']:.0%}"
        smi = "-" if e["gpu_util_smi"] is None else f"{e['gpu_util_smi']:.0f}%"
        t.add_row(f"{r['label']} ({r['precision']})", str(r["batch_size"]), f"{e['images_per_s']:.1f}",
                  f"{e['steady_images_per_s']:.1f}", f"{f['images_per_s']:.1f}", f"{r['ratio']:.3f}",
                  f"{f['resident_images_per_s']:.1f}", busy, smi, f"{e['tokens_mb']:.1f}", f"{e['stored_mb']:.1f}")
    con.print(t)
    s = Table(title="time split, ms per image (decode and compress: CPU ms on one core, alone; h2d, forward, d2h: "
                    "device time; wait: the forward waiting for decoded batches; blocked: waiting on the writer)")
    for col in ("teacher", "decode+prep", "decode pool img/s", "wait", "h2d", "forward", "d2h", "compress",
                "compr.+write (threads)", "blocked", "codec MB/s/core"):
        s.add_column(col, justify="left" if col == "teacher" else "right")
    for r in results:
        m = r["end_to_end"]["ms_per_image"]
        s.add_row(r["label"], f"{r['decode_cpu_ms']:.2f}", f"{r['decode_pool_images_per_s']:.0f}",
                  f"{m['input_wait']:.3f}", f"{m['h2d']:.3f}", f"{m['forward']:.3f}", f"{m['d2h']:.3f}",
                  f"{r['compress']['ms']:.3f}", f"{m['write_s']:.3f} ({r['writers']})", f"{m['blocked_s']:.3f}",
                  f"{r['compress']['mb_per_s']:.0f}")
    con.print(s)
    for r in results:
        for sw in ("channels_last", "compile"):
            if sw in r:
                con.print(f"{r['label']}: forward only with {sw}: {r[sw]['images_per_s']:.1f} img/s = "
                          f"{r[sw]['vs_eager']:.3f}x eager ({r[sw]['total_s']:.0f} s with warm-up and compilation)")


def machine(dev: torch.device) -> dict:
    import open_clip
    import zarr

    out = {"device": str(dev), "device_name": platform.processor() or "CPU", "cores": len(os.sched_getaffinity(0)),
           "torch": torch.__version__, "cuda": torch.version.cuda, "open_clip": open_clip.__version__,
           "zarr": zarr.__version__, "python": platform.python_version()}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        out.update(device_name=p.name, device_memory_gb=round(p.total_memory / 2**30, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--models", default="clip-vit-l,clip-vit-b16", help="registry teacher names, or tiny")
    ap.add_argument("--images", type=int, default=3000, help="generated 640x480 JPEGs")
    ap.add_argument("--batch-size", default="auto", help="a number, or auto (from the device's memory)")
    ap.add_argument("--num-workers", default="auto", help="decode workers, or auto (cores - 1 on CUDA)")
    ap.add_argument("--writers", type=int, default=None, help="writer threads (default: by device)")
    ap.add_argument("--precision", default="auto", help="auto (bf16 on CUDA), fp32, bf16")
    ap.add_argument("--shard-rows", default="batch",
                    help="rows per store shard: batch (default: the batch size, since batches never cross a shard), "
                         "store (the store's own default, ~32 MB of tokens), or a number")
    ap.add_argument("--repeats", type=int, default=1, help="end-to-end runs per model (the best is reported)")
    ap.add_argument("--decode-sample", type=int, default=32, help="images timed for the one-core decode figure")
    ap.add_argument("--switch-batches", type=int, default=8, help="batches for the channels-last/compile runs")
    ap.add_argument("--skip", default="", help="comma list of switches not to measure: channels_last,compile")
    ap.add_argument("--budget-s", type=float, default=190.0, help="skip optional steps past this many seconds")
    ap.add_argument("--switch-reserve-s", type=float, default=45.0, help="time a switch needs to be tried")
    ap.add_argument("--workdir", type=Path, default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the run folder (JPEGs) for a rerun")
    ap.add_argument("--json", type=Path, default=None, help="also write all figures to this JSON file")
    args = ap.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    logging.getLogger().setLevel(logging.ERROR)  # open_clip: "No pretrained weights loaded" (loaded next)
    from mad_pipeline.extraction.device import parse_count

    args.batch_size = parse_count(args.batch_size, "--batch-size")
    args.num_workers = parse_count(args.num_workers, "--num-workers")
    dev = torch.device(args.device)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:5.0f} s] {msg}", file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    mach = machine(dev)
    log(f"{mach['device_name']}, {mach['cores']} cores, torch {mach['torch']} (CUDA {mach['cuda']})")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="mad-gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        paths = make_jpegs(work / "jpeg", args.images, procs=max(1, mach["cores"] - 1))
        hashes = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
        order = np.argsort(hashes)  # rows sorted by content hash, as mad extract does
        paths, hashes = [paths[i] for i in order], [hashes[i] for i in order]
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1e3
        log(f"{len(paths)} JPEGs 640x480, {kb:.0f} kB on average, in {work}")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            results.append(bench_model(name, args, work, paths, hashes, log, t_start))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    out = {"machine": mach, "args": {k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v)
                                     for k, v in vars(args).items()},
           "seconds": time.perf_counter() - t_start, "results": results}
    print_tables(results, mach)
    print(f"total bench time {out['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
