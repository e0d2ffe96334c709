"""Two processes (real torchrun ranks, gloo on CPU) train as one: plain torchrun running `mad distill` on each rank
sees, step by step, the samples one process sees at the same global batch and logs the same losses to float
precision; with `mad distill --nproc 2` a rank SIGKILLed mid-run ends the run with one line, and rerunning the same
command resumes to the very weights (and the very loss rows) of the uninterrupted two-process run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import last_json, mad, mad_inproc
from safetensors.torch import load_file

STEPS = 4
# 20 training samples in global batches of 3: 7 batches an epoch, the last of 2 (split 1 + 1), the others split 2 + 1
# (the two ranks' shares differ in size); 2 micro-batches a step, 8 in all: the run crosses an epoch
ARGS = ("--vocab-min-count", "1", "--train-fraction", "0.25", "--batch-size", "3", "--grad-accum", "2",
        "--steps", str(STEPS), "--checkpoint-every", "2", "--log-every", "1", "--num-workers", "0", "--json")
LOGGED = ("task", "tok_v", "tok_t", "pool", "distill", "alpha", "conf_mean", "total", "grad_norm")


@pytest.fixture(scope="module")
def ddp_world(tiny_clip, tmp_path_factory):
    """The world, the teacher and a cache shared by the runs of this file (stage 1 runs once); and the two reference
    runs: one process, and two processes (each with its micro-batches' sample ids recorded)."""
    from mad_pipeline.shapes.formats import write_dataset

    cfg_file, weights = tiny_clip
    root = tmp_path_factory.mktemp("ddp")
    write_dataset(root / "world", size=16, seed=0)
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}

    def args(out: Path, *more: str) -> list[str]:
        return ["distill", "--task", "vqa", "--data-root", str(root / "world" / "vqa"), "--teacher", "tiny-clip",
                "--weights", str(weights), "--out", str(out), *ARGS, *more]

    for name in ("one", "two"):
        (root / f"batches-{name}").mkdir()
    # one process: in this process (stage 1 runs here, once); two: plain torchrun running the CLI on each rank
    one_env = {**env, "MAD_DEBUG_BATCHES": str(root / "batches-one")}
    runs = {"one": last_json(mad_inproc(*args(root / "one"), env=one_env))}
    shutil.rmtree(root / "cache" / "derived")  # the text view: built again below, by the two ranks' rank 0 alone
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
         "mad_pipeline.cli", *args(root / "two")], capture_output=True, text=True, timeout=900,
        env={**os.environ, **env, "MAD_DEBUG_BATCHES": str(root / "batches-two")})
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    runs["two"] = last_json(torchrun)
    return root, env, args, runs


def _batches(folder: Path) -> dict[int, list[tuple[int, list[str], bool]]]:
    out: dict[int, list] = {}
    for f in sorted(folder.glob("batches-rank*.jsonl")):
        for ln in f.read_text().splitlines():
            r = json.loads(ln)
            out.setdefault(r["micro"], []).append((r["rank"], r["ids"], r["real"]))
    return out


def _rows(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if "eval" not in ln]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{STEPS:06d}"
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def test_two_processes_see_the_samples_and_losses_of_one(ddp_world):
    root, _, _, runs = ddp_world
    assert runs["two"]["steps"] == STEPS and runs["two"]["train_samples"] == runs["one"]["train_samples"] == 20
    one, two = _batches(root / "batches-one"), _batches(root / "batches-two")
    assert sorted(one) == sorted(two) == list(range(STEPS * 2))
    for micro in one:
        (rank, ids, real), = one[micro]
        assert rank == 0 and real
        parts = {r: i for r, i, ok in two[micro] if ok}
        assert sorted(parts) == [0, 1], micro  # both ranks hold real samples (batches of 3 and 2)
        assert not set(parts[0]) & set(parts[1])  # disjoint
        assert sorted(parts[0] + parts[1]) == sorted(ids), micro  # the same samples, as a set

    a, b = _rows(root / "one"), _rows(root / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    for ra, rb in zip(a, b, strict=True):
        assert rb["lr"] == ra["lr"] and rb["epoch"] == ra["epoch"]
        for k in LOGGED:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-7), (ra["step"], k)
    # rank 0 wrote the run; the evaluation, sharded over the ranks and gathered, scores every sample once
    assert runs["two"]["eval"]["val"]["n"] == runs["one"]["eval"]["val"]["n"]
    preds = json.loads((root / "two" / "predictions" / "val.json").read_text())
    assert len(preds) == runs["two"]["eval"]["val"]["n"]
    assert (root / "two" / "student").is_dir() and (root / "two" / "training.png").exists()
    # the text view the two ranks trained from: one, built by rank 0 before the other rank looked (nothing left over)
    views = list((root / "cache" / "derived" / "views").iterdir())
    assert len(views) == 1 and json.loads((views[0] / "zarr.json").read_text())["attributes"]["mad"]["built_by"][
        "rank"] == 0


