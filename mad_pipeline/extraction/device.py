"""Stage 1 on an accelerator: what changes when the teacher runs on CUDA, and nothing when it runs on CPU.

* bf16 autocast: ``--precision auto`` is bf16 on CUDA and fp32 on CPU (:func:`teachers.base.resolve_precision`;
  the precision is part of the teacher identity, so of the cache key). The store is fp16 either way.
* Pinned memory: the DataLoader's decode workers hand over page-locked batches, copied to the device with
  ``non_blocking=True`` on a copy stream, so the host-to-device copy overlaps the previous forward.
* Device-to-host without a stall: each batch's outputs are cast to fp16 on the device and copied into pinned host
  buffers on a side stream; the batch is handed to the writer one step late, after the next forward is queued, so the
  GPU always has work while the host waits for a copy (:func:`overlapped_forward`).
* Decode pool: ``--num-workers auto`` is one decode worker per core but one on CUDA (at most 32), 2 on CPU.
* Writer pool: several threads compress and write shards on CUDA (:func:`writer_threads`), one on CPU.
* ``--batch-size auto``: on CUDA the largest power of two (at most 256) whose forward fits in half of the device's
  *total* memory (measured by a probe forward), so the same device type always gets the same batch size (and
  identical reruns); 32 on CPU. Batches never cross a store shard, so a shard smaller than the batch caps it:
  pass ``--shard-rows`` at least the batch size on a GPU.
* ``channels_last`` and ``torch.compile`` (of the vision tower's residual blocks) are switches, off by default and
  forced off on CPU; ``bench/gpu_extract.py`` measures whether they help.

On CPU every path here is the plain one: the forward's outputs are cast and converted in place, batch by batch, so
stores are identical to what the straightforward loop writes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .batch_shape import fixed_shape

AUTO = "auto"
CPU_BATCH_SIZE = 32
CPU_DECODE_WORKERS = 2
MAX_DECODE_WORKERS = 32
MAX_BATCH = 65_536  # --batch-size: the same bound as training's
WORKERS_PER_CORE = 4  # --num-workers: decode workers beyond this many per core only compete for the cores
MAX_AUTO_BATCH = 256  # 66k ViT-L/14 tokens per matrix product (to be checked by bench/gpu.sh); shard of 135 MB
MEMORY_FRACTION = 0.5  # of the device's total memory, for activations of one batch (weights come on top)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def as_device(device) -> torch.device:
    """A ``torch.device`` from a device or its name (``auto``: CUDA when there is one)."""
    if isinstance(device, torch.device):
        return device
    if str(device) == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(str(device))


def parse_count(value, flag: str) -> int | str:
    """``auto`` or a positive integer (``--batch-size``, ``--num-workers``: 0 allowed for the latter)."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{flag} {value!r}: expected a whole number or auto") from None
    workers = flag == "--num-workers"
    low = 0 if workers else 1
    high = WORKERS_PER_CORE * usable_cores() if workers else MAX_BATCH
    if n < low:
        raise InputError(f"{flag} {n}: must be at least {low}")
    if n > high:
        why = f"{WORKERS_PER_CORE} per CPU core: more only compete for the cores" if workers else "far above any device"
        raise InputError(f"{flag} {n}: at most {high:,} ({why})")
    return n


def decode_workers(requested, device) -> int:
    """DataLoader decode workers: a number as given; ``auto``: 2 on CPU (the forward needs the cores), one per core
    but one (at most 32) on CUDA, where decoding JPEGs is what keeps the GPU fed."""
    if requested != AUTO:
        return int(requested)
    if as_device(device).type == "cuda":
        return max(1, min(usable_cores() - 1, MAX_DECODE_WORKERS))
    return CPU_DECODE_WORKERS


