"""What a study run costs: the dev evaluations of early stopping answer only what selects (VCR: Q->A, not the four
QA->R passes), the evaluation split the distill stage scored at the end of training is not predicted again by its
eval stage (the same figures and files), and the sweep's settings are valid for every task and fraction it may run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import bench_module, last_json, mad_inproc

VCR_CONFIG = """\
name: tiny vcr
task: vcr
data:
  shapes: {size: 16, seed: 0}
  eval_split: test
  eval_splits: [shift]
methods: [baseline]
vocab_min_count: 1
train: {steps: 4, batch_size: 4, dev_fraction: 0.25, min_dev: 4, dev_every: 2, patience: 3}
"""


@pytest.fixture(scope="module")
def vcr_study(tmp_path_factory):
    """A tiny VCR baseline through `mad run`, early-stopped on a dev split, scored on test and shift; every call of
    the task's follow-up question (QA->R) counted by split size."""
    from mad_pipeline.stages import evaluate as eval_stage

    from mad_pipeline.tasks.vcr import VcrTask

    d = tmp_path_factory.mktemp("study-cost")
    (d / "vcr.yaml").write_text(VCR_CONFIG)
    calls: list[int] = []
    passes: list[int] = []
    evaluated: list[str] = []
    follow_up, run = VcrTask.follow_up, eval_stage.run

    def counting(self, samples, records, scores, logits):
        calls.append(len(samples))

        def counted(texts):
            passes.append(len(texts))
            return scores(texts)

        return follow_up(self, samples, records, counted, logits)

    def eval_run(cfg):
        evaluated.append(cfg.split)
        return run(cfg)

    mp = pytest.MonkeyPatch()
    mp.setattr(VcrTask, "follow_up", counting)
    mp.setattr(eval_stage, "run", eval_run)
    try:
        env = {"MAD_CACHE": str(d / "cache"), "MAD_SHARED_CACHE": "", "OMP_NUM_THREADS": "1",
               "MAD_HASH_MEMO": str(d / "memo")}
        res = last_json(mad_inproc("run", str(d / "vcr.yaml"), "--json", env=env))
    finally:
        mp.undo()
    return d, env, res, (calls, passes), evaluated


def _stage(res, kind, split=None):
    return next(s for s in res["stages"] if s["kind"] == kind and (split is None or s.get("split") == split))


def test_dev_evaluations_score_only_the_selection_metric(vcr_study):
    _, _, res, (calls, passes), _ = vcr_study
    run = Path(_stage(res, "distill")["run"])
    metrics = json.loads((run / "metrics.json").read_text())
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    dev = [r for r in rows if r.get("split") == "dev"]
    assert len(dev) == 2 and metrics["early_stop"]["metric"] == "q2a"
    assert all(set(r["eval"]) >= {"metric", "value", "q2a", "n"} and "qa2r" not in r["eval"] and "q2ar" not in r["eval"]
               for r in dev)  # Q->A selects; QA->R was not answered, so it is not reported
    n_test, n_shift = metrics["eval"]["test"]["n"], _stage(res, "eval", "shift")["n"]
    # QA->R is answered once on test (end of training) and once on shift (its eval stage); never on the dev split
    assert sum(calls) == n_test + n_shift
    # once: one QA->R pass under the right answer per batch (the leaderboard's four only with `mad eval --leaderboard`)
    assert passes == calls
    assert {"q2a", "qa2r", "q2ar"} <= set(metrics["eval"]["test"])


def test_eval_stage_of_the_scored_split_reads_the_run(vcr_study, tmp_path):
    from mad_pipeline.stages import evaluate as eval_stage

    d, env, res, _, evaluated = vcr_study
    assert evaluated == ["shift"]  # test was scored once, by the distill stage
    test_stage = _stage(res, "eval", "test")
    rec = json.loads((Path(test_stage["path"]) / "stage.json").read_text())["result"]
    run = Path(_stage(res, "distill")["run"])
    assert rec["scored_by"] == "distill"
    # the same figures and files as predicting the split again with the saved student (what `mad eval` does)
    fresh = eval_stage.run(eval_stage.EvalConfig(run=run, split="test", out=tmp_path / "p.json", progress=False))
    assert rec["metrics"] == fresh["metrics"] and rec["value"] == fresh["value"] and rec["n"] == fresh["n"]
    assert rec["rows"] == [list(r) for r in fresh["rows"]]
    assert set(rec["files"]) == set(fresh["files"]) == {"predictions"}
    for kind, p in rec["files"].items():
        assert Path(p).parent == Path(test_stage["path"])
        assert Path(p).read_bytes() == Path(fresh["files"][kind]).read_bytes()
    # the report has QA->R and Q->AR on test from it; a rerun is served from the cache
    table = res["report"]["table"]
    assert {(r["metric"], r["split"]) for r in table["rows"]} >= {("qa2r", "test"), ("q2ar", "test")}
    again = last_json(mad_inproc("run", str(d / "vcr.yaml"), "--json", env=env))
    assert again["counts"] == {"cached": len(again["stages"])}


