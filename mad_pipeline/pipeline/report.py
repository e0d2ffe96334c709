"""The paper-style results table: rows = training fraction (per evaluation split), columns = methods (baseline,
naive, MAD, then any custom ones), cells = mean ± std over seeds. Written as Markdown, CSV and a PNG plot.

A record is one evaluated run: ``{"method", "fraction", "seed", "split", "metric", "value", "task"}`` (``value`` in
percent, the task's official metric); a task with several study metrics (VCR: Q->A, QA->R, Q->AR) gives one record
per metric and run, and the table has one block per metric and split (the headline first). A record may carry
``references`` (label -> level on that split and metric: the teacher's zero-shot accuracy, majority, chance), drawn
as horizontal lines on the plot and listed under the table. The spread is the sample standard deviation over seeds
(ddof=1); with one seed it is undefined: ``None`` in the table, an empty cell in the CSV, no error bar on the plot.

The plot's y axis is honest (:func:`mad_pipeline.training.plot.metric_ylim`): from 0 to the next multiple of 10 above
every mean + std and every reference line (at most 100); it never zooms in on the curves.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import InputError

# what a report holds, in its stage's key: 2 gave each study metric its own reference lines, 3 the task's breakdown
# of its reference levels (VQA's answer prior per question type); a cached report of an older format is made again
# from its cached evaluations, in seconds
REPORT_FORMAT = 3
METHOD_ORDER = ("baseline", "naive", "full")
METHOD_TITLE = {"baseline": "baseline", "naive": "naive", "full": "MAD"}
METRIC_TITLE = {"vqa_accuracy": "VQA accuracy", "accuracy": "accuracy", "q2a": "Q->A accuracy",
                "qa2r": "QA->R accuracy", "q2ar": "Q->AR accuracy"}


def metric_title(metric: str | None) -> str:
    return METRIC_TITLE.get(metric or "", metric or "metric")


def method_key(name: str) -> tuple[int, str]:
    """The sort key of a method in tables and plots: baseline, naive, MAD, then the others by name."""
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


def study_metric_records(record: dict[str, Any], scores: dict[str, Any], task: str) -> list[dict[str, Any]]:
    """Beside a run's headline ``record``, one record per other figure of the task that ``scores`` (the evaluation's
    metrics) holds (:attr:`Task.study_metrics`; VCR: QA->R and Q->AR)."""
    from ..tasks import task_class

    return [{**record, "metric": k, "value": scores[k]} for k, _ in task_class(task).study_metrics if k in scores]


def method_title(name: str) -> str:
    return METHOD_TITLE.get(name, name)


def _mean_std(vals: list[float]) -> tuple[float, float | None]:
    n = len(vals)
    mean = sum(vals) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
    return mean, std


def aggregate(records: list[dict[str, Any]], title: str = "results") -> dict[str, Any]:
    """Group records into the table. Refuses a mix of tasks and two runs for the same cell and seed."""
    if not records:
        raise InputError("no evaluated runs to report")
    tasks = sorted({r.get("task") or "?" for r in records})
    if len(tasks) > 1:
        raise InputError(f"runs of several tasks ({', '.join(tasks)}); report one task at a time")
    seen: dict[tuple, str] = {}
    for r in records:
        ident = (r.get("metric"), r["split"], r["fraction"], r["method"], r["seed"])
        src = str(r.get("source", "?"))
        if ident in seen and seen[ident] != src:
            raise InputError(f"two runs for method {r['method']}, fraction {r['fraction']:g}, seed {r['seed']}, "
                             f"split {r['split']} ({seen[ident]} and {src}); report the runs of one experiment")
        seen[ident] = src
    methods = sorted({r["method"] for r in records}, key=method_key)
    splits = list(dict.fromkeys(r["split"] for r in records))
    metrics = list(dict.fromkeys(r.get("metric") for r in records))
    rows = []
    for metric in metrics:
        of_metric = [r for r in records if r.get("metric") == metric]
        for split in splits:
            for fraction in sorted({r["fraction"] for r in of_metric if r["split"] == split}):
                cells = {}
                for m in methods:
                    rs = sorted((r for r in of_metric if r["split"] == split and r["fraction"] == fraction
                                 and r["method"] == m and r["value"] is not None), key=lambda r: r["seed"])
                    if rs:
                        vals = [float(r["value"]) for r in rs]
                        mean, std = _mean_std(vals)
                        cells[m] = {"mean": mean, "std": std, "n": len(vals), "seeds": [r["seed"] for r in rs],
                                    "values": vals}
                rows.append({"split": split, "fraction": fraction, "cells": cells,
                             **({"metric": metric} if len(metrics) > 1 else {})})
    seeds = sorted({r["seed"] for r in records})
    refs = {m: _references([r for r in records if r.get("metric") == m], splits) for m in metrics}
    others = {m: refs[m] for m in metrics[1:] if refs[m]}
    return {"title": title, "task": tasks[0], "metric": metrics[0], "methods": methods, "splits": splits,
            "seeds": seeds, "rows": rows, "references": refs[metrics[0]],
            **({"metrics": metrics} if len(metrics) > 1 else {}), **({"metric_references": others} if others else {})}


def records_of_table(table: dict[str, Any], source: str = "?") -> list[dict[str, Any]]:
    """The records a table was aggregated from, one per metric, split, fraction, method and seed, each with its
    block's reference levels and ``source``: :func:`aggregate` of the records of several tables (other fractions or
    seeds of one task; a cell and seed in two of them, of different sources, is refused) is their merged table."""
    out = []
    for row in table["rows"]:
        metric = row.get("metric", table["metric"])
        refs = references_of(table, metric, row["split"])
        for method, cell in row["cells"].items():
            for seed, value in zip(cell["seeds"], cell["values"], strict=True):
                out.append({"task": table["task"], "metric": metric, "split": row["split"],
                            "fraction": row["fraction"], "method": method, "seed": seed, "value": value,
                            "source": source, **({"references": refs} if refs else {})})
    return out


def references_of(table: dict[str, Any], metric: str | None, split: str) -> dict[str, float] | None:
    """The reference lines of one block: the headline's (``references``), or another metric's own
    (``metric_references``)."""
    if metric in (None, table["metric"]):
        return (table.get("references") or {}).get(split)
    return (table.get("metric_references") or {}).get(metric, {}).get(split)


def blocks(table: dict[str, Any]) -> list[tuple[str | None, str, list[dict[str, Any]]]]:
    """The table's blocks: ``(metric, split, rows)`` per study metric and evaluation split (metric None for a
    one-metric table)."""
    out = []
    for metric in table.get("metrics") or [None]:
        for split in table["splits"]:
            rows = [r for r in table["rows"] if r["split"] == split and r.get("metric") == metric]
            if rows:
                out.append((metric, split, rows))
    return out


def _references(records: list[dict[str, Any]], splits: list[str]) -> dict[str, dict[str, float]]:
    """Per split, each reference level (the mean over the runs that recorded it: they are the same runs' data)."""
    out: dict[str, dict[str, float]] = {}
    for split in splits:
        levels: dict[str, list[float]] = {}
        for r in records:
            if r["split"] == split:
                for label, v in (r.get("references") or {}).items():
                    if v is not None:
                        levels.setdefault(label, []).append(float(v))
        if levels:
            out[split] = {label: sum(vs) / len(vs) for label, vs in levels.items()}
    return out


def cell_text(c: dict | None) -> str:
    """One cell: ``mean ± std`` over seeds (the mean alone for one seed), ``–`` without runs."""
    if not c:
        return "–"
    return f"{c['mean']:.2f} ± {c['std']:.2f}" if c.get("std") is not None else f"{c['mean']:.2f}"


def is_best(row: dict[str, Any], c: dict | None) -> bool:
    """Whether ``c`` holds the best mean of its row (marked only when the row compares several methods)."""
    best = max((x["mean"] for x in row["cells"].values()), default=None)
    return bool(c) and len(row["cells"]) > 1 and c["mean"] == best


def caption(table: dict[str, Any]) -> str:
    metric = " / ".join(metric_title(m) for m in table.get("metrics") or [table["metric"]])
    n = len(table["seeds"])
    spread = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    return f"{table['task']}: {metric} (%), {spread}"


def machine_counts(trained_on: dict[str, str | None]) -> dict[str, int]:
    """A table's ``machines``: how many runs each machine trained (``trained_on``: run -> machine label, None where
    the run's record predates it)."""
    return dict(sorted(Counter(label for label in trained_on.values() if label).items()))


def to_markdown(table: dict[str, Any]) -> str:
    ms = table["methods"]
    lines = [f"# {table['title']}", "", caption(table) + ".", ""]
    several = len(table["splits"]) > 1 or bool(table.get("metrics"))
    for metric, split, rows in blocks(table):
        if several:
            lines += [f"## {metric_title(metric) + ', ' if metric else ''}{split}", ""]
        lines.append("| training fraction | " + " | ".join(method_title(m) for m in ms) + " |")
        lines.append("|---:|" + "---:|" * len(ms))
        for row in rows:
            cells = []
            for m in ms:
                c = row["cells"].get(m)
                cells.append(f"**{cell_text(c)}**" if is_best(row, c) else cell_text(c))
            lines.append(f"| {row['fraction'] * 100:g}% | " + " | ".join(cells) + " |")
        lines.append("")
        refs = references_of(table, metric, split)
        if refs:
            lines += ["References: " + ", ".join(f"{k} {v:.2f}" for k, v in refs.items()) + ".", ""]
    machines = table.get("machines") or {}
    if len(machines) > 1:  # a cache shared between kinds of machine: the runs' last bits come from each
        named = ", ".join(f"{k} ({n} run{'s' * (n != 1)})" for k, n in machines.items())
        lines += [f"Trained on several kinds of machine: {named}; a long training's weights depend on the machine's "
                  "kernels, so cells mix their roundings.", ""]
    return "\n".join(lines)


def to_csv(table: dict[str, Any]) -> str:
    ms = table["methods"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    several = bool(table.get("metrics"))
    head = (["metric"] if several else []) + ["split", "train_fraction"]
    for m in ms:
        head += [f"{method_title(m)}_mean", f"{method_title(m)}_std", f"{method_title(m)}_n"]
    w.writerow(head)
    for row in table["rows"]:
        line: list[Any] = ([row["metric"]] if several else []) + [row["split"], f"{row['fraction']:g}"]
        for m in ms:
            c = row["cells"].get(m)
            std = "" if not c or c.get("std") is None else f"{c['std']:.4f}"  # undefined for one seed: empty
            line += [f"{c['mean']:.4f}", std, c["n"]] if c else ["", "", 0]
        w.writerow(line)
    return buf.getvalue()


def plot(table: dict[str, Any], out_png: str | Path) -> Path:
    """Metric vs training fraction, one line per method with std error bars, the reference levels as labelled
    horizontal lines; one panel per evaluation split (:func:`figure`)."""
    import matplotlib.pyplot as plt

    fig = figure(table)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def figure(table: dict[str, Any]):
    """The matplotlib figure of :func:`plot` (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from ..training.plot import CURVE_COLOURS, draw_references

    panels = blocks(table)
    ncol = len(table["splits"])
    nrow = max(1, len(panels) // max(ncol, 1))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 4 * nrow), squeeze=False)
    fractions = sorted({r["fraction"] for r in table["rows"]})
    for ax, (metric, split, rows) in zip(axes.flat, panels, strict=False):
        tops = []
        for i, m in enumerate(table["methods"]):
            pts = [(r["fraction"], r["cells"][m]) for r in rows if m in r["cells"]]
            if not pts:
                continue
            xs = [p[0] * 100 for p in pts]
            errs = [p[1].get("std") or 0.0 for p in pts]
            ax.errorbar(xs, [p[1]["mean"] for p in pts], yerr=errs if any(errs) else None, marker="o", capsize=3,
                        label=method_title(m), color=CURVE_COLOURS[i % len(CURVE_COLOURS)])
            tops += [p[1]["mean"] + e for p, e in zip(pts, errs, strict=True)]
        draw_references(ax, references_of(table, metric, split), tops)
        if len(fractions) > 1 and max(fractions) / min(fractions) >= 10:
            ax.set_xscale("log")
        ax.set_xticks([f * 100 for f in fractions])
        ax.set_xticklabels([f"{f * 100:g}%" for f in fractions])
        ax.set_xlabel("training fraction")
        ax.set_ylabel(f"{metric_title(metric or table['metric'])} (%)")
        ax.set_title(split)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{table['title']}\n{caption(table)}", fontsize=10)  # two lines: a long title is not clipped
    fig.tight_layout()
    return fig


def write_report(table: dict[str, Any], out_dir: str | Path, stem: str = "report",
                 records: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.csv`` and ``<stem>.png`` under ``out_dir``; returns their paths. With
    ``records``, also ``<stem>.json``: the table and the records it was made from."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    md, csv_p, png = d / f"{stem}.md", d / f"{stem}.csv", d / f"{stem}.png"
    md.write_text(to_markdown(table), encoding="utf-8")
    csv_p.write_text(to_csv(table), encoding="utf-8")
    plot(table, png)
    if records is not None:
        (d / f"{stem}.json").write_text(json.dumps({"table": table, "records": records}, indent=2) + "\n")
    return {"markdown": str(md), "csv": str(csv_p), "png": str(png)}


__all__ = ["METHOD_ORDER", "REPORT_FORMAT", "aggregate", "blocks", "caption", "cell_text", "figure", "is_best",
           "machine_counts",
           "method_key", "method_title", "metric_title", "plot", "records_of_table", "references_of", "to_csv",
           "to_markdown", "write_report"]
