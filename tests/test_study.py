"""A study over several tasks in one `mad run` config (`task: [vqa, snli-ve, vcr]`): the plan is each task's own
plan, ids prefixed by the task, one shared world; a one-task filter (`task=vcr`) finds the very same keys in the
cache; each task gets its own paper-style report (VCR: Q->A, QA->R and Q->AR, on test and shift), and the study's
ablation table pairs MAD with each variant by seed. Tiny: a 16-image world, one training step, baseline-only for the
real run (no teacher)."""

from __future__ import annotations

import csv
import io
import json

import pytest
from conftest import bench_module, mad_inproc
from mad_pipeline.stages.pipeline import load_config

from mad_pipeline.errors import InputError
from mad_pipeline.pipeline import report as report_lib
from mad_pipeline.pipeline.plan import expand_study

STUDY = """\
name: tiny study
task: [vqa, snli-ve, vcr]
data:
  shapes: {{size: 16, seed: 0}}
  eval_split: test
  eval_splits: [shift]
teacher: tiny-clip
teacher_weights: {weights}
methods: [baseline, naive, full]
fractions: [0.5, 1.0]
seeds: [0]
vocab_min_count: 1
train:
  steps: 1
  batch_size: 4
"""
TASKS = ("vqa", "snli-ve", "vcr")


@pytest.fixture()
def study_yaml(tiny_clip, tmp_path):
    _, weights = tiny_clip
    p = tmp_path / "study.yaml"
    p.write_text(STUDY.format(weights=weights))
    return p


@pytest.fixture()
def inproc(tiny_clip, tmp_path):
    """``mad ...`` in this process (tiny-clip registered as MAD_MODEL_CONFIGS registers it in a subprocess, a
    private cache); returns stdout, asserting exit code 0."""
    env = {"MAD_MODEL_CONFIGS": str(tiny_clip[0]), "MAD_CACHE": str(tmp_path / "cache"), "MAD_SHARED_CACHE": "",
           "MAD_HASH_MEMO": str(tmp_path / "hash-memo"), "COLUMNS": "200"}
    return lambda *args: mad_inproc(*args, env=env).stdout


def _json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_three_task_study_expands_into_each_tasks_stages(study_yaml, inproc, tmp_path):
    values = load_config(study_yaml).values
    assert values["task"] == list(TASKS)
    stages = expand_study(values)
    assert [s.id for s in stages if s.kind == "data"] == ["data:shapes"] and stages[0].kind == "data"
    for task in TASKS:
        own = [s for s in stages if s.meta.get("task") == task]
        assert all(s.id.startswith(f"{task}/") and s.label.startswith(f"{task}: ") for s in own)
        by_kind = {k: [s for s in own if s.kind == k] for k in ("extract", "distill", "eval", "report")}
        # the training subset at 50% (seed 0), the whole training split, the evaluation splits (test; shift: the
        # teacher's zero-shot reference there)
        assert sorted(s.id for s in by_kind["extract"]) == [f"{task}/extract:shift", f"{task}/extract:test",
                                                            f"{task}/extract:train", f"{task}/extract:train@0.5/s0"]
        assert len(by_kind["distill"]) == 3 * 2 and len(by_kind["report"]) == 1
        assert sorted({s.meta["split"] for s in by_kind["eval"]}) == ["shift", "test"] and len(by_kind["eval"]) == 12
        full = next(s for s in by_kind["distill"] if s.meta["method"] == "full" and s.meta["fraction"] == 0.5)
        assert full.deps == {"data": "data:shapes", "train_stores": f"{task}/extract:train@0.5/s0",
                             "eval_stores": f"{task}/extract:test"}
        assert set(by_kind["report"][0].deps.values()) == {s.id for s in by_kind["eval"]} | {
            f"{task}/extract:test", f"{task}/extract:shift"}
    # the plan through the CLI (dry run: nothing computed), and the one-task filter: that task's plain ids
    res = _json(inproc("run", str(study_yaml), "--dry-run", "--json"))
    assert res["dry_run"] and len(res["stages"]) == 1 + 3 * (4 + 6 + 12 + 1)
    assert {s["task"] for s in res["stages"] if s["kind"] != "data"} == set(TASKS)
    one = _json(inproc("run", str(study_yaml), "task=vcr", "--dry-run", "--json"))
    assert [s["id"] for s in one["stages"] if s["kind"] == "report"] == ["report"]
    assert len(one["stages"]) == 1 + 4 + 6 + 12 + 1
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("stage.json"))


def test_per_task_settings_make_that_tasks_values(study_yaml):
    """``per_task:`` sets one task's keys (as the YAML writes them); its stages are those of the one-task config
    with the same settings, and the task filter keeps them."""
    from mad_pipeline.pipeline.config import for_task

    text = study_yaml.read_text() + "per_task:\n  vcr: {train: {batch_size: 2, steps: 3}, seeds: [0, 1]}\n"
    study_yaml.write_text(text)
    values = load_config(study_yaml).values
    vcr, vqa = for_task(values, "vcr"), for_task(values, "vqa")
    assert (vcr["train"]["batch_size"], vcr["train"]["steps"], vcr["seeds"]) == (2, 3, [0, 1])
    assert (vqa["train"]["batch_size"], vqa["train"]["steps"], vqa["seeds"]) == (4, 1, [0])
    assert len([s for s in expand_study(values) if s.kind == "distill" and s.meta["task"] == "vcr"]) == 3 * 2 * 2
    one = load_config(study_yaml, ["task=vcr"]).values
    assert for_task(one, "vcr") == vcr
    assert load_config(study_yaml, ["task=vqa"]).values["train"]["batch_size"] == 4
    study_yaml.write_text(text.replace("steps: 3", "stpes: 3"))
    with pytest.raises(InputError, match=r"study\.yaml: per_task\.vcr: unknown key train\.stpes"):
        load_config(study_yaml)
    study_yaml.write_text(text.replace("  vcr:", "  vrc:"))
    with pytest.raises(InputError, match=r"per_task\.vrc: not one of the config's tasks"):
        load_config(study_yaml)


