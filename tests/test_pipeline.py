"""`mad run` and `mad report` with real stages on tiny configs: the tiny-clip teacher (random weights from
a file), a generated shapes world of 16 training images, the vilt-tiny student, two training steps.

The partial-rerun rules, asserted from `mad run --json`: an unchanged config is served entirely from the cache (no
extraction, no training); one changed distillation setting reruns only distill/eval/report (and only for the methods
it applies to); another text teacher keeps the image stores; `--dry-run` plans without touching the cache; bad
configs are one line with exit code 2; the report has mean ± std over seeds in Markdown, CSV and PNG."""

from __future__ import annotations

import csv
import json
import os
import statistics
from pathlib import Path

import pytest
from conftest import last_json, mad, mad_inproc
from mad_pipeline.stages.pipeline import load_config, schema

from mad_pipeline.errors import InputError
from mad_pipeline.machine import cpu_bf16_flags, cpu_model
from mad_pipeline.pipeline.config import from_dict

CONFIG = """\
name: tiny pipeline
task: vqa
data:
  shapes: {{size: 16, seed: 0}}
teacher: tiny-clip
teacher_weights: {weights}
methods: [baseline, full]
fractions: [0.5, 1.0]
seeds: [0, 1]
vocab_min_count: 1
train:
  steps: 2
  batch_size: 8
"""


@pytest.fixture(scope="module")
def setup(tiny_clip, tmp_path_factory):
    cfg_file, weights = tiny_clip
    d = tmp_path_factory.mktemp("pipeline")
    (d / "exp.yaml").write_text(CONFIG.format(weights=weights))
    env = {"MAD_MODEL_CONFIGS": str(cfg_file), "MAD_CACHE": str(d / "cache"), "MAD_SHARED_CACHE": "",
           "OMP_NUM_THREADS": "1", "MAD_HASH_MEMO": str(d / "hash-memo")}
    first = last_json(mad_inproc("run", str(d / "exp.yaml"), "--json", env=env))
    return d, env, first


def _run(setup, *args, check=True):
    d, env, _ = setup
    return mad_inproc("run", str(d / "exp.yaml"), *args, env=env, check=check)


@pytest.fixture()
def inproc(setup, tiny_clip, monkeypatch, capsys):
    """Run `mad ...` in this process (no interpreter start-up) with the subprocesses' environment; returns
    (exit code, stdout, stderr). tiny-clip is registered exactly as MAD_MODEL_CONFIGS registers it in a
    subprocess, so the teacher-identity memo written there is found here."""
    from mad_pipeline.cli.main import main

    from mad_pipeline.teachers import register_open_clip_config

    _, env, _ = setup
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    register_open_clip_config("tiny-clip", tiny_clip[0], description=f"custom open_clip config from {tiny_clip[0]}")

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code or 0
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


