"""``mad run`` (a whole experiment from one YAML file, every stage cached by content key) and ``mad report``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import pipeline as stage
from mad_pipeline.stages import report as report_stage
from rich.console import Console
from rich.table import Table

from mad_pipeline.pipeline import report as report_lib
from mad_pipeline.pipeline.config import bundled_config
from mad_pipeline.progress import quiet_library_bars

from .app import app

RUN_HELP = """Run a whole experiment from one YAML file: data, student-pretrain (with init: student-pretrain: the \
students' initial weights, the same cache entry as `mad student pretrain`), extract (frozen teachers -> feature \
stores), distill (per method, training fraction and seed), eval, report. Every stage is keyed by the content hash of \
everything that determines it and kept in the cache (<cache>/runs/<kind>/<key>/), so a rerun only computes what \
changed: an unchanged config is served entirely from the cache; a changed distillation setting reruns distill, eval \
and report only; another text teacher reuses the image stores.

KEY=VALUE arguments override the YAML (dotted keys, YAML values): train.steps=50, seeds=[0,1], \
text_teacher=minilm. The report table is printed at the end and written as Markdown, CSV and PNG.

Examples:

  mad run configs/lowshot.yaml

  mad run configs/lowshot.yaml --dry-run

  mad run configs/lowshot.yaml seeds=[0] train.steps=100 distill.alpha_schedule=cosine --out reports/x

  mad run experiment.yaml text_teacher=minilm --json
"""

REPORT_HELP = """Write the paper-style table (rows: training fraction; columns: baseline, naive, MAD; mean ± std \
over seeds) as Markdown, CSV and a PNG plot from finished runs: `mad distill` run directories, `mad run` stage \
directories, or folders holding them (e.g. <cache>/runs).

Examples:

  mad report runs/vqa-base-* runs/vqa-mad-* --out reports/vqa

  mad report ~/.cache/mad/runs/report/<key> --out reports/demo --title "shapes VQA"
"""

_STYLE = {"cached": "green", "ran": "yellow", "to-run": "cyan", "pending": "red"}


@app.command("run", help=RUN_HELP)
def run_cmd(
    config: Path = typer.Argument(..., help="Pipeline YAML (see docs/pipeline.md)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the YAML.", show_default=False),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (cached / to-run per stage); run nothing."),
    cache: Path = typer.Option(None, "--cache", help="Cache root (else the YAML's cache:, else MAD_CACHE)."),
    out: Path = typer.Option(None, "--out", "-o", help="Also copy the report files here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    _run_and_print(config, overrides, dry_run, cache, out, as_json, quiet)


DEMO_HELP = """The demo: `mad run` of the bundled config (shapes world, the shipped shapes-clip teacher, vilt-tiny \
students; the plain-finetuning baseline and MAD at 5% and 20% of the training data). Prints the comparison table \
and writes it as Markdown, CSV and a PNG plot. About 4 minutes on 2 CPU cores the first time; run again, every \
stage is served from the cache in seconds. KEY=VALUE arguments override the bundled config as for `mad run`.

Examples:

  mad demo

  mad demo --out demo-report

  mad demo seeds=[0,1,2] methods=[baseline,naive,full]

  mad demo --show-config > my.yaml
"""


@app.command("demo", help=DEMO_HELP)
def demo_cmd(
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the bundled config.",
                                          show_default=False),
    show_config: bool = typer.Option(False, "--show-config", help="Print the bundled config (YAML) and exit."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (cached / to-run per stage); run nothing."),
    cache: Path = typer.Option(None, "--cache", help="Cache root (else MAD_CACHE, else the user cache dir)."),
    out: Path = typer.Option(None, "--out", "-o", help="Also copy the report files here."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
):
    path = bundled_config("demo")
    if show_config:
        typer.echo(path.read_text(), nl=False)
        return
    _run_and_print(path, overrides, dry_run, cache, out, as_json, quiet)


def _run_and_print(config: Path, overrides, dry_run: bool, cache: Path | None, out: Path | None, as_json: bool,
                   quiet: bool) -> None:
    err = Console(stderr=True)
    silent = quiet or as_json
    if silent:
        quiet_library_bars()  # transformers' and huggingface_hub's bars too

    def on_stage(st, i, n, event):
        if silent or dry_run:
            return
        w = len(str(n))
        if event == "start":
            err.print(f"[{i:>{w}}/{n}] {st.kind:<8} {st.label}  [yellow]running[/]", highlight=False)
            return
        secs = (st.record or {}).get("seconds")
        took = f" ({secs:.1f} s)" if st.status == "ran" and secs is not None else ""
        err.print(f"[{i:>{w}}/{n}] {st.kind:<8} {st.label}  [{_STYLE.get(st.status, 'white')}]{st.status}[/]{took}",
                  highlight=False)

    cfg = stage.RunConfig(config=config, overrides=tuple(overrides or ()), dry_run=dry_run, cache=cache, out=out,
                          progress=not silent)
    result = stage.run(cfg, log=(lambda m: None) if silent else (lambda m: err.print(m, markup=False, highlight=False,
                                                                                        soft_wrap=True)),
                       on_stage=on_stage)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), default=str))
        return
    con = Console()
    if dry_run:
        con.print(_plan_table(result))
    else:
        con.print(_summary_table(result))
    for rep in result.reports.values():  # one per task
        con.print(_report_table(rep["table"]))
        for kind, p in rep["files"].items():
            con.print(f"{kind}: {p}", soft_wrap=True, highlight=False)
    counts = result.counts()
    parts = ", ".join(f"{v} {k}" for k, v in counts.items())
    what = "plan" if dry_run else "done"
    con.print(f"{what}: {len(result.stages)} stages ({parts}) in {result.seconds:.1f} s; cache {result.cache}",
              soft_wrap=True, highlight=False)


@app.command("report", help=REPORT_HELP)
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories (or folders holding them)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: report.md, report.csv, report.png."),
    title: str = typer.Option("mad report", "--title", help="Title of the table and the plot."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
):
    res = report_stage.run(report_stage.ReportConfig(runs=tuple(runs), out=out, title=title))
    if as_json:
        typer.echo(json.dumps(res))
        return
    con = Console()
    con.print(_report_table(res["table"]))
    for kind, p in res["files"].items():
        con.print(f"{kind}: {p}", soft_wrap=True, highlight=False)


def _plan_table(result) -> Table:
    t = Table(title=f"mad run --dry-run: {result.config['name']} ({result.source})")
    for col in ("#", "stage", "what", "key", "status"):
        t.add_column(col, justify="right" if col == "#" else "left")
    for i, st in enumerate(result.stages, 1):
        key = st.key[:12] if st.key else "?"
        t.add_row(str(i), st.kind, st.label, key, f"[{_STYLE.get(st.status, 'white')}]{st.status}[/]")
    return t


def _summary_table(result) -> Table:
    t = Table(title=f"mad run: {result.config['name']}")
    t.add_column("stage")
    for col in ("cached", "ran", "seconds"):
        t.add_column(col, justify="right")
    kinds = list(dict.fromkeys(s.kind for s in result.stages))
    for k in kinds:
        ss = [s for s in result.stages if s.kind == k]
        ran = [s for s in ss if s.status == "ran"]
        secs = sum((s.record or {}).get("seconds") or 0 for s in ran)
        t.add_row(k, str(sum(s.status == "cached" for s in ss)), str(len(ran)), f"{secs:.1f}" if ran else "")
    return t


def _report_table(table: dict) -> Table:
    ms = table["methods"]
    t = Table(title=f"{table['title']} — {report_lib.caption(table)}")
    multi = len(table["splits"]) > 1
    metrics = bool(table.get("metrics"))  # VCR: Q->A, QA->R, Q->AR
    if metrics:
        t.add_column("metric")
    if multi:
        t.add_column("split")
    t.add_column("training fraction", justify="right")
    for m in ms:
        t.add_column(report_lib.method_title(m), justify="right")
    for row in table["rows"]:
        cells = []
        for m in ms:
            c = row["cells"].get(m)
            text = report_lib.cell_text(c)
            cells.append(f"[bold]{text}[/]" if report_lib.is_best(row, c) else text)
        t.add_row(*([report_lib.metric_title(row["metric"])] if metrics else []),
                  *([row["split"]] if multi else []), f"{row['fraction'] * 100:g}%", *cells)
    return t