@pytest.mark.parametrize("task, expect", [
    ("[vqa, vqa]", "task: vqa listed twice"),
    ("[vqa, nope]", "task[1]: 'nope' is not one of"),
    ("[]", "expected a task or a list of tasks"),
])
def test_bad_task_list_is_one_line(tmp_path, task, expect):
    p = tmp_path / "x.yaml"
    p.write_text(f"task: {task}\ndata: {{shapes: {{size: 8}}}}\n")
    with pytest.raises(InputError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        load_config(p)


def test_study_runs_per_task_and_the_one_task_config_reuses_it(study_yaml, inproc, tmp_path, monkeypatch):
    """A real run of the baseline on SNLI-VE and VCR (one step each): a report per task, VCR's with its three
    metrics on test and shift; the same config filtered to VCR is served entirely from the cache (same keys)."""
    args = ("run", str(study_yaml), "task=[snli-ve,vcr]", "methods=[baseline]", "fractions=[1.0]")
    res = _json(inproc(*args, "--out", str(tmp_path / "out"), "--json"))
    assert res["trained"] == 2 and set(res["reports"]) == {"snli-ve", "vcr"}
    vcr = res["reports"]["vcr"]["table"]
    assert vcr["task"] == "vcr" and vcr["metrics"] == ["q2a", "qa2r", "q2ar"] and vcr["splits"] == ["test", "shift"]
    assert [(b[0], b[1]) for b in report_lib.blocks(vcr)] == [
        (m, s) for m in ("q2a", "qa2r", "q2ar") for s in ("test", "shift")]
    assert "majority" in vcr["references"]["test"] and "majority" in vcr["references"]["shift"]  # on every split
    own = vcr["metric_references"]  # QA->R's and Q->AR's own lines: majority positions and chance (1/4, 1/16)
    assert own["qa2r"]["test"]["chance"] == 25.0 and own["q2ar"]["shift"]["chance"] == 6.25
    assert all("majority" in own[m][s] for m in ("qa2r", "q2ar") for s in ("test", "shift"))
    snli = res["reports"]["snli-ve"]["table"]
    assert snli["metric"] == "accuracy" and "metrics" not in snli  # one metric: the table as before
    for task in ("snli-ve", "vcr"):
        for name in ("report.md", "report.csv", "report.png"):
            assert (tmp_path / "out" / task / name).stat().st_size > 0, (task, name)
    md = (tmp_path / "out" / "vcr" / "report.md").read_text()
    assert "## QA->R accuracy, shift" in md and "## Q->A accuracy, test" in md
    assert md.count("References:") == 6  # under every block, each metric's own
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "vcr" / "report.csv").read_text())))
    assert {r["metric"] for r in rows} == {"q2a", "qa2r", "q2ar"} and len(rows) == 6

    vcr_ids = {s["id"].removeprefix("vcr/"): s["key"] for s in res["stages"] if s["id"].startswith("vcr/")}
    again = _json(inproc("run", str(study_yaml), "task=vcr", "methods=[baseline]", "fractions=[1.0]", "--json"))
    assert again["counts"] == {"cached": len(again["stages"])} and again["trained"] == 0
    assert {s["id"]: s["key"] for s in again["stages"] if s["kind"] != "data"} == vcr_ids
    # a new report format makes the report again from the cached evaluations, and nothing else
    from mad_pipeline.pipeline import resolve

    monkeypatch.setattr(resolve, "REPORT_FORMAT", resolve.REPORT_FORMAT + 1)
    newer = _json(inproc("run", str(study_yaml), "task=vcr", "methods=[baseline]", "fractions=[1.0]", "--json"))
    assert {s["kind"]: s["status"] for s in newer["stages"] if s["status"] != "cached"} == {"report": "ran"}
    # mad report reads the three metrics back from the stage directories (the report's, or the eval stages')
    vcr_stages = [s for s in res["stages"] if s["id"].startswith("vcr/")]
    rep = next(s["path"] for s in vcr_stages if s["kind"] == "report")
    evals = [s["path"] for s in vcr_stages if s["kind"] == "eval"]
    for runs in ([rep], evals):
        got = _json(inproc("report", *runs, "--out", str(tmp_path / "rep"), "--json"))["table"]
        assert got["metrics"] == ["q2a", "qa2r", "q2ar"] and len(got["rows"]) == 6, runs
    # the human output prints each task's table
    out = inproc(*args)
    assert "snli-ve" in out and "QA->R accuracy" in out and "Q->AR accuracy" in out


def test_snli_ve_report_draws_the_teachers_calibrated_zero_shot_line(study_yaml, inproc):
    """SNLI-VE's teacher gives one image-hypothesis score per pair: its zero-shot label needs the calibration that
    only a distilling run fits (on the training split), so the report reads the task from such a run, not from the
    baseline's (which drew no teacher line), and draws the line on every evaluated split."""
    res = _json(inproc("run", str(study_yaml), "task=snli-ve", "methods=[baseline, naive]", "fractions=[1.0]",
                       "--json"))
    refs = res["reports"]["snli-ve"]["table"]["references"]
    for split in ("test", "shift"):
        assert 0 <= refs[split]["teacher zero-shot"] <= 100 and "majority" in refs[split], refs


def _bench():
    return bench_module("lowshot")


