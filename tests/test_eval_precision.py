"""A run is scored on every split under the autocast it was trained and selected with: a study trained with bf16 on
CPU scores its held-out split in bf16, as its own dev and test evaluations were, and ``mad eval`` does the same unless
``--precision`` says otherwise. Only such studies' evaluation keys change (the others keep their cached evaluations)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import last_json, mad_inproc

CONFIG = """\
name: tiny vcr, bf16 on cpu
task: vcr
data:
  shapes: {{size: 16, seed: 0}}
  eval_split: test
  eval_splits: [shift]
methods: [baseline]
vocab_min_count: 1
train: {{steps: 4, batch_size: 4, dev_fraction: 0.25, min_dev: 4, dev_every: 2, patience: 3, cpu_bf16: {bf16}}}
"""


@pytest.fixture(scope="module")
def bf16_study(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval-precision")
    (d / "vcr.yaml").write_text(CONFIG.format(bf16="true"))
    (d / "fp32.yaml").write_text(CONFIG.format(bf16="false"))
    env = {"MAD_CACHE": str(d / "cache"), "MAD_SHARED_CACHE": "", "OMP_NUM_THREADS": "1",
           "MAD_HASH_MEMO": str(d / "memo")}
    return d, env, last_json(mad_inproc("run", str(d / "vcr.yaml"), "--json", env=env))


def _stage(res, kind, split=None):
    return next(s for s in res["stages"] if s["kind"] == kind and (split is None or s.get("split") == split))


def _record(stage) -> dict:
    return json.loads((Path(stage["path"]) / "stage.json").read_text())


def test_held_out_split_is_scored_as_the_run_scored_its_test_split(bf16_study, tmp_path):
    from mad_pipeline.stages import evaluate as eval_stage

    _, _, res = bf16_study
    run = Path(_stage(res, "distill")["run"])
    own = json.loads((run / "metrics.json").read_text())
    assert own["train_config"]["cpu_bf16"] is True
    assert _record(_stage(res, "eval", "shift"))["result"]["precision"] == "bf16"
    # predicting test again at the default precision gives the run's own (bf16) test figures, QA->R included
    again = eval_stage.run(eval_stage.EvalConfig(run=run, split="test", out=tmp_path / "t.json", progress=False))
    assert again["precision"] == "bf16" and again["metrics"] == own["eval"]["test"]
    fp32 = eval_stage.run(eval_stage.EvalConfig(run=run, split="test", out=tmp_path / "f.json", progress=False,
                                                precision="fp32"))
    assert fp32["precision"] == "fp32" and fp32["n"] == again["n"]


def test_mad_eval_precision_option(bf16_study, tmp_path):
    _, env, res = bf16_study
    run = _stage(res, "distill")["run"]
    out = last_json(mad_inproc("eval", "--run", run, "--split", "shift", "--out", str(tmp_path / "s.json"), "--json",
                               env=env))
    assert out["precision"] == "bf16"
    assert out["metrics"] == _record(_stage(res, "eval", "shift"))["result"]["metrics"]
    out = last_json(mad_inproc("eval", "--run", run, "--split", "shift", "--out", str(tmp_path / "s.json"), "--json",
                               "--precision", "fp32", env=env))
    assert out["precision"] == "fp32"
    bad = mad_inproc("eval", "--run", run, "--split", "shift", "--precision", "fp16", env=env, check=False)
    assert bad.returncode != 0 and "--precision fp16: not one of trained, fp32, bf16" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_only_studies_trained_in_bf16_on_cpu_change_their_evaluation_keys(bf16_study):
    from mad_pipeline.stages.pipeline import RunConfig, run

    d, env, _ = bf16_study
    fp32 = last_json(mad_inproc("run", str(d / "fp32.yaml"), "--json", env=env))
    assert _record(_stage(fp32, "eval", "shift"))["result"]["precision"] == "fp32"

    def key_params(config: str) -> list[dict]:  # the plan of a config whose runs are cached: every stage keyed
        plan = run(RunConfig(config=d / config, cache=Path(env["MAD_CACHE"]), out=None, progress=False,
                             dry_run=True), log=lambda _m: None)
        assert all(st.status == "cached" for st in plan.stages)
        return [st.meta["_params"] for st in plan.stages if st.kind == "eval"]

    assert [p.get("precision") for p in key_params("vcr.yaml")] == ["trained"] * 2
    assert [p.get("precision") for p in key_params("fp32.yaml")] == [None] * 2
