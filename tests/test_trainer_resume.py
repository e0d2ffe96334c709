"""SIGKILL a real `mad distill` after a checkpoint and rerun the same command: the resumed run ends with exactly the
weights (and logs exactly the losses) of an uninterrupted run (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import last_json, mad_inproc
from safetensors.torch import load_file

STEPS = 6


def _args(world: Path, weights: Path, out: Path, select: str = "random") -> list[str]:
    # random token selection (a torch.Generator in the checkpoint) or teacher-saliency (targets made by the data
    # pipeline, whose per-image cache starts empty after the resume), accumulation, several epochs, a mid-epoch kill
    return ["distill", "--task", "vqa", "--data-root", str(world / "vqa"), "--teacher", "tiny-clip",
            "--weights", str(weights), "--out", str(out), "--vocab-min-count", "1", "--train-fraction", "0.25",
            "--batch-size", "4", "--grad-accum", "2", "--steps", str(STEPS), "--checkpoint-every", "2",
            "--log-every", "1", "--select", select, "--top-k", "0.5", "--warmup", "2", "--num-workers", "0",
            "--json"]


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    latest = (run / "checkpoints" / "latest").read_text().strip()
    assert latest == f"step_{STEPS:06d}"
    return load_file(str(run / "checkpoints" / latest / "model.safetensors"))


def _losses(run: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    keep = ("step", "epoch", "lr", "task", "tok_v", "tok_t", "pool", "distill", "alpha", "total", "grad_norm")
    return [{k: r.get(k) for k in keep} for r in rows if "eval" not in r]


@pytest.mark.parametrize("select", ["random", "teacher-saliency"])
def test_sigkill_then_resume_equals_uninterrupted(select, tiny_clip, tmp_path):
    cfg_file, weights = tiny_clip
    # one intra-op thread: fast on a shared 2-core machine (both runs use the same setting)
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    world_dir = tmp_path / "world"
    from mad_pipeline.shapes.formats import write_dataset

    write_dataset(world_dir, size=16, seed=0)

    # the uninterrupted run and the resume in this process; the killed run is a real process
    ref = last_json(mad_inproc(*_args(world_dir, weights, tmp_path / "ref", select), env=env))
    assert not ref["resumed"] and ref["steps"] == STEPS

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mad_pipeline.cli", *_args(world_dir, weights, run, select)],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while proc.poll() is None and time.time() < deadline and not (run / "checkpoints" / "latest").exists():
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = (run / "checkpoints" / "latest").read_text().strip()
    assert killed_at < f"step_{STEPS:06d}" and not (run / "metrics.json").exists(), "the kill did not land mid-run"

    resumed = last_json(mad_inproc(*_args(world_dir, weights, run, select), env=env))
    assert resumed["resumed"] and resumed["steps"] == STEPS

    a, b = _final_weights(tmp_path / "ref"), _final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert _losses(run) == _losses(tmp_path / "ref")  # the replayed steps logged the very same numbers
    assert resumed["value"] == ref["value"]
    opt_a = torch.load(tmp_path / "ref" / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(run / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    for i, st in opt_a["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["state"][i]["exp_avg_sq"])


def test_adamw_is_fused_and_a_per_parameter_loop_checkpoint_resumes_with_its_loop(tiny_clip, tmp_path, monkeypatch):
    """AdamW runs fused on CPU (one pass per parameter, not the per-parameter loop of earlier versions, which rounds
    differently); a run checkpointed by the loop resumes with the loop, so it ends with the weights the loop gives
    uninterrupted, bit for bit."""
    from mad_pipeline.shapes.formats import write_dataset
    from mad_pipeline.training import trainer

    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    write_dataset(tmp_path / "world", size=16, seed=0)
    last_json(mad_inproc(*_args(tmp_path / "world", weights, tmp_path / "fused"), env=env))
    opt = torch.load(tmp_path / "fused" / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.pt", weights_only=True)
    assert all(g["fused"] for g in opt["param_groups"])
    part = tmp_path / "part"
    with monkeypatch.context() as m:  # the earlier versions' kernel, twice
        m.setattr(trainer, "adamw_kernel", lambda device: {"foreach": False})
        last_json(mad_inproc(*_args(tmp_path / "world", weights, tmp_path / "loop"), env=env))
        # the second fails writing its last checkpoint (a full disk) and leaves the step-4 one, resumed by this version
        full_disk = {**env, "MAD_TEST_FAIL": f"checkpoint@{STEPS}"}
        crashed = mad_inproc(*_args(tmp_path / "world", weights, part), env=full_disk, check=False)
    assert crashed.returncode != 0 and "cannot write checkpoint" in crashed.stderr
    assert (part / "checkpoints" / "latest").read_text().strip() == f"step_{STEPS - 2:06d}"
    resumed = last_json(mad_inproc(*_args(tmp_path / "world", weights, part), env=env))
    assert resumed["resumed"] and resumed["steps"] == STEPS
    fused, loop, again = (_final_weights(tmp_path / n) for n in ("fused", "loop", "part"))
    assert all(torch.equal(loop[k], again[k]) for k in loop)
    assert any(not torch.equal(loop[k], fused[k]) for k in loop)  # the two kernels do round differently


def test_cpu_bf16_trains_under_autocast_reproducibly_and_apart_from_fp32(tiny_clip, tmp_path):
    """`--cpu-bf16`: the student's matmuls run in bf16 on CPU (seen from inside the student), the run is exact when
    repeated, its weights differ from the fp32 run's, and its setting is recorded (and so keyed) only when set. On
    a CPU without native bf16 the first bf16 run of the process says so in one line (emulated: far slower)."""
    cfg_file, weights = tiny_clip
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    from mad_pipeline.stages import distill as distill_stage

    from mad_pipeline.machine import cpu_bf16_flags
    from mad_pipeline.shapes.formats import write_dataset

    distill_stage._SAID.clear()  # another test of this worker process may have said it already

    write_dataset(tmp_path / "world", size=16, seed=0)
    seen: list[torch.dtype] = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, args, out: seen.append(out.dtype) if isinstance(mod, torch.nn.Linear) and mod.training else None)
    try:
        # the first two runs print their messages (no --json), the third its JSON line
        procs = {name: mad_inproc(*[a for a in _args(tmp_path / "world", weights, tmp_path / name)
                                    if a != "--json" or name == "bf16-again"], *flags, env=env)
                 for name, flags in (("fp32", []), ("bf16", ["--cpu-bf16"]), ("bf16-again", ["--cpu-bf16"]))}
    finally:
        hook.remove()
    said = {name: "no native bf16" in p.stdout + p.stderr for name, p in procs.items()}
    assert said == {"fp32": False, "bf16": cpu_bf16_flags() == [], "bf16-again": False}
    assert set(seen) == {torch.float32, torch.bfloat16}  # the fp32 run's, then the bf16 runs' training forwards
    assert last_json(procs["bf16-again"])["steps"] == STEPS
    assert all(max(r["step"] for r in _losses(tmp_path / n)) == STEPS for n in procs)
    a, b, c = (_final_weights(tmp_path / n) for n in ("fp32", "bf16", "bf16-again"))
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert {k: v.dtype for k, v in b.items()} == {k: v.dtype for k, v in a.items()}  # fp32 weights either way
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "bf16") == _losses(tmp_path / "bf16-again") != _losses(tmp_path / "fp32")
    configs = {n: json.loads((tmp_path / n / "metrics.json").read_text())["train_config"] for n in procs}
    assert configs["bf16"]["cpu_bf16"] is True and configs["fp32"]["cpu_bf16"] is False


def test_num_workers_auto_and_counts():
    from mad_pipeline.errors import InputError
    from mad_pipeline.training.config import TrainConfig, parse_num_workers, resolve_num_workers

    assert TrainConfig().num_workers == "auto"
    assert resolve_num_workers("auto", "cpu") == 0  # the CPU step already uses every core
    assert 1 <= resolve_num_workers("auto", "cuda") <= 8
    assert resolve_num_workers("3", "cuda") == 3 and resolve_num_workers(0, "cuda") == 0
    assert parse_num_workers(" AUTO ") == "auto" and parse_num_workers("2") == 2
    for bad in ("-1", "many", -1, 1.5, True):
        with pytest.raises(InputError, match="--num-workers"):
            parse_num_workers(bad)
    with pytest.raises(InputError, match="--num-workers"):
        TrainConfig(num_workers="x")


def test_cpu_bf16_flags_read_from_cpuinfo(tmp_path):
    """Native bf16 is read from an x86 `flags` line; a CPU without it gets the one-line note when it asks for bf16
    autocast on CPU, and nothing is said where the flags are not known (no file, an ARM `Features` line) or fine."""
    from mad_pipeline.machine import cpu_bf16_flags, cpu_model
    from mad_pipeline.training.config import cpu_bf16_warning

    files = {"avx2": "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n",
             "zen4": "flags\t\t: fpu avx2 avx512f avx512_bf16\n",
             "spr": "flags\t\t: avx2 amx_bf16 amx_tile avx512_bf16\n",
             "arm": "processor\t: 0\nFeatures\t: fp asimd bf16\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = {name: cpu_bf16_flags(tmp_path / name) for name in files}
    assert got == {"avx2": [], "zen4": ["avx512_bf16"], "spr": ["amx_bf16", "avx512_bf16"], "arm": None}
    assert cpu_bf16_flags(tmp_path / "missing") is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    note = cpu_bf16_warning(cpu, True, tmp_path / "avx2")
    assert note is not None and "no native bf16" in note and "\n" not in note
    assert cpu_bf16_warning(cpu, False, tmp_path / "avx2") is None  # fp32 asked: nothing to say
    assert cpu_bf16_warning(cuda, True, tmp_path / "avx2") is None  # the GPU's bf16 is another matter
    for name in ("zen4", "spr", "arm", "missing"):
        assert cpu_bf16_warning(cpu, True, tmp_path / name) is None
    (tmp_path / "epyc").write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654\nflags\t\t: avx2 avx512_bf16\n")
    assert cpu_model(tmp_path / "epyc") == "AMD EPYC 9654"
    assert cpu_model(tmp_path / "missing")  # what platform knows, never empty