def test_ablation_table_pairs_each_variant_with_mad_by_seed(tmp_path):
    """The study's ablation table from fake per-seed results: each selection policy beside MAD's own, each part
    switched off, and naive, as MAD minus the variant paired by seed; per task and split."""
    bench = _bench()
    from mad_pipeline.stages.pipeline import schema

    from mad_pipeline.pipeline.config import from_dict

    values = from_dict({
        "task": ["vqa", "vcr"], "data": {"shapes": {"size": 8}},
        "methods": {"naive": {}, "full": {"select": "teacher-saliency"},  # as configs/ablation.yaml: the paper's MAD
                    "full-all-tokens": {"preset": "full", "select": "all"},
                    "full-random": {"preset": "full", "select": "random"},
                    "full-no-confidence": {"preset": "full", "select": "teacher-saliency", "confidence": "none"},
                    "full-constant-alpha": {"preset": "full", "select": "teacher-saliency",
                                            "alpha_schedule": "constant"}},
    }, schema()).values
    policies = bench.policy_methods(values)
    assert policies["all"] == "full-all-tokens" and policies["random"] == "full-random"
    own = next(p for p, m in policies.items() if m == "full")  # the reference's own policy is MAD itself
    assert own == "teacher-saliency"
    value = {"full": [40.0, 42.0, 44.0], "naive": [30.0, 31.0, 35.0], "full-all-tokens": [41.0, 41.0, 41.0],
             "full-random": [39.0, 40.0, 41.0], "full-no-confidence": [40.0, 42.0, 44.0],
             "full-constant-alpha": [20.0, 22.0, 24.0]}
    tables = {}
    for task in ("vqa", "vcr"):  # VCR also reports QA->R: MAD's balance ahead by 5 there, the other parts level
        recs = [{"method": m, "fraction": f, "seed": s, "split": split, "metric": metric,
                 "value": v + f + (5.0 if metric == "qa2r" and m == "full-constant-alpha" else 0.0), "task": task,
                 "source": f"{task}{m}{f}{s}{split}"}
                for metric in (("m", "qa2r") if task == "vcr" else ("m",))
                for m, vs in value.items() for f in (0.01, 0.05) for s, v in enumerate(vs)
                for split in ("test", "shift")]
        tables[task] = report_lib.aggregate(recs)
    abl = {t: bench.ablation_sections(tab, policies) for t, tab in tables.items()}
    assert list(abl["vqa"]) == ["test", "shift"]
    assert list(abl["vcr"]) == ["test", "shift", "test, QA->R accuracy", "shift, QA->R accuracy"]
    assert abl["vcr"]["shift, QA->R accuracy"][0]["parts"]["adaptive balance"]["share_mean"] == pytest.approx(15.0)
    row = abl["vcr"]["shift"][0]
    assert row["fraction"] == 0.01 and row["policies"][own]["mad"]
    assert row["policies"]["all"]["share_mean"] == pytest.approx(1.0)  # (40-41, 42-41, 44-41) / 3
    assert row["policies"]["random"]["share_mean"] == pytest.approx(2.0)
    assert row["parts"]["adaptive balance"]["share_mean"] == pytest.approx(20.0)
    assert row["parts"]["adaptive balance"]["share_std"] == pytest.approx(0.0)
    assert row["naive"]["share_mean"] == pytest.approx((10 + 11 + 9) / 3)
    md = bench.ablation_markdown(abl, 3)
    assert "## vqa, test" in md and "## vcr, shift" in md and "(MAD)" in md and "+20.00 ± 0.00" in md
    assert "## vcr, shift, QA->R accuracy" in md and "+15.00 ± 0.00" in md
    lines = bench.ablation_csv(abl).splitlines()
    assert len(lines) == 1 + 2 * 2 * 2 + 2 * 2 and lines[1].startswith("vqa,test,m,0.01,")
    assert "vcr,shift,qa2r,0.05," in "\n".join(lines)
    json.dumps(abl)  # lowshot.json holds it


def test_lowshot_per_type_table_has_the_answer_prior_row():
    """per_type.md: each method's accuracy per question type, then the teacher's and the report's reference levels
    per type (VQA's answer prior), so a method's row reads against the prior on the same split."""
    bench = _bench()
    table = {"reference_breakdown": {"test": {"answer prior": {"is there a": 57.7, "what color is the": 18.8,
                                                                "overall": 29.5}}}}
    pt = bench.per_type([], "test", table)
    assert pt["references"] == {"answer prior": {"yes/no": 57.7, "colour": 18.8, "overall": 29.5}}
    pt["students"] = {0.05: {"baseline": {"yes/no": 61.8, "colour": 61.7, "overall": 47.1}}}
    rows = bench.per_type_markdown(pt, "test").splitlines()
    assert rows[-2].startswith("| 5% | baseline | 61.7 |")
    assert rows[-1].startswith("| – | answer prior | 18.8 |") and rows[-1].endswith("| 57.7 | 29.5 |")
    assert bench.per_type([], "shift", table)["references"] == {}  # a split the report has no breakdown for


def test_lowshot_shards_are_the_whole_configs_runs_one_method_each(study_yaml, inproc):
    """bench/lowshot.py --jobs N runs one ``mad run`` per task x seed x fraction x method: together the shards plan
    exactly the whole config's runs with the same settings and keys (each shard's ``fractions=`` leaves the other
    fractions' ``per_fraction`` entries out), the cheapest store-building shard first, then the largest fraction of
    each seed first so the short runs come last."""
    from mad_pipeline.pipeline.config import for_run, for_task

    bench = _bench()
    pf = "per_fraction={0.5: {train: {steps: 2}}, 1.0: {train: {steps: 3, lr: 0.002}}}"
    over = [pf, "seeds=[0, 1]", "task=[vqa, snli-ve]"]
    values = load_config(study_yaml, over).values
    shards = bench.shards(values, jobs=2)
    assert bench.shards(values, jobs=1) == [[]]
    cells = [(t, m, f, s) for t in ("vqa", "snli-ve") for m in ("baseline", "naive", "full") for f in (0.5, 1.0)
             for s in (0, 1)]
    assert len(shards) == len(cells)
    assert shards[0][:3] == ["task=vqa", "fractions=[0.5]", "seeds=[0]"] and '"naive"' in shards[0][3]
    assert [bench._shard_label(o) for o in shards[0]] == ["taskvqa", "fractions0.5", "seeds0", "method-naive"]
    assert [sh[1] for sh in shards[1:4]] == ["fractions=[1.0]"] * 3  # then the largest fraction of seed 0
    seen = []
    for shard in shards:
        one = load_config(study_yaml, [*over, *shard]).values  # a valid config on its own
        (task,), (method,), (fraction,), (seed,) = [one["task"]], list(one["methods"]), one["fractions"], one["seeds"]
        seen.append((task, method, fraction, seed))
        whole = for_run(for_task(values, task), method, fraction)
        assert for_run(for_task(one, task), method, fraction)["train"] == whole["train"]
        assert one["methods"][method] == values["methods"][method]
    assert sorted(seen) == sorted(cells)
    # an override of one task's own settings reaches that task's shards and is left out of the others' (mad run
    # refuses an override for a task its run does not train)
    extra = [*over, "per_task.snli-ve.train.batch_size=3"]
    with pytest.raises(InputError, match="snli-ve is not one of the tasks this run trains"):
        load_config(study_yaml, [*extra, *shards[0]])
    values2 = load_config(study_yaml, extra).values
    for shard in bench.shards(values2, jobs=2):
        task = shard[0].removeprefix("task=")
        one = load_config(study_yaml, [*bench.shard_overrides(extra, task), *shard]).values
        (method,), (fraction,) = list(one["methods"]), one["fractions"]
        want = for_run(for_task(values2, task), method, fraction)["train"]
        assert for_run(for_task(one, task), method, fraction)["train"] == want
        assert (want["batch_size"] == 3) == (task == "snli-ve")
    # the same stage keys as the whole config's plan (the baselines' are known once the world is built: one run)
    inproc("run", str(study_yaml), *shards[-1], "--quiet")
    whole = {s["label"]: s["key"] for s in _json(inproc("run", str(study_yaml), *over, "--dry-run", "--json"))["stages"]
             if s["kind"] == "distill"}
    for shard in shards:
        if '"baseline"' in shard[3]:
            plan = _json(inproc("run", str(study_yaml), *over, *shard, "--dry-run", "--json"))["stages"]
            ((label, key),) = [(s["label"], s["key"]) for s in plan if s["kind"] == "distill"]
            assert key and whole[f"{shard[0][5:]}: {label}"] == key


