"""Run a teacher over the unfinished shards of a store: decode in workers, forward in the main process, write in
a background thread. Everything is bounded: DataLoader prefetch and the writer queue.

Batches never cross a shard: each shard's rows are cut into batches from its first row, so the batch composition of
a shard is fixed by the shard alone (not by which shards were pending, nor by which process computes it), and a
resumed or distributed run gives every row the same batch as an uninterrupted one. ``shards`` restricts a pass to
some shards (one dask task computes one shard, see :mod:`.distributed`); ``RowWindow`` then holds only their rows.

With a ``ReusePlan``, rows that a donor store already holds are copied from it (shard by shard, as the teacher's
batches reach each shard, so only a few shards are ever buffered) and the teacher runs only on the others; with
nothing left to compute it is not needed at all (``teacher`` may then be None)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import InputError
from ..store.layout import DENSE
from ..store.writer import StoreWriter
from .batch_shape import encode_texts
from .device import (
    FastPath,
    decode_workers,
    overlapped_forward,
    plain_batch_size,
    prepare,
    resolve_batch_size,
    teacher_device,
)
from .reader import ImageRows, collate
from .reuse import ReusePlan
from .writer import ShardAssembler


@dataclass
class PassStats:
    rows_total: int = 0
    rows_computed: int = 0
    rows_reused: int = 0  # copied from donor stores of the same teacher identity
    shards_total: int = 0
    shards_resumed: int = 0
    shards_computed: int = 0
    seconds: float = 0.0
    errors: list[dict] = field(default_factory=list)  # rows that failed to decode (skip mode)
    timings: dict = field(default_factory=dict)  # seconds per step (device.overlapped_forward) and of the writers


class RowWindow:
    """The values of rows ``[lo, lo + len(values))`` of a column, indexed by global row (an int or an int array), so
    that a task computing one shard is sent that shard's paths and hashes only."""

    def __init__(self, lo: int, values):
        self.lo = lo
        self.values = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):  # one object per row, even a tuple-like location
            self.values[i] = v

    def __getitem__(self, rows):
        return self.values[np.asarray(rows) - self.lo] if not isinstance(rows, (int, np.integer)) \
            else self.values[int(rows) - self.lo]


def _column(values) -> RowWindow:
    return values if isinstance(values, RowWindow) else RowWindow(0, values)


def shard_batches(rows, shard_rows: int, batch_size: int) -> list[list[int]]:
    """Positions in ``rows`` (increasing) cut into batches of at most ``batch_size`` that never cross a shard: each
    shard's rows are batched from its first row."""
    rows = np.asarray(rows, np.int64)
    out: list[list[int]] = []
    if not len(rows):
        return out
    shard = rows // shard_rows
    starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out.extend(list(range(i, min(i + batch_size, b))) for i in range(a, b, batch_size))
    return out


def _pending_rows(writer: StoreWriter, shards: list[int] | None = None) -> tuple[list[int], list[int]]:
    done = writer.done_shards()
    todo = [s for s in (range(writer.n_shards) if shards is None else shards) if s not in done]
    rows = [r for s in todo for r in range(*writer.shard_range(s))]
    return todo, rows


def rows_to_compute(writer: StoreWriter, reuse: ReusePlan | None) -> list[int]:
    """Rows of the unfinished shards that the teacher must compute (the others come from donor stores)."""
    _, rows = _pending_rows(writer)
    return rows if reuse is None else reuse.missing(rows)


def write_empty_shards(writer: StoreWriter, todo: list[int]) -> None:
    """A store with no rows (every input skipped) still has its one (empty) shard marked done."""
    for s in todo:
        lo, hi = writer.shard_range(s)
        if hi == lo:
            writer.write_shard(s, {name: np.empty((0, *spec.row_shape), object if spec.dtype == "str" else spec.dtype)
                                   for name, spec in writer.specs.items()})


