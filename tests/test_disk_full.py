"""A full disk during `mad extract`: one `error:` line naming the path and "no space left", exit 2, nothing
half-made published; once space is freed the same command resumes and gives the same stores as a run that never
failed. The disk fills up at every kind of write (array creation, shard data, shard markers, the manifest, metadata
consolidation), through the writer's test hook point (``MAD_TEST_FAIL=store-write@N``), and on a real, tiny tmpfs
where the machine allows mounting one."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import last_json, mad, mad_inproc, make_photos, write_manifest
from mad_pipeline.stages import extract as stage

from mad_pipeline.errors import StoreError
from mad_pipeline.store import writer as store_writer
from mad_pipeline.store.location import is_complete
from mad_pipeline.testhooks import FAIL_ENV as HOOK


def _at(n: int) -> str:
    return f"{store_writer.WRITE_POINT}@{n}"


@pytest.fixture(scope="module")
def setup(tiny_clip, tmp_path_factory):
    """Six photos and the stores of an extraction that never failed (with the number of writes it made)."""
    base = tmp_path_factory.mktemp("disk-full")
    rels = make_photos(base / "data", 6, size=64)
    manifest = write_manifest(base / "m.jsonl", [{"id": i, "image": r, "text": f"photo {i}"}
                                                 for i, r in enumerate(rels)])
    s = {"base": base, "manifest": manifest, "tiny_clip": tiny_clip}
    mp = pytest.MonkeyPatch()
    mp.setenv(HOOK, _at(10**9))  # counts the writes, fails none
    try:
        s["ref"] = _run(s, base / "ref")
        s["writes"] = store_writer._writes["count"]
    finally:
        mp.delenv(HOOK)
    return s


def _run(s, cache: Path) -> stage.ExtractResult:
    cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(s["tiny_clip"][1]), data_root=s["base"] / "data",
                              manifest=s["manifest"], cache=cache, num_workers=0, batch_size=1, shard_rows=2,
                              progress=False)
    return stage.run(cfg, log=lambda _: None)


def _assert_same_as_ref(got: stage.ExtractResult, ref: stage.ExtractResult) -> None:
    for kind, r in ref.stores.items():
        assert got.stores[kind].key == r.key
        a, b = zarr.open_group(got.stores[kind].path, mode="r"), zarr.open_group(r.path, mode="r")
        for name, arr in b.arrays():
            np.testing.assert_array_equal(a[name][:], arr[:], err_msg=f"{kind}/{name}")


def _assert_nothing_half_made_published(cache: Path) -> None:
    for p in cache.glob("stores/*/*.zarr"):
        assert is_complete(p, p.name[: -len(".zarr")]), p


def test_disk_full_at_every_kind_of_write_is_one_error_then_resumes(setup, tmp_path, monkeypatch):
    writes = setup["writes"]
    assert writes > 30  # three stores: creation, shards, markers, manifests
    points = sorted({0, writes - 1, *np.linspace(1, writes - 2, 6).astype(int).tolist()})
    for n in points:
        cache = tmp_path / f"cache-{n}"
        monkeypatch.setenv(HOOK, _at(n))
        with pytest.raises(StoreError) as e:
            _run(setup, cache)
        msg = str(e.value)
        assert "\n" not in msg and "no space left on device" in msg and str(cache) in msg, (n, msg)
        _assert_nothing_half_made_published(cache)
        monkeypatch.delenv(HOOK)
        again = _run(setup, cache)
        _assert_same_as_ref(again, setup["ref"])
        assert not list(cache.glob("partial/*/*")), n
        assert not [p for p in cache.rglob("*") if p.name.endswith((".tmp", ".partial"))], n
    assert sum(s.shards_total for s in setup["ref"].stores.values()) == 7  # 3 image, 3 text, 1 index shards


def _cli(setup, cache: Path) -> tuple[list[str], dict]:
    """``mad extract`` arguments and environment of the setup's manifest into ``cache``."""
    cfg_file, weights = setup["tiny_clip"]
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(setup["manifest"]),
            "--data-root", str(setup["base"] / "data"), "--shard-rows", "2", "--batch-size", "1", "--num-workers", "0",
            "-q"]
    return args, {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache)}


def test_cli_disk_full_prints_one_line_and_exits_2(setup, tmp_path):
    cache = tmp_path / "cache"
    args, env = _cli(setup, cache)
    p = mad(*args, env={**env, HOOK: _at(setup["writes"] // 5)}, check=False)  # inside the image store, past a shard
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no space left" in lines[0], p.stderr
    assert str(cache) in lines[0]
    _assert_nothing_half_made_published(cache)
    res = last_json(mad_inproc(*args, "--json", env=env))  # the resume, in this process
    assert sum(s["shards_resumed"] for s in res["stores"].values()) > 0  # it resumed, not started over
    for kind, r in setup["ref"].stores.items():
        assert res["stores"][kind]["key"] == r.key


@pytest.fixture()
def tiny_fs(tmp_path):
    """A real 1 MiB tmpfs (needs the right to mount: root in a container that allows it; skipped otherwise)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run mount")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_real_full_filesystem(setup, tiny_fs):
    cache = tiny_fs / "cache"
    args, env = _cli(setup, cache)
    filler = tiny_fs / "filler"
    with open(filler, "wb") as f:  # leave ~100 kB: room for a few shard files, not for all three stores
        f.write(b"\0" * (shutil.disk_usage(tiny_fs).free - 100_000))
    p = mad(*args, env=env, check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "no space left" in lines[0], p.stderr
    _assert_nothing_half_made_published(cache)
    filler.unlink()
    res = last_json(mad(*args, "--json", env=env))
    for kind, r in setup["ref"].stores.items():
        assert res["stores"][kind]["key"] == r.key
        a, b = zarr.open_group(res["stores"][kind]["path"], mode="r"), zarr.open_group(r.path, mode="r")
        for name, arr in b.arrays():
            np.testing.assert_array_equal(a[name][:], arr[:], err_msg=f"{kind}/{name}")
    assert not list(cache.glob("partial/*/*"))