def test_lowshot_progress_weighs_each_shard_by_its_step_cap(study_yaml):
    """bench/lowshot.py's progress bar counts training steps, not shards: each shard weighs its run's step cap (the
    fraction's own, a method's own over it), a multiple-choice task's steps once per choice, so the estimate of
    the time left does not treat a 1% shard like a 100% one."""
    bench = _bench()
    over = ["per_fraction={0.5: {train: {steps: 2}}, 1.0: {train: {steps: 30}}}",
            'methods={baseline: {preset: baseline, train: {steps: 5}}, full: {preset: full}}']
    values = load_config(study_yaml, over).values
    weight = {}
    for sh in bench.shards(values, jobs=2):
        task, fraction, _seed, method = bench.shard_cell(sh)
        weight[task, method, fraction] = bench.shard_steps(values, sh)
    assert weight[("vqa", "full", 0.5)] == 2 and weight[("vqa", "full", 1.0)] == 30
    assert weight[("snli-ve", "full", 1.0)] == 30
    assert weight[("vqa", "baseline", 0.5)] == weight[("vqa", "baseline", 1.0)] == 5  # the method's own cap
    assert weight[("vcr", "full", 0.5)] == 2 * 4 and weight[("vcr", "baseline", 1.0)] == 5 * 4  # four choices


def test_lowshot_starts_only_the_shards_with_a_run_or_evaluation_not_cached(study_yaml):
    """A shard whose distill and eval stages are all in the cache has nothing to do: bench/lowshot.py --jobs N does
    not start it (re-reporting a finished study from the cache starts no ``mad run`` per student)."""
    from types import SimpleNamespace

    bench = _bench()
    values = load_config(study_yaml, ["seeds=[0, 1]", "task=[vqa, vcr]"]).values
    todo = bench.shards(values, jobs=2)
    cells = [bench.shard_cell(sh) for sh in todo]
    assert len(set(cells)) == len(todo) == 2 * 3 * 2 * 2 and ("vcr", 0.5, 1, "full") in cells

    def stage(kind, cell, status, **meta):
        task, fraction, seed, method = cell
        return SimpleNamespace(kind=kind, status=status, meta={"task": task, "fraction": fraction, "seed": seed,
                                                               "method": method, **meta})

    cached = [stage(k, c, "cached") for c in cells for k in ("distill", "eval")]
    assert bench.pending_shards(todo, cached) == []
    # one run missing, one evaluation on shift missing; stages of other kinds never start a shard
    some = [*cached, stage("distill", cells[3], "run"), stage("eval", cells[7], "run", split="shift"),
            SimpleNamespace(kind="extract", status="run", meta={"split": "train"})]
    assert bench.pending_shards(todo, some) == [todo[3], todo[7]]


