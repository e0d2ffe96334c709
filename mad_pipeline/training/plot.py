"""A PNG of a training run's curves from its ``metrics.jsonl`` (matplotlib, Agg backend: no display needed).

Three panels: the losses (total, task, alpha * distill and the unweighted distillation terms), the learning rate,
and the evaluation metric over steps.
"""

from __future__ import annotations

import json
from pathlib import Path

LOSS_KEYS = ("total", "task", "distill", "tok_v", "tok_t", "pool", "kd")


def read_metrics(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows) of a metrics.jsonl."""
    rows = [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
    return [r for r in rows if "eval" not in r], [r for r in rows if "eval" in r and r["eval"] is not None]


def plot_metrics(metrics_jsonl: str | Path, out_png: str | Path, title: str | None = None) -> Path | None:
    """Write the plot; returns its path (None when there is nothing to plot yet)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    path = Path(metrics_jsonl)
    if not path.exists():
        return None
    train, evals = read_metrics(path)
    if not train and not evals:
        return None
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
    if evals:
        name = evals[-1]["eval"].get("metric", "metric")
        ax.plot([r["step"] for r in evals], [r["eval"].get("value") for r in evals], marker="o")
        ax.set_ylabel(f"{name} (%)")
        ax.set_title(f"evaluation: {name}")
    else:
        ax.set_title("evaluation: none yet")
    ax.set_xlabel("step")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(out)
    return out


__all__ = ["LOSS_KEYS", "plot_metrics", "read_metrics"]