def writer_threads(device) -> int:
    """Writer threads: 1 on CPU (compression is ~1% of the forward there); on CUDA a quarter of the cores (2-8):
    at ~2,000 ViT-L/14 images/s the tokens are ~1 GB/s before compression, several cores' worth of Blosc/Zstd."""
    if as_device(device).type != "cuda":
        return 1
    return max(2, min(8, usable_cores() // 4))


@dataclass(frozen=True)
class FastPath:
    """How stage 1 drives its device. :meth:`for_device` is the only constructor code needs."""

    device: torch.device
    pin_memory: bool = False  # page-locked batches from the decode workers
    overlap_copies: bool = False  # copies on side streams, outputs handed over one batch late
    channels_last: bool = False
    compile: bool = False
    writers: int = 1

    @classmethod
    def for_device(cls, device, *, channels_last: bool = False, compile: bool = False,
                   writers: int | None = None) -> FastPath:
        dev = as_device(device)
        cuda = dev.type == "cuda"
        return cls(device=dev, pin_memory=cuda, overlap_copies=cuda, channels_last=cuda and channels_last,
                   compile=cuda and compile, writers=writers or writer_threads(dev))

    def loader_options(self, num_workers: int) -> dict:
        """Keyword arguments of the decode DataLoader."""
        opts = {"num_workers": num_workers, "pin_memory": self.pin_memory}
        if num_workers > 0:
            opts.update(prefetch_factor=4, persistent_workers=False)
        return opts


def teacher_device(teacher) -> torch.device:
    return as_device(getattr(teacher, "device", "cpu") or "cpu")


def prepare(teacher, fast: FastPath):
    """Apply the switches to the teacher's vision tower once (channels-last weights, compiled residual blocks)."""
    model = getattr(teacher, "model", None)
    visual = getattr(model, "visual", None)
    if visual is None or getattr(visual, "_mad_fast", None) == (fast.channels_last, fast.compile):
        return teacher
    if fast.channels_last:
        visual.to(memory_format=torch.channels_last)
    if fast.compile:
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        for block in blocks if blocks is not None else [visual]:
            block.compile(dynamic=False)
    visual._mad_fast = (fast.channels_last, fast.compile)
    return teacher


def resolve_batch_size(requested, teacher, fast: FastPath, *, fraction: float = MEMORY_FRACTION,
                       cap: int = MAX_AUTO_BATCH) -> int:
    """A number as given; ``auto``: 32 on CPU, and on CUDA the largest power of two (<= ``cap``) whose activations
    fit in ``fraction`` of the device's total memory, from the peak memory of one probe forward of 8 images."""
    if requested != AUTO:
        return int(requested)
    if fast.device.type != "cuda":
        return CPU_BATCH_SIZE
    memo = getattr(teacher, "_mad_auto_batch", None)  # one probe per loaded teacher (a dask worker keeps it)
    if memo is not None:
        return memo
    probe = 8
    size = int(getattr(teacher, "image_size", 224))
    torch.cuda.synchronize(fast.device)
    torch.cuda.reset_peak_memory_stats(fast.device)
    base = torch.cuda.memory_allocated(fast.device)
    teacher.encode_image_tokens(torch.zeros(probe, 3, size, size))
    torch.cuda.synchronize(fast.device)
    per_image = max(1, (torch.cuda.max_memory_allocated(fast.device) - base) // probe)
    total = torch.cuda.get_device_properties(fast.device).total_memory
    fits = int(total * fraction // per_image)
    batch = int(max(1, min(cap, 1 << max(0, fits.bit_length() - 1))))
    teacher._mad_auto_batch = batch
    return batch


def plain_batch_size(requested, device) -> int:
    """Batch size of the passes without a memory probe (texts, zero-shot scores): a number as given; ``auto``:
    32 on CPU, 256 on CUDA (text towers are small next to the image tower)."""
    if requested != AUTO:
        return int(requested)
    return 256 if as_device(device).type == "cuda" else CPU_BATCH_SIZE


class _HostCopy:
    """One batch's fp16 outputs on their way to pinned host memory (on a side stream)."""

    def __init__(self, tensors: list[torch.Tensor], stream, clock: dict | None):
        compute = torch.cuda.current_stream(stream.device)
        stream.wait_stream(compute)  # the copy starts when the forward (and the fp16 cast) is done
        self.host: list[torch.Tensor] = []
        self.start = torch.cuda.Event(enable_timing=clock is not None)
        self.done = torch.cuda.Event(enable_timing=clock is not None)
        with torch.cuda.stream(stream):
            self.start.record(stream)
            for t in tensors:
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                h.copy_(t, non_blocking=True)
                t.record_stream(stream)  # the allocator keeps t until the copy is done
                self.host.append(h)
            self.done.record(stream)

    def numpy(self) -> list[np.ndarray]:
        self.done.synchronize()
        return [h.numpy() for h in self.host]  # views: each array keeps its pinned tensor alive


def _add(clock: dict | None, key: str, seconds: float) -> None:
    if clock is not None:
        clock[key] = clock.get(key, 0.0) + seconds


def overlapped_forward(teacher, batches: Iterable, fast: FastPath, clock: dict | None = None,
                       dense: bool = False, batch_size: int | None = None) -> Iterator:
    """Run ``teacher.encode_image_tokens`` over ``(meta, pixels)`` batches; yield ``(meta, (tokens, pooled))`` as
    fp16 numpy arrays, in order (``dense``: ``(tokens, pooled, dense)``, the teacher's dense joint-space features).

    On CPU each batch is yielded right after its forward. On CUDA the host-to-device copy runs on a copy stream
    from pinned memory, the outputs are cast to fp16 on the device and copied to pinned host buffers on a side
    stream, and a batch is yielded only after the next one's forward is queued: the GPU never waits for the host.
    ``clock`` (a dict) collects seconds: ``input_wait`` (waiting for decoded batches), ``forward`` (CPU: the forward;
    CUDA: GPU time of the forward and the fp16 cast, by CUDA events), ``h2d`` and ``d2h`` (CUDA only: copy-stream
    times), ``to_host`` (CPU: fp16 cast and conversion; CUDA: waiting for a copy to finish). ``batch_size``: every
    forward runs on that many rows, a shorter batch padded (:mod:`.batch_shape`), so a row does not depend on its
    batch."""
    forward = _forward(teacher, dense)
    if batch_size:
        forward = fixed_shape(forward, batch_size)
    if not fast.overlap_copies:
        yield from _plain(forward, batches, clock)
        return
    dev = fast.device
    copy_in, copy_out = torch.cuda.Stream(dev), torch.cuda.Stream(dev)
    timed = clock is not None
    pending: tuple | None = None
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        _add(clock, "input_wait", time.perf_counter() - t0)
        if item is None:
            break
        meta, pixels = item
        compute = torch.cuda.current_stream(dev)
        ev = [torch.cuda.Event(enable_timing=timed) for _ in range(4)]  # copy in: start, end; forward: same
        with torch.cuda.stream(copy_in):
            ev[0].record(copy_in)
            x = pixels.to(dev, non_blocking=True)
            if fast.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ev[1].record(copy_in)
        compute.wait_stream(copy_in)
        x.record_stream(compute)
        ev[2].record(compute)  # reached when the previous forward and this copy are done
        out = [t.to(torch.float16) for t in forward(x)]
        ev[3].record(compute)
        copy = _HostCopy(out, copy_out, clock)
        if pending is not None:
            yield _finish(pending, clock)
        pending = (meta, copy, ev)
    if pending is not None:
        yield _finish(pending, clock)


def _finish(pending: tuple, clock: dict | None):
    meta, copy, ev = pending
    t0 = time.perf_counter()
    arrays = copy.numpy()
    _add(clock, "to_host", time.perf_counter() - t0)
    if clock is not None:  # all events of this batch are complete once its copy is
        _add(clock, "h2d", ev[0].elapsed_time(ev[1]) / 1e3)
        _add(clock, "forward", ev[2].elapsed_time(ev[3]) / 1e3)
        _add(clock, "d2h", copy.start.elapsed_time(copy.done) / 1e3)
    return meta, tuple(arrays)


def _forward(teacher, dense: bool):
    """The image forward: ``teacher.encode_image_tokens``, asked for the dense features only when wanted (a teacher
    without them takes no ``dense`` argument)."""
    if dense:
        return lambda x: teacher.encode_image_tokens(x, dense=True)
    return teacher.encode_image_tokens


def _plain(forward, batches: Iterable, clock: dict | None) -> Iterator:
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        item = next(it, None)
        t1 = time.perf_counter()
        _add(clock, "input_wait", t1 - t0)
        if item is None:
            return
        meta, pixels = item
        outputs = forward(pixels)
        t2 = time.perf_counter()
        arrays = tuple(t.to(torch.float16).cpu().numpy() for t in outputs)
        _add(clock, "forward", t2 - t1)
        _add(clock, "to_host", time.perf_counter() - t2)
        yield meta, arrays