def test_per_task_methods_refine_the_configs_methods(tmp_path):
    """``per_task.<task>.methods`` merges its settings over the methods it names (it neither adds nor drops one); a
    list pick on the command line keeps that refinement, a mapping on the command line is final; any other command
    line override wins over ``per_task`` too; the bench's shards pass each task's own settings, so they plan the keys
    the whole config plans."""
    from mad_pipeline.pipeline.config import for_task

    p = tmp_path / "s.yaml"
    p.write_text("task: [vqa, vcr]\ndata: {shapes: {size: 8}}\nfractions: [1.0]\n"
                 "methods: {baseline: {train: {lr: 3.0e-4}}, naive: {train: {lr: 1.0e-3, warmup: 0}}}\n"
                 "per_task: {vcr: {methods: {naive: {train: {lr: 3.0e-4, warmup: 0.05}}}, train: {steps: 7}}}\n")

    def lr(v, task, method):
        t = for_task(v, task)["methods"][method]["train"]
        return t["lr"], t.get("warmup")

    v = load_config(p).values
    assert lr(v, "vcr", "naive") == (3.0e-4, 0.05) and lr(v, "vqa", "naive") == (1.0e-3, 0)
    assert lr(v, "vcr", "baseline") == (3.0e-4, None) and list(for_task(v, "vcr")["methods"]) == ["baseline", "naive"]
    assert lr(load_config(p, ["methods=[naive]"]).values, "vcr", "naive") == (3.0e-4, 0.05)
    final = load_config(p, ["methods={naive: {train: {lr: 0.002}}}"]).values
    assert lr(final, "vcr", "naive") == (0.002, None) and list(for_task(final, "vcr")["methods"]) == ["naive"]
    assert for_task(v, "vcr")["train"]["steps"] == 7 and for_task(v, "vqa")["train"]["steps"] != 7
    line = load_config(p, ["train.steps=3", "methods.naive.train.lr=0.002"]).values  # the command line is final
    assert [for_task(line, t)["train"]["steps"] for t in ("vqa", "vcr")] == [3, 3]
    assert lr(line, "vcr", "naive") == (0.002, 0.05) and lr(line, "vqa", "naive") == (0.002, 0)
    shard = next(sh for sh in _bench().shards(v, 2) if sh[0] == "task=vcr" and "naive" in sh[3])
    assert json.loads(shard[3].removeprefix("methods="))["naive"]["train"] == {"lr": 3.0e-4, "warmup": 0.05}
    # ... also over a fraction's own settings, the file's or a task's (a `per_fraction=` override is kept whole)
    from mad_pipeline.pipeline.fractions import for_run

    p.write_text(p.read_text().replace("fractions: [1.0]\n", "fractions: [0.5, 1.0]\nper_fraction: {0.5: {train: "
                                       "{steps: 11, lr: 0.01}}}\n").replace("train: {steps: 7}}",
                                       "train: {steps: 7}, per_fraction: {1.0: {train: {steps: 9}}}}"))

    def steps(v, task, fraction):
        return for_run(for_task(v, task), "baseline", fraction)["train"]["steps"]

    v = load_config(p).values
    assert [steps(v, t, f) for t in ("vqa", "vcr") for f in (0.5, 1.0)] == [11, v["train"]["steps"], 11, 9]
    line = load_config(p, ["train.steps=3"]).values
    assert [steps(line, t, f) for t in ("vqa", "vcr") for f in (0.5, 1.0)] == [3, 3, 3, 3]
    assert for_run(for_task(line, "vqa"), "naive", 0.5)["train"]["lr"] == 1.0e-3  # the method's own rate still wins
    whole = load_config(p, ["train.steps=3", "per_fraction={1.0: {train: {steps: 5}}}"]).values
    assert [steps(whole, t, f) for t in ("vqa", "vcr") for f in (0.5, 1.0)] == [3, 5, 3, 5]
    p.write_text(p.read_text().replace("vcr: {methods: {naive:", "vcr: {methods: {nave:"))
    with pytest.raises(InputError, match=r"per_task\.vcr\.methods\.nave: not one of the config's methods"):
        load_config(p)


def test_lowshot_merge_joins_a_study_run_in_parts_and_refuses_a_cell_twice(tmp_path):
    """bench/lowshot_merge.py: two parts of one task's study (the low fractions from one invocation, the high ones
    from another, e.g. another machine) give the table of the whole, each metric's reference lines kept; a cell and
    seed in both parts is one clear error."""
    merge = bench_module("lowshot_merge")

    def part(fractions, name):
        recs = [{"method": m, "fraction": f, "seed": s, "split": split, "metric": metric, "task": "vcr",
                 "value": 10.0 * f + s + (1.0 if m == "full" else 0.0) + (50.0 if metric == "qa2r" else 0.0),
                 "source": f"{name}{m}{f}{s}{split}{metric}",
                 "references": {"teacher zero-shot": 60.0 if metric == "q2a" else 80.0}}
                for metric in ("q2a", "qa2r") for m in ("baseline", "full") for f in fractions for s in range(3)
                for split in ("test", "shift")]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"tables": {"vcr": report_lib.aggregate(recs, title=name)}}))
        return path

    low, high = part((0.01, 0.05), "low"), part((1.0,), "high")
    assert merge.main(["--task", "vcr", "--out", str(tmp_path / "all"), str(low), str(high)]) == 0
    table = json.loads((tmp_path / "all" / "report.json").read_text())["table"]
    assert sorted({r["fraction"] for r in table["rows"]}) == [0.01, 0.05, 1.0] and table["seeds"] == [0, 1, 2]
    cell = next(r for r in table["rows"] if r["fraction"] == 1.0 and r.get("metric") == "qa2r"
                and r["split"] == "shift")["cells"]["full"]
    assert cell["values"] == [61.0, 62.0, 63.0] and cell["mean"] == pytest.approx(62.0)
    assert report_lib.references_of(table, "qa2r", "test") == {"teacher zero-shot": 80.0}
    assert report_lib.references_of(table, "q2a", "test") == {"teacher zero-shot": 60.0}
    assert (tmp_path / "all" / "report.png").stat().st_size > 0
    assert "| 100% |" in (tmp_path / "all" / "report.md").read_text()
    with pytest.raises(SystemExit, match=r"^error: two runs for method baseline, fraction 0.01, seed 0"):
        merge.main(["--task", "vcr", "--out", str(tmp_path / "twice"), str(low), str(part((0.01,), "again"))])
    # a part made under other method names: only the methods named are taken, renamed
    assert merge.main(["--task", "vcr", "--out", str(tmp_path / "renamed"), str(low),
                       f"{high}:full=baseline"]) == 0
    table = json.loads((tmp_path / "renamed" / "report.json").read_text())["table"]
    row = next(r for r in table["rows"] if r["fraction"] == 1.0 and r.get("metric") == "qa2r" and r["split"] == "shift")
    assert list(row["cells"]) == ["baseline"] and row["cells"]["baseline"]["values"] == [61.0, 62.0, 63.0]
    with pytest.raises(SystemExit, match=r"high\.json: no method naive in its vcr table"):
        merge.main(["--task", "vcr", "--out", str(tmp_path / "x"), f"{high}:naive=baseline"])
    with pytest.raises(SystemExit, match=r"'full' is not OLD=NEW"):
        merge.main(["--task", "vcr", "--out", str(tmp_path / "x"), f"{high}:baseline=b,full"])


