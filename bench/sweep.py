"""The learning-rate x warmup sweep of configs/sweep.yaml: one `mad run` per grid point (the learning rate and the
warmup as overrides, every run cached by its settings, so an interrupted sweep resumes), then one table of the dev
metric at each run's selected checkpoint, per method and training fraction, mean over seeds; the best grid point of
each method is marked. Writes OUT/sweep.json and OUT/sweep.md.

    python bench/sweep.py                                  # 3 x 3 grid, the YAML's seeds
    python bench/sweep.py --tasks vqa,snli-ve,vcr          # the study's three tasks, each its own rows
    python bench/sweep.py --seeds 0,1 --lrs 3e-4,1e-3 --warmups 0,0.1
    python bench/sweep.py --set device=cuda                # on a GPU machine
    python bench/sweep.py --lrs baseline=1e-4,3e-4,1e-3 --lrs full=3e-4,1e-3,3e-3   # each method its own lrs
    python bench/sweep.py --smoke                          # seconds: a tiny world, 4 steps, one grid point
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SMOKE = ["data.shapes.size=24", "fractions=[1.0]", "methods=[baseline]", "train.steps=4", "train.dev_every=2",
         "train.min_dev=8", "train.batch_size=8", "train.patience=1"]


def run_point(config: Path, lr: float, warmup: float, extra: list[str], cache: str | None) -> list[dict]:
    """One `mad run` of the grid point; its distill runs as (method, fraction, seed, dev best, best step, steps)."""
    cmd = [sys.executable, "-m", "mad_pipeline.cli", "run", str(config), f"train.lr={lr}", f"train.warmup={warmup}",
           *extra, "--json", "--quiet", *(["--cache", cache] if cache else [])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = []
    for st in out["stages"]:
        if st["kind"] != "distill" or not st.get("path"):
            continue
        m = json.loads((Path(st.get("run") or Path(st["path"]) / "run") / "metrics.json").read_text())
        es = m.get("early_stop") or {}
        ev = (m.get("eval") or {}).get(m.get("eval_split")) or {}
        rows.append({"task": st.get("task"), "method": st.get("method"), "fraction": st.get("fraction"),
                     "seed": st.get("seed"), "lr": lr,
                     "warmup": warmup, "dev": es.get("best"), "best_step": es.get("best_step"),
                     "steps": m.get("steps"), "stopped_early": es.get("stopped_early"), "metric": es.get("metric"),
                     "eval_split": m.get("eval_split"), "eval": ev.get("value"),
                     "per_type": ev.get("per_question_type") or {}})
    return rows


def grid_methods(config: Path, extra: list[str]) -> dict[str, dict]:
    """The YAML's methods (with the overrides), as `mad run` reads them."""
    from mad_pipeline.stages.pipeline import load_config

    return load_config(config, extra).methods


def method_lrs(methods: dict[str, dict], specs: list[str]) -> dict[str, list[float]]:
    """Each method's learning rates: ``1e-3,3e-3`` for every method, ``full=1e-3,3e-3`` for one."""
    out: dict[str, list[float]] = {}
    for spec in specs:
        name, _, lrs = spec.rpartition("=")
        if name and name not in methods:
            sys.exit(f"--lrs {spec}: {name} is not one of the config's methods ({', '.join(methods)})")
        for m in [name] if name else methods:
            out[m] = [float(x) for x in lrs.split(",")]
    missing = [m for m in methods if m not in out]
    if missing:
        sys.exit(f"--lrs: no learning rates for {', '.join(missing)} (give --lrs {missing[0]}=...)")
    return out


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("task"), r["method"], r["fraction"], r["lr"], r["warmup"]), []).append(r)
    best: dict[tuple, float] = {}
    for (task, method, fraction, _, _), rs in groups.items():
        v = statistics.mean(r["dev"] for r in rs)
        best[(task, method, fraction)] = max(best.get((task, method, fraction), -1.0), v)
    types = sorted({t for r in rows for t in r.get("per_type") or {}})
    split = next((r["eval_split"] for r in rows if r.get("eval_split")), "eval")
    lines = ["| task | method | fraction | lr | warmup | dev metric at the selected step (mean) | seeds | best step / "
             f"steps run | stopped early | {split} (mean) | " + "".join(f"{split}: {t} | " for t in types),
             "|---|---|---:|---:|---:|---:|---:|---|---|---:|" + "---:|" * len(types)]
    for (task, method, fraction, lr, warmup), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        v = statistics.mean(r["dev"] for r in rs)
        mark = " **(best)**" if v == best[(task, method, fraction)] else ""
        steps = ", ".join(f"{r['best_step']}/{r['steps']}" for r in rs)
        early = ", ".join("yes" if r.get("stopped_early") else "no" for r in rs)
        ev = _mean([r.get("eval") for r in rs])
        per = "".join(f"{_mean([(r.get('per_type') or {}).get(t) for r in rs])} | " for t in types)
        lines.append(f"| {task} | {method} | {fraction:g} | {lr:g} | {warmup:g} | {v:.2f}{mark} | {len(rs)} | "
                     f"{steps} | {early} | {ev} | {per}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _mean(vals: list) -> str:
    vals = [v for v in vals if v is not None]
    return f"{statistics.mean(vals):.2f}" if vals else "-"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "sweep.yaml")
    ap.add_argument("--lrs", action="append", default=None, metavar="[METHOD=]LRS",
                    help="learning rates, comma-separated (default 3e-4,1e-3,3e-3), for every method or, repeated "
                         "as METHOD=LRS, for each method of the YAML its own")
    ap.add_argument("--warmups", default="0,0.05,0.1")
    ap.add_argument("--seeds", default=None, help="e.g. 0,1 (default: the YAML's)")
    ap.add_argument("--tasks", default=None, help="e.g. vqa,snli-ve,vcr (default: the YAML's)")
    ap.add_argument("--cache", default=None, help="cache root (default: MAD_CACHE, else the user cache dir)")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "sweep")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="more overrides of the YAML for every grid point (e.g. device=cuda); repeatable")
    ap.add_argument("--smoke", action="store_true", help="a tiny world, 4 steps, one grid point: checks the config")
    args = ap.parse_args(argv)
    warmups = [float(x) for x in args.warmups.split(",")]
    extra = ([f"seeds=[{args.seeds}]"] if args.seeds else []) + ([f"task=[{args.tasks}]"] if args.tasks else []) \
        + list(args.set)
    if args.smoke:
        warmups, extra = warmups[-1:], extra + SMOKE
    all_methods = grid_methods(args.config, extra)
    grid = method_lrs(all_methods, args.lrs or ["3e-4,1e-3,3e-3"])
    if args.smoke:
        grid = {m: lrs[:1] for m, lrs in grid.items()}
    t0 = time.perf_counter()
    rows = []
    for lr in sorted({lr for lrs in grid.values() for lr in lrs}):
        methods = {m: spec for m, spec in all_methods.items() if lr in grid[m]}
        for w in warmups:
            rows += run_point(args.config, lr, w, [*extra, f"methods={json.dumps(methods)}"], args.cache)
            print(f"lr {lr:g}, warmup {w:g} ({', '.join(methods)}): done ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
    md = table(rows)
    print(md)
    if not args.smoke:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.json").write_text(json.dumps({"rows": rows, "seconds": round(time.perf_counter() - t0)},
                                                        indent=1) + "\n")
        (args.out / "sweep.md").write_text(md)


if __name__ == "__main__":
    main()