def test_sigkill_one_rank_then_rerun_resumes_to_the_same_weights(ddp_world):
    root, env, args, runs = ddp_world
    run, pause, tmp = root / "killed", root / "pause", root / "tmp-killed"
    pause.mkdir()
    tmp.mkdir()  # the launcher's temporary files (torchrun's log folder) go, on failure as on success
    env = {**env, "TMPDIR": str(tmp)}
    # rank 1 stops right after the step-2 checkpoint (every rank has passed it), and is SIGKILLed there
    proc = subprocess.Popen([sys.executable, "-m", "mad_pipeline.cli", *args(run, "--nproc", "2")],
                            env={**os.environ, **env, "MAD_TEST_PAUSE": f"checkpoint-rank1={pause}"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reached = pause / "checkpoint-rank1.reached"
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not reached.exists():
        time.sleep(0.01)
    assert reached.exists(), proc.communicate()
    time.sleep(0.05)  # (the pid is written before the file is closed)
    os.kill(int(reached.read_text().split()[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: --nproc 2: rank 1 was killed by signal SIGKILL"), err[-2000:]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"
    assert not (run / "metrics.json").exists()
    assert list(tmp.iterdir()) == []

    resumed = last_json(mad(*args(run, "--nproc", "2"), env=env))
    assert resumed["resumed"] and resumed["steps"] == STEPS and list(tmp.iterdir()) == []
    a, b = _weights(root / "two"), _weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _rows(run) == [{**r, "step_time_s": r2["step_time_s"], "samples_per_s": r2["samples_per_s"]}
                          for r, r2 in zip(_rows(root / "two"), _rows(run), strict=True)]
    assert resumed["value"] == runs["two"]["value"]


def test_mad_run_yaml_takes_nproc_outside_every_key(tmp_path):
    from mad_pipeline.stages.distill import DistillConfig, fingerprint
    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.errors import InputError

    f = tmp_path / "x.yaml"
    f.write_text("task: vqa\ndata: {root: data}\nnproc: 2\n")
    assert load_config(f).values["nproc"] == 2
    with pytest.raises(InputError, match=r"nproc: must be at least 1"):
        load_config(f, ["nproc=0"])
    one = DistillConfig(task="vqa", data_root=tmp_path, out=tmp_path / "run")
    assert fingerprint(one) == fingerprint(DistillConfig(task="vqa", data_root=tmp_path, out=tmp_path / "run",
                                                         nproc=4))


def test_a_global_batch_is_cut_by_store_row_into_disjoint_parts():
    import numpy as np

    from mad_pipeline.training.distributed import global_batch, share, share_size

    rows = np.array([40, 3, 17, 3, 90, 41, 2])  # sample -> image-store row
    batch = [4, 0, 6, 1, 3]  # rows 90, 40, 2, 3, 3
    parts = [share(batch, rows, r, 2) for r in range(2)]
    assert parts == [[6, 1, 3], [0, 4]]  # sorted by row (ties in batch order), the first part one larger
    assert [share_size(5, r, 2) for r in range(2)] == [3, 2]
    assert share([5], rows, 1, 2) == [5] and share_size(1, 1, 2) == 0  # an empty part: a placeholder weighed 0
    assert [global_batch(m, 20, 3) for m in range(9)] == [3, 3, 3, 3, 3, 3, 2, 3, 3]


def test_two_processes_run_vcr_in_sub_batches_of_similar_length_like_one(ddp_world, tiny_clip, tmp_path):
    """--length-buckets under DDP: each rank runs its share of a VCR batch through the student as a short and a long
    sub-batch (two student calls inside one DDP forward); the two ranks log the losses of one process."""
    root, env, _, _ = ddp_world
    args = ["distill", "--task", "vcr", "--data-root", str(root / "world" / "vcr"), "--teacher", "tiny-clip",
            "--weights", str(tiny_clip[1]), "--student", "vilt-mini-l3", "--steps", "3", "--batch-size", "8",
            "--log-every", "1", "--num-workers", "0", "--length-buckets", "2", "--json"]
    one = last_json(mad_inproc(*args, "--out", str(tmp_path / "one"), env=env))
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "mad_pipeline.cli", *args, "--out", str(tmp_path / "two")], capture_output=True,
                         text=True, timeout=900, env={**os.environ, **env})
    assert two.returncode == 0, two.stderr[-3000:]
    assert last_json(two)["steps"] == one["steps"] == 3
    for ra, rb in zip(_rows(tmp_path / "one"), _rows(tmp_path / "two"), strict=True):
        for k in LOGGED:
            assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-6), (ra["step"], k)
