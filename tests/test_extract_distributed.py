"""`mad extract --workers N` / `--scheduler ADDRESS`: stage 1 on real dask.distributed clusters (worker processes,
a `dask scheduler` and `dask worker` processes started as separate programs), compared array by array and manifest
by manifest with the single-process store; a worker SIGKILLed mid-shard and a client SIGKILLed mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import last_json, mad, mad_inproc, make_photos, write_manifest

N = 20  # images; with --shard-rows 4: 5 shards per store, batches of 3 cut within each shard
TIMING = ("created",)  # manifest fields that say when, not what


@pytest.fixture(scope="module")
def data(tiny_clip, tmp_path_factory):
    """A small dataset and its single-process stores (the reference every distributed run must equal)."""
    cfg_file, weights = tiny_clip
    root = tmp_path_factory.mktemp("dist-data")
    rels = make_photos(root, N, size=64)
    write_manifest(root / "m.jsonl", [{"id": i, "image": r, "text": f"photo {i}"} for i, r in enumerate(rels)])
    args = ["extract", "--teacher", "tiny-clip", "--weights", str(weights), "--manifest", str(root / "m.jsonl"),
            "--data-root", str(root), "--batch-size", "3", "--shard-rows", "4", "--num-workers", "0", "--json"]
    base_env = {"MAD_MODEL_CONFIGS": str(cfg_file)}
    ref = last_json(mad_inproc(*args, env={**base_env, "MAD_CACHE": str(root / "ref-cache")}))
    return {"args": args, "env": base_env, "ref": ref, "root": root}


def _manifest(path: str) -> dict:
    man = dict(zarr.open_group(path, mode="r").attrs)["mad"]
    return {k: v for k, v in man.items() if k not in TIMING}


def assert_same_stores(got: dict, ref: dict, kinds=("image", "text", "index")) -> None:
    for kind in kinds:
        a, b = got["stores"][kind], ref["stores"][kind]
        assert a["key"] == b["key"], kind
        ga, gb = zarr.open_group(a["path"], mode="r"), zarr.open_group(b["path"], mode="r")
        assert sorted(n for n, _ in ga.arrays()) == sorted(n for n, _ in gb.arrays())
        for name, arr in ga.arrays():
            np.testing.assert_array_equal(arr[:], gb[name][:], err_msg=f"{kind}/{name}")
        assert _manifest(a["path"]) == _manifest(b["path"]), kind


def test_local_cluster_equals_single_process(data, tmp_path):
    proc = mad(*data["args"], "--workers", "2", env={**data["env"], "MAD_CACHE": str(tmp_path / "cache")})
    got = last_json(proc)
    assert not any(s["cached"] for s in got["stores"].values())
    assert got["stores"]["image"]["shards_computed"] == got["stores"]["image"]["shards_total"] == N // 4
    assert got["teacher_loaded"] is False  # the client never builds the teacher: the workers do
    assert "dask: 2 worker(s)" in proc.stderr and "dashboard" in proc.stderr
    assert_same_stores(got, data["ref"])


def test_options_are_checked_before_any_work(data, tmp_path):
    from mad_pipeline.errors import InputError
    from mad_pipeline.extraction.cluster import Pool

    with pytest.raises(InputError, match="--workers and --scheduler: give one of them"):
        Pool(workers=2, scheduler="tcp://127.0.0.1:1")
    with pytest.raises(InputError, match="--workers 0: must be at least 1"):
        Pool(workers=0)
    import dask
    import distributed  # noqa: F401 - its defaults in dask's config first: set() below restores what it found

    env = {**data["env"], "MAD_CACHE": str(tmp_path / "cache")}
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):  # in this process: dask's config, not its env
        nobody = mad_inproc(*data["args"], "--scheduler", "tcp://127.0.0.1:9", env=env, check=False)
    assert nobody.returncode == 2 and "error: --scheduler tcp://127.0.0.1:9: cannot connect" in nobody.stderr
    assert "Traceback" not in nobody.stderr and not (tmp_path / "cache" / "partial").exists()


# ----------------------------------------------------------------------------------------------------------------------
# a scheduler and two workers as separate programs (two "hosts" on localhost)


class Cluster:
    def __init__(self, base: Path, env: dict):
        self.base, self.env = base, {**os.environ, **env}
        self.file = base / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.scheduler = self._start(["scheduler", "--scheduler-file", str(self.file), "--host", "127.0.0.1",
                                      "--port", "0", "--no-dashboard"], "scheduler")
        deadline = time.time() + 60
        while time.time() < deadline:  # the scheduler creates the file, then writes it: wait for whole JSON
            try:
                self.address = json.loads(self.file.read_text())["address"]
                break
            except (FileNotFoundError, json.JSONDecodeError):
                time.sleep(0.05)
        else:
            raise RuntimeError(f"no scheduler file {self.file} after 60 s")

    def _start(self, args: list[str], name: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.base / f"{name}.log", "w")  # noqa: SIM115 - open for the process's life
        p = subprocess.Popen([sys.executable, "-m", "dask", *args], env={**self.env, **(env or {})},
                             stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(p)
        return p

    def worker(self, name: str, env: dict | None = None) -> subprocess.Popen:
        """A worker without a nanny: SIGKILL ends it for good, as a lost machine (a nanny would restart it)."""
        return self._start(["worker", self.address, "--nthreads", "1", "--nworkers", "1", "--no-nanny",
                            "--no-dashboard", "--host", "127.0.0.1", "--name", name], name, env)

    def wait_for_workers(self, n: int) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as c:
            c.wait_for_workers(n, timeout=90)

    def close(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.kill()
            p.wait()


@pytest.fixture()
def cluster(data, tmp_path):
    c = Cluster(tmp_path, data["env"])
    yield c
    c.close()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"mad extract ended before {path.name}: {proc.communicate()}"
        assert time.time() < deadline, f"{path.name} never reached"
        time.sleep(0.02)


def _extract(data, cache: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mad_pipeline.cli", *data["args"], *extra],
                            env={**os.environ, **data["env"], "MAD_CACHE": str(cache)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_scheduler_with_a_worker_killed_mid_shard(data, cluster, tmp_path):
    pause = tmp_path / "pause"
    pause.mkdir()
    doomed = cluster.worker("doomed", {"MAD_TEST_PAUSE": f"extract-shard-start={pause}"})
    cluster.worker("survivor")
    cluster.wait_for_workers(2)
    proc = _extract(data, tmp_path / "cache", "--scheduler", cluster.address)
    _wait_for(pause / "extract-shard-start.reached", proc)  # the doomed worker holds a shard, not yet written
    assert int((pause / "extract-shard-start.reached").read_text()) == doomed.pid
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    image = got["stores"]["image"]
    assert image["shards_computed"] == image["shards_total"] == N // 4  # its shard was computed by the survivor
    assert f"scheduler {cluster.address}" in err
    assert_same_stores(got, data["ref"])


def test_scheduler_with_the_client_killed_then_resumed(data, cluster, tmp_path):
    pause = tmp_path / "pause"
    pause.mkdir()
    for name in ("a", "b"):  # each worker stops after writing its first shard
        cluster.worker(name, {"MAD_TEST_PAUSE": f"extract-shard-written={pause}"})
    cluster.wait_for_workers(2)
    cache = tmp_path / "cache"
    proc = _extract(data, cache, "--scheduler", cluster.address)
    _wait_for(pause / "extract-shard-written.reached", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    done_at_kill = len(list(cache.glob("partial/image/*.zarr/_mad_progress/shard-*.done")))
    assert done_at_kill >= 1
    (pause / "extract-shard-written.release").write_text("")

    # the rerun: a client in this process, on the same cluster
    got = last_json(mad_inproc(*data["args"], "--scheduler", cluster.address,
                               env={**data["env"], "MAD_CACHE": str(cache)}))
    image = got["stores"]["image"]
    assert image["shards_resumed"] >= done_at_kill  # finished shards are kept...
    assert image["shards_computed"] == image["shards_total"] - image["shards_resumed"]  # ...only the rest computed
    assert image["shards_computed"] < image["shards_total"]
    assert_same_stores(got, data["ref"])


# ----------------------------------------------------------------------------------------------------------------------
# the pieces, in process


def test_batches_are_cut_within_each_shard():
    from mad_pipeline.extraction.runner import shard_batches

    rows = [0, 1, 2, 3, 4, 5, 6, 9, 10, 11]  # shards of 4 rows: 0-3, 4-7 (row 7 missing), 8-11 (row 8 missing)
    got = [[rows[i] for i in b] for b in shard_batches(rows, 4, 3)]
    assert got == [[0, 1, 2], [3], [4, 5, 6], [9, 10, 11]]
    assert shard_batches([], 4, 3) == []


def test_mad_run_passes_workers_and_scheduler_to_the_extract_stage(monkeypatch, tmp_path):
    """`extract: {workers, scheduler}` in the YAML (or as overrides) reaches the extract stage's config."""
    from types import SimpleNamespace

    from mad_pipeline.stages import distill as distill_stage
    from mad_pipeline.stages import extract as extract_stage
    from mad_pipeline.stages import pipeline

    from mad_pipeline.errors import InputError

    yaml = tmp_path / "exp.yaml"
    yaml.write_text("task: vqa\ndata:\n  shapes: {size: 40}\nextract:\n  workers: 3\n")
    values = pipeline.load_config(yaml).values
    assert {k: values["extract"][k] for k in ("workers", "scheduler")} == {"workers": 3, "scheduler": None}
    over = pipeline.load_config(yaml, ["extract.workers=null", "extract.scheduler=tcp://head:8786"]).values
    assert {k: over["extract"][k] for k in ("workers", "scheduler")} == {"workers": None, "scheduler": "tcp://head:8786"}
    with pytest.raises(InputError, match="extract.workers: must be at least 1"):
        pipeline.load_config(yaml, ["extract.workers=0"])

    seen = []
    monkeypatch.setattr(distill_stage, "_extract_cfg",
                        lambda *a: extract_stage.ExtractConfig(teacher="tiny-clip", data_root=tmp_path))
    monkeypatch.setattr(extract_stage, "run", lambda cfg, log: seen.append(cfg) or SimpleNamespace(
        stores={}, teacher_loaded=False, samples=0, as_dict=dict))
    runner = SimpleNamespace(v=values, reader="vqa", log=print, _distill_cfg=lambda *a: None)
    st = SimpleNamespace(params={"split": "train", "fraction": 1.0, "subset_seed": None})
    pipeline._Runner._run_extract(runner, st)
    assert (seen[0].workers, seen[0].scheduler) == (3, None)


