"""A PNG of a training run's curves from its ``metrics.jsonl`` (matplotlib, Agg backend: no display needed).

Three panels: the losses (total, task, alpha * distill and the unweighted distillation terms), the learning rate,
and the evaluation metric over steps (with early stopping, the dev split's curve and the selected step too), with the
reference levels (the teacher's zero-shot accuracy, majority, chance) as labelled horizontal lines.

Metric axes are honest (:func:`metric_ylim`): they start at 0 and end at the next multiple of 10 above every plotted
value and reference line (at most 100), so a gap between two curves is never magnified by a zoomed axis and every
reference line is in view.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..tasks.base import TEACHER_LINE

LOSS_KEYS = ("total", "task", "distill", "tok_v", "tok_t", "pool", "kd")
# Reference lines are black and greys, told apart by their dashes; curves (:data:`CURVE_COLOURS`, matplotlib's
# tab10 without its grey) never take one of those colours.
REFERENCE_STYLE = {TEACHER_LINE: ("black", "--"), "majority": ("gray", ":"),
                   "answer prior per type": ("dimgray", (0, (1, 3))), "chance": ("darkgray", "-.")}
OTHER_REFERENCE = ("silver", (0, (5, 2, 1, 2)))
CURVE_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
                 "tab:cyan")


def metric_ylim(values) -> tuple[float, float]:
    """The y range of a metric in percent: from 0 to the next multiple of 10 above the largest value (with 2 points
    of headroom), at most 100."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    top = max(finite, default=0.0)
    return 0.0, float(min(100.0, max(10.0, math.ceil((top + 2.0) / 10.0) * 10.0)))


def draw_references(ax, references: dict[str, float] | None, values=()) -> None:
    """Each reference level as a labelled horizontal line; then the honest y range over ``values`` and the lines."""
    refs = {k: float(v) for k, v in (references or {}).items() if v is not None and math.isfinite(float(v))}
    for label, v in refs.items():
        color, style = REFERENCE_STYLE.get(label, OTHER_REFERENCE)
        ax.axhline(v, color=color, linestyle=style, linewidth=1.2, label=f"{label} ({v:.1f})")
    ax.set_ylim(*metric_ylim([*values, *refs.values()]))


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a metrics.jsonl."""
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [r for r in rows if "eval" not in r], [r for r in rows if "eval" in r and r["eval"] is not None]


def plot_metrics(metrics_jsonl: str | Path, out_png: str | Path, title: str | None = None,
                 references: dict[str, float] | None = None) -> Path | None:
    """Write the plot; returns its path (None when there is nothing to plot yet). ``references``: label -> level
    (percent) of the evaluation metric, drawn as horizontal lines."""

    path = Path(metrics_jsonl)
    if not path.exists():
        return None
    train, evals = read_metrics(path)
    if not train and not evals:
        return None
    return save_figure(metrics_figure(train, evals, title, references), out_png)


def save_figure(fig, out_png: str | Path) -> Path:
    """Write ``fig`` to ``out_png`` atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


def metrics_figure(train: list[dict], evals: list[dict], title: str | None = None,
                   references: dict[str, float] | None = None):
    """The matplotlib figure of :func:`plot_metrics` (Agg backend), from :func:`read_metrics`' rows."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    steps = [r["step"] for r in train]
    for key in LOSS_KEYS:
        values = [r.get(key) for r in train]
        if any(v is not None and v != 0 for v in values):
            ax.plot(steps, [float("nan") if v is None else v for v in values], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("losses (distill terms unweighted)")
    if ax.lines:
        ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(steps, [r.get("lr", float("nan")) for r in train])
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("learning rate")
    ax = axes[2]
    values = [r["eval"].get("value") for r in evals]
    dev = [r for r in evals if r.get("split") == "dev"]  # early stopping's dev split (selection, not reporting)
    evals = [r for r in evals if r.get("split") != "dev"]
    if evals or dev:
        name = (evals or dev)[-1]["eval"].get("metric", "metric")
        if evals:
            ax.plot([r["step"] for r in evals], [r["eval"].get("value") for r in evals], marker="o", label="student")
        if dev:
            ax.plot([r["step"] for r in dev], [r["eval"].get("value") for r in dev], marker=".", label="student, dev")
            best = dev[-1].get("best_step")
            if best is not None:
                ax.axvline(best, color="tab:green", linestyle=":", linewidth=1.0, label=f"best dev step ({best})")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(f"evaluation: {name}")
    else:
        ax.set_title("evaluation: none yet")
    draw_references(ax, references, values)
    if ax.lines:
        ax.legend(fontsize=8)
    ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


__all__ = ["CURVE_COLOURS", "LOSS_KEYS", "REFERENCE_STYLE", "draw_references", "metric_ylim", "metrics_figure",
           "plot_metrics", "read_metrics"]
