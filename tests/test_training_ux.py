"""The small things users expect on the training side: a progress bar with a rate and an ETA for `mad distill` and
`mad eval` (none at all with -q, transformers' included), the same metric names in `mad eval` and `mad score`, an
empty std in the report CSV for one seed, and plots with the teacher's zero-shot, majority and chance levels as
labelled lines on an honest y axis."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mad_pipeline.stages import report as report_stage
from typer.testing import CliRunner

from mad_pipeline.pipeline import report as report_lib
from mad_pipeline.training.plot import metrics_figure, read_metrics

BAR_SIGNS = ("━", "it/s", "step/s", "s/step", "batch/s", "s/batch", "Loading weights", "%|")
RATE = r"\d[\d,.]* (?:{0}/s|s/{0})"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from mad_pipeline.shapes.formats import write_dataset

    out = tmp_path_factory.mktemp("shapes-ux")
    write_dataset(out, size=16, seed=0)
    return out


def _cli(*args, env: dict | None = None, monkeypatch=None):
    from mad_pipeline.cli.main import _register, app

    _register()
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _plain(text: str) -> str:
    """Terminal output without colours, with every run of whitespace (line wraps included) as one space."""
    return re.sub(r"\s+", " ", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))


@pytest.fixture(scope="module")
def shown_run(world, tmp_path_factory):
    """A 2-step VCR baseline run by `mad distill` without -q, a terminal forced (FORCE_COLOR): (run, its stderr)."""
    run = tmp_path_factory.mktemp("ux") / "run"
    with pytest.MonkeyPatch.context() as mp:
        res = _cli("distill", "--task", "vcr", "--data-root", world / "vcr", "--no-distill", "--out", run, "--steps",
                   "2", "--batch-size", "4", "--log-every", "1", "--num-workers", "0", env={"FORCE_COLOR": "1"},
                   monkeypatch=mp)
    return run, res.stderr


# -- 1. progress bars ----------------------------------------------------------------------------------------------
def test_bars_show_rate_and_eta(shown_run, monkeypatch):
    """The training bar counts steps against the budget with steps/s, an ETA, the last loss and samples/s; the
    evaluation bars (inside training, and `mad eval`'s) show batches/s."""
    _, stderr = shown_run
    err = _plain(stderr)
    assert re.search(r"training [━╺ ]+ 2/2 " + RATE.format("step") + r" [\d:]+ eta [\d:]+ loss [\d.]+, "
                     r"[\d,.]+ samples/s", err), err
    assert re.search(r"eval val [━╺ ]+ 1/1 " + RATE.format("batch"), err), err
    res = _cli("eval", "--run", shown_run[0], "--split", "val", "--out", shown_run[0].parent / "ev.json",
               env={"FORCE_COLOR": "1"}, monkeypatch=monkeypatch)
    assert re.search(r"eval val [━╺ ]+ 1/1 " + RATE.format("batch"), _plain(res.stderr)), res.stderr


QUIET = """
import sys
from mad_pipeline.cli.main import main
for argv in (sys.argv[1:7], sys.argv[7:]):
    try:
        main(argv)
    except SystemExit as e:
        assert not e.code, (argv, e.code)
"""


def test_quiet_shows_no_bar_at_all(shown_run, world, tmp_path):
    """`mad eval -q` (first: transformers' "Loading weights" bar is not yet switched off by anything else), then
    `mad distill -q`, in a fresh process with a terminal forced: not one bar on stderr."""
    run, _ = shown_run
    env = {**os.environ, "FORCE_COLOR": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    args = ["eval", "--run", run, "--split", "val", "-q",
            "distill", "--task", "vcr", "--data-root", world / "vcr", "--no-distill", "--out", tmp_path / "q",
            "--steps", "1", "--batch-size", "2", "--num-workers", "0", "-q"]
    proc = subprocess.run([sys.executable, "-c", QUIET, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "Q->A" in proc.stdout and (tmp_path / "q" / "metrics.json").exists()
    assert not [s for s in BAR_SIGNS if s in proc.stderr], proc.stderr


# -- 2. the same metric names in `mad eval` and `mad score` ------------------------------------------------------------
def _table(text: str) -> tuple[list[str], list[str]]:
    """(column names, first cell of each row) of the rich table in ``text``."""
    head = next(ln for ln in text.splitlines() if ln.startswith("┃"))
    rows = [ln for ln in text.splitlines() if ln.startswith("│")]
    return [c.strip() for c in head.strip("┃").split("┃")], [r.strip("│").split("│")[0].strip() for r in rows]


def test_eval_and_score_name_metrics_alike(shown_run, world, bars_restored):
    run, _ = shown_run
    preds = run / "predictions" / "val.json"
    ann = world / "vcr" / "val.jsonl"
    ev = json.loads(_cli("eval", "--run", run, "--split", "val", "--out", preds, "--json").stdout.splitlines()[-1])
    sc = json.loads(_cli("score", "--task", "vcr", "--predictions", preds, "--annotations", ann,
                         "--json").stdout.splitlines()[-1])
    assert ev["metrics"] == sc["metrics"] and set(sc["metrics"]) == {"metric", "value", "n", "q2a", "qa2r", "q2ar"}
    assert (ev["metric"], ev["value"]) == (sc["metric"], sc["value"]) == ("q2a", sc["q2a"])
    ev_cols, ev_rows = _table(_cli("eval", "--run", run, "--split", "val", "--out", preds, "-q").stdout)
    sc_cols, sc_rows = _table(_cli("score", "--task", "vcr", "--predictions", preds, "--annotations", ann).stdout)
    assert ev_cols == sc_cols == ["metric", "accuracy (%)", "n"]
    assert ev_rows == sc_rows == ["Q->A", "QA->R", "Q->AR"]


# -- 3. the report CSV: std empty for one seed ------------------------------------------------------------------------
def _records(values: dict[int, float], fraction: float = 0.1, method: str = "full", refs: dict | None = None):
    return [{"method": method, "fraction": fraction, "seed": s, "split": "val", "metric": "q2a", "value": v,
             "task": "vcr", "source": f"run-{method}-{fraction}-{s}", "references": refs or {}}
            for s, v in values.items()]


def test_report_csv_leaves_std_empty_for_one_seed(shown_run, tmp_path):
    table = report_lib.aggregate(_records({0: 50.0}, 0.1) + _records({0: 60.0, 1: 64.0}, 1.0))
    rows = list(csv.DictReader(io.StringIO(report_lib.to_csv(table))))
    one, two = rows
    assert (one["MAD_mean"], one["MAD_std"], one["MAD_n"]) == ("50.0000", "", "1")
    assert (two["MAD_mean"], two["MAD_std"], two["MAD_n"]) == ("62.0000", "2.8284", "2")
    assert table["rows"][0]["cells"]["full"]["std"] is None  # undefined, not 0.0 or nan
    assert report_lib.cell_text(table["rows"][0]["cells"]["full"]) == "50.00"
    # `mad report` on a real one-seed run
    run, _ = shown_run
    res = report_stage.run(report_stage.ReportConfig(runs=(run,), out=tmp_path / "rep"))
    row, *_ = csv.DictReader(io.StringIO(Path(res["files"]["csv"]).read_text()))  # VCR: Q->A first, then QA->R ...
    assert row["baseline_std"] == "" and row["baseline_n"] == "1" and row["baseline_mean"] != ""


# -- 4. plots: reference lines, honest y range -------------------------------------------------------------------------
def test_report_plot_draws_the_reference_lines_on_an_honest_axis():
    refs = {"teacher zero-shot": 41.5, "majority": 30.0, "chance": 25.0}
    table = report_lib.aggregate(_records({0: 60.0, 1: 62.0}, 1.0, refs=refs)
                                 + _records({0: 61.0, 1: 63.5}, 1.0, "baseline", refs=refs))
    assert table["references"] == {"val": refs}
    fig = report_lib.figure(table)
    (ax,) = fig.axes
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for label, v in refs.items():
        ln = lines[f"{label} ({v:.1f})"]  # a labelled horizontal line at the level
        assert set(ln.get_ydata()) == {v} and ln.get_xydata().shape[0] == 2
    lo, hi = ax.get_ylim()
    assert lo == 0 and 64 < hi <= 100  # from 0 (no zoom on the 2-point gap), every curve and line inside
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= {f"{k} ({v:.1f})" for k, v in refs.items()}
    assert "References: teacher zero-shot 41.50, majority 30.00, chance 25.00." in report_lib.to_markdown(table)


def test_reference_lines_never_share_a_colour_with_a_methods_curve():
    """Methods take matplotlib's colour cycle (ten colours); the reference lines are greys, so even a table of
    eight methods draws no curve in a reference line's colour."""
    from matplotlib.colors import to_rgba

    refs = {"teacher zero-shot": 41.5, "majority": 30.0, "answer prior per type": 28.0, "chance": 25.0, "other": 5.0}
    names = ["baseline", "naive", "full", "no-select", "no-conf", "random", "all", "question-aware"]
    table = report_lib.aggregate([r for i, m in enumerate(names)
                                  for r in _records({0: 50.0 + i, 1: 51.0 + i}, 1.0, m, refs=refs)])
    (ax,) = report_lib.figure(table).axes
    ref_labels = {f"{k} ({v:.1f})" for k, v in refs.items()}
    ref_colours = {to_rgba(ln.get_color()) for ln in ax.get_lines() if ln.get_label() in ref_labels}
    curve_colours = {to_rgba(c.lines[0].get_color()) for c in ax.containers}
    assert len(ref_colours) == len(refs) and len(curve_colours) == len(names)
    assert not ref_colours & curve_colours


def test_each_study_metric_gets_its_own_reference_lines():
    """VCR's QA->R block draws and lists QA->R's own levels, not Q->A's."""
    q2a = {"teacher zero-shot": 64.6, "majority": 26.4, "chance": 25.0}
    qa2r = {"teacher zero-shot": 84.2, "majority": 27.0, "chance": 25.0}
    recs = _records({0: 50.0, 1: 52.0}, 1.0, refs=q2a)
    recs += [{**r, "metric": "qa2r", "value": r["value"] + 20, "references": qa2r} for r in recs]
    table = report_lib.aggregate(recs)
    assert table["references"] == {"val": q2a} and table["metric_references"] == {"qa2r": {"val": qa2r}}
    assert report_lib.references_of(table, "qa2r", "val") == qa2r
    top, bottom = report_lib.figure(table).axes
    assert {ln.get_label() for ln in bottom.get_lines()} >= {f"{k} ({v:.1f})" for k, v in qa2r.items()}
    assert "teacher zero-shot (64.6)" not in {ln.get_label() for ln in bottom.get_lines()}
    md = report_lib.to_markdown(table)
    assert "References: teacher zero-shot 84.20, majority 27.00, chance 25.00." in md
    assert "References: teacher zero-shot 64.60" in md


def test_a_report_of_runs_from_several_kinds_of_machine_says_so():
    """One kind of machine (the usual case) adds nothing to report.md; runs trained on several (a cache shared
    between them) are named with their counts, since their weights carry each machine's roundings."""
    table = report_lib.aggregate(_records({0: 50.0, 1: 52.0}, 1.0))
    plain = report_lib.to_markdown(table)
    assert report_lib.to_markdown({**table, "machines": {"AMD EPYC": 2}}) == plain
    md = report_lib.to_markdown({**table, "machines": {"AMD EPYC": 1, "NVIDIA H100 80GB HBM3": 1}})
    assert "Trained on several kinds of machine: AMD EPYC (1 run), NVIDIA H100 80GB HBM3 (1 run)" in md


def test_training_plot_has_the_runs_reference_levels(shown_run):
    run, _ = shown_run
    metrics = json.loads((run / "metrics.json").read_text())
    refs = metrics["references"]
    assert refs["chance"] == 25.0 and 0 <= refs["majority"] <= 100  # VCR: four choices
    train, evals = read_metrics(run / "metrics.jsonl")
    fig = metrics_figure(train, evals, references={**refs, "teacher zero-shot": 91.0})
    ax = fig.axes[2]
    labels = [ln.get_label() for ln in ax.get_lines()]
    assert "student" in labels and "teacher zero-shot (91.0)" in labels
    assert f"chance ({refs['chance']:.1f})" in labels and f"majority ({refs['majority']:.1f})" in labels
    lo, hi = ax.get_ylim()
    assert lo == 0 and hi == 100  # 91 + headroom -> 100; never beyond
    assert (run / "training.png").read_bytes()[:4] == b"\x89PNG"
    # `mad report` carries the run's reference levels into its table and plot
    from mad_pipeline.stages.report import _records as run_records

    rec, *others = run_records(run / "metrics.json")  # VCR: Q->A first, then its other study metrics (QA->R, Q->AR)
    assert rec["metric"] == "q2a" and rec["references"] == refs
    assert {r["metric"] for r in others} == {"qa2r", "q2ar"}
