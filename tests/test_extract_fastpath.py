"""Stage 1's fast path: the writer pool (identical stores, bounded memory, failures surface) and the device choices
(pinned memory, copies on side streams, autocast, decode and writer pools, batch size), which are no-ops on CPU."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from conftest import make_photos

from mad_pipeline.errors import InputError
from mad_pipeline.extraction import device as fast_lib
from mad_pipeline.extraction.device import FastPath
from mad_pipeline.extraction.writer import ShardAssembler
from mad_pipeline.store import writer as store_writer
from mad_pipeline.store.layout import image_arrays
from mad_pipeline.store.writer import StoreWriter
from mad_pipeline.teachers.base import autocast, resolve_precision
from mad_pipeline.testhooks import FAIL_ENV

N_ROWS, SHARD = 50, 8
SPECS = image_arrays(5, 8, 4)


def _rows_data(n: int = N_ROWS, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"image_hash": np.asarray([hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)], dtype=object),
            "tokens": rng.standard_normal((n, 5, 8)).astype(np.float16),
            "pooled": rng.standard_normal((n, 4)).astype(np.float16),
            "crop_box": rng.random((n, 4)).astype(np.float32), "valid": rng.random(n) > 0.2}


def _batches(seed: int) -> list[np.ndarray]:
    """All rows, in a shuffled order, cut into batches of 1 to 7 rows (batches cross shards)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(N_ROWS)
    out, i = [], 0
    while i < N_ROWS:
        k = int(rng.integers(1, 8))
        out.append(np.sort(order[i : i + k]))
        i += k
    return out


def _fill(path: Path, writers: int, seed: int, maxsize: int = 8) -> Path:
    data = _rows_data()
    w = StoreWriter(path.with_suffix(".partial"), "image", N_ROWS, SPECS, key="k", shard_rows=SHARD)
    sink = ShardAssembler(w, list(range(w.n_shards)), maxsize=maxsize, writers=writers)
    for rows in _batches(seed):
        sink.put(rows, {k: v[rows] for k, v in data.items()})
    sink.close()
    assert sink.shards_written == w.n_shards == 7
    return w.finalize({"cache_key": "k"}, path)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_writer_pool_writes_the_same_bytes_as_one_writer(tmp_path):
    serial = _fill(tmp_path / "serial.zarr", writers=1, seed=0)
    pooled = _fill(tmp_path / "pool.zarr", writers=4, seed=1, maxsize=2)  # another batch order, 4 writers
    a, b = _files(serial), _files(pooled)
    assert a.keys() == b.keys() and len(a) > 10
    assert [k for k in a if a[k] != b[k]] == []  # every chunk file and the manifest, byte for byte
    g = zarr.open_group(str(pooled), mode="r")
    np.testing.assert_array_equal(g["tokens"][:], _rows_data()["tokens"])


class _GatedWriter(StoreWriter):
    """Blocks every shard write until the test opens the gate; counts writes in flight."""

    gate: threading.Event
    in_flight = 0
    most_in_flight = 0

    def write_shard(self, i, data):
        type(self).in_flight += 1
        type(self).most_in_flight = max(type(self).most_in_flight, type(self).in_flight)
        try:
            assert self.gate.wait(30)
            super().write_shard(i, data)
        finally:
            type(self).in_flight -= 1


def test_writer_pool_memory_is_bounded_and_the_producer_only_waits_when_full(tmp_path):
    writers, maxsize, n = 2, 1, 12 * SHARD
    data = _rows_data(n)
    w = _GatedWriter(tmp_path / "s.partial", "image", n, SPECS, key="k", shard_rows=SHARD)
    w.gate = threading.Event()
    sink = ShardAssembler(w, list(range(w.n_shards)), maxsize=maxsize, writers=writers)
    accepted = []

    def produce():
        for lo in range(0, n, SHARD):  # one whole shard per batch
            rows = np.arange(lo, lo + SHARD)
            sink.put(rows, {k: v[rows] for k, v in data.items()})
            accepted.append(lo)

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the producer stops making progress
        n = len(accepted)
        time.sleep(0.3)
        if len(accepted) == n and n > 0:
            break
    # in the writers (2), queued for them (2), held by the assembling thread (1), in the batch queue (1)
    bound = writers + writers + 1 + maxsize
    assert len(accepted) <= bound < 12  # the twelve shards did not all fit in memory: the producer is blocked
    assert type(w).most_in_flight == writers
    w.gate.set()
    t.join(30)
    sink.close()
    assert len(accepted) == 12 and sink.shards_written == 12 and sink.blocked_s > 0.1
    assert sink.stats()["write_s"] > 0