def _by_kind(res: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for s in res["stages"]:
        out.setdefault(s["kind"], []).append(s)
    return out


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_first_run_then_unchanged_rerun_is_all_cached(setup, inproc):
    d, _, first = setup
    kinds = _by_kind(first)
    # extract: the 50% subsets of seeds 0 and 1, the whole training split, the evaluation split
    assert len(kinds["data"]) == 1 and len(kinds["extract"]) == 4
    assert len(kinds["distill"]) == 8 and len(kinds["eval"]) == 8 and len(kinds["report"]) == 1
    assert first["extracted"] and first["trained"] == 8
    assert all(s["status"] == "ran" for s in first["stages"])
    # every output has its resolved config, keys and library versions next to it; the marker is written last
    rec = json.loads((Path(kinds["distill"][0]["path"]) / "stage.json").read_text())
    assert rec["complete"] and rec["key"] == kinds["distill"][0]["key"]
    assert rec["config"]["train"]["steps"] == 2 and "torch" in rec["library_versions"]
    # and the machine that made it: a long training's bytes depend on the kind of CPU, which the key does not hold
    assert rec["machine"]["cpu"] == cpu_model() and rec["machine"]["cpu_bf16"] == cpu_bf16_flags()
    assert rec["machine"]["threads"] >= 1 and isinstance(rec["machine"]["cuda"], list)
    report = json.loads((Path(kinds["report"][0]["path"]) / "report.json").read_text())
    assert sum(report["table"]["machines"].values()) == 8  # the 8 runs, all trained on this machine
    assert set(rec["inputs"]) == {"train_data", "eval_data"}  # the baseline reads no stores
    full = next(s for s in kinds["distill"] if s["method"] == "full")
    rec = json.loads((Path(full["path"]) / "stage.json").read_text())
    assert set(rec["inputs"]["stores"]["train"]) == {"image", "text", "index", "zeroshot"}

    again = last_json(_run(setup, "--json"))
    assert again["counts"] == {"cached": len(first["stages"])}
    assert not again["extracted"] and again["trained"] == 0
    assert [s["key"] for s in again["stages"]] == [s["key"] for s in first["stages"]]
    assert again["report"]["table"] == first["report"]["table"]
    # the human output ends with the report table
    d, _, _ = setup
    code, out, _ = inproc("run", str(d / "exp.yaml"))
    assert code == 0
    assert "tiny pipeline" in out and "MAD" in out and "baseline" in out and f"({len(first['stages'])} cached)" in out


def test_changed_distill_setting_reruns_only_distill_eval_report(setup):
    res = last_json(_run(setup, "distill.top_k=4", "seeds=[0]", "--json"))
    kinds = _by_kind(res)
    assert all(s["status"] == "cached" for s in kinds["data"] + kinds["extract"])
    assert not res["extracted"]
    for s in kinds["distill"] + kinds["eval"]:
        # the switch does not apply to the baseline: its runs stay cached
        assert s["status"] == ("ran" if s["method"] == "full" else "cached"), s["id"]
    assert kinds["report"][0]["status"] == "ran"
    assert res["trained"] == 2


def test_other_text_teacher_keeps_the_image_stores(setup):
    res = last_json(_run(setup, "text_teacher=minilm", "methods=[baseline,full]", "fractions=[1.0]", "seeds=[0]",
                         "--json"))
    kinds = _by_kind(res)
    assert [s["id"] for s in kinds["extract"]] == ["extract:train", "extract:val"]
    for s in kinds["extract"]:
        stores = s["stores"]
        assert stores["image"]["cached"] and stores["image"]["rows_computed"] == 0, s["id"]
        assert stores["index"]["cached"] and stores["zeroshot"]["cached"], s["id"]
        assert not stores["text"]["cached"] and stores["text"]["rows_computed"] > 0, s["id"]
    assert all(s["status"] == "cached" for s in kinds["distill"] if s["method"] == "baseline")
    assert all(s["status"] == "ran" for s in kinds["distill"] if s["method"] == "full")


def test_dry_run_plans_without_side_effects(setup, inproc):
    d, _, first = setup
    cache = d / "cache"
    before = _tree(cache)
    res = last_json(_run(setup, "seeds=[0,1,2]", "--dry-run", "--json"))
    assert _tree(cache) == before  # nothing written, not even a memo or a lock
    assert res["dry_run"] and res["report"] is None
    kinds = _by_kind(res)
    old_keys = {s["key"] for s in first["stages"]}
    for s in kinds["distill"] + kinds["eval"]:
        if s["seed"] == 2:
            assert s["status"] == "to-run", s["id"]
        else:
            assert s["status"] == "cached" and s["key"] in old_keys, s["id"]
    assert {s["id"]: s["status"] for s in kinds["extract"]}["extract:train@0.5/s2"] == "to-run"
    assert kinds["report"][0]["status"] == "to-run"
    # the human plan: one row per stage with its status
    code, out, _ = inproc("run", str(d / "exp.yaml"), "seeds=[0,1,2]", "--dry-run")
    assert code == 0 and "to-run" in out and "cached" in out and "full, 50%, seed 2" in out
    assert _tree(cache) == before


def test_settings_that_do_not_change_values_keep_every_key(setup, inproc):
    d, _, first = setup
    code, out, _ = inproc("run", str(d / "exp.yaml"), "num_workers=1", "eval_batch_size=7", "extract_batch_size=3",
                          "train.log_every=1", "train.eval_every=1", "device=cpu", "--dry-run", "--json")
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])
    assert res["counts"] == {"cached": len(first["stages"])}


