"""What confidence weighting did in a run: the distribution of the teacher's raw confidences ``c_i`` and of the
weights the objective applied, from the histograms :class:`~mad_pipeline.losses.MADLoss` counts while training
(every training sample each time it is drawn), as ``metrics.json``'s ``confidence`` record and ``confidence.png``.

Weights normalised to batch mean 1 change little when most ``c_i`` are alike: the record says how alike they were
(std, 10th / 50th / 90th percentiles read from the histogram, the share of weights within 0.8-1.2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..losses.terms import CONF_BINS, WEIGHT_TOP
from .plot import save_figure

PERCENTILES = (10, 50, 90)


def _quantiles(counts: np.ndarray, top: float) -> dict[str, float]:
    edges = np.linspace(0.0, top, CONF_BINS + 1)
    cum = np.cumsum(counts) / max(1.0, counts.sum())
    out = {}
    for p in PERCENTILES:  # the upper edge of the bin where the cumulative share reaches p%
        out[f"q{p}"] = round(float(edges[1 + int(np.searchsorted(cum, p / 100.0))]), 4) if counts.sum() else None
    return out


def confidence_record(hist, moments) -> dict[str, Any] | None:
    """``{"raw": ..., "weights": ...}``: per distribution its count, mean, std, histogram (``edges``, ``counts``) and
    percentiles to the bin; None when nothing was counted (confidence weighting off)."""
    hist, moments = np.asarray(hist, np.float64), np.asarray(moments, np.float64)
    if hist.shape != (2, CONF_BINS) or moments[0, 0] == 0:
        return None
    out: dict[str, Any] = {}
    for row, (name, top) in enumerate((("raw", 1.0), ("weights", WEIGHT_TOP))):
        n, s, ss = moments[row]
        mean = s / n
        out[name] = {"n": int(n), "mean": round(float(mean), 4),
                     "std": round(float(np.sqrt(max(0.0, ss / n - mean * mean))), 4),
                     **_quantiles(hist[row], top),
                     "edges": [round(float(e), 4) for e in np.linspace(0.0, top, CONF_BINS + 1)],
                     "counts": [int(c) for c in hist[row]]}
    w = hist[1]
    near = w[int(0.8 / WEIGHT_TOP * CONF_BINS):int(1.2 / WEIGHT_TOP * CONF_BINS)].sum()
    out["weights"]["share_0.8_1.2"] = round(float(near / max(1.0, w.sum())), 4)
    return out


def confidence_figure(record: dict[str, Any], out_png: str | Path, title: str | None = None) -> Path:
    """Two histograms side by side: the raw confidences and the normalised weights (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (name, label) in zip(axes, (("raw", "teacher confidence c_i (before normalisation)"),
                                        ("weights", "weight applied (c_i / batch mean; last bin: 4 and above)")),
                                 strict=True):
        r = record[name]
        edges = np.asarray(r["edges"])
        ax.bar(edges[:-1], r["counts"], width=np.diff(edges), align="edge", edgecolor="white")
        ax.axvline(r["mean"], color="black", linestyle="--", linewidth=1, label=f"mean {r['mean']:.2f}")
        ax.set_xlabel(label)
        ax.set_ylabel("training samples drawn")
        ax.set_title(f"std {r['std']:.2f}, median ~{r['q50']}")
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)


def write_confidence(objective, out_dir: str | Path) -> dict[str, Any] | None:
    """The record of ``objective``'s histograms, and ``out_dir/confidence.png`` when there is one."""
    hist, moments = getattr(objective, "conf_hist", None), getattr(objective, "conf_moments", None)
    if hist is None or moments is None:
        return None
    record = confidence_record(hist.detach().cpu().numpy(), moments.detach().cpu().numpy())
    if record is not None:
        confidence_figure(record, Path(out_dir) / "confidence.png")
    return record


__all__ = ["PERCENTILES", "confidence_figure", "confidence_record", "write_confidence"]
