"""Background writer: assembles rows into whole shards and writes them while the teacher computes the next batch."""

from __future__ import annotations

import queue
import threading

import numpy as np

from ..store.writer import StoreWriter

_STOP = object()


class ShardAssembler:
    """Rows arrive in any batch size; each shard is written (and marked done) as soon as all its rows are in.

    The queue is bounded, so a slow disk back-pressures the teacher instead of filling memory.
    """

    def __init__(self, writer: StoreWriter, shards: list[int], maxsize: int = 8, on_shard=None):
        self.writer = writer
        self.pending = set(shards)
        self.buffers: dict[int, dict[str, np.ndarray]] = {}
        self.filled: dict[int, int] = {}
        self.q: queue.Queue = queue.Queue(maxsize=maxsize)
        self.error: BaseException | None = None
        self.on_shard = on_shard
        self.shards_written = 0
        self.thread = threading.Thread(target=self._loop, name="mad-store-writer", daemon=True)
        self.thread.start()

    def put(self, rows: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        if self.error is not None:
            raise self.error
        while True:
            try:
                self.q.put((rows, arrays), timeout=0.5)
                return
            except queue.Full:
                if self.error is not None:
                    raise self.error from None

    def close(self) -> None:
        self.q.put(_STOP)
        self.thread.join()
        if self.error is not None:
            raise self.error
        if self.pending:
            raise RuntimeError(f"shards {sorted(self.pending)[:5]} never received all their rows")

    def abort(self) -> None:
        """Stop without flushing (the partial store keeps what was already marked done)."""
        self.pending.clear()
        self.q.put(_STOP)
        self.thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while True:
                item = self.q.get()
                if item is _STOP:
                    return
                self._add(*item)
        except BaseException as e:  # noqa: BLE001 - re-raised in the producer thread
            self.error = e
            while True:  # drain so a blocked producer wakes up
                try:
                    if self.q.get_nowait() is _STOP:
                        return
                except queue.Empty:
                    return

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
            local = rows[sel] - lo
            for name, values in arrays.items():
                self.buffers[s][name][local] = values[sel]
            self.filled[s] += int(sel.sum())
            if self.filled[s] == hi - lo:
                w.write_shard(s, self.buffers.pop(s))
                self.filled.pop(s)
                self.pending.discard(s)
                self.shards_written += 1
                if self.on_shard:
                    self.on_shard(s)