def test_each_method_trains_with_its_own_lr_and_init(setup):
    """A method's own ``train:`` settings and ``init`` (here from the command line) change that method's runs only:
    its distill key, the lr its trainer used and the weights it started from; the other methods' runs stay cached."""
    d, _, first = setup
    old = {s["id"]: s["key"] for s in first["stages"]}
    res = last_json(_run(setup, "methods.baseline.train.lr=0.0123", "methods.full.init=pretrained", "fractions=[1.0]",
                         "seeds=[0]", "--json"))
    kinds = _by_kind(res)
    assert all(s["status"] == "cached" for s in kinds["data"] + kinds["extract"])
    runs = {s["method"]: s for s in kinds["distill"]}
    assert runs["baseline"]["status"] == runs["full"]["status"] == "ran"
    assert runs["baseline"]["key"] != old["distill:baseline@1/s0"] and runs["full"]["key"] != old["distill:full@1/s0"]
    base = json.loads((Path(runs["baseline"]["path"]) / "run" / "run.json").read_text())
    full = json.loads((Path(runs["full"]["path"]) / "run" / "run.json").read_text())
    assert base["fingerprint"]["train"]["lr"] == 0.0123 and full["fingerprint"]["train"]["lr"] != 0.0123
    assert "init" not in base["fingerprint"] and full["fingerprint"]["init"] == "pretrained"  # scratch: left out
    # the same settings written in the YAML are the same runs
    (d / "per-method.yaml").write_text((d / "exp.yaml").read_text().replace(
        "methods: [baseline, full]", "methods:\n  baseline: {train: {lr: 0.0123}}\n  full: {init: pretrained}"))
    again = last_json(mad_inproc("run", str(d / "per-method.yaml"), "fractions=[1.0]", "seeds=[0]", "--json",
                                 env=setup[1]))
    assert {s["id"]: s["key"] for s in again["stages"] if s["kind"] == "distill"} == \
        {s["id"]: s["key"] for s in kinds["distill"]}
    assert all(s["status"] == "cached" for s in again["stages"] if s["kind"] != "report")


def test_a_fraction_trains_with_its_own_step_cap(setup):
    """``per_fraction`` gives the runs at one training fraction their own ``train:`` settings (a larger step cap where
    there is more data): those runs train with them and get new keys; the other fraction's runs stay cached; a
    method's own ``train:`` settings apply over the fraction's."""
    _, _, first = setup
    old = {s["id"]: s["key"] for s in first["stages"]}
    res = last_json(_run(setup, "per_fraction={1.0: {train: {steps: 3, lr: 0.02}}}", "methods.full.train.lr=0.0123",
                         "seeds=[0]", "--json"))
    runs = {s["id"]: s for s in _by_kind(res)["distill"]}
    assert runs["distill:baseline@0.5/s0"]["status"] == "cached"
    assert runs["distill:baseline@0.5/s0"]["key"] == old["distill:baseline@0.5/s0"]
    assert runs["distill:baseline@1/s0"]["status"] == runs["distill:full@1/s0"]["status"] == "ran"

    def trained(run_id):
        run = json.loads((Path(runs[run_id]["path"]) / "run" / "run.json").read_text())
        metrics = json.loads((Path(runs[run_id]["path"]) / "run" / "metrics.json").read_text())
        return run["fingerprint"]["train"], metrics["steps"]

    assert trained("distill:baseline@1/s0") == ({**trained("distill:baseline@1/s0")[0], "steps": 3, "lr": 0.02}, 3)
    full_train, full_steps = trained("distill:full@1/s0")
    assert full_train["steps"] == 3 and full_train["lr"] == 0.0123 and full_steps == 3  # the method's lr wins
    assert trained("distill:full@0.5/s0")[0]["steps"] == 2


