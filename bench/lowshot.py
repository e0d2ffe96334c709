"""The low-shot study: baseline vs naive distillation vs MAD, and the ablation of MAD's adaptive parts.

Runs two ``mad run`` configs over the shapes world with the shipped ``shapes-clip`` teacher and ``vilt-tiny``
students: ``configs/lowshot.yaml`` (baseline, naive, MAD x four training fractions x three seeds) and
``configs/ablation.yaml`` (MAD with one adaptive part off at a time, and MAD + logit KD, at the two lowest
fractions), then writes to ``--out`` (default ``docs/results/lowshot/``):

- ``report.md / .csv / .png``   the paper-style table (mean ± std over seeds per fraction and method), from ``mad run``
- ``ablation/report.*``         the same for the ablation config
- ``ablation.md / .csv``        MAD against MAD with one adaptive part switched off: each part's share, paired by seed
- ``per_type.md``               accuracy per question type (baseline, naive, MAD, teacher zero-shot) per fraction
- ``lowshot.json``              every figure above plus per-run values, timings, machine and versions

Every stage is cached by content key (in ``--cache``), so a rerun only computes what is missing, and the runs the
two configs share (naive and MAD at the low fractions; the bundled demo's four runs) are trained once. With
``--jobs N`` each config is sharded by seed x fraction into N parallel ``mad run`` processes sharing the cache (the
first alone: it builds the world and the evaluation stores every shard needs); a final ``mad run`` of the whole
config then finds every stage cached and writes the report.

    python bench/lowshot.py                                  # both studies (about an hour on 2 CPU cores)
    python bench/lowshot.py --jobs 2                         # two shards at a time, one thread each
    python bench/lowshot.py seeds=[0] fractions=[0.05] --no-ablation --out /tmp/lowshot   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = (  # (method in the config, the part it switches off)
    ("full-all-tokens", "adaptive token selection"),
    ("full-no-confidence", "confidence weighting"),
    ("full-constant-alpha", "adaptive balance"),
)
TYPES = {"what color is the": "colour", "what shape is": "shape", "how many": "count", "where is the": "where",
         "is there a": "yes/no"}


def log(msg: str) -> None:
    print(f"[lowshot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shards(values: dict, jobs: int) -> list[list[str]]:
    """Override lists, one per shard (a seed x fraction cell with every method), seed-major so that a run cut short
    by ``--deadline-min`` still has whole seeds; ``[[]]`` (one plain ``mad run``) for one job."""
    if jobs <= 1:
        return [[]]
    return [[f"fractions=[{f!r}]", f"seeds=[{s}]"] for s in values["seeds"] for f in sorted(values["fractions"])]


def run_shards(args, config: Path, overrides: list[str], values: dict, deadline: float) -> float:
    """Run the shards, at most ``args.jobs`` at a time, the first alone (it builds the stages every shard shares:
    the world and the evaluation splits' stores). Past ``deadline`` (perf_counter) the running shards are killed
    (their distill stages resume from checkpoints next time) and no new one starts. Returns the wall time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    todo = shards(values, args.jobs)
    if todo == [[]]:
        return 0.0
    logs = Path(args.cache) / "bench-lowshot-logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    running: list[tuple[subprocess.Popen, Path, list[str]]] = []
    n_total, done = len(todo), 0
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[rate]}")) as bar:
        task = bar.add_task("shards (seed x fraction)", total=n_total, rate="")

        def start(shard: list[str]) -> None:
            name = "_".join(s.replace("=", "").replace("[", "").replace("]", "") for s in shard)
            path = logs / f"{config.stem}_{name}.log"
            cmd = [sys.executable, "-m", "mad_pipeline.cli", "run", str(config), *overrides, *shard,
                   "--cache", str(args.cache), "--quiet"]
            running.append((subprocess.Popen(cmd, stdout=path.open("w"), stderr=subprocess.STDOUT, env=env), path,
                            shard))

        def poll() -> None:
            nonlocal done
            for item in list(running):
                p, path, shard = item
                if p.poll() is None:
                    continue
                running.remove(item)
                if p.returncode != 0:
                    for q, _, _ in running:
                        q.kill()
                    raise SystemExit(f"shard {' '.join(shard)} failed (exit {p.returncode}); log {path}:\n"
                                     f"{path.read_text()[-3000:]}")
                done += 1
                bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0) * 60:.1f} shards/min")

        first = True
        while todo or running:
            if time.perf_counter() > deadline:
                log(f"--deadline-min reached: killing {len(running)} running shard(s), {len(todo)} not started")
                for p, _, _ in running:
                    p.kill()
                    p.wait()
                break
            if todo and len(running) < (1 if first else args.jobs):
                start(todo.pop(0))
                continue
            time.sleep(1.0)
            poll()
            if first and not running:
                first = False
    return time.perf_counter() - t0


