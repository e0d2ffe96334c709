"""``mad report``: the paper-style table (rows: training fraction per split; columns: baseline, naive, MAD; mean ±
std over seeds) from finished runs, as Markdown, CSV and a PNG plot.

A RUN argument may be a ``mad distill`` run directory (``metrics.json`` + ``run.json``), a ``mad run`` stage
directory (``stage.json`` of a distill, eval or report stage, e.g. under ``<cache>/runs/``), or any directory holding
such (searched recursively; feature stores, checkpoints and students are skipped). A run found both ways is counted
once; the method name of a ``mad run`` stage wins over the objective recorded by ``mad distill``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.machine import machine_label
from mad_pipeline.pipeline import report as report_lib

_PRUNE = {"stores", "partial", "locks", "used", "identities", "hash-memo", "checkpoints", "student", "predictions"}


@dataclass(frozen=True)
class ReportConfig:
    runs: tuple[Path, ...]
    out: Path
    title: str = "mad report"


def run(cfg: ReportConfig) -> dict[str, Any]:
    if not cfg.runs:
        raise InputError("give at least one run directory")
    found: dict[tuple, tuple[int, dict]] = {}  # (run dir, split, metric) -> (priority, record)
    for p in cfg.runs:
        p = Path(p)
        if not p.exists():
            raise InputError(f"{p}: no such file or directory")
        for f, prio in _candidates(p):
            for rec in _records(f):
                ident = (rec["source"], rec["split"], rec.get("metric"))
                if ident not in found or found[ident][0] < prio:
                    found[ident] = (prio, rec)
    records = [r for _, r in found.values()]
    if not records:
        raise InputError(f"no finished runs under {', '.join(str(p) for p in cfg.runs)} (looked for metrics.json of "
                         "`mad distill` and stage.json of `mad run`)")
    trained_on = {r["source"]: r.pop("machine") for r in records if "machine" in r}  # (a record a report kept: none)
    table = report_lib.aggregate(records, title=cfg.title)
    if machines := report_lib.machine_counts(trained_on):
        table["machines"] = machines
    files = report_lib.write_report(table, Path(cfg.out), records=records)
    return {"table": table, "files": files, "runs": len({r["source"] for r in records}), "records": len(records)}


def _candidates(p: Path):
    """(file, priority): stage.json of `mad run` (2) before metrics.json of `mad distill` (1)."""
    if p.is_file():
        if p.name not in ("stage.json", "metrics.json"):
            raise InputError(f"{p}: not a run (expected a run directory, stage.json or metrics.json)")
        yield p, 2 if p.name == "stage.json" else 1
        return
    for dirpath, dirnames, filenames in os.walk(p):
        dirnames[:] = sorted(d for d in dirnames if d not in _PRUNE and not d.endswith(".zarr"))
        if "stage.json" in filenames:
            yield Path(dirpath) / "stage.json", 2
        if "metrics.json" in filenames and "run.json" in filenames:
            yield Path(dirpath) / "metrics.json", 1


def _load(f: Path) -> dict:
    try:
        return json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{f}: not readable JSON ({e})") from None


def _records(f: Path) -> list[dict[str, Any]]:
    d = _load(f)
    if f.name == "metrics.json":
        return _from_metrics(d, str(f.parent.resolve()), d.get("objective") or "custom")
    if not d.get("complete"):
        return []
    kind = d.get("kind")
    meta = d.get("meta", {})
    task = d.get("params", {}).get("task") or (d.get("config") or {}).get("task")  # eval: the run's resolved config
    task = task if isinstance(task, str) else None
    if kind == "report":
        return list(d.get("result", {}).get("records", []))
    if kind == "eval":
        s = d.get("summary", {})
        dkey = d.get("inputs", {}).get("distill")
        src = str((f.parent.parent.parent / "distill" / dkey / "run").resolve()) if dkey else str(f.parent)
        refs = _references(Path(src) / "metrics.json", meta["split"]) if dkey else {}
        rec = {"method": meta["method"], "fraction": meta["fraction"], "seed": meta["seed"], "split": meta["split"],
               "metric": s.get("metric"), "value": s.get("value"), "task": task, "source": src,
               "machine": _trained_on(Path(src).parent / "stage.json") if dkey else None}
        return [{**rec, "references": refs}, *_study_metrics(rec, d.get("result", {}).get("metrics"))]
    if kind == "distill":
        mf = f.parent / "run" / "metrics.json"
        if not mf.exists():
            return []
        return _from_metrics(_load(mf), str(mf.parent.resolve()), meta.get("method"))
    return []


def _from_metrics(m: dict, source: str, method: str) -> list[dict[str, Any]]:
    out = []
    for split, res in (m.get("eval") or {}).items():
        if not res:
            continue
        rec = {"method": method, "fraction": m.get("train_fraction", 1.0), "seed": m.get("seed", 0),
               "split": split, "metric": res.get("metric"), "value": res.get("value"), "task": m.get("task"),
               "source": source, "machine": machine_label(m.get("machine"))}
        out += [{**rec, "references": _run_references(m, split)}, *_study_metrics(rec, res)]
    return out


def _study_metrics(rec: dict[str, Any], scores: dict | None) -> list[dict[str, Any]]:
    """The records of the task's other study metrics (VCR: QA->R, Q->AR) of one evaluated run."""
    from mad_pipeline.tasks import task_class

    try:
        keys = task_class(rec["task"]).study_metrics if rec.get("task") else ()
    except InputError:  # a task this installation does not know (a plugin's): its headline only
        keys = ()
    return [{**rec, "metric": k, "value": scores[k]} for k, _ in keys if scores and scores.get(k) is not None]


@functools.lru_cache(maxsize=4096)  # (each of a run's evaluations asks)
def _trained_on(stage_json: Path) -> str | None:
    """The machine a ``mad run`` distill stage recorded (None: an entry from before it was recorded)."""
    try:
        return machine_label(json.loads(stage_json.read_text()).get("machine"))
    except (OSError, ValueError):
        return None


def _run_references(m: dict, split: str) -> dict[str, float]:
    """The reference levels a run recorded (on its evaluation split only)."""
    return dict(m.get("references") or {}) if split == m.get("eval_split") else {}


def _references(metrics_json: Path, split: str) -> dict[str, float]:
    try:
        return _run_references(json.loads(metrics_json.read_text()), split)
    except (OSError, ValueError):
        return {}


__all__ = ["ReportConfig", "run"]