def test_a_fractions_override_leaves_out_the_other_fractions_own_settings(tiny_clip, tmp_path):
    """A config whose ``per_fraction`` names several of its fractions still loads with ``fractions=`` picking one of
    them (one run of the study, as the study's shards and its docs run them): the other fractions' entries are
    dropped, the kept one still applies; an entry for a fraction the file does not list is still an error."""
    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.pipeline.fractions import for_run

    cfg = tmp_path / "pf.yaml"
    cfg.write_text(CONFIG.format(weights=tiny_clip[1])
                   + "per_fraction:\n  0.5: {train: {lr: 0.0003}}\n  1.0: {train: {steps: 3}}\n")
    whole = load_config(cfg).values
    assert set(whole["per_fraction"]) == {0.5, 1.0}
    one = load_config(cfg, ["fractions=[0.5]"]).values
    assert set(one["per_fraction"]) == {0.5}
    assert for_run(one, "full", 0.5)["train"] == for_run(whole, "full", 0.5)["train"]
    assert for_run(one, "full", 0.5)["train"]["lr"] == 0.0003
    assert load_config(cfg, ["fractions=[1.0]"]).values["per_fraction"] == {1.0: {"train": {"steps": 3}}}
    with pytest.raises(InputError, match=r"per_fraction\.0\.2: not one of the config's fractions \(0\.5\)"):
        load_config(cfg, ["fractions=[0.5]", "per_fraction={0.2: {train: {steps: 3}}}"])


def test_report_draws_reference_lines_on_every_evaluated_split(setup):
    """The report's reference levels per split: the teacher's zero-shot accuracy (its answers on each evaluated
    split are extracted for it), the majority answer and VQA's answer prior per question type, all from the data."""
    _, _, first = setup
    assert set(first["report"]["table"]["references"]["val"]) == {"teacher zero-shot", "majority",
                                                                  "answer prior per type"}
    # the answer prior per question type beside its overall level, for per-type tables
    prior = first["report"]["table"]["reference_breakdown"]["val"]["answer prior"]
    assert prior["overall"] == first["report"]["table"]["references"]["val"]["answer prior per type"]
    assert set(prior) - {"overall"} and all(0.0 <= v <= 100.0 for v in prior.values())
    res = last_json(_run(setup, "data.eval_splits=[test]", "fractions=[1.0]", "seeds=[0]", "--json"))
    kinds = _by_kind(res)
    assert {s["id"] for s in kinds["extract"]} >= {"extract:val", "extract:test"}
    assert all(s["status"] == "cached" for s in kinds["distill"])
    refs = res["report"]["table"]["references"]
    assert set(refs) == {"val", "test"} and set(refs["test"]) == set(refs["val"])
    assert refs["val"] == first["report"]["table"]["references"]["val"]


