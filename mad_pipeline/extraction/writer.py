"""Background writing: rows are assembled into whole shards and written while the teacher computes the next batch.

One thread assembles rows (any batch size) into shard buffers; a shard whose rows are all in goes to a pool of writer
threads that compress and write it (``StoreWriter.write_shard``: Blosc/Zstd per chunk, which runs without the GIL)
and mark it done. With one writer (the default on CPU, where the forward is the bound) the assembling thread writes
itself; on an accelerator several writers compress shards at once, so a token rate of ~1 GB/s does not wait on one
core. Shards are independent files, so writers need no lock and the store's bytes do not depend on their number.

Memory is bounded: at most ``maxsize`` batches wait in the queue, plus the shards being assembled (usually one or
two) and ``2 * writers`` complete shards (queued for or in a writer). The producer (the forward) blocks only when
the batch queue is full; the seconds it spent blocked are counted (``blocked_s``), so a slow writer is visible.
A writer that fails (a full disk, a broken codec) is re-raised in the producer at its next ``put`` or at
``close``: never a hang.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time

import numpy as np

from ..store.writer import StoreWriter

_STOP = object()
_POLL_S = 0.5  # how often a blocked put looks for a failure in another thread


class ShardAssembler:
    """Rows arrive in any batch size; each shard is written (and marked done) as soon as all its rows are in."""

    def __init__(self, writer: StoreWriter, shards: list[int], maxsize: int = 8, on_shard=None, writers: int = 1):
        self.writer = writer
        self.pending = set(shards)
        self.buffers: dict[int, dict[str, np.ndarray]] = {}
        self.filled: dict[int, int] = {}
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.on_shard = on_shard
        self.shards_written = 0
        self.write_s = 0.0  # compress + write seconds, summed over the writer threads
        self.blocked_s = 0.0  # seconds the producer waited because the batch queue was full
        self.n_writers = max(1, int(writers))
        self._lock = threading.Lock()
        self._stopping = False
        self.full: queue.Queue = queue.Queue(maxsize=self.n_writers)  # complete shards waiting for a writer
        self.pool = [threading.Thread(target=self._write_loop, name=f"mad-store-writer-{i}", daemon=True)
                     for i in range(self.n_writers if self.n_writers > 1 else 0)]
        for t in self.pool:
            t.start()
        self.thread = threading.Thread(target=self._loop, name="mad-store-assembler", daemon=True)
        self.thread.start()

    # ----------------------------------------------------------------- producer side
    def put(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        try:
            self.q.put_nowait((rows, arrays))
            return
        except queue.Full:
            pass
        t0 = time.perf_counter()
        try:
            self._put_until((rows, arrays), self.q)
        finally:
            self.blocked_s += time.perf_counter() - t0

    def close(self) -> None:
        self._put_until(_STOP, self.q)
        self.thread.join()
        for t in self.pool:
            t.join()
        if self.error is not None:
            raise self.error
        if self.pending:
            raise RuntimeError(f"shards {sorted(self.pending)[:5]} never received all their rows")

    def abort(self) -> None:
        """Stop without flushing (the partial store keeps what was already marked done)."""
        self._stopping = True
        self.pending.clear()
        _drain(self.q)
        _offer(self.q, _STOP)
        self.thread.join(timeout=30)  # it queues one stop per writer; writers skip what is left
        for t in self.pool:
            t.join(timeout=30)

    def stats(self) -> dict:
        return {"writers": self.n_writers, "shards_written": self.shards_written, "write_s": self.write_s,
                "blocked_s": self.blocked_s}

    def _put_until(self, item, q: queue.Queue) -> None:
        """Put ``item``, waiting while the queue is full, unless another thread has failed (then raise)."""
        while True:
            if self.error is not None and item is not _STOP:
                raise self.error from None
            try:
                q.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                if self.error is not None and item is _STOP:
                    return  # the consumer is gone; its error is raised by close
                continue

    def _fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e

    # ----------------------------------------------------------------- assembling thread
    def _loop(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _STOP:
                    break
                if not self._stopping:
                    self._add(*item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the producer thread
            self._fail(e)
            _drain(self.q)  # so a blocked producer wakes up
        finally:
            for _ in self.pool:  # one stop per writer, after every complete shard (writers always drain)
                self.full.put(_STOP)

    def _add(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        w = self.writer
        shard_ids = rows // w.shard_rows
        for s in np.unique(shard_ids):
            s = int(s)
            sel = shard_ids == s
            lo, hi = w.shard_range(s)
            if s not in self.buffers:
                self.buffers[s] = {
                    name: np.full((hi - lo, *spec.row_shape), spec.fill,
                                  dtype=object if spec.dtype == "str" else spec.dtype)
                    for name, spec in w.specs.items()
                }
                self.filled[s] = 0
            whole = bool(sel.all())  # the usual case: a batch inside one shard (no copy of the selection)
            local = rows if whole else rows[sel]
            local = local - lo
            if len(local) and local[-1] - local[0] + 1 == len(local) and bool(np.all(local[1:] > local[:-1])):
                local = slice(int(local[0]), int(local[-1]) + 1)  # consecutive rows: one block copy per array
            for name, values in arrays.items():
                self.buffers[s][name][local] = values if whole else values[sel]
            self.filled[s] += int(sel.sum())
            if self.filled[s] == hi - lo:
                data = self.buffers.pop(s)
                self.filled.pop(s)
                if self.pool:
                    self._put_until((s, data), self.full)
                else:
                    self._write(s, data)

    # ----------------------------------------------------------------- writer threads
    def _write_loop(self) -> None:
        while True:
            item = self.full.get()
            if item is _STOP:
                return
            if self.error is not None or self._stopping:
                continue  # keep taking shards so the assembling thread never blocks on a dead pool
            try:
                self._write(*item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer thread
                self._fail(e)

    def _write(self, s: int, data: dict[str, np.ndarray]) -> None:
        t0 = time.perf_counter()
        self.writer.write_shard(s, data)
        with self._lock:
            self.write_s += time.perf_counter() - t0
            self.pending.discard(s)
            self.shards_written += 1
        if self.on_shard:
            self.on_shard(s)


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


def _offer(q: queue.Queue, item) -> None:
    with contextlib.suppress(queue.Full):
        q.put_nowait(item)