def test_writer_pool_failure_is_raised_in_the_producer_not_a_hang(tmp_path, monkeypatch):
    """A full disk in one of four writer threads: the producer gets the OSError (one line, the file named)."""
    monkeypatch.setenv(FAIL_ENV, f"{store_writer.WRITE_POINT}@9")  # a write in the second or third shard
    data = _rows_data()
    w = StoreWriter(tmp_path / "s.partial", "image", N_ROWS, SPECS, key="k", shard_rows=SHARD)
    sink = ShardAssembler(w, list(range(w.n_shards)), maxsize=2, writers=4)
    result: dict = {}

    def produce():
        try:
            for rows in _batches(0):
                sink.put(rows, {k: v[rows] for k, v in data.items()})
            sink.close()
        except OSError as e:
            result["error"] = e
            sink.abort()

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the producer hung"
    e = result["error"]
    assert e.errno == errno.ENOSPC and str(tmp_path) in str(e)
    assert not any(th.is_alive() for th in [sink.thread, *sink.pool])
    assert len(w.done_shards()) < w.n_shards  # shards before the failure stay marked done; a rerun resumes


# --------------------------------------------------------------------------- device choices
def test_cpu_fast_path_is_the_plain_path():
    fast = FastPath.for_device("cpu", channels_last=True, compile=True)
    assert (fast.pin_memory, fast.overlap_copies, fast.channels_last, fast.compile, fast.writers) == \
        (False, False, False, False, 1)
    assert fast.loader_options(0) == {"num_workers": 0, "pin_memory": False}
    assert fast.loader_options(2)["pin_memory"] is False


def test_cuda_fast_path_pins_overlaps_and_pools():
    fast = FastPath.for_device(torch.device("cuda"), channels_last=True)
    assert fast.pin_memory and fast.overlap_copies and fast.channels_last and not fast.compile
    assert 2 <= fast.writers <= 8
    assert fast.loader_options(4) == {"num_workers": 4, "pin_memory": True, "prefetch_factor": 4,
                                      "persistent_workers": False}


def test_autocast_and_precision_follow_the_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cuda) == "bf16" and resolve_precision("auto", cpu) == "fp32"
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    ctx = autocast(cuda, "bf16")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16 and ctx.device == "cuda"


def test_auto_pools_and_batch_size(monkeypatch):
    monkeypatch.setattr(fast_lib, "usable_cores", lambda: 16)
    assert fast_lib.decode_workers("auto", "cpu") == 2
    assert fast_lib.decode_workers("auto", "cuda:0") == 15
    assert fast_lib.decode_workers(3, "cuda") == 3
    assert fast_lib.writer_threads("cuda") == 4 and fast_lib.writer_threads("cpu") == 1
    monkeypatch.setattr(fast_lib, "usable_cores", lambda: 2)
    assert fast_lib.decode_workers("auto", "cuda") == 1 and fast_lib.writer_threads("cuda") == 2
    cpu = FastPath.for_device("cpu")
    assert fast_lib.resolve_batch_size("auto", None, cpu) == 32
    assert fast_lib.resolve_batch_size(7, None, cpu) == 7
    assert fast_lib.parse_count("AUTO", "--batch-size") == "auto"
    assert fast_lib.parse_count("0", "--num-workers") == 0
    with pytest.raises(InputError, match="--batch-size 0: must be at least 1"):
        fast_lib.parse_count("0", "--batch-size")
    with pytest.raises(InputError, match="--batch-size 'big'"):
        fast_lib.parse_count("big", "--batch-size")
    with pytest.raises(InputError, match=r"--batch-size 1000000: at most 65,536"):
        fast_lib.parse_count(10**6, "--batch-size")
    with pytest.raises(InputError, match=r"--num-workers 9: at most 8 \(4 per CPU core"):
        fast_lib.parse_count(9, "--num-workers")  # 2 usable cores (patched above)


@pytest.fixture(scope="module")
def teacher(tiny_clip):
    from mad_pipeline.teachers import load_teacher

    return load_teacher("tiny-clip", weights=str(tiny_clip[1]), device="cpu", precision="fp32")