def _merged(writer: StoreWriter, todo: list[int], reuse: ReusePlan | None, computed, hashes: np.ndarray):
    """Yield (rows, arrays, was_computed): the teacher's batches, with each shard's donor rows copied just before
    the first batch that reaches past that shard (so shards complete in order and few are ever buffered)."""
    names = list(writer.specs)
    queue = list(todo) if reuse is not None else []

    def copies(upto: int):
        while queue and queue[0] <= upto:
            s = queue.pop(0)
            lo, hi = writer.shard_range(s)
            writer.record_reuse(s, reuse.shard_rows(lo, hi))
            for rows, arrays in reuse.copy(lo, hi, names, hashes):
                yield rows, arrays, False

    for batch_rows, arrays in computed:
        yield from copies(int(np.max(batch_rows)) // writer.shard_rows)
        yield batch_rows, arrays, True
    yield from copies(writer.n_shards)


def _fill(writer: StoreWriter, label: str, unit: str, progress, batches, reuse: ReusePlan | None = None,
          hashes=None, shards: list[int] | None = None, writers: int = 1) -> PassStats:
    """Run ``batches(rows)`` over the rows of unfinished shards (of ``shards``, default all) that no donor has, copy
    the others from their donor, and hand each batch to the background writer."""
    t0 = time.perf_counter()
    todo, rows = _pending_rows(writer, shards)
    asked = writer.n_shards if shards is None else len(shards)
    stats = PassStats(rows_total=writer.n_rows, shards_total=writer.n_shards,
                      shards_resumed=asked - len(todo))
    task = progress.add_task(label, total=len(rows), unit=unit) if progress else None
    write_empty_shards(writer, todo)
    if rows:
        compute = rows if reuse is None else reuse.missing(rows)
        sink = ShardAssembler(writer, todo, writers=writers)
        try:
            for batch_rows, arrays, computed in _merged(writer, todo, reuse, batches(compute, stats) if compute else (),
                                                         hashes):
                sink.put(batch_rows, arrays)
                if computed:
                    stats.rows_computed += len(batch_rows)
                else:
                    stats.rows_reused += len(batch_rows)
                if progress:
                    progress.update(task, advance=len(batch_rows))
            sink.close()
        except BaseException:
            sink.abort()
            raise
        stats.shards_computed = sink.shards_written
        stats.timings.update(sink.stats())
    stats.seconds = time.perf_counter() - t0
    return stats


def extract_images(teacher, writer: StoreWriter, hashes, paths, *, batch_size: int,
                   num_workers: int, on_error: str, progress=None,
                   reuse: ReusePlan | None = None, shards: list[int] | None = None,
                   fast: FastPath | None = None) -> PassStats:
    """Fill an image store. ``hashes[i]``/``paths[i]`` belong to row i (rows sorted by content hash): lists, or
    ``RowWindow``s holding at least the rows of ``shards``. ``fast``: how the device is driven (pinned memory,
    copies overlapping the forward, writer threads; see :mod:`.device`), by default from the teacher's device."""
    hash_arr = _column(hashes)
    fast = fast or FastPath.for_device(teacher_device(teacher))
    dense = DENSE in writer.specs  # a --dense store: the teacher's dense joint-space features too

    def batches(rows, stats):
        size = resolve_batch_size(batch_size, teacher, fast)  # "auto": from the device's memory (32 on CPU)
        ds = ImageRows([(r, paths[r]) for r in rows], teacher.preprocess, teacher.crop_box_fn, teacher.image_size)
        loader = DataLoader(ds, batch_sampler=shard_batches(rows, writer.shard_rows, size),
                            collate_fn=collate, **fast.loader_options(decode_workers(num_workers, fast.device)))

        def checked():
            for batch_rows, pixels, boxes, errors in loader:
                bad = [i for i, e in enumerate(errors) if e]
                if bad and on_error != "skip":
                    i = bad[0]
                    raise InputError(f"{paths[batch_rows[i]]}: {errors[i]} (use --on-error skip to record and go on)")
                yield (batch_rows, boxes, errors), pixels

        for (batch_rows, boxes, errors), outputs in overlapped_forward(prepare(teacher, fast), checked(), fast,
                                                                       stats.timings, dense=dense, batch_size=size):
            tokens, pooled = outputs[:2]
            bad = [i for i, e in enumerate(errors) if e]
            valid = np.asarray([not e for e in errors])
            if bad:
                for values in outputs:
                    values[~valid] = 0
                recorded = [{"image_hash": hashes[batch_rows[i]], "path": paths[batch_rows[i]], "reason": errors[i]}
                            for i in bad]
                writer.record_errors(recorded)
                stats.errors.extend(recorded)
            yield batch_rows, {"image_hash": hash_arr[batch_rows], "tokens": tokens, "pooled": pooled,
                               "crop_box": boxes, "valid": valid, **({DENSE: outputs[2]} if dense else {})}

    return _fill(writer, "image teacher", "img", progress, batches, reuse, hash_arr, shards, fast.writers)


def extract_texts(teacher, writer: StoreWriter, hashes, texts, *, batch_size: int,
                  progress=None, reuse: ReusePlan | None = None, shards: list[int] | None = None) -> PassStats:
    """Fill a text store. Tokenising is cheap and runs in the main process; writes overlap the forward."""
    hash_arr = _column(hashes)
    text_arr = _column(texts)

    def batches(rows, stats):
        rows_arr = np.asarray(rows, np.int64)
        size = plain_batch_size(batch_size, teacher_device(teacher))  # "auto": 32 on CPU, 256 on CUDA
        for positions in shard_batches(rows_arr, writer.shard_rows, size):
            batch_rows = rows_arr[positions]
            batch, tokens, pooled = encode_texts(teacher, [texts[r] for r in batch_rows], size)  # a fixed shape
            tokens = tokens.to(torch.float16).cpu().numpy()
            tokens[~batch.mask.numpy()] = 0  # padding positions carry no information
            yield batch_rows, {"text_hash": hash_arr[batch_rows], "text": text_arr[batch_rows], "tokens": tokens,
                               "length": batch.lengths, "pooled": pooled.to(torch.float16).cpu().numpy(),
                               "char_span": batch.spans}

    return _fill(writer, "text teacher", "text", progress, batches, reuse, hash_arr, shards)
