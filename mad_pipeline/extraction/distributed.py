"""Stage 1 on dask.distributed: one task per shard of a store, computed on whichever worker is free.

The client (the ``mad extract`` process) creates the partial store (its layout), sends one task per unfinished
shard and, once every shard is marked done, writes the manifest and publishes the store: the same store, manifest
and key as a single-process run. A task computes the rows of one shard -- a whole zarr shard of every array -- and
writes only that shard's files, then marks it done, so no locks are needed; a task whose shard is already marked
done returns at once. A worker that is lost mid-shard (killed, out of memory) leaves that shard unmarked and the
scheduler runs its task on another worker; a client that is killed leaves the shards marked done so far, and the
same command skips them.

Each worker builds a teacher once and keeps it (:data:`_TEACHERS`, keyed by the teacher's name, weights, device,
precision and length) and checks that the teacher's identity there (read from its files, as on the client) is the
one the client keyed the store by. The client never builds a teacher: the store's geometry is asked of a worker.
Rows that donor stores hold (:mod:`.reuse`) are copied by the task of their shard, from the donor's location.
Batches are cut within each shard from its first row (:func:`.runner.shard_batches`), independent of the worker.

The cache directory must be on a filesystem the client and every worker share (one machine, NFS, Lustre...).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import testhooks
from ..errors import MadError, StoreError, TeacherError
from ..store.layout import ArraySpec
from ..store.reader import open_store
from ..store.writer import LAYOUT_FILE, StoreWriter
from ..teachers.identity import LazyTeacher
from .geometry import GEOMETRY
from .reuse import Donor, ReusePlan
from .runner import PassStats, RowWindow, extract_images, extract_texts, write_empty_shards
from .zeroshot import fill_zeroshot

TASK_RETRIES = 2  # a task that raises (not a user error) runs again, on any worker, this many times
START_POINT = "extract-shard-start"  # MAD_TEST_PAUSE points of a worker's shard task (tests only)
WRITTEN_POINT = "extract-shard-written"


@dataclass(frozen=True)
class TeacherRef:
    """What a worker needs to build the client's teacher itself."""

    name: str
    weights: str | None
    device: str
    precision: str  # as resolved on the client (it is in the identity)
    max_length: int | None
    flag: str
    memo_dir: str  # <cache>/identities: the identity memos the client wrote

    @classmethod
    def of(cls, lazy: LazyTeacher) -> TeacherRef:
        return cls(lazy.name, lazy.weights, lazy.device, lazy.precision, lazy.max_length, lazy.flag,
                   str(lazy._memo_dir))  # noqa: SLF001 - the memo folder it was made with


@dataclass(frozen=True)
class StoreRef:
    """The partial store a task writes into, as the client created it."""

    path: str
    kind: str
    key: str
    n_rows: int
    specs: tuple[ArraySpec, ...]
    shard_rows: int

    @classmethod
    def of(cls, writer: StoreWriter) -> StoreRef:
        return cls(str(writer.path), writer.kind, writer.key, writer.n_rows, tuple(writer.specs.values()),
                   writer.shard_rows)


@dataclass
class ShardJob:
    store: StoreRef
    shard: int
    hashes: list  # the shard's rows of the hash column
    inputs: list  # the shard's image paths or texts
    teacher: TeacherRef
    identity: dict  # the teacher identity (this tower) the client keyed the store by
    batch_size: int
    num_workers: int = 0
    on_error: str = "fail"
    reuse: dict | None = None  # {"donors": [(key, source, location)], "which": [...], "src": [...]} of the shard


# ----------------------------------------------------------------------------------------------------------------------
# on a worker

_TEACHERS: dict[TeacherRef, LazyTeacher] = {}
_DONORS: dict[str, object] = {}


def _here() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def worker_teacher(ref: TeacherRef, tower: str, identity: dict | None):
    """This worker's teacher for ``ref``: built on first use and kept; its identity must be the client's."""
    lazy = _TEACHERS.get(ref)
    if lazy is None:
        lazy = _TEACHERS[ref] = LazyTeacher(ref.name, ref.weights, ref.device, ref.precision, ref.max_length,
                                            Path(ref.memo_dir), flag=ref.flag)
    if identity is not None and lazy.identity(tower) != identity:
        raise TeacherError(f"dask worker {_here()}: teacher {ref.name} ({ref.flag} {ref.weights}) has another "
                           "identity there than on the client (other weights or model configs at the same path?)")
    return lazy.get()