def test_sweep_settings_fit_every_task_at_every_fraction():
    """configs/sweep.yaml's dev split is satisfiable for each task and fraction it runs, and for the study's tasks at
    the study's lowest fraction (the sweep's `task=` / `fractions=` overrides)."""
    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.training.early_stop import dev_split

    repo = Path(__file__).resolve().parents[1]
    study = load_config(repo / "configs" / "lowshot.yaml").values
    # training samples per task of the study's world (docs/lowshot-history.md): VQA 9,891, SNLI-VE 6,000, VCR 2,000
    sizes = {"vqa": 9891, "snli-ve": 6000, "vcr": 2000}
    for task in sizes:
        for fractions in (None, study["fractions"]):
            over = [f"task={task}"] + ([f"fractions={fractions}"] if fractions else [])
            v = load_config(repo / "configs" / "sweep.yaml", over).values
            assert v["data"]["shapes"] == study["data"]["shapes"]
            for f in v["fractions"]:
                n = round(sizes[task] * f)
                samples = [type("S", (), {"image": f"i{i}", "id": i})() for i in range(n)]
                train, dev = dev_split(samples, v["train"]["dev_fraction"], v["train"]["min_dev"], 0)
                assert train and dev, (task, f)


def test_convergence_table_says_how_each_run_ended(vcr_study, tmp_path):
    """bench/lowshot.py's convergence table, from the study's own distill stages: stopped early or at the cap, the
    selected and last steps (here one run: its metrics.json decides every cell); and the dev curves' figure."""
    from types import SimpleNamespace

    bench = bench_module("lowshot")
    _, _, res, _, _ = vcr_study
    st = _stage(res, "distill")
    stages = [SimpleNamespace(kind="distill", record={"path": st["path"]},
                              meta={"task": "vcr", "method": "baseline", "fraction": 1.0})]
    m = json.loads((Path(st["path"]) / "run" / "metrics.json").read_text())
    [row] = bench.convergence(stages)
    assert row["runs"] == 1 and row["steps"] == m["steps"] and row["best_step"] == m["early_stop"]["best_step"]
    early = m["early_stop"]["stopped_early"] and m["steps"] < m["train_config"]["steps"]
    assert row["stopped_early"] == int(early)
    assert (row["capped_rise"] is None) == early
    # patience that runs out at the cap (min_steps held the run there) is a run that reached the cap
    held = tmp_path / "held" / "run"
    held.mkdir(parents=True)
    m2 = {**m, "steps": m["train_config"]["steps"], "early_stop": {**m["early_stop"], "stopped_early": True}}
    (held / "metrics.json").write_text(json.dumps(m2))
    held_stage = SimpleNamespace(kind="distill", record={"path": str(held.parent)}, meta=stages[0].meta)
    [row2] = bench.convergence([held_stage])
    assert row2["stopped_early"] == 0 and row2["capped_rise"] is not None
    md = bench.convergence_markdown([row])
    assert "| vcr | baseline | 100% | 1 |" in md
    assert bench.dev_curves(stages, tmp_path) == [tmp_path / "vcr" / "dev_curves.png"]
    assert (tmp_path / "vcr" / "dev_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_confidence_table_reads_each_runs_histograms(tmp_path):
    """bench/lowshot.py's table of the teacher's confidences and the weights they gave: per method and fraction the
    mean over seeds of each run's record (real records, counted by the objective while training); runs that do not
    weight by confidence (the baseline) are left out."""
    import dataclasses
    from types import SimpleNamespace

    from test_losses import ALL_ON, run

    from mad_pipeline.training.confidence import write_confidence

    bench = bench_module("lowshot")
    stages, records = [], []
    for seed, cfg in enumerate((ALL_ON, dataclasses.replace(ALL_ON, conf_tau=0.5))):
        loss = run(cfg)[0]
        d = tmp_path / f"full-s{seed}"
        (d / "run").mkdir(parents=True)
        records.append(write_confidence(loss, d / "run"))
        (d / "run" / "metrics.json").write_text(json.dumps({"confidence": records[-1]}))
        stages.append(SimpleNamespace(kind="distill", record={"path": str(d)},
                                      meta={"task": "vqa", "method": "full", "fraction": 0.05, "seed": seed}))
    (tmp_path / "base" / "run").mkdir(parents=True)
    (tmp_path / "base" / "run" / "metrics.json").write_text(json.dumps({"steps": 3}))
    stages.append(SimpleNamespace(kind="distill", record={"path": str(tmp_path / "base")},
                                  meta={"task": "vqa", "method": "baseline", "fraction": 0.05, "seed": 0}))
    [row] = bench.confidence(stages)
    assert (row["method"], row["fraction"], row["runs"]) == ("full", 0.05, 2)
    assert row["raw_mean"] == pytest.approx((records[0]["raw"]["mean"] + records[1]["raw"]["mean"]) / 2)
    assert row["w_share_0.8_1.2"] == pytest.approx(sum(r["weights"]["share_0.8_1.2"] for r in records) / 2)
    md = bench.confidence_markdown([row])
    assert f"| vqa | full | 5% | 2 | {row['raw_mean']:.2f} |" in md
    assert md.rstrip().endswith(f"| {100 * row['w_share_0.8_1.2']:.0f}% |")


def test_report_records_name_runs_relative_to_the_cache(vcr_study):
    """The records bench/lowshot.py copies beside a committed report name each run directory under ``<cache>/``, not
    by this machine's absolute path; the run is still found there."""
    bench = bench_module("lowshot")
    d, env, res, _, _ = vcr_study
    [rep] = res["reports"].values()
    records = bench._records_of(rep, Path(env["MAD_CACHE"]))
    assert records and all(r["source"].startswith("<cache>/runs/distill/") for r in records)
    for r in records:
        assert (Path(env["MAD_CACHE"]) / r["source"].removeprefix("<cache>/") / "metrics.json").is_file()


def test_shards_start_together_once_the_shared_stages_are_cached(vcr_study, tmp_path):
    """bench/lowshot.py runs its first shard alone only while the stages every shard shares (the world, the
    evaluation splits' stores) are not cached: after the study they are; in an empty cache they are not."""
    bench = bench_module("lowshot")
    d, env, _, _, _ = vcr_study
    cfg = d / "vcr.yaml"
    assert bench.shared_stages_cached(cfg, ["fractions=[0.5]"], Path(env["MAD_CACHE"]), "train")
    assert not bench.shared_stages_cached(cfg, [], tmp_path / "empty", "train")


def paired_runs(first: dict, second: dict):
    """Two study configs' runs side by side, as ``(task, method, fraction, seed, first's train config, second's)``,
    after asserting that both have the same methods, each with the same MAD objective, per task."""
    from mad_pipeline.pipeline.config import train_config
    from mad_pipeline.pipeline.fractions import for_run
    from mad_pipeline.pipeline.methods import mad_config
    from mad_pipeline.pipeline.study import for_task

    for task in first["task"]:
        a, b = for_task(first, task), for_task(second, task)
        assert list(b["methods"]) == list(a["methods"]), task
        for method in a["methods"]:
            assert mad_config(b, method) == mad_config(a, method), (task, method)
            for fraction in first["fractions"]:
                for seed in first["seeds"]:
                    yield (task, method, fraction, seed, train_config(for_run(a, method, fraction), seed),
                           train_config(for_run(b, method, fraction), seed))


def test_converge_config_is_the_main_tables_at_doubled_caps_with_a_floor():
    """configs/converge.yaml (docs/lowshot.md's converged main tables) trains the main tables' runs -- configs/
    lowshot.yaml with the main tables' overrides -- at every fraction and seed: at 1% and 5% with exactly their
    settings (the same cache entries), at 20% and 100% with only the step cap doubled, the dev evaluations where
    the main tables had them and early stopping's floor at half the cap. Every other setting of every run, and its
    MAD objective, is the same."""
    import dataclasses

    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.training.config import dev_every

    repo = Path(__file__).resolve().parents[1]
    main = load_config(repo / "configs" / "lowshot.yaml", ["data.shapes.size=4000", "train.cpu_bf16=true",
                                                           "per_task.vcr.train.dev_metric=q2ar"]).values
    conv = load_config(repo / "configs" / "converge.yaml").values
    assert conv["fractions"] == main["fractions"] and conv["seeds"] == main["seeds"]
    for key in ("task", "data", "teacher", "student", "init", "vocab_min_count"):
        assert conv[key] == main[key], key
    for task, method, fraction, seed, a, b in paired_runs(main, conv):
        if fraction < 0.2:
            assert b == a, (task, method, fraction, seed)
            continue
        assert b.steps == 2 * a.steps and b.dev_every == dev_every(a), (task, method, fraction)
        assert a.min_steps == 0 and b.min_steps == b.steps // 2, (task, method, fraction)
        same = dataclasses.replace(b, steps=a.steps, dev_every=a.dev_every, min_steps=0)
        assert same == a, (task, method, fraction)


def test_student_cost_scales_the_study_by_each_variants_step(tmp_path, capsys):
    """bench/student_cost.py times real ViLT students (vilt-tiny and smaller variants) on the study's batch shapes
    and scales a lowshot.json's distill seconds task by task: vilt-tiny's row is the record itself, and the registry
    is left as it was."""
    bench = bench_module("student_cost")
    from mad_pipeline.students.vilt import VILT_CONFIGS

    names = set(VILT_CONFIGS)
    record = tmp_path / "lowshot.json"
    record.write_text(json.dumps({"distill_stage_seconds": {"vqa": {"a": 100.0}, "vcr": {"b": 300.0, "c": 50.0}}}))
    assert bench.main(["--steps", "1", "--warmup", "0", "--record", str(record)]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "ms" in r]
    assert [r.split(" | ")[0][2:] for r in rows] == list(bench.VARIANTS)
    assert "(1.00x)" in rows[0] and "| 450 s |" in rows[0]
    assert set(VILT_CONFIGS) == names


def test_converge_mini_config_is_the_main_tables_with_vilt_mini_and_the_baselines_warmup():
    """configs/converge-mini.yaml (docs/lowshot.md's tables with vilt-mini) is configs/converge.yaml with the student
    vilt-mini, pretrained in the same command, and one setting changed: the baseline's warmup (0.2 of the steps, the
    warmup its sweep chose). Every other run -- naive and MAD at every task, fraction and seed -- is the same, so
    it is served from the same cache entries as converge.yaml's with student=vilt-mini init=student-pretrain."""
    import dataclasses

    from mad_pipeline.stages.pipeline import load_config

    repo = Path(__file__).resolve().parents[1]
    conv = load_config(repo / "configs" / "converge.yaml", ["student=vilt-mini", "init=student-pretrain"]).values
    mini = load_config(repo / "configs" / "converge-mini.yaml").values
    for key in ("task", "data", "teacher", "student", "init", "vocab_min_count", "fractions", "seeds"):
        assert mini[key] == conv[key], key
    for task, method, fraction, seed, a, b in paired_runs(conv, mini):
        if method != "baseline":
            assert b == a, (task, method, fraction, seed)
            continue
        assert (a.warmup, b.warmup) == (0.05, 0.2), (task, fraction)
        assert dataclasses.replace(b, warmup=a.warmup) == a, (task, fraction)


def test_converge_mini_l3_config_is_converge_mini_with_the_three_layer_student():
    """configs/converge-mini-l3.yaml is configs/converge-mini.yaml with the student vilt-mini-l3 and nothing else,
    so the two studies differ only in the student."""
    from mad_pipeline.stages.pipeline import load_config

    repo = Path(__file__).resolve().parents[1]
    l3 = load_config(repo / "configs" / "converge-mini-l3.yaml").values
    mini = load_config(repo / "configs" / "converge-mini.yaml", ["student=vilt-mini-l3", f"name={l3['name']}"]).values
    assert l3["student"] == "vilt-mini-l3" and l3["init"] == "student-pretrain"
    assert l3 == mini
