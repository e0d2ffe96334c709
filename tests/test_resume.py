"""SIGKILL a real `mad extract` at several points; the resumed result equals an uninterrupted run array by array,
and the shards finished before each kill are not recomputed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import zarr
from conftest import last_json, mad_inproc, make_photos, write_manifest

N = 96


def _markers(cache: Path, kind: str) -> list[Path]:
    return sorted(cache.glob(f"partial/{kind}/*.zarr/_mad_progress/shard-*.done"))


def _run_and_kill(args: list[str], env: dict, cache: Path, kind: str, at_least: int) -> int:
    """Start mad extract, SIGKILL it once `at_least` shards of `kind` are marked done; return shards done then."""
    proc = subprocess.Popen([sys.executable, "-m", "mad_pipeline.cli", *args], env={**os.environ, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while proc.poll() is None and time.time() < deadline:
            if kind == "start" and list(cache.glob("partial/image/*.zarr/_mad_progress/layout.json")):
                break
            if kind != "start" and len(_markers(cache, kind)) >= at_least:
                break
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return len(_markers(cache, "image" if kind == "start" else kind))


def test_sigkill_then_resume_equals_uninterrupted(tiny_clip, tmp_path):
    cfg_file, weights = tiny_clip
    root = tmp_path / "data"
    rels = make_photos(root, N, size=400)
    write_manifest(root / "m.jsonl", [{"id": i, "image": r, "text": f"photo {i} of a thing"} for i, r in
                                       enumerate(rels)])
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(root / "m.jsonl"),
            "--data-root", str(root), "--batch-size", "4", "--shard-rows", "8", "--num-workers", "0", "--json"]
    ref_env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "ref")}
    ref = last_json(mad_inproc(*args, env=ref_env))  # the uninterrupted run and the resume in this process

    cache = tmp_path / "killed"
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(cache)}
    kills = [("start", 0), ("image", 2), ("image", 7), ("text", 3)]
    done_at_kill = []
    for kind, at_least in kills:
        n = _run_and_kill(args, env, cache, kind, at_least)
        done_at_kill.append((kind, n))
    # chunk files of shards finished before the last kill, with their mtimes
    shard_files = {}
    for m in _markers(cache, "image") + _markers(cache, "text"):
        store = m.parent.parent
        i = int(m.stem.split("-")[1])
        f = store / "tokens" / "c" / str(i) / "0" / "0"
        shard_files[(store.parent.name, store.name, i)] = f.stat().st_mtime_ns

    final = last_json(mad_inproc(*args, env=env))
    assert any(n > 0 for _, n in done_at_kill), f"no kill landed mid-run: {done_at_kill}"
    resumed = sum(final["stores"][k]["shards_resumed"] for k in ("image", "text") if not final["stores"][k]["cached"])
    unfinished = sum(1 for key in shard_files if key[0] == "text" or not final["stores"]["image"]["cached"])
    assert resumed == unfinished  # every shard marked done before the last kill was kept, none recomputed

    # finished shards were not rewritten: their shard files kept their mtimes through resume and publication
    for (kind, name, i), mtime in shard_files.items():
        f = cache / "stores" / kind / name / "tokens" / "c" / str(i) / "0" / "0"
        assert f.stat().st_mtime_ns == mtime, f"{kind} shard {i} was rewritten"

    for kind in ("image", "text", "index"):
        assert final["stores"][kind]["key"] == ref["stores"][kind]["key"]
        a = zarr.open_group(final["stores"][kind]["path"], mode="r")
        b = zarr.open_group(ref["stores"][kind]["path"], mode="r")
        assert sorted(n for n, _ in a.arrays()) == sorted(n for n, _ in b.arrays())
        for name, arr in a.arrays():
            np.testing.assert_array_equal(arr[:], b[name][:], err_msg=f"{kind}/{name}")
    assert not list(cache.glob("partial/*/*.zarr"))  # nothing half-built left behind
    print("shards done at each kill:", done_at_kill, "resumed:", resumed)


def test_concurrent_runs_of_the_same_command_end_with_one_valid_store(tiny_clip, tmp_path):
    cfg_file, weights = tiny_clip
    root = tmp_path / "data"
    rels = make_photos(root, 48, size=300)
    write_manifest(root / "m.jsonl", [{"id": i, "image": r, "text": f"t{i}"} for i, r in enumerate(rels)])
    args = [sys.executable, "-m", "mad_pipeline.cli", "extract", "--teacher", "tiny-clip", "--weights", str(weights),
            "--manifest", str(root / "m.jsonl"), "--data-root", str(root), "--shard-rows", "8", "--json", "-q"]
    env = {**os.environ, "MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    import json

    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert results[0]["stores"]["image"]["path"] == results[1]["stores"]["image"]["path"]
    assert sorted(r["stores"]["image"]["cached"] for r in results) == [False, True]  # one built it, one waited
    assert len(list((tmp_path / "cache" / "stores" / "image").iterdir())) == 1
    assert not list((tmp_path / "cache").glob("partial/*/*.zarr"))
    g = zarr.open_group(results[0]["stores"]["image"]["path"], mode="r")
    assert g["tokens"].shape[0] == 48 and bool(np.all(g["valid"][:]))