def test_bad_yaml_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "exp-bad.yaml"
    bad.write_text("task: vqa\n  data: [\n")
    proc = mad("run", str(bad), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: {bad}: line 2 not valid YAML (mapping values are not "
                                                 "allowed here)"]


@pytest.mark.parametrize("content, override, expect", [
    ("task: vqa\ndata: {{root: .}}\ntrain:\n  stpes: 3\n", (), r"exp-bad\.yaml: unknown key train\.stpes \(known in"),
    ("task: vqa\ndata: {{root: .}}\nsteps: 3\n", (), r"exp-bad\.yaml: unknown key steps \(known: cache, data"),
    (CONFIG, ("train.lr=fast",), r"override 'train.lr=fast': train\.lr: expected a number, got 'fast'"),
    (CONFIG, ("teacher=nope",), r"exp-bad\.yaml: teacher: unknown teacher 'nope'"),
    (CONFIG, ("fractions=[0.5, 2]",), r"fractions\[1\]: 2.0 is not in \(0, 1\]"),
    (CONFIG, ("num_workers=many",), r"num_workers: expected a count >= 0 or auto, got 'many'"),
    (CONFIG, ("methods.full.train.stpes=3",), r"exp-bad\.yaml: unknown key methods\.full\.train\.stpes \(known: "),
    (CONFIG, ("methods.full.init=nope",), r"methods\.full\.init: 'nope' is not one of pretrained, scratch"),
    (CONFIG, ("methods.full.train.batch_size=0",), r"methods\.full\.train\.batch_size: "),
    (CONFIG, ("methods.full.lr=1",), r"unknown key methods\.full\.lr \(known: .*train"),
    (CONFIG, ("per_fraction={0.2: {train: {steps: 3}}}",), r"per_fraction\.0\.2: not one of the config's fractions"),
    (CONFIG, ("per_fraction={1.0: {train: {stpes: 3}}}",), r"unknown key per_fraction\.1\.0\.train\.stpes \(known: "),
    (CONFIG, ("per_fraction={1.0: {steps: 3}}",), r"unknown key per_fraction\.1\.0\.steps \(known: train\)"),
    (CONFIG, ("per_fraction={1.0: {train: {patience: 2}}}",), r"per_fraction\.1\.train: .*--patience 2"),
])
def test_bad_config_is_one_line_exit_2(inproc, tiny_clip, tmp_path, content, override, expect):
    import re

    bad = tmp_path / "exp-bad.yaml"
    bad.write_text(content.format(weights=tiny_clip[1]))
    code, out, err = inproc("run", str(bad), *override, "--dry-run")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(expect, lines[0]), err


def test_report_from_run_directories(setup, inproc, tmp_path):
    d, env, first = setup
    distill_dirs = [s["path"] for s in first["stages"] if s["kind"] == "distill"]
    code, out, _ = inproc("report", *distill_dirs, "--out", str(tmp_path / "rep"), "--title", "T", "--json")
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])
    files = {k: Path(v) for k, v in res["files"].items()}
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["markdown"].read_text()
    assert "| training fraction | baseline | MAD |" in md and "±" in md and "mean ± std over 2 seeds" in md
    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["train_fraction"] for r in rows] == ["0.5", "1"]
    # mean and sample std over the two seeds, from the evaluated runs themselves
    evals = [s for s in first["stages"] if s["kind"] == "eval"]
    for r in rows:
        for method, col in (("baseline", "baseline"), ("full", "MAD")):
            vals = [s["value"] for s in evals if s["method"] == method and s["fraction"] == float(r["train_fraction"])]
            assert len(vals) == 2 and r[f"{col}_n"] == "2"
            assert float(r[f"{col}_mean"]) == pytest.approx(statistics.mean(vals), abs=1e-4)
            assert float(r[f"{col}_std"]) == pytest.approx(statistics.stdev(vals), abs=1e-4)
    # the pipeline's own report holds the same table, and names the same machine
    assert res["table"]["rows"] == first["report"]["table"]["rows"]
    assert Path(first["report"]["files"]["csv"]).read_text() == files["csv"].read_text()
    assert res["table"]["machines"] == first["report"]["table"]["machines"] == {cpu_model(): 8}
    # runs trained on another kind of machine (a `mad distill` run directory records it too) are named
    import shutil

    other = tmp_path / "other-run"
    shutil.copytree(Path(distill_dirs[1]) / "run", other)
    m = json.loads((other / "metrics.json").read_text())
    assert m["machine"]["cpu"] == cpu_model()
    m["machine"] = {**m["machine"], "cpu": "Another CPU", "cuda": []}
    (other / "metrics.json").write_text(json.dumps(m))
    code, out, _ = inproc("report", distill_dirs[0], str(other), "--out", str(tmp_path / "rep2"), "--json")
    mixed = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and mixed["table"]["machines"] == {cpu_model(): 1, "Another CPU": 1}
    assert "Trained on several kinds of machine" in Path(mixed["files"]["markdown"]).read_text()


