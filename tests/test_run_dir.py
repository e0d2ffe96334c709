"""The `mad distill` run directory on its failure paths: a run that fails on a user mistake leaves nothing that
refuses the corrected command; two processes on one --out never both train (the second stops with one line naming
the holder, or waits with --wait, and a killed holder frees the directory at once); a checkpoint write that fails
with a full disk is one line, leaves the last checkpoint, and the same command resumes from it.

Baseline runs (no teacher, no extraction) of one or a few steps on a shapes world of 16 images."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mad_pipeline.stages.distill import DistillConfig
from mad_pipeline.stages.distill import run as distill_run

from mad_pipeline.errors import InputError, MadError, TeacherError
from mad_pipeline.losses import MADConfig
from mad_pipeline.training.config import TrainConfig

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes-rundir")
    write_dataset(out, size=16, seed=0)
    return out


def _cfg(world: Path, out: Path, **train) -> DistillConfig:
    return DistillConfig(task="vqa", data_root=world / "vqa", out=out, teacher=None, mad=MADConfig.baseline(),
                         vocab_min_count=1, progress=False, cache=out.parent / "cache",
                         train=TrainConfig(**{"steps": 1, "batch_size": 8, "log_every": 1, "num_workers": 0,
                                              **train}))


def test_a_run_that_fails_on_a_mistake_does_not_claim_its_directory(world, tmp_path):
    out = tmp_path / "run"
    good = _cfg(world, out)
    # a misspelt teacher (found only when stage 1 starts), a missing data root: nothing is left in --out
    with pytest.raises(TeacherError, match="unknown teacher 'tiny-clipp'"):
        distill_run(dataclasses.replace(good, teacher="tiny-clipp", mad=MADConfig.full()), log=lambda m: None)
    assert not out.exists()
    with pytest.raises(InputError, match="not a directory"):
        distill_run(dataclasses.replace(good, data_root=world / "nope"), log=lambda m: None)
    assert not out.exists()
    # an existing (empty) directory of the user's stays, and stays empty
    out.mkdir()
    with pytest.raises(InputError, match="not a directory"):
        distill_run(dataclasses.replace(good, data_root=world / "nope"), log=lambda m: None)
    assert out.is_dir() and list(out.iterdir()) == []
    # a device this machine lacks is refused where the settings are made, before anything runs
    import torch

    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(InputError, match=rf"--device {missing}: (no CUDA device|this machine has)"):
        TrainConfig(device=missing)
    # the corrected command runs (it was refused with "holds a run with other settings" before)
    res = distill_run(good, log=lambda m: None)
    assert res.metrics["steps"] == 1 and not res.metrics["resumed"]
    assert json.loads((out / "run.json").read_text())["fingerprint"]["train"]["steps"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no lock file left behind


def _argv(world: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mad_pipeline.cli", "distill", "--task", "vqa", "--data-root", str(world / "vqa"),
            "--no-distill", "--out", str(out), "--steps", "2", "--batch-size", "8", "--log-every", "1",
            "--vocab-min-count", "1", "--num-workers", "0", "--cache", str(out.parent / "cache"), *extra]


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    """Until ``path`` exists (the other process reached its fixed point) or the process ended."""
    import time

    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)


def test_two_runs_on_one_out_never_both_train(world, tmp_path, capsys):
    from mad_pipeline.cli.main import main

    out = tmp_path / "run"
    hold = tmp_path / "hold"
    hold.mkdir()
    # A takes the directory and stops right there (a test hook: a fixed point, no timing)
    a = subprocess.Popen(_argv(world, out, "--json"), env={**os.environ, **ENV,
                                                           "MAD_TEST_PAUSE": f"run-dir-locked={hold}"},
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(hold / "run-dir-locked.reached", a)
        # B (here, in this process): the same command stops at once, one line naming the directory and A's pid
        with pytest.raises(SystemExit) as e:
            main(_argv(world, out, "--json")[3:])
        assert e.value.code == 2
        assert capsys.readouterr().err.strip().splitlines() == [
            f"error: --out {out}: in use by another mad process (pid {a.pid}); wait for it to end, use another "
            "--out, or pass --wait"]
        # C waits for it (its log says so) ...
        c = subprocess.Popen(_argv(world, out, "--wait"), env={**os.environ, **ENV}, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        seen = ""
        while "waiting" not in seen:
            line = c.stderr.readline()
            assert line, (seen, c.communicate())
            seen += line
        assert f"pid {a.pid}" in seen
        # ... and the OS frees the directory when A dies: no stale lock to clear by hand
        a.send_signal(signal.SIGKILL)
        a.wait()
        _, err = c.communicate(timeout=300)
        assert c.returncode == 0, seen + err
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval" not in r] == [1, 2] and sum("eval" in r for r in rows) == 1
    assert not (out / ".mad-run.lock").exists()


def test_checkpoint_on_a_full_disk_is_one_line_and_resumes(world, tmp_path, monkeypatch, capsys):
    from mad_pipeline.cli.main import main

    out = tmp_path / "run"
    args = ["distill", "--task", "vqa", "--data-root", str(world / "vqa"), "--no-distill", "--out", str(out),
            "--steps", "2", "--batch-size", "8", "--checkpoint-every", "1", "--log-every", "1",
            "--vocab-min-count", "1", "--num-workers", "0", "--cache", str(tmp_path / "cache"), "--quiet"]
    monkeypatch.setenv("MAD_TEST_FAIL", "checkpoint@2")  # the write of step 2's checkpoint hits ENOSPC
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    ck = out / "checkpoints"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: cannot write checkpoint {ck / 'step_000002'}: No space left on device; the last one "
        "(step_000001) is intact: free space and rerun the same command to resume"]
    assert (ck / "latest").read_text().strip() == "step_000001"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_000001"]  # nothing half-written
    assert (ck / "step_000001" / "checkpoint.json").exists()
    monkeypatch.delenv("MAD_TEST_FAIL")
    with pytest.raises(SystemExit) as e:
        main([*args[:-1], "--json"])  # the same command
    assert e.value.code in (0, None)
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["resumed"] and res["steps"] == 2
    assert (ck / "latest").read_text().strip() == "step_000002"


def test_checkpoint_failure_without_an_earlier_one(tmp_path, monkeypatch):
    import torch

    from mad_pipeline.training.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    monkeypatch.setenv("MAD_TEST_FAIL", "checkpoint")
    with pytest.raises(MadError, match=r"step_000001: No space left on device; there is no earlier one"):
        save_checkpoint(tmp_path / "ck", 1, model, opt, {"step": 1}, keep=2)
    assert list((tmp_path / "ck").iterdir()) == []
