"""The text store in training order: a derived, cached copy of the text rows one dataset trains on.

A text store holds one row per distinct text, sorted by content hash, so the questions of one image sit in unrelated
chunks and every sample costs a chunk decode per text array. Training reads samples in chunk-aware order over the
*image* store (:mod:`.sampler`). The *view* copies the text rows the samples use (a row repeated when several samples
share a text) into the order of the samples' image-store rows, cut so that **one view chunk holds the samples of one
image-store chunk** (padded to the largest group): the samples of the image chunks a batch decodes have their texts in
as many view chunks. The four arrays training reads (``tokens``, ``pooled``, ``char_span``, ``length``) are packed
side by side into one row of 16-bit words (``rows``), so a chunk decode serves all four: per sample the text side
decodes no more chunks than the image side does for its tokens alone.

- **Where**: ``<cache root>/derived/views/<key>.zarr`` of the local cache (``Cache.derived_path``), written into a
  temporary directory beside it and renamed when whole, under the key's lock; served only when its manifest holds
  its key and every chunk file it records is there with the recorded bytes (else it is removed and built again).
- **Key**: the text store's cache key, the view's row list (the text row of every view row, -1 for padding) and its
  chunk rows. The same dataset over the same text store finds the same view; anything else builds another.
- **Values**: exactly what the text store's reader returns (a copy of the decoded values, bit for bit), so the
  samples' items, batches and losses are the same with the view as without it; the view is in no store key and no
  run fingerprint.
- **Who builds**: the process that sets up training, before any DataLoader worker starts; under several processes
  rank 0 first, then the first rank of each other machine, then the rest (each finds the view rank 0 published when
  the cache is shared).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..hashing import content_key

VIEW_FORMAT = 1
AREA = "views"
ARRAY = "rows"  # the packed array: one row of 16-bit words per view row
FIELDS = ("tokens", "pooled", "char_span", "length")  # the text-store arrays training reads, in packing order
PAD_LIMIT = 2.0  # aligned chunks only while padding keeps the view under this many times the samples' rows
CHUNK_MAX_BYTES = 8 << 20  # a view chunk decodes to at most this many bytes (halve the image rows per chunk)
SHARD_TARGET_BYTES = 32 << 20  # view chunks are grouped into shard files of about this size
WHOLE_STORE_BYTES = 256 << 20  # a text store up to this size (decoded) is read whole to build a view
MODES = ("auto", "off")


@dataclass(frozen=True)
class ViewPlan:
    """Which text row each view row holds and where each sample reads (see :func:`plan_view`)."""

    rows: np.ndarray  # canonical text-store row of each view row (-1: padding)
    sample_rows: np.ndarray  # view row of each sample
    chunk_rows: int  # view rows per chunk
    image_rows_per_chunk: int  # image-store rows whose samples share one view chunk (aligned); 0: not aligned

    def key(self, text_key: str) -> str:
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(self.rows, dtype="<i8").tobytes()).hexdigest()
        return content_key({"kind": "text-view", "view_format": VIEW_FORMAT, "text_store": text_key,
                            "rows_sha256": digest, "n_rows": len(self.rows), "chunk_rows": self.chunk_rows})


@dataclass(frozen=True)
class TextView:
    """A built view as the dataset reads it: its path, each sample's view row and the packed fields."""

    path: str
    sample_rows: np.ndarray
    fields: tuple[dict, ...]  # {"name", "dtype", "shape", "offset", "words"} per packed array

    def unpack(self, block: np.ndarray) -> dict[str, np.ndarray]:
        """The text arrays of ``block`` (rows of the packed array), each ``(len(block), *shape)`` of its dtype."""
        out = {}
        n = len(block)
        for f in self.fields:
            dt = np.dtype(f["dtype"])
            nbytes = dt.itemsize * math.prod(f["shape"])
            words = np.ascontiguousarray(block[:, f["offset"] : f["offset"] + f["words"]])
            raw = np.ascontiguousarray(words.view(np.uint8)[:, :nbytes])
            out[f["name"]] = raw.view(dt).reshape(n, *f["shape"])
        return out