def _open_partial(ref: StoreRef) -> StoreWriter:
    """The client's partial store; never created here (a worker that cannot see it says so)."""
    try:
        layout = json.loads((Path(ref.path) / LAYOUT_FILE).read_text())
    except (OSError, ValueError):
        layout = None
    if not layout or layout.get("key") != ref.key or layout.get("n_rows") != ref.n_rows:
        raise StoreError(f"{ref.path}: no partial {ref.kind} store {ref.key[:12]} there as seen from dask worker "
                         f"{_here()}; the cache must be on a filesystem the client and every worker share")
    return StoreWriter(Path(ref.path), ref.kind, ref.n_rows, list(ref.specs), ref.key, shard_rows=ref.shard_rows)


def _reuse_plan(job: ShardJob, lo: int) -> ReusePlan | None:
    if job.reuse is None:
        return None
    donors = []
    for key, source, where in job.reuse["donors"]:
        if where not in _DONORS:
            _DONORS[where] = open_store(where)
        donors.append(Donor(key, source, _DONORS[where]))
    n = job.store.n_rows
    which, src = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    which[lo : lo + len(job.reuse["which"])] = job.reuse["which"]
    src[lo : lo + len(job.reuse["src"])] = job.reuse["src"]
    return ReusePlan(donors, which, src)


def _guarded(fn, *args):
    """Run ``fn`` on the worker; a user error comes back as a value (retrying it would not help)."""
    try:
        return {"value": fn(*args)}
    except MadError as e:
        return {"error": e}


def run_shard(job: ShardJob) -> dict:
    return _guarded(_run_shard, job)


def _run_shard(job: ShardJob) -> dict:
    t0 = time.perf_counter()
    writer = _open_partial(job.store)
    lo, hi = writer.shard_range(job.shard)
    testhooks.pause(START_POINT)
    reuse = _reuse_plan(job, lo)
    rows = [] if job.shard in writer.done_shards() else list(range(lo, hi))
    compute = rows if reuse is None else reuse.missing(rows)
    teacher = worker_teacher(job.teacher, job.store.kind, job.identity) if compute else None
    hashes, inputs = RowWindow(lo, job.hashes), RowWindow(lo, job.inputs)
    if job.store.kind == "image":
        decode = 0 if multiprocessing.current_process().daemon else job.num_workers  # no children in a daemon
        stats = extract_images(teacher, writer, hashes, inputs, batch_size=job.batch_size, num_workers=decode,
                               on_error=job.on_error, reuse=reuse, shards=[job.shard])
    else:
        stats = extract_texts(teacher, writer, hashes, inputs, batch_size=job.batch_size, reuse=reuse,
                              shards=[job.shard])
    testhooks.pause(WRITTEN_POINT)
    return {"shard": job.shard, "rows": hi - lo, "rows_computed": stats.rows_computed,
            "rows_reused": stats.rows_reused, "written": stats.shards_computed, "errors": stats.errors,
            "seconds": time.perf_counter() - t0, "worker": _here()}


def _geometry(ref: TeacherRef, tower: str, identity: dict) -> dict:
    return GEOMETRY[tower](worker_teacher(ref, tower, identity))


def remote_geometry(ref: TeacherRef, tower: str, identity: dict) -> dict:
    return _guarded(_geometry, ref, tower, identity)


def _zeroshot(store: StoreRef, ref: TeacherRef, identity: dict, image_path: str, ids, hashes, candidates,
              batch_size: int) -> None:
    fill_zeroshot(_open_partial(store), worker_teacher(ref, "text", identity), image_path, ids, hashes, candidates,
                  batch_size=batch_size)


def remote_zeroshot(*args) -> dict:
    return _guarded(_zeroshot, *args)


# ----------------------------------------------------------------------------------------------------------------------
# on the client


def _value(future, what: str):
    """A task's value; its user error raised here as on a single process; a task that kept killing its workers
    as one line."""
    from distributed.scheduler import KilledWorker

    try:
        out = future.result()
    except KilledWorker:
        raise StoreError(f"{what}: its task was running on each of several dask workers that died (out of memory? "
                         "see the workers' logs); the shards already written are kept: run the same command again "
                         "to resume") from None
    if "error" in out:
        raise out["error"]
    return out["value"]


def geometry(pool, lazy: LazyTeacher, tower: str, identity: dict) -> dict:
    """The store geometry of ``lazy``'s ``tower``, from a worker that builds the teacher (the client does not)."""
    ref = TeacherRef.of(lazy)
    if (ref, tower) not in pool.geometries:
        fut = pool.client.submit(remote_geometry, ref, tower, identity, pure=False, retries=TASK_RETRIES)
        pool.geometries[(ref, tower)] = _value(fut, f"teacher {lazy.name}")
    return pool.geometries[(ref, tower)]