def _paired(a: dict, b: dict) -> list[float]:
    """a - b per seed, over the seeds both cells have."""
    vb = dict(zip(b["seeds"], b["values"], strict=True))
    return [v - vb[s] for s, v in zip(a["seeds"], a["values"], strict=True) if s in vb] or [float("nan")]


def ablation(table: dict, split: str) -> list[dict]:
    rows = []
    for row in table["rows"]:
        if row["split"] != split:
            continue
        cells = row["cells"]
        full = cells.get("full")
        if not full:
            continue
        out = {"fraction": row["fraction"], "full": full, "parts": {}}
        for method, part in ABLATIONS:
            c = cells.get(method)
            if c:
                diffs = _paired(full, c)
                out["parts"][part] = {"without": c, "share_mean": statistics.mean(diffs),
                                      "share_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
        for ref in ("naive", "baseline", "full-logit-kd", "naive-adaptive-alpha"):
            c = cells.get(ref)
            if c:
                diffs = _paired(full, c)
                out[f"vs_{ref}"] = {"cell": c, "diff_mean": statistics.mean(diffs),
                                    "diff_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}
        rows.append(out)
    return rows


def _pm(mean: float, std: float, n: int, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f.format(mean) + (f" ± {std:.2f}" if n > 1 else "")


def ablation_markdown(abl: dict[str, list[dict]], n_seeds: int) -> str:
    lines = ["# Ablation: MAD with one adaptive part switched off", "",
             f"VQA accuracy (%), mean ± std over {n_seeds} seeds. *share* = MAD minus MAD-without-the-part, paired "
             "by seed (positive: the part helps).", ""]
    for split, rows in abl.items():
        if len(abl) > 1:
            lines += [f"## {split}", ""]
        head = ["training fraction", "MAD"]
        for _, part in ABLATIONS:
            head += [f"without {part}", "share"]
        head += ["naive", "MAD - naive", "naive, adaptive alpha", "MAD - that", "MAD + logit KD"]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---:|" + "---:|" * (len(head) - 1))
        for r in rows:
            f = r["full"]
            cells = [f"{r['fraction'] * 100:g}%", _pm(f["mean"], f["std"], f["n"])]
            for _, part in ABLATIONS:
                p = r["parts"].get(part)
                cells += ([_pm(p["without"]["mean"], p["without"]["std"], p["without"]["n"]),
                           _pm(p["share_mean"], p["share_std"], f["n"], signed=True)] if p else ["–", "–"])
            nv = r.get("vs_naive")
            cells += ([_pm(nv["cell"]["mean"], nv["cell"]["std"], nv["cell"]["n"]),
                       _pm(nv["diff_mean"], nv["diff_std"], f["n"], signed=True)] if nv else ["–", "–"])
            na = r.get("vs_naive-adaptive-alpha")
            cells += ([_pm(na["cell"]["mean"], na["cell"]["std"], na["cell"]["n"]),
                       _pm(na["diff_mean"], na["diff_std"], f["n"], signed=True)] if na else ["–", "–"])
            kd = r.get("vs_full-logit-kd")
            cells.append(_pm(kd["cell"]["mean"], kd["cell"]["std"], kd["cell"]["n"]) if kd else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def ablation_csv(abl: dict[str, list[dict]]) -> str:
    head = ["split", "train_fraction", "mad_mean", "mad_std"]
    for _, part in ABLATIONS:
        k = part.replace(" ", "_")
        head += [f"without_{k}_mean", f"without_{k}_std", f"share_{k}_mean", f"share_{k}_std"]
    lines = [",".join(head)]
    for split, rows in abl.items():
        for r in rows:
            vals = [split, f"{r['fraction']:g}", f"{r['full']['mean']:.4f}", f"{r['full']['std']:.4f}"]
            for _, part in ABLATIONS:
                p = r["parts"].get(part)
                vals += ([f"{p['without']['mean']:.4f}", f"{p['without']['std']:.4f}", f"{p['share_mean']:.4f}",
                          f"{p['share_std']:.4f}"] if p else ["", "", "", ""])
            lines.append(",".join(vals))
    return "\n".join(lines) + "\n"


def per_type(stages: list, split: str) -> dict:
    """Mean accuracy per question type over seeds: {fraction: {method: {type: mean}}} plus the teacher's."""
    acc: dict = {}
    teacher: dict = {}
    for st in stages:
        if st.kind != "distill" or st.record is None:
            continue
        m = json.loads((Path(st.record["path"]) / "run" / "metrics.json").read_text())
        ev = (m.get("eval") or {}).get(split)
        if not ev:
            continue
        f, method = st.meta["fraction"], st.meta["method"]
        for qt, v in ev.get("per_question_type", {}).items():
            acc.setdefault(f, {}).setdefault(method, {}).setdefault(TYPES.get(qt, qt), []).append(v)
        acc.setdefault(f, {}).setdefault(method, {}).setdefault("overall", []).append(ev["value"])
        tz = m.get("teacher_zeroshot")
        if tz and not teacher and m.get("eval_split") == split:
            teacher = {TYPES.get(k, k): v for k, v in tz.get("per_question_type", {}).items()}
            teacher["overall"] = tz["value"]
    return {"students": {f: {meth: {t: statistics.mean(v) for t, v in d.items()} for meth, d in ms.items()}
                         for f, ms in acc.items()}, "teacher": teacher}


def per_type_markdown(pt: dict, split: str, methods=("baseline", "naive", "full", "full-logit-kd")) -> str:
    types = [*TYPES.values(), "overall"]
    lines = [f"# Accuracy per question type ({split} split, mean over seeds)", "",
             "| fraction | method | " + " | ".join(types) + " |", "|---:|---|" + "---:|" * len(types)]
    for f in sorted(pt["students"]):
        for meth in methods:
            d = pt["students"][f].get(meth)
            if d:
                name = {"full": "MAD"}.get(meth, meth)
                lines.append(f"| {f * 100:g}% | {name} | " + " | ".join(f"{d.get(t, float('nan')):.1f}" for t in types)
                             + " |")
    if pt["teacher"]:
        lines.append("| – | teacher zero-shot | " + " | ".join(f"{pt['teacher'].get(t, float('nan')):.1f}"
                                                           for t in types) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config (as for mad run)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lowshot.yaml", help="the main study")
    ap.add_argument("--ablation-config", type=Path, default=ROOT / "configs" / "ablation.yaml",
                    help="the ablation study (its table goes to OUT/ablation/, the share table to OUT/ablation.md)")
    ap.add_argument("--no-ablation", dest="ablation_config", action="store_const", const=None)
    ap.add_argument("--jobs", type=int, default=1, help="parallel mad run shards (seed x fraction); 1: one mad run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per shard (OMP_NUM_THREADS)")
    ap.add_argument("--device", default=None, help="device for training (auto, cpu, cuda); default: the config's")
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default: MAD_CACHE, else the user cache)")
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="with --jobs: stop the shards after this many minutes and report what finished")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "lowshot")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mad_pipeline.cache import Cache
    from mad_pipeline.versions import library_versions

    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    if args.jobs > 1 and not any(o.startswith("num_workers=") for o in overrides):
        # parallel shards share the cores: mad run's num_workers=auto would give each of them all the free ones
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        overrides.append(f"num_workers={max(0, cores // args.jobs - 1)}")
    args.cache = Path(args.cache or Cache.at(None).root)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    deadline = t0 + 60 * args.deadline_min if args.deadline_min else float("inf")
    studies = {"lowshot": args.config, "ablation": args.ablation_config}
    results = {}
    for name, config in studies.items():
        if config is None:
            continue
        out = args.out if name == "lowshot" else args.out / "ablation"
        results[name] = study(args, config, overrides, out, deadline)
    wall = time.perf_counter() - t0

    main_table, stages = results["lowshot"]["table"], results["lowshot"]["stages"]
    abl_table = results.get("ablation", results["lowshot"])["table"]
    abl = {s: ablation(abl_table, s) for s in abl_table["splits"]}
    pt = {s: per_type(stages, s) for s in main_table["splits"][:1]}  # the eval split (from its runs' metrics.json)
    (args.out / "ablation.md").write_text(ablation_markdown(abl, len(abl_table["seeds"])))
    (args.out / "ablation.csv").write_text(ablation_csv(abl))
    (args.out / "per_type.md").write_text("\n".join(per_type_markdown(pt[s], s) for s in pt))
    all_stages = [st for r in results.values() for st in r["stages"]]
    trains = {st.key: st.record["seconds"] for st in all_stages if st.kind == "distill" and st.record
              and st.record.get("seconds")}
    device = results["lowshot"]["values"]["device"]
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device in ("auto", "cuda") else "cpu"
    info = {"configs": {k: str(v) for k, v in studies.items() if v}, "overrides": overrides, "jobs": args.jobs,
            "threads": args.threads, "wall_s": wall,
            "complete": all(r["complete"] for r in results.values()),
            "distill_stage_seconds_median": statistics.median(trains.values()) if trains else None,
            "distill_stages": len(trains), "device": dev, "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "versions": library_versions(), "table": main_table,
            "ablation_table": abl_table, "ablation": abl,
            "per_type": {s: {"students": {f"{f:g}": v for f, v in pt[s]["students"].items()},
                             "teacher": pt[s]["teacher"]} for s in pt}}
    (args.out / "lowshot.json").write_text(json.dumps(info, indent=1) + "\n")
    print((args.out / "report.md").read_text())
    print((args.out / "ablation.md").read_text())
    print((args.out / "per_type.md").read_text())
    log(f"done in {wall:.0f} s ({len(trains)} students, median {info['distill_stage_seconds_median'] or 0:.0f} s "
        f"per distill stage, device {dev}); files in {args.out}")
    return 0


def study(args, config: Path, overrides: list[str], out: Path, deadline: float) -> dict:
    """One config through (sharded) ``mad run``; the report in ``out``. Cut short by the deadline: a partial report
    from the evaluated runs there are, titled INCOMPLETE."""
    from mad_pipeline.stages.pipeline import RunConfig, load_config, run

    from mad_pipeline.pipeline.report import aggregate, write_report

    values = load_config(config, overrides).values
    log(f"{config.name}: cache {args.cache}, {args.jobs} job(s) x {args.threads} thread(s)")
    shard_s = run_shards(args, config, overrides, values, deadline)
    if shard_s:
        log(f"shards done in {shard_s:.0f} s; assembling the report")
    rc = RunConfig(config=config, overrides=tuple(overrides), cache=args.cache, out=out, progress=args.jobs <= 1)
    plan = run(dataclasses.replace(rc, dry_run=True), log=lambda _m: None)
    missing = [st for st in plan.stages if st.status != "cached" and st.kind in ("distill", "eval")]
    complete = not missing or time.perf_counter() < deadline
    if complete:
        res = run(rc, log=log)
        return {"values": values, "table": res.table, "stages": res.stages, "complete": True}
    log(f"incomplete: {len(missing)} distill/eval stages missing, e.g. {missing[0].label}; partial report")
    recs = [{**st.summary(), "task": values["task"], "source": st.key} for st in plan.stages
            if st.kind == "eval" and st.status == "cached"]
    table = aggregate(recs, title=values["name"] + " (INCOMPLETE)")
    write_report(table, out)
    return {"values": values, "table": table, "stages": plan.stages, "complete": False}


if __name__ == "__main__":
    sys.exit(main())
