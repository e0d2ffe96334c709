"""`student-pretrain` as a `mad run` stage kind: its settings under `student_pretrain:` (the settings of `mad student
pretrain`, read from the stage's dataclass), its own key and cache entry (`mad run` and `mad student pretrain` with
the same settings serve each other), distill stages that start from it (`init: student-pretrain`, the pretraining's
weights key in theirs), one stage shared by the tasks of a study, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import last_json, mad_inproc

from mad_pipeline.errors import InputError

CONFIG = """\
name: tiny pretrained students
task: vqa
data:
  shapes: {size: 16, seed: 0}
student: vilt-tiny
init: student-pretrain
student_pretrain: {steps: 2, batch_size: 4, pool_size: 8, warmup: 1, eval_size: 0, cell_steps: 2}
methods: [baseline]
vocab_min_count: 1
train: {steps: 2, batch_size: 8}
"""
# the same pretraining through `mad student pretrain`
CLI = ["--steps", "2", "--batch-size", "4", "--pool-size", "8", "--warmup", "1", "--eval-size", "0",
       "--cell-steps", "2"]


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run-pretrain")
    (d / "exp.yaml").write_text(CONFIG)
    env = {"MAD_CACHE": str(d / "cache"), "MAD_SHARED_CACHE": "", "OMP_NUM_THREADS": "1",
           "MAD_HASH_MEMO": str(d / "memo")}
    first = last_json(mad_inproc("run", str(d / "exp.yaml"), "--json", env=env))
    return d, env, first


def _run(d, env, *over):
    return last_json(mad_inproc("run", str(d / "exp.yaml"), *over, "--json", env=env))


def _stage(res, kind):
    return next(s for s in res["stages"] if s["kind"] == kind)


def _record(stage) -> dict:
    return json.loads((Path(stage["path"]) / "stage.json").read_text())


def test_pretrain_stage_runs_first_and_the_students_start_from_it(pretrained_run):
    from mad_pipeline.stages import student_pretrain as sp

    d, env, first = pretrained_run
    kinds = [s["kind"] for s in first["stages"]]
    assert kinds[:2] == ["data", "student-pretrain"] and kinds.count("student-pretrain") == 1
    pre, dist = _stage(first, "student-pretrain"), _stage(first, "distill")
    assert pre["status"] == "ran" and dist["status"] == "ran"
    cfg = sp.StudentPretrainConfig(steps=2, batch_size=4, pool_size=8, warmup=1, eval_size=0, cell_steps=2)
    assert pre["key"] == sp.stage_key(cfg)  # the stage's own key: the same cache entry as `mad student pretrain`
    assert Path(pre["path"]) == Path(env["MAD_CACHE"]) / "runs" / "student-pretrain" / pre["key"]
    # the distill key has the pretraining's weights key (changing the weights retrains the students: see below);
    # the run trained from the stage's weights
    assert pre["weights_key"] == sp.weights_key(cfg)
    run = json.loads((Path(dist["run"]) / "run.json").read_text())
    assert run["fingerprint"]["pretrained"] == str(Path(pre["path"]) / "weights")
    assert run["fingerprint"]["init"] == "pretrained"
    # a rerun is served from the cache
    again = _run(d, env)
    assert again["counts"] == {"cached": len(again["stages"])}
    assert [s["key"] for s in again["stages"]] == [s["key"] for s in first["stages"]]


def test_mad_student_pretrain_and_mad_run_share_the_cache_entry(pretrained_run):
    d, env, first = pretrained_run
    pre = _stage(first, "student-pretrain")
    cli = last_json(mad_inproc("student", "pretrain", *CLI, "--json", env=env))
    assert cli["cached"] and cli["key"] == pre["key"] and Path(cli["path"]) == Path(pre["path"]) / "weights"
    # the other way round: `mad student pretrain` first (seed 1), then `mad run` with that setting is served from it
    other = last_json(mad_inproc("student", "pretrain", *CLI, "--seed", "1", "--json", env=env))
    assert not other["cached"]
    res = _run(d, env, "student_pretrain.seed=1")
    assert _stage(res, "student-pretrain")["status"] == "cached"
    assert _stage(res, "student-pretrain")["key"] == other["key"]
    # other weights: other students (the distill stage trains again)
    assert _stage(res, "distill")["status"] == "ran"
    assert _stage(res, "distill")["key"] != _stage(first, "distill")["key"]


def test_figure_settings_do_not_retrain_the_students(pretrained_run):
    """eval_size / probe_* change the pretraining stage's figures (its key), not its weights: the students stay."""
    d, env, first = pretrained_run
    res = _run(d, env, "student_pretrain.eval_size=2", "student_pretrain.probe_steps=1",
               "student_pretrain.probe_train=4")
    pre = _stage(res, "student-pretrain")
    assert pre["status"] == "ran" and pre["key"] != _stage(first, "student-pretrain")["key"]
    assert set(_record(pre)["result"]["figures"]) == {"pretrained", "scratch"}
    assert _stage(res, "distill")["status"] == "cached"
    assert _stage(res, "distill")["key"] == _stage(first, "distill")["key"]