def test_zeroshot_and_text_stores_on_a_cluster_equal_one_process(tiny_clip, tmp_path_factory, monkeypatch):
    """--task on a cluster (threads in this process, to stay fast): the zero-shot store is one worker task, the
    text store one task per shard; all four stores equal the single-process ones."""
    from distributed import Client, LocalCluster
    from mad_pipeline.stages import extract as stage

    from mad_pipeline.extraction.cluster import Pool
    from mad_pipeline.shapes.formats import write_dataset

    _, weights = tiny_clip
    root = tmp_path_factory.mktemp("shapes-dist")
    write_dataset(root, size=40, seed=0)

    def local(self):
        self._cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0")
        return Client(self._cluster, set_as_default=False)

    monkeypatch.setattr(Pool, "_local", local)
    runs = {}
    for name, workers in (("one", None), ("dask", 2)):
        cfg = stage.ExtractConfig(teacher="tiny-clip", weights=str(weights), dataset="vqa", split="val",
                                  data_root=root / "vqa", task="vqa", cache=root / f"cache-{name}", batch_size=5,
                                  num_workers=0, shard_rows=8, progress=False, workers=workers)
        runs[name] = stage.run(cfg, log=lambda m: None).as_dict()
    assert runs["dask"]["teacher_loaded"] is False and runs["one"]["teacher_loaded"] is True
    assert runs["dask"]["stores"]["text"]["shards_computed"] > 1
    assert_same_stores(runs["dask"], runs["one"], kinds=("image", "text", "index", "zeroshot"))