def test_lowshot_compare_pairs_two_studies_by_seed(tmp_path):
    """bench/lowshot_compare.py: the cells both studies have, each one's mean ± std, the second minus the first paired
    by seed (over the seeds both have) and in how many seeds it is ahead, VCR's metric blocks apart; then the distill
    stages' seconds and their ratio."""
    compare = bench_module("lowshot_compare")

    def study(name, shift, seeds, seconds):
        recs = [{"method": "full", "fraction": 0.05, "seed": s, "split": "test", "metric": metric, "task": "vcr",
                 "value": 40.0 + s + shift(s) + (10.0 if metric == "qa2r" else 0.0), "source": f"{name}{s}{metric}"}
                for metric in ("q2a", "qa2r") for s in seeds]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"tables": {"vcr": report_lib.aggregate(recs, title=name)}, "jobs": 2,
                                    "distill_stages": len(seeds), "distill_stage_seconds_total": seconds,
                                    "distill_stage_seconds_median": seconds / len(seeds)}))
        return path

    a = study("a", lambda s: 0.0, [0, 1, 2], 300.0)
    b = study("b", lambda s: 1.0 if s < 2 else -2.0, [0, 1, 2, 3], 150.0)
    out = tmp_path / "compare.md"
    assert compare.main([str(a), str(b), "--names", "fp32,bf16", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| test | q2a | 0.05 | full | 41.00 ± 1.00 | 41.00 ± 0.82 | 0.00 ± 1.73 | 2 of 3 |" in text
    assert "| test | qa2r | 0.05 | full | 51.00 ± 1.00 | 51.00 ± 0.82 | 0.00 ± 1.73 | 2 of 3 |" in text
    assert "| fp32 | 3 | 300 | 100 | 2 |" in text and "fp32 / bf16, the sums" not in text  # 3 runs against 4
    assert "(no ratio of the sums: fp32 holds 3 distill stages, bf16 4" in text
    assert compare.main([str(a), str(a), "--names", "x,y", "--out", str(out)]) == 0
    assert "x / y, the sums: 1.00" in out.read_text()
    with pytest.raises(SystemExit, match=r"--names 'x': expected two names"):
        compare.main([str(a), str(b), "--names", "x"])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match=r"bad\.json: no tables"):
        compare.main([str(a), str(tmp_path / "bad.json")])


def test_lowshot_compare_pairs_each_runs_step_time_from_the_cache(tmp_path):
    """bench/lowshot_compare.py --cache: each run's median training step (its metrics.json in the cache, found from
    the task reports' records, ``<cache>/runs/...``), per method and fraction in each study and their ratio paired by
    seed; a run whose metrics are missing is left out."""
    compare = bench_module("lowshot_compare")
    cache = tmp_path / "cache"

    def study(name, step_s, seeds):
        recs = []
        for s in seeds:
            run = cache / "runs" / "distill" / f"{name}{s}" / "run"
            if s != 9:  # seed 9's run is not in the cache
                run.mkdir(parents=True)
                (run / "metrics.json").write_text(json.dumps({"step_time_s": step_s * (1 + s / 10), "steps": 100}))
            recs.append({"method": "full", "fraction": 0.05, "seed": s, "split": "test", "metric": "q2a",
                         "task": "vcr", "value": 40.0 + s, "source": f"<cache>/runs/distill/{name}{s}/run"})
        out = tmp_path / name
        (out / "vcr").mkdir(parents=True)
        (out / "vcr" / "report.json").write_text(json.dumps({"records": recs}))
        (out / "lowshot.json").write_text(json.dumps({"tables": {"vcr": report_lib.aggregate(recs, title=name)}}))
        return out / "lowshot.json"

    a, b = study("a", 0.5, [0, 1, 9]), study("b", 0.4, [0, 1, 2, 9])
    md = tmp_path / "compare.md"
    assert compare.main([str(a), str(b), "--names", "off,on", "--cache", str(cache), "--out", str(md)]) == 0
    text = md.read_text()
    assert "| vcr | full | 0.05 | 2 | 525 | 420 | 0.80 (0.80, 0.80) |" in text
    assert "on / off, every paired run: median 0.80 (0.80 to 0.80, 2 runs)" in text
    assert compare.main([str(a), str(b), "--out", str(md)]) == 0
    assert "time per training step" not in md.read_text()  # without --cache: no step times


def test_lowshot_records_its_configs_by_repository_path_and_content(tmp_path):
    """lowshot.json names a study config by its path in the repository (not the machine's folders) and its sha256;
    a config outside the repository keeps its own path."""
    import hashlib

    lowshot = bench_module("lowshot")
    rec = lowshot.config_record(lowshot.ROOT / "configs" / "lowshot.yaml")
    assert rec["path"] == "configs/lowshot.yaml"
    assert rec["sha256"] == hashlib.sha256((lowshot.ROOT / "configs" / "lowshot.yaml").read_bytes()).hexdigest()
    mine = tmp_path / "study.yaml"
    mine.write_text("task: vqa\ndata: {shapes: {size: 40}}\n")
    first = lowshot.config_record(mine)
    assert first["path"] == str(mine.resolve())
    # a comment edit changes the file's hash, not its settings': the same study, whose --only runs still add up
    mine.write_text("# the study\ntask: vqa   # one task\ndata: {shapes: {size: 40}}\n")
    commented = lowshot.config_record(mine)
    assert commented["sha256"] != first["sha256"] and commented["settings_sha256"] == first["settings_sha256"]
    before = {"configs": {"lowshot": first}, "overrides": ["task=[vqa]"]}
    assert lowshot.same_study(before, {"lowshot": commented}, ["task=[snli-ve]"])
    mine.write_text("task: vqa\ndata: {shapes: {size: 40}}\nseeds: [0, 1]\n")
    assert not lowshot.same_study(before, {"lowshot": lowshot.config_record(mine)}, ["task=[snli-ve]"])
    # a record from before settings were hashed is compared by the file's hash
    old = {"configs": {"lowshot": {k: v for k, v in first.items() if k != "settings_sha256"}}, "overrides": []}
    assert lowshot.same_study(old, {"lowshot": first}, [])
    assert not lowshot.same_study(old, {"lowshot": commented}, [])
    assert not lowshot.same_study(before, {"lowshot": first, "ablation": first}, [])


def test_lowshot_run_one_task_at_a_time_keeps_the_other_tasks_figures():
    """An invocation with --only TASK rewrites that task's figures in the out dir's lowshot.json and keeps those an
    earlier invocation of the same study wrote for the other tasks (per type, convergence, confidence, tables,
    stage seconds); another study's file, or the same configs with other settings, is not mixed in."""
    lowshot = bench_module("lowshot")
    configs = {"lowshot": {"path": "configs/converge.yaml", "sha256": "ab"}}
    rows = [{"task": t, "method": "full", "fraction": 0.05} for t in ("vqa", "vcr", "snli-ve")]
    before = {"configs": configs, "overrides": ["task=[vqa,vcr]", "num_workers=0"],
              "tables": {"vqa": {"t": 1}, "vcr": {"t": 2}}, "ablation_tables": {}, "ablation": {"vcr": {"x": []}},
              "per_type": {"vqa": {"students": {"0.05": {"full": {"overall": 50.0}}}, "teacher": {}, "references": {}}},
              "distill_stage_seconds": {"vqa": {"k1": 10.0}, "vcr": {"k2": 20.0}},
              "convergence": rows, "confidence": rows[:1]}
    kept = lowshot.earlier_tasks(before, configs, ["task=[vcr]", "num_workers=1"], {"vcr"})
    assert kept["tables"] == {"vqa": {"t": 1}} and kept["ablation"] == {}
    assert kept["per_type"]["vqa"]["students"] == {0.05: {"full": {"overall": 50.0}}}  # fractions as numbers again
    assert kept["distill_seconds"] == {"vqa": {"k1": 10.0}}
    assert [r["task"] for r in kept["convergence"]] == ["vqa", "snli-ve"] and kept["confidence"] == rows[:1]
    assert lowshot.by_task_order(kept["convergence"]) == [rows[2], rows[0]]
    for other in (lowshot.earlier_tasks(before, {"lowshot": {**configs["lowshot"], "sha256": "cd"}}, [], {"vcr"}),
                  lowshot.earlier_tasks(before, configs, ["seeds=[0]"], {"vcr"}),
                  lowshot.earlier_tasks({}, configs, [], {"vcr"})):
        assert not any(other.values())


def test_lowshot_first_shard_shares_the_cores_once_the_shared_stages_are_cached():
    """The first shard runs alone while it builds what every shard shares, asked every 20 s; once those stages are
    cached (or the first shard ended) the other shards start beside it."""
    lowshot = bench_module("lowshot")
    now, answers = [0.0], iter([False, True])
    gate = lowshot.FirstShardGate(True, lambda: next(answers), every=20.0, clock=lambda: now[0])
    assert gate.limit(2, 0) == 1
    now[0] = 10.0
    assert gate.limit(2, 0) == 1  # not asked yet
    now[0] = 21.0
    assert gate.limit(2, 0) == 1  # asked: not cached yet
    now[0] = 35.0
    assert gate.limit(2, 0) == 1  # asked 14 s ago
    now[0] = 45.0
    assert gate.limit(2, 0) == 2  # cached now: the rest start beside the first
    ended = lowshot.FirstShardGate(True, lambda: False, clock=lambda: 0.0)
    assert ended.limit(2, 1) == 2  # the first shard ended
    assert lowshot.FirstShardGate(False, lambda: False).limit(3, 0) == 3  # everything shared was cached already


def test_lowshot_merge_writes_an_ablations_share_table_from_parts(tmp_path):
    """--ablation: MAD's runs from one invocation and a variant rerun in another give the share table (MAD minus
    the variant, paired by seed), the policies' methods taken from the input that records them."""
    merge = bench_module("lowshot_merge")

    def part(methods, name, policies=None):
        recs = [{"method": m, "fraction": 0.05, "seed": s, "split": split, "metric": "q2a", "task": "vcr",
                 "value": 40.0 + s + (5.0 if m == "full" else 0.0), "source": f"{name}{m}{s}{split}", "references": {}}
                for m in methods for s in range(3) for split in ("test", "shift")]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"tables": {"vcr": report_lib.aggregate(recs, title=name)},
                                    **({"policies": policies} if policies else {})}))
        return path

    first = part(("full", "full-random", "naive"), "first", {"teacher-saliency": "full", "random": "full-random"})
    again = part(("naive",), "again")
    assert merge.main(["--task", "vcr", "--ablation", "--out", str(tmp_path / "abl"),
                       f"{first}:full=full,full-random=full-random", str(again)]) == 0
    md = (tmp_path / "abl" / "ablation.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| 5% |"))
    assert row.endswith("| 41.00 ± 1.00 | +5.00 ± 0.00 |")  # naive, and MAD minus naive
    assert "(MAD)" in row and (tmp_path / "abl" / "ablation.csv").exists()
    with pytest.raises(SystemExit, match="no input records the selection policies"):
        merge.main(["--task", "vcr", "--ablation", "--out", str(tmp_path / "x"), str(again)])


