"""Two ``bench/lowshot.py`` outputs of the same study, cell by cell: what a setting changed (the precision, the world,
a cap), paired by seed.

For each task, split, fraction and method found in both, it prints A's and B's mean ± std over the seeds and B - A,
paired by seed (mean ± std over the seeds both have, and in how many B is ahead), and then the distill stages'
seconds of each (sum and median over the stages: with the same ``--jobs``, the ratio of the sums is the ratio of
the training time). With ``--cache`` (the cache the runs are in) it pairs each run's median training step too
(its ``metrics.json``, found from the task reports' records): a step-time ratio unmoved by runs stopping at other
steps. Nothing is trained or evaluated here.

    python bench/lowshot_compare.py docs/results/study-shipped/vqa-world4000/lowshot.json \\
        docs/results/study-shipped/vqa-world4000-bf16/lowshot.json --names fp32,bf16 --out compare.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: {path}: not a readable JSON file ({e})") from None
    if not isinstance(data.get("tables"), dict):
        raise SystemExit(f"error: {path}: no tables (expected bench/lowshot.py's lowshot.json)")
    return data


def cells(table: dict) -> dict[tuple, dict[int, float]]:
    """(split, fraction, method, block) -> seed -> value; a table's extra metrics (VCR's QA->R, Q->AR) are blocks."""
    out: dict[tuple, dict[int, float]] = {}
    for row in table.get("rows", []):
        for method, cell in row.get("cells", {}).items():
            out[(row["split"], row["fraction"], method, row.get("metric") or table.get("metric"))] = dict(
                zip(cell.get("seeds", []), cell.get("values", []), strict=True))
    return out


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


def compare(a: dict, b: dict, names: tuple[str, str]) -> list[str]:
    na, nb = names
    lines: list[str] = []
    for task in [t for t in a["tables"] if t in b["tables"]]:
        ca, cb = cells(a["tables"][task]), cells(b["tables"][task])
        lines += [f"## {task}", "",
                  f"| split | metric | fraction | method | {na} | {nb} | {nb} − {na} (paired) | {nb} ahead |",
                  "|---|---|---:|---|---:|---:|---:|---:|"]
        for key in [k for k in ca if k in cb]:
            split, fraction, method, metric = key
            va, vb = ca[key], cb[key]
            both = sorted(set(va) & set(vb))
            diff = [vb[s] - va[s] for s in both]
            ahead = f"{sum(d > 0 for d in diff)} of {len(diff)}"
            lines.append(f"| {split} | {metric} | {fraction:g} | {method} | {mean_std(list(va.values()))} | "
                         f"{mean_std(list(vb.values()))} | {mean_std(diff)} | {ahead} |")
        lines.append("")
    lines += ["## time (distill stages)", "", "| | stages | seconds, sum | median | jobs |",
              "|---|---:|---:|---:|---:|"]
    for name, d in ((na, a), (nb, b)):
        lines.append(f"| {name} | {d.get('distill_stages')} | {d.get('distill_stage_seconds_total') or 0:,.0f}"
                     f" | {d.get('distill_stage_seconds_median') or 0:,.0f} | {d.get('jobs')} |")
    ta, tb = a.get("distill_stage_seconds_total"), b.get("distill_stage_seconds_total")
    if ta and tb and a.get("distill_stages") == b.get("distill_stages"):
        lines += ["", f"{na} / {nb}, the sums: {ta / tb:.2f}"]
    elif ta and tb:  # other runs on each side: their sums' ratio says nothing of a setting
        lines += ["", f"(no ratio of the sums: {na} holds {a.get('distill_stages')} distill stages, {nb} "
                      f"{b.get('distill_stages')}; --cache pairs each run's step time)"]
    return lines


def step_times(lowshot: Path, cache: Path) -> dict[tuple, float]:
    """(task, method, fraction, seed) -> the run's median training step (s), for each run a task report beside
    ``lowshot`` names (its records' ``source``, ``<cache>/runs/...``) whose ``metrics.json`` is in ``cache``."""
    out: dict[tuple, float] = {}
    for report in sorted(lowshot.parent.glob("*/report.json")):
        for r in json.loads(report.read_text()).get("records", []):
            src = str(r.get("source", ""))
            run = cache / src.removeprefix("<cache>/") if src.startswith("<cache>/") else Path(src)
            try:
                step = json.loads((run / "metrics.json").read_text()).get("step_time_s")
            except (OSError, ValueError):
                continue
            if step:
                out[(r["task"], r["method"], r["fraction"], r["seed"])] = step
    return out


def step_lines(sa: dict[tuple, float], sb: dict[tuple, float], names: tuple[str, str]) -> list[str]:
    """Per task, method and fraction: the runs' median step in each study and B / A paired by seed."""
    na, nb = names
    cells: dict[tuple, list[tuple]] = {}
    for key in sorted(set(sa) & set(sb)):
        cells.setdefault(key[:3], []).append(key)
    ratio = {k: sb[k] / sa[k] for keys in cells.values() for k in keys}
    lines = ["## time per training step (each run's median, paired by seed)", "",
             f"| task | method | fraction | runs | {na}, ms | {nb}, ms | {nb} / {na} (per seed) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for (task, method, fraction), keys in cells.items():
        lines.append(f"| {task} | {method} | {fraction:g} | {len(keys)} | "
                     f"{statistics.median(sa[k] for k in keys) * 1000:.0f} | "
                     f"{statistics.median(sb[k] for k in keys) * 1000:.0f} | "
                     f"{statistics.median(ratio[k] for k in keys):.2f} "
                     f"({', '.join(f'{ratio[k]:.2f}' for k in keys)}) |")
    if ratio:
        every = list(ratio.values())
        lines += ["", f"{nb} / {na}, every paired run: median {statistics.median(every):.2f} "
                      f"({min(every):.2f} to {max(every):.2f}, {len(every)} runs)"]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path, help="the first study's lowshot.json")
    p.add_argument("b", type=Path, help="the second study's lowshot.json")
    p.add_argument("--names", default="A,B", help="the two columns' names, comma-separated (default A,B)")
    p.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    p.add_argument("--cache", type=Path, default=None,
                   help="the cache both studies' runs are in: also pair each run's training step time")
    args = p.parse_args(argv)
    names = tuple(n.strip() for n in args.names.split(","))
    if len(names) != 2 or not all(names):
        raise SystemExit(f"error: --names {args.names!r}: expected two names, e.g. fp32,bf16")
    lines = compare(load(args.a), load(args.b), names)
    if args.cache:
        lines += ["", *step_lines(step_times(args.a, args.cache), step_times(args.b, args.cache), names)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.write_text(f"# {names[0]} vs {names[1]}\n\n{names[0]}: `{args.a}`; {names[1]}: `{args.b}`\n\n{text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