def reuse_slice(plan: ReusePlan | None, lo: int, hi: int) -> dict | None:
    """The part of a reuse plan a shard's task needs: its rows' donors (by location) and donor rows."""
    if plan is None or not (plan.which[lo:hi] >= 0).any():
        return None
    which = plan.which[lo:hi]
    used = np.unique(which[which >= 0])
    local = np.full(len(plan.donors), -1, np.int64)
    local[used] = np.arange(len(used))
    donors = [(plan.donors[d].key, plan.donors[d].source, plan.donors[d].store.path) for d in used.tolist()]
    return {"donors": donors, "which": np.where(which >= 0, local[np.clip(which, 0, None)], -1),
            "src": plan.src[lo:hi].copy()}


def fill_shards(pool, writer: StoreWriter, make_job, label: str, unit: str, progress=None) -> PassStats:
    """Compute every unfinished shard of ``writer`` as one task each (``make_job(shard)``); shards finish in any
    order and the progress bar counts rows over the whole cluster."""
    t0 = time.perf_counter()
    done = writer.done_shards()
    todo = [s for s in range(writer.n_shards) if s not in done]
    stats = PassStats(rows_total=writer.n_rows, shards_total=writer.n_shards, shards_resumed=len(done))
    write_empty_shards(writer, todo)
    todo = [s for s in todo if writer.shard_range(s)[1] > writer.shard_range(s)[0]]
    if todo:
        from distributed import as_completed

        client = pool.client
        sizes = {s: writer.shard_range(s)[1] - writer.shard_range(s)[0] for s in todo}
        task = progress.add_task(f"{label} ({pool.n_workers()} dask workers)", total=sum(sizes.values()),
                                 unit=unit) if progress else None
        run = uuid.uuid4().hex[:8]
        futures = {client.submit(run_shard, make_job(s), key=f"mad-{writer.kind}-{writer.key[:12]}-{s:06d}-{run}",
                                 pure=False, retries=TASK_RETRIES): s for s in todo}
        try:
            for fut in as_completed(futures, loop=client.loop):
                res = _value(fut, f"{writer.kind} store {writer.key[:12]} shard {futures[fut]}")
                stats.rows_computed += res["rows_computed"]
                stats.rows_reused += res["rows_reused"]
                stats.shards_computed += res["written"]
                stats.errors.extend(res["errors"])
                if progress:
                    progress.update(task, advance=res["rows"])
        except BaseException:
            client.cancel(list(futures))
            raise
    stats.seconds = time.perf_counter() - t0
    return stats


def fill_images(pool, writer: StoreWriter, lazy: LazyTeacher, identity: dict, hashes: list[str], paths: list[str],
                reuse: ReusePlan | None, *, batch_size: int, num_workers: int, on_error: str, progress=None
                ) -> PassStats:
    ref, store = TeacherRef.of(lazy), StoreRef.of(writer)

    def job(s: int) -> ShardJob:
        lo, hi = writer.shard_range(s)
        return ShardJob(store, s, hashes[lo:hi], paths[lo:hi], ref, identity, batch_size, num_workers, on_error,
                        reuse_slice(reuse, lo, hi))

    return fill_shards(pool, writer, job, "image teacher", "img", progress)


def fill_texts(pool, writer: StoreWriter, lazy: LazyTeacher, identity: dict, hashes: list[str], texts: list[str],
               reuse: ReusePlan | None, *, batch_size: int, progress=None) -> PassStats:
    ref, store = TeacherRef.of(lazy), StoreRef.of(writer)

    def job(s: int) -> ShardJob:
        lo, hi = writer.shard_range(s)
        return ShardJob(store, s, hashes[lo:hi], texts[lo:hi], ref, identity, batch_size,
                        reuse=reuse_slice(reuse, lo, hi))

    return fill_shards(pool, writer, job, "text teacher", "text", progress)


def fill_zeroshot_remote(pool, writer: StoreWriter, lazy: LazyTeacher, identity: dict, image_path: str, ids,
                         hashes, candidates, batch_size: int) -> None:
    """The zero-shot store in one task (a text pass over the candidates and one product per sample: cheap)."""
    fut = pool.client.submit(remote_zeroshot, StoreRef.of(writer), TeacherRef.of(lazy), identity, image_path,
                             list(ids), list(hashes), list(candidates), batch_size, pure=False, retries=TASK_RETRIES)
    _value(fut, f"zeroshot store {writer.key[:12]}")