def test_lowshot_paired_table_takes_mad_minus_each_method_seed_by_seed():
    """paired.md: per task, split and metric, MAD minus the baseline and minus naive over the seeds both cells
    have, with how many seeds MAD is ahead; a metric without MAD's cells has no table."""
    lowshot = bench_module("lowshot")

    def cell(values, seeds=(0, 1, 2)):
        import statistics
        return {"mean": statistics.mean(values), "std": statistics.stdev(values), "n": len(values),
                "seeds": list(seeds), "values": list(values)}

    row = {"split": "test", "fraction": 0.05, "metric": "q2a",
           "cells": {"baseline": cell([50.0, 52.0, 60.0]), "naive": cell([40.0, 41.0], (0, 2)),
                     "full": cell([55.0, 51.0, 62.0])}}
    other = {"split": "test", "fraction": 0.05, "metric": "qa2r", "cells": {"baseline": cell([1.0, 2.0, 3.0])}}
    md = lowshot.paired_markdown({"vcr": {"metric": "q2a", "metrics": ["q2a", "qa2r"], "splits": ["test"],
                                          "rows": [row, other]}})
    assert "## vcr, test, Q->A" in md and "QA->R" not in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| 5% |"))
    # MAD - baseline: +5, -1, +2 -> +2.00 ± 3.00 (2 of 3); MAD - naive on seeds 0 and 2: +15, +21
    assert line.endswith("| +2.00 ± 3.00 (2 of 3) | +18.00 ± 4.24 (2 of 2) |")