def test_overlapped_forward_on_cpu_gives_the_forward_in_fp16(teacher, tmp_path):
    from mad_pipeline.extraction.reader import ImageRows, collate

    paths = [str(tmp_path / r) for r in make_photos(tmp_path, 5, size=48)]
    ds = ImageRows(list(enumerate(paths)), teacher.preprocess, teacher.crop_box_fn, teacher.image_size)
    batches = [collate([ds[i] for i in range(lo, min(lo + 2, 5))]) for lo in range(0, 5, 2)]
    fast = FastPath.for_device("cpu", channels_last=True, compile=True)
    assert fast_lib.prepare(teacher, fast) is teacher
    assert teacher.model.visual._mad_fast == (False, False)  # nothing compiled, nothing converted
    clock: dict = {}
    out = list(fast_lib.overlapped_forward(teacher, ((b[0], b[1]) for b in batches), fast, clock))
    assert [list(rows) for rows, _ in out] == [[0, 1], [2, 3], [4]]
    for (_rows, (tokens, pooled)), b in zip(out, batches, strict=True):
        ref_t, ref_p = teacher.encode_image_tokens(b[1])
        assert tokens.dtype == np.float16 and pooled.dtype == np.float16
        np.testing.assert_array_equal(tokens, ref_t.to(torch.float16).numpy())
        np.testing.assert_array_equal(pooled, ref_p.to(torch.float16).numpy())
    assert set(clock) == {"input_wait", "forward", "to_host"} and clock["forward"] > 0


def test_extract_images_with_a_writer_pool_gives_the_same_store(teacher, tmp_path):
    """The real stage-1 image pass (decode, forward, writer threads) with 3 writers: the same bytes as with one."""
    from mad_pipeline.extraction.runner import extract_images

    paths = [str(tmp_path / "img" / r) for r in make_photos(tmp_path / "img", 11, size=48)]
    hashes = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
    specs = image_arrays(teacher.num_tokens, teacher.width, teacher.embed_dim)
    stores = {}
    for writers in (1, 3):
        w = StoreWriter(tmp_path / f"w{writers}.partial", "image", len(paths), specs, key="k", shard_rows=2)
        fast = FastPath.for_device("cpu", writers=writers)
        stats = extract_images(teacher, w, hashes, paths, batch_size=3, num_workers=0, on_error="fail", fast=fast)
        assert stats.timings["writers"] == writers and stats.shards_computed == 6
        assert stats.timings["forward"] > 0 and stats.timings["write_s"] > 0
        stores[writers] = _files(w.finalize({"cache_key": "k"}, tmp_path / f"w{writers}.zarr"))
    assert stores[1].keys() == stores[3].keys()
    assert [k for k in stores[1] if stores[1][k] != stores[3][k]] == []


def test_batch_size_auto_on_cpu_is_the_default_and_bad_counts_are_one_line(tiny_clip, tmp_path):
    """``--batch-size auto`` on CPU is the default 32: same keys, so the second run is served from the cache."""
    from conftest import EXAMPLES
    from mad_pipeline.stages import extract as stage

    def run(**kw):
        cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(tiny_clip[1]), data_root=EXAMPLES,
                                  manifest=EXAMPLES / "manifest.jsonl", cache=tmp_path, progress=False, **kw)
        return stage.run(cfg, log=lambda _: None)

    first = run(batch_size=32, num_workers=0)
    second = run(batch_size="auto", num_workers="0")
    assert {k: s.key for k, s in first.stores.items()} == {k: s.key for k, s in second.stores.items()}
    assert all(s.cached for s in second.stores.values())
    with pytest.raises(InputError, match=r"^--batch-size 'big': expected a whole number or auto$"):
        run(batch_size="big")
    with pytest.raises(InputError, match=r"^--num-workers -1: must be at least 0$"):
        run(num_workers=-1)


def test_batch_size_auto_on_cuda_fits_half_the_total_memory(monkeypatch):
    """The arithmetic of ``--batch-size auto`` (no GPU here: the CUDA memory queries answer as a device would)."""
    from types import SimpleNamespace

    state = {"peak": 0}

    class Probe:
        image_size = 224

        def encode_image_tokens(self, pixels):  # the probe forward: 8 images, so many bytes each at the peak
            state["peak"] = 1_000 + len(pixels) * state["per_image"]

    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 1_000)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: state["peak"])
    fast = FastPath.for_device("cuda")
    for total_gb, per_image_mb, expected in ((141, 12, 256), (16, 50, 128), (24, 300, 32), (8, 9000, 1)):
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda *a, t=total_gb: SimpleNamespace(total_memory=t * 2**30))
        state["per_image"] = per_image_mb * 2**20
        assert fast_lib.resolve_batch_size("auto", Probe(), fast) == expected, (total_gb, per_image_mb)
    teacher = Probe()
    assert fast_lib.resolve_batch_size("auto", teacher, fast) == 1
    state["per_image"] = 1  # a second call does not probe again: the batch size of a loaded teacher is fixed
    assert fast_lib.resolve_batch_size("auto", teacher, fast) == 1
    assert fast_lib.plain_batch_size("auto", "cuda") == 256 and fast_lib.plain_batch_size("auto", "cpu") == 32
