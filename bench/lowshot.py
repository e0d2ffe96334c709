"""The low-shot study on the shapes world's three tasks: baseline vs naive distillation vs MAD, and the ablation of
MAD's adaptive parts.

Runs two ``mad run`` configs with the shipped ``shapes-clip`` teacher and ``vilt-tiny`` students:
``configs/lowshot.yaml`` (VQA, SNLI-VE and VCR x baseline, naive, MAD x four training fractions x three seeds,
evaluated on ``test`` and ``shift``) and ``configs/ablation.yaml`` (MAD with one adaptive part changed at a time, at
the two lowest fractions), then writes to ``--out`` (default ``docs/results/study/``):

- ``<task>/report.md / .csv / .png``   per task, the paper-style table (rows: training fraction; columns: baseline,
                                      naive, MAD; mean ± std over seeds; test and shift; VCR: Q->A, QA->R, Q->AR)
                                      and its plot with the teacher's zero-shot accuracy and the majority answer
- ``ablation/<task>/report.*``         the same for the ablation config
- ``ablation.md / .csv``               per task: MAD against each variant, each part's share paired by seed
                                      (the selection policies side by side, confidence weighting, adaptive balance);
                                      only when the study ran such variants (not the main config alone)
- ``per_type.md``                      VQA accuracy per question type (the methods, the teacher, the answer prior)
- ``convergence.md``                   per task, method and fraction: runs stopped early on a flat dev curve, or at
                                      the step cap with how much the dev metric still rose there
- ``<task>/dev_curves.png``             every run's dev curve, a panel per fraction, a dot at the selected step
- ``paired.md``                        per task, split and metric: MAD minus the baseline and minus naive distillation,
                                      paired by seed (mean ± std, seeds ahead)
- ``confidence.md``                    per task, method and fraction: the teacher's confidences and the weights
                                      they gave (the runs that weight by confidence)
- ``lowshot.json``                     every figure above plus per-run values, timings (each invocation's wall
                                      time, kept across invocations; the distill stages' total from the cache),
                                      machine and versions

Every stage is cached by content key (in ``--cache``), so a rerun only computes what is missing: a study can span
several invocations, and the runs the two configs share (naive and MAD at the low fractions) are trained once. With
``--jobs N`` each config is sharded by task x seed x fraction x method into N parallel ``mad run`` processes sharing
the cache, the largest fraction of a seed first (the first alone until the stages all shards share are cached: the
world, the evaluation stores, and with ``init=student-pretrain`` the students' pretraining); a final ``mad run`` of
the whole config then finds every stage cached and writes the reports. ``--only TASK`` (repeatable) runs a
subset of the tasks; into an out dir where an earlier invocation of the same study (configs by their settings, so a
comment edit keeps it the same, and overrides) wrote other tasks' figures, it keeps them, so a study run one task at
a time ends with every task's summaries; another study's summaries there are replaced, with one line saying so.
An edit of the library's Python files mid-study stops it (the shards killed, exit code 1): run a long study from
a checkout nobody edits meanwhile, such as a git worktree.

    python bench/lowshot.py --jobs 2                          # the main tables, then the ablation (2 CPU cores)
    python bench/lowshot.py --jobs 2 --no-ablation            # the main tables only
    python bench/lowshot.py --jobs 2 init=student-pretrain    # pretrain the students first (mad student pretrain's)
    python bench/lowshot.py --jobs 12 --device cuda --only vqa --no-ablation   # one task on a GPU machine
    bench/gpu_lowshot.sh                                      # the same on a GPU machine without network
    python bench/lowshot.py --only vqa seeds=[0] fractions=[0.05] --no-ablation --out /tmp/lowshot   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the adaptive parts switched off one at a time: (method in the ablation config, the part)
ABLATIONS = (
    ("full-no-confidence", "confidence weighting"),
    ("full-constant-alpha", "adaptive balance"),
)
# the token selection policies compared side by side (the method of each is found by its objective's `select`)
POLICIES = ("question-aware", "teacher-saliency", "all", "random")
TYPES = {"what color is the": "colour", "what shape is": "shape", "how many": "count", "where is the": "where",
         "is there a": "yes/no"}


def log(msg: str) -> None:
    print(f"[lowshot {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def shards(values: dict, jobs: int) -> list[list[str]]:
    """Override lists, one per shard: one method's runs in a task x seed x fraction cell, task-major then seed-major
    (a run cut short by ``--deadline-min`` still has whole tasks and seeds), the largest fraction first within a seed
    (the last shards to start are the short ones, so the cores stay busy to the end). The first shard is the cheapest
    one that builds stores (the first task and seed's smallest fraction, a distilling method): it runs alone when the
    shared stages are not cached yet. ``[[]]`` (one plain ``mad run``) for one job."""
    if jobs <= 1:
        return [[]]
    from mad_pipeline.pipeline.config import tasks_of
    from mad_pipeline.pipeline.study import for_task

    out = []
    for t in tasks_of(values):
        methods = for_task(values, t)["methods"]  # a task's own settings of each method (per_task), given whole
        order = sorted(methods, key=lambda m: methods[m]["preset"] == "baseline")  # distilling methods build stores
        for s in values["seeds"]:
            for f in sorted(values["fractions"], reverse=True):
                for m in order:
                    out.append([f"task={t}", f"fractions=[{f!r}]", f"seeds=[{s}]",
                                f"methods={json.dumps({m: methods[m]})}"])
    smallest = f"fractions=[{min(values['fractions'])!r}]"
    out.insert(0, out.pop(next(i for i, sh in enumerate(out) if sh[1] == smallest)))
    return out


def shard_cell(shard: list[str]) -> tuple[str, float, int, str]:
    """A shard of :func:`shards` as the cell it runs: (task, fraction, seed, method)."""
    task, fractions, seeds, methods = (o.partition("=")[2] for o in shard)
    (method,) = json.loads(methods)
    return task, json.loads(fractions)[0], json.loads(seeds)[0], method


def shard_steps(values: dict, shard: list[str]) -> int:
    """A shard's weight in the progress bar: its run's step cap, a multiple-choice task's steps counted once per
    choice (a VCR student reads four texts per item, and its step takes four to five times a VQA step's time). Runs
    that stop early end sooner and evaluations are not counted, so it is a rough weight, but far closer to the time
    than counting shards: a 1% shard stops in a few hundred steps, a 100% shard trains for thousands."""
    from mad_pipeline.pipeline.config import for_run, for_task
    from mad_pipeline.tasks.registry import get_task, task_class

    task, fraction, _seed, method = shard_cell(shard)
    steps = int(for_run(for_task(values, task), method, fraction)["train"]["steps"])
    return steps * (get_task(task).num_classes if task_class(task).multiple_choice else 1)


def pending_shards(todo: list[list[str]], stages: list) -> list[list[str]]:
    """The shards with a distill or eval stage not in the cache (from the whole config's dry-run plan): a shard whose
    runs and evaluations are all cached has nothing to do, so it is not started."""
    missing = {(st.meta.get("task"), st.meta.get("fraction"), st.meta.get("seed"), st.meta.get("method"))
               for st in stages if st.kind in ("distill", "eval") and st.status != "cached"}
    return [sh for sh in todo if shard_cell(sh) in missing]


def shard_overrides(overrides: list[str], task: str) -> list[str]:
    """The command line's overrides for a shard of ``task``: another task's ``per_task.<task>...`` ones are left out
    (the shard trains one task, and ``mad run`` refuses an override for a task its run does not train)."""
    from mad_pipeline.pipeline.overrides import parse_override

    def other_task(ov: str) -> bool:
        parts = parse_override(ov)[1]
        return parts[0] == "per_task" and len(parts) > 1 and parts[1] != task

    return [ov for ov in overrides if not other_task(ov)]


def _shard_label(override: str) -> str:
    """A shard's override as part of its log file's name: ``fractions=[0.05]`` -> ``fractions0.05``, the methods
    override (a JSON mapping) -> ``method-NAME``."""
    key, _, value = override.partition("=")
    if key == "methods":
        return "method-" + "+".join(json.loads(value))
    return override.replace("=", "").replace("[", "").replace("]", "")


def planned_stages(config: Path, overrides: list[str], cache: Path) -> list:
    """The stages of the whole config, each with its cache status (the plan of a dry run: nothing is computed)."""
    from mad_pipeline.stages.pipeline import RunConfig, run

    return run(RunConfig(config=config, overrides=tuple(overrides), cache=cache, out=None, progress=False,
                         dry_run=True), log=lambda _m: None).stages


def shared_cached(stages: list, train_split: str) -> bool:
    """Whether the stages every shard shares (the world, the students' pretraining with ``init=student-pretrain``,
    the evaluation splits' stores) are cached in this plan."""
    shared = [st for st in stages if st.kind in ("data", "student-pretrain")
              or (st.kind == "extract" and st.meta.get("split") != train_split)]
    return all(st.status == "cached" for st in shared)


def shared_stages_cached(config: Path, overrides: list[str], cache: Path, train_split: str) -> bool:
    """:func:`shared_cached` of a fresh plan (asked again while the first shard builds them)."""
    return shared_cached(planned_stages(config, overrides, cache), train_split)


class Stop:
    """When the shards stop: at ``--deadline-min``, at SIGTERM / SIGINT (:meth:`on_signal`) or when the library's
    source changes (``watch``, a :class:`SourceWatch`), whichever comes first. Either way the running shards are
    killed (their runs resume from their last checkpoints next time) and the command writes what finished, titled
    INCOMPLETE, and its record (lowshot.json). A second signal aborts."""

    def __init__(self, at: float = float("inf"), clock=time.perf_counter, watch: SourceWatch | None = None):
        self.at, self.clock, self.why, self.signum, self.code = at, clock, "--deadline-min reached", 0, 0
        self.watch = watch  # the library's source edited mid-study stops it too, with exit code 1

    def __call__(self) -> bool:
        if self.watch is not None and self.code == 0 and (path := self.watch.changed()):
            self.halt(f"{path} changed since this study started (the shards started from now on would run other "
                      "code than the runs before them; run a study from a checkout nobody edits meanwhile, such as "
                      "a git worktree)", code=1)
        return self.clock() > self.at

    def halt(self, why: str, code: int) -> None:
        self.at, self.why, self.code = float("-inf"), why, code

    def on_signal(self, signum: int, _frame=None) -> None:
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        self.halt(signal.Signals(signum).name, code=128 + signum)  # the shell's code for it (143: SIGTERM)

    @contextlib.contextmanager
    def on_signals(self):
        """SIGTERM and SIGINT stop the study while inside (the handlers before are restored after)."""
        old = {sig: signal.signal(sig, self.on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


class SourceWatch:
    """Whether the library's Python files changed since the study started (an edit in the checkout an editable
    install imports from): the shards started after it would run other code than the runs before them, or import a
    half-saved file. :meth:`changed` looks at most every ``every`` seconds (a stat of each file) and names the first
    changed, added or removed file, else None."""

    def __init__(self, root: Path, every: float = 10.0, clock=time.perf_counter):
        self.root, self.every, self.clock = Path(root), every, clock
        self.seen, self.asked = self.scan(), clock()

    def scan(self) -> dict[str, tuple[int, int]]:
        files = {}
        for path in sorted(self.root.rglob("*.py")):
            with contextlib.suppress(OSError):  # removed between the listing and the stat: seen as removed
                st = path.stat()
                files[path.relative_to(self.root).as_posix()] = (st.st_mtime_ns, st.st_size)
        return files

    def changed(self) -> str | None:
        if self.clock() - self.asked < self.every:
            return None
        self.asked, now = self.clock(), self.scan()
        return next((str(self.root / name) for name in sorted(self.seen.keys() | now.keys())
                     if self.seen.get(name) != now.get(name)), None)


class FirstShardGate:
    """Whether the first shard still runs alone: until the stages every shard shares are cached (``cached()``, asked
    at most every ``every`` seconds while it runs) or it ends. A first shard that trains long after building them (a
    study of the largest fraction only) so shares the cores once the shared stages are there."""

    def __init__(self, alone: bool, cached, every: float = 20.0, clock=time.perf_counter):
        self.alone, self.cached, self.every, self.clock = alone, cached, every, clock
        self.asked = clock()

    def limit(self, jobs: int, done: int) -> int:
        """How many shards may run now, ``done`` shards having ended (while alone, the first is the only one)."""
        if self.alone and done:
            self.alone = False  # the first ended
        elif self.alone and self.clock() - self.asked >= self.every:
            self.asked = self.clock()
            self.alone = not self.cached()
        return 1 if self.alone else jobs


class Launcher:
    """Starts a shard's ``mad run`` with ``env`` added to this process's environment, its output to a log file. With
    ``fork`` (where the platform has it) each shard is a process forked from a server that imported the library,
    torch and transformers once, the way ``python -m mad_pipeline.cli`` would, with that environment: a shard
    does not pay those imports (a planning-only ``mad run`` took about 4 s less on a 2-core CPU) and each still
    starts from a fresh process, as a subprocess would. Without, a ``python -m mad_pipeline.cli`` subprocess per
    shard."""

    PRELOAD = ("mad_pipeline.stages.pipeline", "mad_pipeline.stages.distill", "mad_pipeline.stages.evaluate",
               "mad_pipeline.students.vilt", "transformers.models.vilt.modeling_vilt")

    def __init__(self, env: dict[str, str], fork: bool = True):
        self.env = {**os.environ, **env}
        self.ctx = None
        if fork and "forkserver" in multiprocessing.get_all_start_methods():
            os.environ.update(env)  # the server's environment (it starts with the first shard): every shard's
            from mad_pipeline.cli.main import COMMAND_MODULES

            self.ctx = multiprocessing.get_context("forkserver")
            self.ctx.set_forkserver_preload(["__main__", *self.PRELOAD,
                                             *(f"mad_pipeline.cli.{m}" for m in COMMAND_MODULES)])

    def __call__(self, argv: list[str], log: Path) -> subprocess.Popen | Forked:
        if self.ctx is None:
            cmd = [sys.executable, "-m", "mad_pipeline.cli", *argv]
            return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env)
        from mad_pipeline.cli.main import main_to_log

        proc = self.ctx.Process(target=main_to_log, args=(argv, str(log)), name=log.stem)
        proc.start()
        return Forked(proc)


class Forked:
    """A forked shard with the part of :class:`subprocess.Popen` the shard loop uses (a signal's exit code is
    minus its number in both)."""

    def __init__(self, proc):
        self.proc = proc

    def poll(self) -> int | None:
        return self.proc.exitcode

    @property
    def returncode(self) -> int | None:
        return self.proc.exitcode

    def kill(self) -> None:
        self.proc.kill()

    def wait(self) -> int | None:
        self.proc.join()
        return self.proc.exitcode


def run_shards(args, config: Path, overrides: list[str], values: dict, stop: Stop) -> float:
    """Run the shards, at most ``args.jobs`` at a time; the first alone while the stages every shard shares are being
    built (:class:`FirstShardGate`, :func:`shared_stages_cached`: else the shards would build them at once, or wait
    on each other). Once ``stop()`` (the deadline, or a signal) the running shards are killed (their distill stages
    resume from their last checkpoints next time) and no new one starts. Returns the wall time."""
    from mad_pipeline.progress import make_progress

    todo = shards(values, args.jobs)
    if todo == [[]]:
        return 0.0
    plan = planned_stages(config, overrides, args.cache)  # one plan: which shards have work, and the first's gate
    n_shards, todo = len(todo), pending_shards(todo, plan)
    if len(todo) < n_shards:
        log(f"{n_shards - len(todo)} of {n_shards} shards cached whole (not started)")
    if not todo:
        return 0.0
    logs = Path(args.cache) / "bench-lowshot-logs"
    logs.mkdir(parents=True, exist_ok=True)
    launch = Launcher({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                       "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}, fork=not args.no_fork)
    t0 = time.perf_counter()
    running: list[tuple[subprocess.Popen | Forked, Path, list[str]]] = []
    n_total, done, steps_done = len(todo), 0, 0
    weight = {tuple(sh): shard_steps(values, sh) for sh in todo}  # the rate and the eta by step caps, not by shards
    with make_progress() as bar:  # a live bar on a terminal, a line every 30 s in a log file
        task = bar.add_task("training steps (step caps)", total=sum(weight.values()), unit="step", bursts=True,
                            info=f"0/{n_total} shards")

        def start(shard: list[str]) -> None:
            name = "_".join(_shard_label(s) for s in shard)
            path = logs / f"{config.stem}_{name}.log"
            task_name = shard[0].removeprefix("task=")
            argv = ["run", str(config), *shard_overrides(overrides, task_name), *shard, "--cache", str(args.cache),
                    "--quiet"]
            running.append((launch(argv, path), path, shard))

        def poll() -> None:
            nonlocal done, steps_done
            for item in list(running):
                p, path, shard = item
                if p.poll() is None:
                    continue
                running.remove(item)
                if p.returncode != 0 and stop():  # a Ctrl-C reaches the shards too: not their failure
                    continue
                if p.returncode != 0:
                    for q, _, _ in running:
                        q.kill()
                    raise SystemExit(f"shard {' '.join(shard)} failed (exit {p.returncode}); log {path}:\n"
                                     f"{path.read_text()[-3000:]}")
                done, steps_done = done + 1, steps_done + weight[tuple(shard)]
                bar.update(task, completed=steps_done, info=f"{done}/{n_total} shards")

        def cached() -> bool:
            return shared_stages_cached(config, overrides, args.cache, values["data"]["train_split"])

        gate = FirstShardGate(args.jobs > 1 and not shared_cached(plan, values["data"]["train_split"]), cached)
        while todo or running:
            if stop():
                log(f"{stop.why}: killing {len(running)} running shard(s) (their runs resume from their last "
                    f"checkpoints next time), {len(todo)} not started")
                for p, _, _ in running:
                    p.kill()
                    p.wait()
                break
            if todo and len(running) < gate.limit(args.jobs, done):
                start(todo.pop(0))
                continue
            time.sleep(0.2)
            poll()
    return time.perf_counter() - t0


def _paired(a: dict, b: dict) -> list[float]:
    """a - b per seed, over the seeds both cells have."""
    vb = dict(zip(b["seeds"], b["values"], strict=True))
    return [v - vb[s] for s, v in zip(a["seeds"], a["values"], strict=True) if s in vb] or [float("nan")]


def policy_methods(values: dict) -> dict[str, str]:
    """Selection policy -> the ablation method that is MAD with that policy (``full``, the reference, for its own)."""
    from mad_pipeline.pipeline.methods import METHOD_SETTINGS, mad_config

    out: dict[str, str] = {}
    for m, spec in values["methods"].items():
        if spec["preset"] != "full" or set(spec) - {"preset", "select", *METHOD_SETTINGS}:
            continue
        select = mad_config(values, m).select_v  # the image tokens' policy (`select` sets both)
        if m == "full" or select not in out:
            out[select] = m
    return out


def _share(full: dict, c: dict) -> dict:
    diffs = _paired(full, c)
    return {"without": c, "share_mean": statistics.mean(diffs),
            "share_std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0}


def ablation(table: dict, split: str, policies: dict[str, str], metric: str | None = None) -> list[dict]:
    """Per fraction of one split's rows of ``metric`` (default: the headline): MAD, each policy's MAD and its share
    (MAD minus it), each part switched off and its share, MAD minus naive."""
    rows = []
    metric = metric or table["metric"]
    for row in table["rows"]:
        if row["split"] != split or row.get("metric", table["metric"]) != metric:
            continue
        cells = row["cells"]
        full = cells.get("full")
        if not full:
            continue
        out = {"split": split, "metric": metric, "fraction": row["fraction"], "full": full, "parts": {}, "policies": {}}
        for policy, method in policies.items():
            if cells.get(method):
                out["policies"][policy] = {**_share(full, cells[method]), "mad": method == "full"}
        for method, part in ABLATIONS:
            if cells.get(method):
                out["parts"][part] = _share(full, cells[method])
        if cells.get("naive"):
            out["naive"] = _share(full, cells["naive"])
        rows.append(out)
    return rows


def table_metrics(table: dict) -> list[str]:
    """The metrics a task's table reports, its headline first (VCR: Q->A, then QA->R and Q->AR)."""
    return [table["metric"], *[m for m in table.get("metrics") or [] if m != table["metric"]]]


def ablation_sections(table: dict, policies: dict[str, str]) -> dict[str, list[dict]]:
    """:func:`ablation` for every split and every metric the task reports (VCR: Q->A, then QA->R and Q->AR), keyed
    ``split`` for the headline and ``split, <metric title>`` for the others."""
    from mad_pipeline.pipeline.report import metric_title

    metrics = table_metrics(table)
    return {split if m == table["metric"] else f"{split}, {metric_title(m)}": ablation(table, split, policies, m)
            for m in metrics for split in table["splits"]}


def has_variants(abl: dict[str, dict[str, list[dict]]]) -> bool:
    """Whether the study behind ``abl`` ran a variant of MAD (another policy, a part switched off) to take a share of:
    the ablation config does, the main one does not."""
    return any(r["parts"] or any(not p["mad"] for p in r["policies"].values())
               for by_split in abl.values() for rows in by_split.values() for r in rows)


def _pm(mean: float, std: float, n: int, signed: bool = False) -> str:
    f = "{:+.2f}" if signed else "{:.2f}"
    return f.format(mean) + (f" ± {std:.2f}" if n > 1 else "")


def _cell(p: dict | None, n: int) -> list[str]:
    if not p:
        return ["–", "–"]
    w = p["without"]
    share = "(MAD)" if p.get("mad") else _pm(p["share_mean"], p["share_std"], n, signed=True)
    return [_pm(w["mean"], w["std"], w["n"]), share]


def ablation_markdown(abl: dict[str, dict[str, list[dict]]], n_seeds: int) -> str:
    """``abl``: task -> split -> rows of :func:`ablation`."""
    lines = ["# Ablation: MAD with one adaptive part changed", "",
             f"Headline metric (%), mean ± std over {n_seeds} seeds. *share* = MAD minus the variant, paired by seed "
             "(positive: MAD's choice helps). The selection policies are MAD with that policy; *(MAD)* marks MAD's "
             "own. A task that reports several metrics (VCR: Q->A, QA->R, Q->AR) has a table per metric after its "
             "headline's; the runs were selected on the headline's dev metric.", ""]
    for task, by_split in abl.items():
        for split, rows in by_split.items():
            lines += [f"## {task}, {split}", ""]
            head = ["training fraction", "MAD"]
            for policy in POLICIES:
                head += [f"select {policy}", "share"]
            for _, part in ABLATIONS:
                head += [f"without {part}", "share"]
            head += ["naive", "MAD - naive"]
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|---:|" + "---:|" * (len(head) - 1))
            for r in rows:
                f = r["full"]
                cells = [f"{r['fraction'] * 100:g}%", _pm(f["mean"], f["std"], f["n"])]
                for policy in POLICIES:
                    cells += _cell(r["policies"].get(policy), f["n"])
                for _, part in ABLATIONS:
                    cells += _cell(r["parts"].get(part), f["n"])
                cells += _cell(r.get("naive"), f["n"])
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines)


def _ahead(diffs: list[float]) -> str:
    """mean ± std of paired differences, and on how many seeds the first is ahead."""
    std = f" ± {statistics.stdev(diffs):.2f}" if len(diffs) > 1 else ""
    return f"{statistics.mean(diffs):+.2f}{std} ({sum(d > 0 for d in diffs)} of {len(diffs)})"


def paired_markdown(tables: dict[str, dict]) -> str:
    """Per task, split and metric (the headline first), MAD against the baseline and against naive distillation,
    paired by seed: the figures the study's questions are about, beside the cells they come from."""
    from mad_pipeline.pipeline.report import metric_title

    lines = ["# MAD against the baseline and naive distillation, paired by seed", "",
             "Per task, split and metric: each method's mean ± std over the seeds, and MAD minus the baseline and "
             "MAD minus naive distillation seed by seed (mean ± std of the differences, and on how many seeds MAD "
             "is ahead). A difference beyond the spread is one larger than the cells' own standard deviations.", ""]
    for task, t in tables.items():
        for split in t["splits"]:
            for m in table_metrics(t):
                rows = [r for r in t["rows"] if r["split"] == split and r.get("metric", t["metric"]) == m
                        and r["cells"].get("full")]
                if not rows:
                    continue
                lines += [f"## {task}, {split}, {metric_title(m)}", "",
                          "| training fraction | baseline | naive | MAD | MAD − baseline | MAD − naive |",
                          "|---:|---:|---:|---:|---:|---:|"]
                for r in rows:
                    c = r["cells"]
                    cells = [_pm(c[k]["mean"], c[k]["std"], c[k]["n"]) if c.get(k) else "–"
                             for k in ("baseline", "naive", "full")]
                    diffs = [_ahead(_paired(c["full"], c[k])) if c.get(k) else "–" for k in ("baseline", "naive")]
                    lines.append(f"| {r['fraction'] * 100:g}% | " + " | ".join(cells + diffs) + " |")
                lines.append("")
    return "\n".join(lines)


def ablation_csv(abl: dict[str, dict[str, list[dict]]]) -> str:
    names = [f"select_{p}" for p in POLICIES] + [f"without_{part.replace(' ', '_')}" for _, part in ABLATIONS]
    head = ["task", "split", "metric", "train_fraction", "mad_mean", "mad_std"]
    for k in [*names, "naive"]:
        head += [f"{k}_mean", f"{k}_std", f"{k}_share_mean", f"{k}_share_std"]
    lines = [",".join(head)]
    for task, by_section in abl.items():
        for rows in by_section.values():
            for r in rows:
                std = r["full"]["std"]
                vals = [task, r["split"], r["metric"], f"{r['fraction']:g}", f"{r['full']['mean']:.4f}",
                        "" if std is None else f"{std:.4f}"]
                parts = [r["policies"].get(p) for p in POLICIES] + [r["parts"].get(part) for _, part in ABLATIONS]
                for p in [*parts, r.get("naive")]:
                    ws = p["without"]["std"] if p else None
                    vals += ([f"{p['without']['mean']:.4f}", "" if ws is None else f"{ws:.4f}",
                              f"{p['share_mean']:.4f}", f"{p['share_std']:.4f}"] if p else ["", "", "", ""])
                lines.append(",".join(vals))
    return "\n".join(lines) + "\n"


@functools.cache
def run_metrics(stage_path: str) -> dict:
    """A distill stage's ``run/metrics.json``, read once for the tables and figures that use it."""
    return json.loads((Path(stage_path) / "run" / "metrics.json").read_text())


def per_type(stages: list, split: str, table: dict | None = None) -> dict:
    """Mean accuracy per question type over seeds: {fraction: {method: {type: mean}}}, the teacher's, and the
    reference levels per type the report ``table`` carries for ``split`` (VQA's answer prior)."""
    acc: dict = {}
    teacher: dict = {}
    for st in stages:
        if st.kind != "distill" or st.record is None:
            continue
        m = run_metrics(st.record["path"])
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
    levels = ((table or {}).get("reference_breakdown") or {}).get(split) or {}
    return {"students": {f: {meth: {t: statistics.mean(v) for t, v in d.items()} for meth, d in ms.items()}
                         for f, ms in acc.items()}, "teacher": teacher,
            "references": {level: {TYPES.get(k, k): v for k, v in parts.items()} for level, parts in levels.items()}}


def per_type_markdown(pt: dict, split: str) -> str:
    from mad_pipeline.pipeline.report import method_key, method_title

    types = [*TYPES.values(), "overall"]
    methods = sorted({m for ms in pt["students"].values() for m in ms}, key=method_key)  # every method that ran
    lines = [f"# Accuracy per question type ({split} split, mean over seeds)", "",
             "| fraction | method | " + " | ".join(types) + " |", "|---:|---|" + "---:|" * len(types)]
    for f in sorted(pt["students"]):
        for meth in methods:
            d = pt["students"][f].get(meth)
            if d:
                cells = " | ".join(f"{d.get(t, float('nan')):.1f}" for t in types)
                lines.append(f"| {f * 100:g}% | {method_title(meth)} | {cells} |")
    for name, by_type in {"teacher zero-shot": pt["teacher"], **pt["references"]}.items():
        if by_type:  # no row for a level this split has none of (a teacher without zero-shot answers)
            lines.append(f"| – | {name} | " + " | ".join(f"{by_type.get(t, float('nan')):.1f}" for t in types) + " |")
    return "\n".join(lines) + "\n"


def convergence(stages: list) -> list[dict]:
    """Per task, method and fraction, how the runs ended: stopped early (patience ran out before the step cap: the
    dev curve was flat for ``patience`` evaluations) or at the step cap (``min_steps`` can hold a run to it), and for
    the capped runs the dev metric's rise over their last ``patience`` evaluations (near 0: flat at the cap; well
    above the seed spread: still learning)."""
    groups: dict[tuple, list[dict]] = {}
    for st in stages:
        if st.kind != "distill" or st.record is None:
            continue
        m = run_metrics(st.record["path"])
        es = m.get("early_stop")
        if not es:
            continue
        vals = [v for _, v in es["curve"]]
        tail = vals[-(es["patience"] + 1):] if es.get("patience") else vals[-2:]
        cap = (m.get("train_config") or {}).get("steps")
        # patience out at the cap: it ran to the cap (the trainer records it so now; cached runs may predate that)
        early = es["stopped_early"] and (cap is None or m["steps"] < cap)
        groups.setdefault((st.meta.get("task"), st.meta["method"], st.meta["fraction"]), []).append(
            {"early": early, "best_step": es["best_step"], "steps": m["steps"],
             "rise": max(tail) - tail[0] if tail else 0.0})
    return [{"task": t, "method": meth, "fraction": f, "runs": len(rs),
             "stopped_early": sum(r["early"] for r in rs),
             "best_step": statistics.median(r["best_step"] for r in rs),
             "steps": statistics.median(r["steps"] for r in rs),
             "capped_rise": max((r["rise"] for r in rs if not r["early"]), default=None)}
            for (t, meth, f), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))]


def convergence_markdown(rows: list[dict]) -> str:
    lines = ["# Did the runs converge?", "",
             "Per task, method and fraction: the runs that stopped early (patience ran out on a flat dev curve "
             "before the step cap), the "
             "median selected and last step, and for the runs that reached the step cap instead the largest rise "
             "of the dev metric over their last `patience` evaluations (0: flat at the cap).", "",
             "| task | method | fraction | runs | stopped early | selected step (median) | steps run (median) | "
             "rise at the cap (max) |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        rise = "-" if r["capped_rise"] is None else f"{r['capped_rise']:+.2f}"
        lines.append(f"| {r['task']} | {r['method']} | {r['fraction'] * 100:g}% | {r['runs']} | "
                     f"{r['stopped_early']} | {r['best_step']:g} | {r['steps']:g} | {rise} |")
    return "\n".join(lines) + "\n"


def dev_curves(stages: list, out: Path) -> list[Path]:
    """Per task, ``out/<task>/dev_curves.png``: every run's dev curve (the early-stopping metric over steps), one
    panel per training fraction, one colour per method, a dot at the selected step: how each run ended is visible
    (flat at the stop, or still rising at the cap)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mad_pipeline.pipeline.report import method_key, method_title
    from mad_pipeline.training.plot import metric_ylim

    runs: dict[str, list[tuple[dict, dict]]] = {}
    for st in stages:
        if st.kind != "distill" or st.record is None:
            continue
        es = run_metrics(st.record["path"]).get("early_stop")
        if es and es.get("curve"):
            runs.setdefault(st.meta.get("task") or "task", []).append((st.meta, es))
    written = []
    for task, rs in runs.items():
        fractions = sorted({m["fraction"] for m, _ in rs})
        methods = sorted({m["method"] for m, _ in rs}, key=method_key)
        colour = {m: f"C{i}" for i, m in enumerate(methods)}
        fig, axes = plt.subplots(1, len(fractions), figsize=(4 * len(fractions), 3.4), squeeze=False)
        labelled: set[str] = set()
        for ax, f in zip(axes[0], fractions, strict=True):
            values = []
            for meta, es in sorted((r for r in rs if r[0]["fraction"] == f), key=lambda r: r[0].get("seed", 0)):
                steps, vals = zip(*es["curve"], strict=True)
                first = meta["method"] not in labelled
                labelled.add(meta["method"])
                ax.plot(steps, vals, color=colour[meta["method"]], linewidth=1, alpha=0.8,
                        label=method_title(meta["method"]) if first else None)
                best = dict(zip(steps, vals, strict=True)).get(es["best_step"])
                if best is not None:
                    ax.plot([es["best_step"]], [best], "o", color=colour[meta["method"]], markersize=4)
                values += vals
            ax.set_ylim(*metric_ylim(values))
            ax.set_title(f"{f * 100:g}% of the training data")
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel(f"dev {rs[0][1].get('metric', 'metric')}")
        fig.legend(loc="upper right", fontsize=8)
        fig.suptitle(f"{task}: dev curves of every run (a dot: the selected step)")
        fig.tight_layout()
        path = out / task / "dev_curves.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def confidence(stages: list) -> list[dict]:
    """Per task, method and fraction of the runs that weight by the teacher's confidence: the distribution of the
    raw confidences in the right answer and of the weights applied (batch mean 1), from each run's histograms
    (``metrics.json``'s ``confidence``), the mean over seeds. ``within 0.8-1.2``: the share of weights the weighting
    barely moves."""
    groups: dict[tuple, list[dict]] = {}
    for st in stages:
        if st.kind != "distill" or st.record is None:
            continue
        rec = run_metrics(st.record["path"]).get("confidence")
        if rec:
            groups.setdefault((st.meta.get("task"), st.meta["method"], st.meta["fraction"]), []).append(rec)

    def mean(rs: list[dict], part: str, key: str) -> float | None:
        vals = [r[part][key] for r in rs if r[part].get(key) is not None]
        return statistics.fmean(vals) if vals else None

    return [{"task": t, "method": meth, "fraction": f, "runs": len(rs),
             **{f"raw_{k}": mean(rs, "raw", k) for k in ("mean", "std", "q10", "q50", "q90")},
             **{f"w_{k}": mean(rs, "weights", k) for k in ("std", "q10", "q90", "share_0.8_1.2")}}
            for (t, meth, f), rs in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0])))]


def confidence_markdown(rows: list[dict]) -> str:
    lines = ["# The teacher's confidence and the weights it gave", "",
             "Per task, method and fraction (the runs that weight by confidence; mean over seeds): the teacher's "
             "raw confidence in the right answer over every training sample drawn (mean, std, 10th / 50th / 90th "
             "percentile, to the histogram's bin of 0.05) and the weights applied (normalised to batch mean 1: std, "
             "10th / 90th percentile to the bin of 0.2, and the share within 0.8-1.2, which the weighting barely "
             "moves).", "",
             "| task | method | fraction | runs | confidence: mean | std | q10 | q50 | q90 | weights: std | q10 "
             "| q90 | within 0.8-1.2 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def fmt(v: float | None, pct: bool = False) -> str:
        return "-" if v is None else (f"{100 * v:.0f}%" if pct else f"{v:.2f}")

    for r in rows:
        raw = " | ".join(fmt(r[f"raw_{k}"]) for k in ("mean", "std", "q10", "q50", "q90"))
        w = " | ".join(fmt(r[f"w_{k}"]) for k in ("std", "q10", "q90"))
        lines.append(f"| {r['task']} | {r['method']} | {r['fraction'] * 100:g}% | {r['runs']} | {raw} | {w} | "
                     f"{fmt(r['w_share_0.8_1.2'], pct=True)} |")
    return "\n".join(lines) + "\n"


def same_study(before: dict, configs: dict, overrides: list[str]) -> bool:
    """Whether the out dir's earlier ``lowshot.json`` (``before``) is this study's: the same configs (by path and
    settings; a record from before settings were hashed, by file content) and the same overrides but for
    ``--only``'s task list and the worker count."""
    def setting(ov: list[str]) -> list[str]:
        return [o for o in ov if not o.startswith(("task=", "num_workers="))]

    def same_config(a: dict | None, b: dict) -> bool:
        field = "settings_sha256" if a and "settings_sha256" in a else "sha256"
        return bool(a) and a.get("path") == b.get("path") and a.get(field) == b.get(field)

    earlier = before.get("configs") or {}
    return (bool(before) and set(earlier) == set(configs) and all(same_config(earlier[k], configs[k]) for k in configs)
            and setting(before.get("overrides", [])) == setting(overrides))


def earlier_tasks(before: dict, configs: dict, overrides: list[str], tasks: set[str]) -> dict:
    """What an earlier invocation of the same study (:func:`same_study`) wrote to the out dir's ``lowshot.json`` for
    the tasks other than ``tasks``: the figures of a study run one task at a time add up instead of the last
    invocation's replacing them. Another study's file there is not mixed in."""
    same = same_study(before, configs, overrides)
    by_task = {k: {t: v for t, v in (before.get(k) or {}).items() if t not in tasks} if same else {}
               for k in ("tables", "ablation_tables", "ablation", "per_type", "distill_stage_seconds")}
    by_task["per_type"] = {t: {**d, "students": {float(f): v for f, v in d["students"].items()}}
                           for t, d in by_task["per_type"].items()}
    rows = {k: [r for r in before.get(k) or [] if r.get("task") not in tasks] if same else []
            for k in ("convergence", "confidence")}
    seconds = by_task.pop("distill_stage_seconds")
    return {**by_task, **rows, "distill_seconds": seconds}


def by_task_order(rows: list[dict]) -> list[dict]:
    """Convergence / confidence rows in their tables' order: task, method, fraction."""
    return sorted(rows, key=lambda r: (str(r["task"]), str(r["method"]), str(r["fraction"])))


def config_record(path: Path) -> dict[str, str]:
    """A study config as the results record it: its path (relative to the repository when inside it, so results
    from another machine do not name that machine's folders), its content's sha256 and its settings' (the values it
    loads to: a comment edit leaves them, and the study, the same)."""
    from mad_pipeline.stages.pipeline import load_config

    from mad_pipeline.hashing import content_key, to_jsonable

    path = Path(path).resolve()
    shown = path.relative_to(ROOT.resolve()) if path.is_relative_to(ROOT.resolve()) else path
    return {"path": str(shown), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "settings_sha256": content_key(to_jsonable(load_config(path).values))}


def parse_args(argv: list[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="key=value overrides of the config (as for mad run)")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "lowshot.yaml", help="the main study")
    ap.add_argument("--ablation-config", type=Path, default=ROOT / "configs" / "ablation.yaml",
                    help="the ablation study (its tables go to OUT/ablation/<task>/, the share table to "
                    "OUT/ablation.md)")
    ap.add_argument("--no-ablation", dest="ablation_config", action="store_const", const=None)
    ap.add_argument("--only", action="append", default=None, metavar="TASK",
                    help="run only this task of the configs (repeatable); default: all of them")
    ap.add_argument("--jobs", type=int, default=1,
                    help="parallel mad run shards (task x seed x fraction x method); 1: one mad run")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per shard (OMP_NUM_THREADS)")
    ap.add_argument("--no-fork", action="store_true",
                    help="start each shard as a `python -m mad_pipeline.cli` subprocess, not forked from a process "
                         "that imported the library once")
    ap.add_argument("--device", default=None, help="device for training (auto, cpu, cuda); default: the config's")
    ap.add_argument("--cache", type=Path, default=None, help="cache root (default: MAD_CACHE, else the user cache)")
    ap.add_argument("--deadline-min", type=float, default=None,
                    help="with --jobs: stop the shards after this many minutes and report what finished "
                    "(SIGTERM or Ctrl-C: the same, at once)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "study")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The study; a mistake in the config or the overrides is one line (``error: ...``, the error's exit code), as
    from ``mad``."""
    from mad_pipeline.errors import MadError

    with Stop().on_signals() as stop:
        try:
            return _main(argv, stop)
        except MadError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code


def _main(argv: list[str] | None, stop: Stop) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from mad_pipeline.cache import Cache

    overrides = command_overrides(args)
    args.cache = Path(args.cache or Cache.at(None).root)
    import torch

    import mad_pipeline

    torch.set_num_threads(args.threads)
    stop.watch = SourceWatch(Path(mad_pipeline.__file__).parent)
    t0 = time.perf_counter()
    if args.deadline_min:
        stop.at = t0 + 60 * args.deadline_min
    studies = {"lowshot": args.config, "ablation": args.ablation_config}
    results = {name: study(args, config, overrides, args.out if name == "lowshot" else args.out / "ablation",
                           stop) for name, config in studies.items() if config is not None}
    wall = time.perf_counter() - t0
    configs = {k: config_record(v) for k, v in studies.items() if v}
    prev = args.out / "lowshot.json"
    before = json.loads(prev.read_text()) if prev.exists() else {}
    if before and not same_study(before, configs, overrides):
        log(f"{prev}: another study's (other configs or settings); written afresh, the task folders it made kept")
        before = {}
    info = write_reports(args, results, before, configs, overrides)
    info.update(invocation_record(args, results, before, overrides, wall))
    trains = [v for by_key in info["distill_stage_seconds"].values() for v in by_key.values()]
    info.update(distill_stage_seconds_total=sum(trains), distill_stages=len(trains),
                distill_stage_seconds_median=statistics.median(trains) if trains else None)
    ordered = {k: info[k] for k in RECORD_ORDER if k in info}
    (args.out / "lowshot.json").write_text(json.dumps({**ordered, **info}, indent=1) + "\n")
    for task in results["lowshot"]["tables"]:
        print((args.out / task / "report.md").read_text())
    if has_variants(info["ablation"]):
        print((args.out / "ablation.md").read_text())
    print((args.out / "per_type.md").read_text())
    log(f"done in {wall:.0f} s ({info['distill_stages']} students, median "
        f"{info['distill_stage_seconds_median'] or 0:.0f} s per distill stage, device {info['device']}); files in "
        f"{args.out}")
    return stop.code  # 0, or stopped by a signal (128 + its number) or by an edit of the library (1)


# lowshot.json's keys in the order it has always written them
RECORD_ORDER = ("configs", "overrides", "jobs", "threads", "wall_s", "invocations", "distill_stage_seconds_total",
                "complete", "distill_stage_seconds_median", "distill_stages", "distill_stage_seconds", "device",
                "cpu_count", "platform", "cpu", "versions", "tables", "ablation_tables", "ablation", "policies",
                "convergence", "confidence", "per_type")


def command_overrides(args) -> list[str]:
    """The command line's overrides, plus what ``--device``, ``--only`` and ``--jobs`` add to them."""
    overrides = list(args.overrides) + ([f"device={args.device}"] if args.device else [])
    if args.only:
        overrides.append(f"task=[{','.join(args.only)}]")
    if args.jobs > 1 and not any(o.startswith("num_workers=") for o in overrides):
        # parallel shards share the cores: mad run's num_workers=auto would give each of them all the free ones
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        overrides.append(f"num_workers={max(0, cores // args.jobs - 1)}")
    return overrides


def write_reports(args, results: dict, before: dict, configs: dict, overrides: list[str]) -> dict:
    """The study's markdown reports and plot in ``args.out``; returns their figures for lowshot.json. A study run one
    task at a time (``--only``) keeps the other tasks' figures an earlier invocation wrote (``before``)."""
    main_res = results["lowshot"]
    abl_res = results.get("ablation", main_res)
    policies = policy_methods(abl_res["values"])
    kept = earlier_tasks(before, configs, overrides, set(main_res["tables"]) | set(abl_res["tables"]))
    tables = {**kept["tables"], **main_res["tables"]}
    abl_tables = {**kept["ablation_tables"], **abl_res["tables"]}
    abl = {**kept["ablation"], **{task: ablation_sections(t, policies) for task, t in abl_res["tables"].items()}}
    pt = {task: per_type([st for st in main_res["stages"] if st.meta.get("task") == task], t["splits"][0], t)
          for task, t in main_res["tables"].items()}
    pt = {task: v for task, v in pt.items()  # the tasks with question types (VQA), not just an overall figure
          if any(set(by_type) - {"overall"} for f in v["students"].values() for by_type in f.values())}
    pt = {**kept["per_type"], **pt}
    args.out.mkdir(parents=True, exist_ok=True)  # stopped before any table: the record is still written
    if has_variants(abl):  # not the main config alone (--no-ablation): it has no variant to take a share of
        (args.out / "ablation.md").write_text(ablation_markdown(abl, len(abl_res["values"]["seeds"])))
        (args.out / "ablation.csv").write_text(ablation_csv(abl))
    (args.out / "per_type.md").write_text("\n".join(per_type_markdown(v, tables[task]["splits"][0])
                                                    for task, v in pt.items()))
    conv = by_task_order(kept["convergence"] + convergence(main_res["stages"]))
    (args.out / "convergence.md").write_text(convergence_markdown(conv))
    conf = by_task_order(kept["confidence"] + confidence(main_res["stages"]))
    dev_curves(main_res["stages"], args.out)
    (args.out / "confidence.md").write_text(confidence_markdown(conf))
    (args.out / "paired.md").write_text(paired_markdown(tables))
    seconds: dict[str, dict[str, float]] = {}  # task -> distill stage key -> seconds
    for st in (st for r in results.values() for st in r["stages"]):
        if st.kind == "distill" and st.record and st.record.get("seconds"):
            seconds.setdefault(str(st.meta.get("task")), {})[st.key] = st.record["seconds"]
    return {"configs": configs, "tables": tables, "ablation_tables": abl_tables, "ablation": abl,
            "policies": policies, "convergence": conv, "confidence": conf,
            "distill_stage_seconds": {**kept["distill_seconds"], **seconds},
            "per_type": {task: {"students": {f"{f:g}": v for f, v in d["students"].items()},
                                "teacher": d["teacher"], "references": d["references"]} for task, d in pt.items()}}


def invocation_record(args, results: dict, before: dict, overrides: list[str], wall: float) -> dict:
    """lowshot.json's record of the invocations and the machine: every invocation's wall time (a study spans
    invocations, each resuming from the cache), the device, CPU and versions."""
    import torch

    from mad_pipeline.machine import cpu_model
    from mad_pipeline.versions import library_versions

    device = results["lowshot"]["values"]["device"]
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() and device in ("auto", "cuda") else "cpu"
    history = before.get("invocations", [])
    history.append({"finished": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": wall, "overrides": overrides,
                    "jobs": args.jobs})
    return {"overrides": overrides, "jobs": args.jobs, "threads": args.threads, "wall_s": wall,
            "invocations": history, "complete": all(r["complete"] for r in results.values()),
            "device": dev, "cpu_count": os.cpu_count(), "platform": platform.platform(), "cpu": cpu_model(),
            "versions": library_versions()}


def study(args, config: Path, overrides: list[str], out: Path, stop: Stop) -> dict:
    """One config through (sharded) ``mad run``; the reports in ``out/<task>/``. Cut short (the deadline, a signal):
    partial reports from the evaluated runs there are, titled INCOMPLETE."""
    from mad_pipeline.stages.pipeline import RunConfig, load_config, run

    from mad_pipeline.pipeline.config import tasks_of
    from mad_pipeline.pipeline.report import aggregate, study_metric_records, write_report
    from mad_pipeline.training.config import cpu_bf16_warning, resolve_device

    values = load_config(config, overrides).values
    log(f"{config.name}: {', '.join(tasks_of(values))}; cache {args.cache}, {args.jobs} job(s) x {args.threads} "
        "thread(s)")
    if note := cpu_bf16_warning(resolve_device(values["device"]), bool(values["train"].get("cpu_bf16"))):
        log(f"{config.name}: {note}")  # the study's time in docs/lowshot.md assumes native bf16
    shard_s = run_shards(args, config, overrides, values, stop)
    if shard_s:
        log(f"shards done in {shard_s:.0f} s; assembling the reports")
    # one folder per task, even for one task (mad run copies a one-task report to OUT itself)
    rc = RunConfig(config=config, overrides=tuple(overrides), cache=args.cache, out=None, progress=args.jobs <= 1)
    plan = run(dataclasses.replace(rc, dry_run=True), log=lambda _m: None)
    missing = [st for st in plan.stages if st.status != "cached" and st.kind in ("distill", "eval")]
    if not missing or not stop():
        res = run(rc, log=log)
        tables = {}
        for task, rep in res.reports.items():
            write_report(rep["table"], out / task, records=_records_of(rep, args.cache))
            tables[task] = rep["table"]
        return {"values": values, "tables": tables, "stages": res.stages, "complete": True}
    log(f"incomplete: {len(missing)} distill/eval stages missing, e.g. {missing[0].label}; partial reports")
    tables = {}
    for task in tasks_of(values):
        recs = []
        for st in plan.stages:
            if st.kind == "eval" and st.status == "cached" and st.meta.get("task") == task:
                rec = {**st.summary(), "task": task, "source": st.key}
                scores = (st.record or {}).get("result", {}).get("metrics") or {}
                recs += [rec, *study_metric_records(rec, scores, task)]  # VCR: QA->R, Q->AR beside Q->A
        if recs:
            tables[task] = aggregate(recs, title=values["name"] + f" {task} (INCOMPLETE)")
            write_report(tables[task], out / task)
    return {"values": values, "tables": tables, "stages": plan.stages, "complete": False}


def _records_of(rep: dict, cache: Path) -> list[dict] | None:
    """The records a report stage's table was made from (its JSON beside the Markdown), each run directory
    (``source``) relative to the cache root, ``<cache>/runs/distill/<key>/run``: the copy names no machine's
    paths."""
    p = Path(rep["files"]["markdown"]).with_suffix(".json")
    try:
        records = json.loads(p.read_text())["records"]
    except (OSError, ValueError, KeyError):
        return None
    root = Path(cache).resolve()
    for r in records:
        src = Path(str(r.get("source", "")))
        if src.is_absolute() and src.is_relative_to(root):
            r["source"] = f"<cache>/{src.relative_to(root).as_posix()}"
    return records


if __name__ == "__main__":
    sys.exit(main())