# ---------------------------------------------------------------------------------------------------------------------
# the YAML schema (in-process, no stages)


def test_config_overrides_and_paths(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "x.yaml"
    f.write_text("task: snli-ve\ndata: {root: data}\nmethods: {mad: {preset: full, select: random}, baseline: }\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(f, ["seeds=[3, 4]", "train.steps=5", "teacher_weights=w.pt", "name=2024"])
    v = cfg.values
    assert v["data"]["root"] == str(tmp_path / "sub" / "data")  # relative to the file
    assert v["teacher_weights"] == str(tmp_path / "w.pt")  # relative to the current directory
    assert v["seeds"] == [3, 4] and v["train"]["steps"] == 5 and v["name"] == "2024"
    assert v["methods"] == {"mad": {"preset": "full", "select": "random"}, "baseline": {"preset": "baseline"}}
    # a list picks methods; those the config defines keep their settings, new names are presets
    picked = load_config(f, ["methods=[mad,naive]"]).values["methods"]
    assert picked == {"mad": {"preset": "full", "select": "random"}, "naive": {"preset": "naive"}}
    with pytest.raises(InputError, match=r"x\.yaml: methods\.mad\.select: 'nope' is not one of"):
        load_config(f, ["methods.mad.select=nope"])
    with pytest.raises(InputError, match=r"unknown key methods\.mad\.top"):
        from_dict({"task": "vqa", "data": {"root": "."}, "methods": {"mad": {"top": 1}}}, schema(), source="x.yaml")
    with pytest.raises(InputError, match=r"data: give data.root .* or data.shapes.size"):
        from_dict({"task": "vqa"}, schema(), source="x.yaml")
    with pytest.raises(InputError, match=r"x\.yaml: missing key task \(vqa, snli-ve or vcr"):
        from_dict({"data": {"root": "."}}, schema(), source="x.yaml")
    assert os.path.basename(load_config(f).source) == "x.yaml"


def test_dotted_overrides_reach_one_task_and_one_fraction(tmp_path):
    """`per_task.<task>.<key>=` sets a key for one task (the others keep theirs) and `per_fraction.<f>.train.<key>=`
    one fraction's (the fraction as YAML writes it, merged with the file's entry); what they set is checked like the
    file's keys, one line each."""
    f = tmp_path / "study.yaml"
    f.write_text("task: [vqa, vcr]\ndata: {shapes: {size: 20}}\nfractions: [0.05, 1.0]\ntrain: {steps: 50}\n"
                 "per_fraction:\n  1.0: {train: {steps: 90}}\n"
                 "per_task:\n  vcr: {train: {batch_size: 16}}\n")
    v = load_config(f, ["per_task.vcr.train.dev_metric=q2ar", "per_task.vqa.train.steps=70",
                        "per_fraction.1.0.train.lr=3e-4", "per_fraction.0.05.train.steps=40"]).values
    vcr, vqa = v["per_task"]["vcr"], v["per_task"]["vqa"]
    assert vcr["train"]["dev_metric"] == "q2ar" and vcr["train"]["batch_size"] == 16 and vcr["train"]["steps"] == 50
    assert vqa["train"]["dev_metric"] == "" and vqa["train"]["steps"] == 70
    assert v["per_fraction"] == {0.05: {"train": {"steps": 40}}, 1.0: {"train": {"steps": 90, "lr": 3e-4}}}
    assert vcr["per_fraction"] == v["per_fraction"]
    for override, expect in [
        ("per_task.vcr.train.dev_metric=nope", r"study\.yaml: per_task\.vcr: train\.dev_metric: 'nope': vcr"),
        ("per_task.vcr.train.stpes=3", r"study\.yaml: per_task\.vcr: unknown key train\.stpes"),
        ("per_task.foo.train.steps=3", r"study\.yaml: per_task\.foo: not one of the config's tasks"),
        ("per_task.snli-ve.train.steps=3", r"override 'per_task\.snli-ve\.train\.steps=3': snli-ve is not one of "
                                           r"the tasks this run trains \(vqa, vcr\)"),
        ("per_fraction.x.train.steps=3", r"override 'per_fraction\.x\.train\.steps=3': per_fraction\.x: not a"),
        ("per_fraction.0.5.train.steps=3", r"study\.yaml: per_fraction\.0\.5: not one of the config's fractions"),
    ]:
        with pytest.raises(InputError, match=expect):
            load_config(f, [override])


def test_mad_demo_is_the_bundled_config_through_mad_run(tmp_path):
    """`mad demo` = `mad run` of the shipped config; its plan on an empty cache has the data stage first and the
    3 students (pretrained baseline and MAD, and a baseline from scratch); --show-config prints the very file (a
    copy to edit and pass to mad run); the study configs (all
    three tasks) generate the demo's world, so its data stage is the demo's."""
    from mad_pipeline.pipeline.config import bundled_config

    shown = mad_inproc("demo", "--show-config").stdout
    assert shown == bundled_config("demo").read_text()
    res = last_json(mad("demo", "--dry-run", "--json", "--cache", str(tmp_path / "c"), env={"MAD_SHARED_CACHE": ""}))
    kinds = _by_kind(res)
    assert res["dry_run"] and [s["status"] for s in kinds["data"]] == ["to-run"]
    assert sorted((s["method"], s["fraction"]) for s in kinds["distill"]) == [
        ("baseline", 0.05), ("baseline-scratch", 0.05), ("full", 0.05)]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("*.json"))
    demo = load_config(bundled_config("demo")).values
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("lowshot.yaml", "ablation.yaml"):
        study = load_config(root / name).values
        assert study["data"]["shapes"] == demo["data"]["shapes"], name
        assert study["task"] == ["vqa", "snli-ve", "vcr"] and study["teacher"] == demo["teacher"], name


def test_schema_is_read_from_the_settings_dataclasses():
    """One description per option: ``train:`` is TrainConfig's fields (not those marked yaml=False, nor the trainer
    settings written at the top level), ``distill:`` the objective's switches, the stage settings DistillConfig's
    fields (under their YAML names), each with the field's own default and bounds."""
    import dataclasses

    from mad_pipeline.stages.distill import DistillConfig
    from mad_pipeline.stages.pipeline import YAML_KEYS

    from mad_pipeline.losses import SWITCHES, MADConfig
    from mad_pipeline.pipeline.config import mad_config
    from mad_pipeline.pipeline.schema import TOP_LEVEL_TRAIN
    from mad_pipeline.training.config import TrainConfig

    sch = schema()
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert set(sch["train"]) == {n for n, f in train.items() if f.metadata.get("yaml", True)} - set(TOP_LEVEL_TRAIN)
    for name, key in sch["train"].items():
        assert key.default == train[name].default and key.min == train[name].metadata.get("min"), name
    assert all(k in sch for k in TOP_LEVEL_TRAIN)
    assert set(sch["distill"]) == set(SWITCHES)
    distill = {f.name: f for f in dataclasses.fields(DistillConfig)}
    for name, dotted in YAML_KEYS.items():
        node = sch
        for part in dotted.split("."):
            node = node[part]
        assert node.default == (None if distill[name].default is dataclasses.MISSING else distill[name].default), name
    # no methods: the three presets; a method's switches go through MADConfig.from_switches
    v = from_dict({"task": "vqa", "data": {"root": "."}, "distill": {"top_k": 4}}, sch).values
    assert list(v["methods"]) == ["baseline", "naive", "full"]
    assert mad_config(v, "full") == MADConfig.from_switches("full", top_k=4)
    assert mad_config(v, "baseline") == MADConfig.baseline()