def test_lowshot_bench_says_a_config_mistake_in_one_line(study_yaml, tmp_path, capsys):
    """bench/lowshot.py with a student that has no weights of its own and `init: pretrained` (`student=vilt-mini
    init=pretrained`) stops before training anything, with exit 2 and the one line `mad` would print, not a
    traceback."""
    bench = bench_module("lowshot")
    code = bench.main(["--config", str(study_yaml), "--no-ablation", "--cache", str(tmp_path / "cache"), "--out",
                       str(tmp_path / "out"), "student=vilt-mini", "init=pretrained"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: --init pretrained: student 'vilt-mini' has no pretrained weights")
    assert not any("Traceback" in line for line in err)


def _study_training(study_yaml, tiny_clip, tmp_path, **env):
    """bench/lowshot.py started on a two-shard study of runs far longer than the test, once a shard is training (it
    has written a checkpoint): (the process, its distill runs' folder, its --out)."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    cache, out = tmp_path / "cache", tmp_path / "out"
    env = {**os.environ, "MAD_MODEL_CONFIGS": str(tiny_clip[0]), "MAD_CACHE": str(cache), "MAD_SHARED_CACHE": "",
           "MAD_HASH_MEMO": str(tmp_path / "hash-memo"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    bench = Path(__file__).resolve().parents[1] / "bench" / "lowshot.py"
    cmd = [sys.executable, str(bench), "--config", str(study_yaml), "--no-ablation", "--jobs", "2", "--cache",
           str(cache), "--out", str(out), "task=[vqa]", "methods=[baseline]", "fractions=[1.0]", "seeds=[0,1]",
           "train.steps=100000", "train.checkpoint_every=5"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    runs = cache / "runs" / "distill"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and not list(runs.glob("*/run/checkpoints/latest")):
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    return proc, runs, out


def test_lowshot_bench_stopped_by_sigterm_kills_its_shards_and_writes_its_record(study_yaml, tiny_clip, tmp_path):
    """SIGTERM to a running bench/lowshot.py (a scheduler's stop, a Ctrl-C) stops it as its deadline would: the
    running shard is killed mid-run (its run resumes from its last checkpoint next time), the tables of what finished
    and the command's record (lowshot.json, `complete: false`) are written, and it exits 143, not with a traceback."""
    import signal

    proc, runs, out = _study_training(study_yaml, tiny_clip, tmp_path)
    proc.send_signal(signal.SIGTERM)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, log[-3000:]
    assert "SIGTERM: killing" in log and "Traceback" not in log, log[-3000:]
    record = json.loads((out / "lowshot.json").read_text())
    assert record["complete"] is False and record["invocations"][-1]["wall_s"] > 0
    assert not list(runs.glob("*/stage.json"))  # no run finished: the shards were killed, not let run to the end


@pytest.mark.parametrize("fork", [True, False])
def test_lowshot_shard_launcher_runs_mad_into_a_log_and_returns_its_exit_code(tmp_path, fork):
    """A shard forked from the process that imported the library once (or a subprocess without ``fork``): ``mad``'s
    output, its errors included, in the shard's log, and the command's exit code as the shard's."""
    launch = _bench().Launcher({"HF_HUB_OFFLINE": "1"}, fork=fork)
    ok, bad = tmp_path / "ok.log", tmp_path / "bad.log"
    shards = launch(["run", "--help"], ok), launch(["run", str(tmp_path / "missing.yaml")], bad)
    assert [p.wait() for p in shards] == [0, 2]
    assert "Usage: mad run" in ok.read_text()
    assert bad.read_text().startswith("error: ") and "missing.yaml" in bad.read_text(), bad.read_text()


def test_lowshot_source_watch_names_a_changed_added_or_removed_library_file(tmp_path):
    """The study's watch on the library: unchanged, None; an edited, added or removed ``.py`` file, its path; it
    looks at most every ``every`` seconds."""
    lowshot = bench_module("lowshot")
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    a, b = tmp_path / "pkg" / "a.py", tmp_path / "pkg" / "sub" / "b.py"
    a.write_text("x = 1\n")
    b.write_text("y = 2\n")
    now = [0.0]
    watch = lowshot.SourceWatch(tmp_path / "pkg", every=10.0, clock=lambda: now[0])
    now[0] = 11.0
    assert watch.changed() is None
    b.write_text("y = 22\n")
    now[0] = 15.0
    assert watch.changed() is None  # asked 4 s ago
    now[0] = 22.0
    assert watch.changed() == str(b)
    watch = lowshot.SourceWatch(tmp_path / "pkg", every=0.0)
    (tmp_path / "pkg" / "notes.txt").write_text("not Python")
    assert watch.changed() is None
    (tmp_path / "pkg" / "c.py").touch()
    assert watch.changed() == str(tmp_path / "pkg" / "c.py")
    watch = lowshot.SourceWatch(tmp_path / "pkg", every=0.0)
    a.unlink()
    assert watch.changed() == str(a)


def test_lowshot_bench_stops_when_the_library_is_edited_mid_study(study_yaml, tiny_clip, tmp_path):
    """An edit of the library's source while a study runs (an editable install's checkout) stops it as its deadline
    would: one line naming the file, the running shard killed (its run resumes next time), the record written with
    `complete: false`, exit code 1. The study imports a copy of the package here, which the test edits."""
    import shutil
    from pathlib import Path

    import mad_pipeline

    pkg = tmp_path / "src" / "mad_pipeline"
    shutil.copytree(Path(mad_pipeline.__file__).parent, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    proc, runs, out = _study_training(study_yaml, tiny_clip, tmp_path, PYTHONPATH=str(pkg.parent))
    edited = pkg / "training" / "trainer.py"
    edited.write_text(edited.read_text() + "\n# an edit\n")
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, log[-3000:]
    assert f"{edited} changed since this study started" in log and "git worktree" in log, log[-3000:]
    assert "killing" in log and "Traceback" not in log, log[-3000:]
    assert json.loads((out / "lowshot.json").read_text())["complete"] is False
    assert not list(runs.glob("*/stage.json"))  # the shards were killed, not let run to the end