def plan_view(image_rows: np.ndarray, text_rows: np.ndarray, image_chunk_rows: int, row_bytes: int) -> ViewPlan:
    """The view of samples with image-store rows ``image_rows`` and text-store rows ``text_rows``: samples sorted by
    (image row, sample index); one chunk per group of ``image_chunk_rows`` image rows (the image store's chunk),
    padded to the largest group, the group halved while a chunk would exceed :data:`CHUNK_MAX_BYTES`. When padding
    would make the view more than :data:`PAD_LIMIT` times the samples' rows (a few images with very many texts), the
    rows are contiguous instead, in chunks of the mean group size."""
    image_rows = np.asarray(image_rows, np.int64)
    text_rows = np.asarray(text_rows, np.int64)
    n = len(image_rows)
    order = np.lexsort((np.arange(n), image_rows))
    per = max(1, int(image_chunk_rows))
    while True:
        groups, start, counts = np.unique(image_rows[order] // per, return_index=True, return_counts=True)
        width = int(counts.max()) if n else 1
        if per == 1 or width * row_bytes <= CHUNK_MAX_BYTES:
            break
        per = math.ceil(per / 2)
    sample_rows = np.empty(n, np.int64)
    if n and len(groups) * width <= PAD_LIMIT * n:
        pos = np.arange(n) - np.repeat(start, counts)  # place inside its group
        view_of_sorted = np.repeat(np.arange(len(groups)), counts) * width + pos
        rows = np.full(len(groups) * width, -1, np.int64)
        aligned = per
    else:
        width = max(1, math.ceil(n / max(1, len(groups))))
        view_of_sorted = np.arange(n)
        rows = np.empty(n, np.int64)
        aligned = 0
    sample_rows[order] = view_of_sorted
    rows[view_of_sorted] = text_rows[order]
    return ViewPlan(rows, sample_rows, width, aligned)


# -- building ----------------------------------------------------------------------------------------------------------

def _fields(src) -> tuple[dict, ...]:
    """The packed layout of the text store's arrays: offsets in 16-bit words (each field padded to a whole word)."""
    out, offset = [], 0
    for name in FIELDS:
        a = src[name]
        dt = np.dtype(a.dtype)
        words = -(-dt.itemsize * math.prod(a.shape[1:]) // 2)
        out.append({"name": name, "dtype": dt.str, "shape": list(a.shape[1:]), "offset": offset, "words": words})
        offset += words
    return tuple(out)


def _pack(values: dict[str, np.ndarray], fields: tuple[dict, ...], n: int) -> np.ndarray:
    total = sum(f["words"] for f in fields)
    block = np.zeros((n, total), np.uint16)
    raw = block.view(np.uint8)
    for f in fields:
        b = np.ascontiguousarray(values[f["name"]]).reshape(n, -1).view(np.uint8)
        raw[:, 2 * f["offset"] : 2 * f["offset"] + b.shape[1]] = b
    return block


def usable(path: Path, key: str) -> bool:
    """A published view: its manifest holds ``key`` and every recorded chunk file is there, with its bytes."""
    from ..store.integrity import local_problems
    from ..store.location import is_complete

    return is_complete(path, key) and not local_problems(path)


def ensure_view(cache_root: str | Path, text_store: str, plan: ViewPlan, log: Callable[[str], None] = print,
                progress: bool = True) -> tuple[str, bool]:
    """The view of ``plan`` over ``text_store`` in the cache at ``cache_root``: ``(path, built)``, building it first
    (under the key's lock) when it is not there or not whole."""
    from ..cache import Cache
    from ..store.reader import open_store

    cache = Cache(Path(cache_root).expanduser())
    src = open_store(text_store)
    text_key = src.manifest.get("cache_key")
    if not text_key:
        raise StoreError(f"{text_store}: the text store's manifest has no cache key")
    key = plan.key(str(text_key))
    final = cache.derived_path(AREA, key)
    cache.mark_used(key)  # for `mad store gc --older-than`
    if usable(final, key):
        return str(final), False
    with cache.lock(key, on_wait=lambda: log(f"text view {key[:12]}: another process is building it; waiting")):
        if usable(final, key):
            return str(final), False
        if final.exists():
            log(f"warning: text view {key[:12]} is incomplete or corrupt; building it again")
            shutil.rmtree(final, ignore_errors=True)
        for stale in final.parent.glob(f".{key}.*.tmp"):  # a build killed before its rename (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        _build(src, str(text_key), plan, key, final, log, progress)
    if not usable(final, key):
        raise StoreError(f"{final}: the text view just built does not check out")
    return str(final), True


def _build(src, text_key: str, plan: ViewPlan, key: str, final: Path, log, progress: bool) -> None:
    import zarr

    from ..progress import progress_bar
    from ..store.integrity import chunk_record
    from ..store.layout import ArraySpec, codecs_for

    t0 = time.perf_counter()
    fields = _fields(src)
    width = sum(f["words"] for f in fields)
    n = len(plan.rows)
    per_shard = max(1, SHARD_TARGET_BYTES // max(1, plan.chunk_rows * width * 2)) * plan.chunk_rows
    tmp = final.parent / f".{key}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        group = zarr.open_group(str(tmp), mode="w")
        spec = ArraySpec(ARRAY, (width,), "uint16", ("row", "word"))
        arr = group.create_array(ARRAY, shape=(n, width), chunks=(plan.chunk_rows, width), shards=(per_shard, width),
                                 dtype="uint16", compressors=codecs_for(spec), fill_value=0,
                                 dimension_names=["row", "word"]).with_config({"write_empty_chunks": True})
        # a small text store is read whole, with one slice per array (zarr's cost is per chunk, and slices cost
        # least); a large one row by row, each block of the view's rows with one call per array
        small = src.n_rows * width * 2 <= WHOLE_STORE_BYTES
        whole = {f["name"]: np.asarray(src[f["name"]][:]) for f in fields} if small else None
        readers = _readers(src, fields) if whole is None else whole
        with progress_bar(f"text view {key[:12]}", n, unit="row", enabled=progress) as bar:
            for lo in range(0, max(n, 1), per_shard):
                hi = min(n, lo + per_shard)
                arr[lo:hi] = _gather(readers, fields, plan.rows[lo:hi])
                bar.advance(hi - lo)
        manifest = {"kind": "text-view", "cache_key": key, "view_format": VIEW_FORMAT, "n_rows": n,
                    "text_store": text_key, "chunk_rows": plan.chunk_rows,
                    "image_rows_per_chunk": plan.image_rows_per_chunk, "samples": len(plan.sample_rows),
                    "fields": list(fields), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "built_by": {"pid": os.getpid(), "rank": int(os.environ.get("RANK", "0") or 0)}}
        group.attrs["mad"] = {**manifest, "chunks": chunk_record(tmp)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "consolidated metadata is not part of the v3 spec"
            zarr.consolidate_metadata(str(tmp))
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    mb = sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 1e6
    log(f"text view {key[:12]}: {n:,} rows in chunks of {plan.chunk_rows} built in "
        f"{time.perf_counter() - t0:.1f} s ({mb:.1f} MB)")


def _readers(src, fields: tuple[dict, ...]) -> dict:
    """Per array, what reads rows of it: the shard files directly where the layout allows (a local store written
    by the store writer, see :mod:`.shard_rows`), else zarr."""
    from ..store.location import is_url
    from .shard_rows import ShardRows

    out = {}
    for f in fields:
        fast = None if is_url(src.path) or src.storage.dtype == "int8" else ShardRows.open(src.path, f["name"])
        out[f["name"]] = fast.rows if fast is not None else src[f["name"]].__getitem__
    return out


def _gather(src: dict, fields: tuple[dict, ...], rows: np.ndarray) -> np.ndarray:
    """The packed rows of text-store rows ``rows`` (-1: a padding row of zeros), read in one call per array
    (``src``: per array, the values read whole or what reads rows, see :func:`_readers`)."""
    ok = rows >= 0
    want, inverse = np.unique(rows[ok], return_inverse=True)
    values = {}
    for f in fields:
        block = np.zeros((len(rows), *f["shape"]), np.dtype(f["dtype"]))
        if len(want):
            read = src[f["name"]]
            block[ok] = (read[want] if isinstance(read, np.ndarray) else np.asarray(read(want)))[inverse]
        values[f["name"]] = block
    return _pack(values, fields, len(rows))


def open_view(path: str, plan: ViewPlan) -> TextView:
    from ..store.location import manifest_of

    man = manifest_of(path) or {}
    return TextView(path, plan.sample_rows, tuple(man.get("fields") or ()))


def plan_for(data) -> ViewPlan:
    """The view plan of a :class:`~.dataset.DistillDataset` over its text store."""
    from ..store.reader import open_store

    src = open_store(data.stores.text)
    row_bytes = sum(np.dtype(src[f].dtype).itemsize * math.prod(src[f].shape[1:]) for f in FIELDS)
    return plan_view(data.image_rows(), data.text_rows(), data.image_chunk_rows, row_bytes)


def attach(data, cache_root: str | Path, mode: str = "auto", dist=None, log: Callable[[str], None] = print,
           progress: bool = True) -> TextView | None:
    """Give ``data`` (a :class:`~.dataset.DistillDataset`) its text view, built if needed, when ``mode`` is ``auto``
    and it reads text features beside an image store. Under several processes (``dist``, a
    :class:`~.distributed.Dist`) rank 0 builds it first and the others find it."""
    if mode not in MODES:
        raise ValueError(f"text view mode {mode!r}: expected one of {MODES}")
    if mode == "off" or not data.reads_text_store() or not len(data):
        return None
    plan = plan_for(data)

    def build() -> str | None:
        try:
            return ensure_view(cache_root, data.stores.text, plan, log=log, progress=progress)[0]
        except OSError as e:  # a full disk, a cache it may not write: the view is an optimisation, go without it
            log(f"warning: text view not built in {cache_root} ({e.strerror or e}"
                f"{': ' + str(e.filename) if e.filename else ''}); reading the text store directly")
            return None

    path = dist.in_turn(build) if dist is not None else build()
    if path is None:
        return None
    view = open_view(path, plan)
    data.use_text_view(view)
    return view


def describe(path: str) -> dict:
    """A view's manifest, as JSON-ready values (for benchmarks and reports)."""
    from ..store.location import manifest_of

    man = dict(manifest_of(path) or {})
    return json.loads(json.dumps({k: man.get(k) for k in ("cache_key", "n_rows", "samples", "chunk_rows",
                                                          "image_rows_per_chunk", "text_store")}))


__all__ = ["MODES", "TextView", "ViewPlan", "attach", "describe", "ensure_view", "open_view", "plan_for", "plan_view",
           "usable"]
