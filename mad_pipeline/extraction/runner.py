"""Run a teacher over the unfinished shards of a store: decode in workers, forward in the main process, write in
a background thread. Everything is bounded: DataLoader prefetch and the writer queue.

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
from ..store.writer import StoreWriter
from .device import FastPath, overlapped_forward, prepare, teacher_device
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


def _pending_rows(writer: StoreWriter) -> tuple[list[int], list[int]]:
    done = writer.done_shards()
    todo = [s for s in range(writer.n_shards) if s not in done]
    rows = [r for s in todo for r in range(*writer.shard_range(s))]
    return todo, rows


def rows_to_compute(writer: StoreWriter, reuse: ReusePlan | None) -> list[int]:
    """Rows of the unfinished shards that the teacher must compute (the others come from donor stores)."""
    _, rows = _pending_rows(writer)
    return rows if reuse is None else reuse.missing(rows)


def _write_empty_shards(writer: StoreWriter, todo: list[int]) -> None:
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
          hashes: np.ndarray | None = None, writers: int = 1) -> PassStats:
    """Run ``batches(rows)`` over the rows of unfinished shards that no donor has, copy the others from their donor,
    and hand each batch to the background writer."""
    t0 = time.perf_counter()
    todo, rows = _pending_rows(writer)
    stats = PassStats(rows_total=writer.n_rows, shards_total=writer.n_shards,
                      shards_resumed=writer.n_shards - len(todo))
    task = progress.add_task(label, total=len(rows), unit=unit) if progress else None
    _write_empty_shards(writer, todo)
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


def extract_images(teacher, writer: StoreWriter, hashes: list[str], paths: list[str], *, batch_size: int,
                   num_workers: int, on_error: str, progress=None, pin_memory: bool = False,
                   reuse: ReusePlan | None = None, fast: FastPath | None = None) -> PassStats:
    """Fill an image store. ``hashes[i]``/``paths[i]`` belong to row i (rows sorted by content hash). ``fast``: how
    the device is driven (pinned memory, copies overlapping the forward, writer threads; see :mod:`.device`), by
    default from the teacher's device."""
    hash_arr = np.asarray(hashes, dtype=object)
    fast = fast or FastPath.for_device(teacher_device(teacher))

    def batches(rows, stats):
        ds = ImageRows([(r, paths[r]) for r in rows], teacher.preprocess, teacher.crop_box_fn, teacher.image_size)
        loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate, **fast.loader_options(num_workers))

        def checked():
            for batch_rows, pixels, boxes, errors in loader:
                bad = [i for i, e in enumerate(errors) if e]
                if bad and on_error != "skip":
                    i = bad[0]
                    raise InputError(f"{paths[batch_rows[i]]}: {errors[i]} (use --on-error skip to record and go on)")
                yield (batch_rows, boxes, errors), pixels

        for (batch_rows, boxes, errors), (tokens, pooled) in overlapped_forward(prepare(teacher, fast), checked(),
                                                                                fast, stats.timings):
            bad = [i for i, e in enumerate(errors) if e]
            valid = np.asarray([not e for e in errors])
            if bad:
                tokens[~valid] = 0
                pooled[~valid] = 0
                recorded = [{"image_hash": hashes[batch_rows[i]], "path": paths[batch_rows[i]], "reason": errors[i]}
                            for i in bad]
                writer.record_errors(recorded)
                stats.errors.extend(recorded)
            yield batch_rows, {"image_hash": hash_arr[batch_rows], "tokens": tokens, "pooled": pooled,
                               "crop_box": boxes, "valid": valid}

    return _fill(writer, "image teacher", "img", progress, batches, reuse, hash_arr, fast.writers)


def extract_texts(teacher, writer: StoreWriter, hashes: list[str], texts: list[str], *, batch_size: int,
                  progress=None, reuse: ReusePlan | None = None) -> PassStats:
    """Fill a text store. Tokenising is cheap and runs in the main process; writes overlap the forward."""
    hash_arr = np.asarray(hashes, dtype=object)
    text_arr = np.asarray(texts, dtype=object)

    def batches(rows, stats):
        rows_arr = np.asarray(rows, np.int64)
        for start in range(0, len(rows_arr), batch_size):
            batch_rows = rows_arr[start : start + batch_size]
            batch = teacher.tokenize([texts[r] for r in batch_rows])
            tokens, pooled = teacher.encode_text_tokens(batch)
            tokens = tokens.to(torch.float16).cpu().numpy()
            tokens[~batch.mask.numpy()] = 0  # padding positions carry no information
            yield batch_rows, {"text_hash": hash_arr[batch_rows], "text": text_arr[batch_rows], "tokens": tokens,
                               "length": batch.lengths, "pooled": pooled.to(torch.float16).cpu().numpy(),
                               "char_span": batch.spans}

    return _fill(writer, "text teacher", "text", progress, batches, reuse, hash_arr)