def test_dry_run_plan_and_one_line_errors(pretrained_run, tmp_path):
    from mad_pipeline.stages.pipeline import load_config

    d, env, first = pretrained_run
    plan = _run(d, env, "student_pretrain.steps=3", "--dry-run")
    pre = _stage(plan, "student-pretrain")
    assert pre["status"] == "to-run" and pre["key"] and _stage(plan, "distill")["key"]  # keyed before it runs
    assert not (Path(env["MAD_CACHE"]) / "runs" / "student-pretrain" / pre["key"]).exists()
    f = d / "exp.yaml"
    with pytest.raises(InputError, match=r"student_pretrain.steps=0.: student_pretrain.steps: must be at least 1, "
                                         r"got 0"):
        load_config(f, ["student_pretrain.steps=0"])
    with pytest.raises(InputError, match=r"unknown key .student_pretrain.stpes. \(student_pretrain has: "
                                         r"batch_size, cell_steps, eval_size,"):
        load_config(f, ["student_pretrain.stpes=3"])
    with pytest.raises(InputError, match=r"init: 'bogus' is not one of pretrained, scratch, student-pretrain"):
        load_config(f, ["init=bogus"])
    for over, line in ((["pretrained=/x"], "exp.yaml: init: student-pretrain starts the students from the config's "
                                           "own pretraining; pretrained: /x names other weights: give one of them"),
                       (["student_pretrain.pool_size=2"], "exp.yaml: student_pretrain: --pool-size 2: at least "
                                                          "one batch (--batch-size 4)")):
        proc = mad_inproc("run", str(f), *over, "--dry-run", env=env, check=False)
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {f}{line[len('exp.yaml'):]}"]
    # the scratch and pretrained inits plan no pretraining stage
    assert all(s.get("kind") != "student-pretrain" for s in _run(d, env, "init=scratch", "--dry-run")["stages"])


def test_fresh_pooler_is_a_new_run_from_the_same_pretraining(pretrained_run):
    d, env, first = pretrained_run
    res = _run(d, env, "fresh_pooler=true")
    assert _stage(res, "student-pretrain")["status"] == "cached"
    fresh = _stage(res, "distill")
    assert fresh["status"] == "ran" and fresh["key"] != _stage(first, "distill")["key"]
    run_json = json.loads((Path(fresh["run"]) / "run.json").read_text())
    assert run_json["fingerprint"]["fresh_pooler"] is True


def test_a_study_shares_one_pretraining_unless_a_task_changes_it():
    from mad_pipeline.stages.pipeline import schema

    from mad_pipeline.pipeline.config import from_dict
    from mad_pipeline.pipeline.plan import expand_study

    raw = {"task": ["vqa", "snli-ve"], "data": {"shapes": {"size": 16}}, "init": "student-pretrain",
           "student_pretrain": {"steps": 2}, "methods": ["baseline"]}
    stages = expand_study(from_dict(raw, schema()).values)
    pre = [s for s in stages if s.kind == "student-pretrain"]
    assert [s.id for s in pre] == ["student-pretrain"]
    assert {s.deps["init"] for s in stages if s.kind == "distill"} == {"student-pretrain"}
    raw["per_task"] = {"snli-ve": {"student_pretrain": {"steps": 3}}}
    stages = expand_study(from_dict(raw, schema()).values)
    assert sorted(s.id for s in stages if s.kind == "student-pretrain") == ["snli-ve/student-pretrain",
                                                                            "student-pretrain"]
    deps = {s.meta["task"]: s.deps["init"] for s in stages if s.kind == "distill"}
    assert deps == {"vqa": "student-pretrain", "snli-ve": "snli-ve/student-pretrain"}
    # a method of its own init: scratch students beside the pretrained ones, and pretraining only when a method uses it
    raw.pop("per_task")
    raw["methods"] = {"baseline": None, "scratch": {"preset": "baseline", "init": "scratch"}}
    stages = expand_study(from_dict(raw, schema()).values)
    assert {s.meta["method"]: s.deps.get("init") for s in stages if s.kind == "distill"} == {
        "baseline": "student-pretrain", "scratch": None}
    raw.update(init="scratch", methods={"baseline": None, "pre": {"preset": "baseline", "init": "student-pretrain"}})
    stages = expand_study(from_dict(raw, schema()).values)
    assert [s.id for s in stages if s.kind == "student-pretrain"] == ["student-pretrain"]
    assert {s.meta["method"]: s.deps.get("init") for s in stages if s.kind == "distill"} == {
        "baseline": None, "pre": "student-pretrain"}


def test_init_pretrained_still_starts_from_the_preset_weights(pretrained_run, monkeypatch):
    """`init: pretrained` (the shipped weights; here the stage's output in their place) plans no pretraining stage,
    keys the students by the weights' content and trains them from the preset's directory."""
    from mad_pipeline.students import weights as weights_mod

    d, env, first = pretrained_run
    shipped = Path(_stage(first, "student-pretrain")["path"]) / "weights"
    monkeypatch.setitem(weights_mod.PRESET_WEIGHTS, "vilt-tiny", shipped)
    res = _run(d, env, "init=pretrained")
    assert "student-pretrain" not in [s["kind"] for s in res["stages"]]
    dist = _stage(res, "distill")
    assert dist["status"] == "ran" and dist["key"] != _stage(first, "distill")["key"]
    fp = json.loads((Path(dist["run"]) / "run.json").read_text())["fingerprint"]
    assert fp["init"] == "pretrained" and fp["pretrained"] is None
    assert json.loads((Path(dist["run"]) / "metrics.json").read_text())["steps"] == 2
