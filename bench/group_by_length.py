"""What less padding buys a training step, per task, on the shapes world: batches of similar text length
(``train.group_by_length``, ``mad distill --group-by-length N``) or each batch through the student in sub-batches of
similar text length (``train.length_buckets``, ``mad distill --length-buckets N``; ``--lever length-buckets``).

A batch is padded to its longest text. On VCR every sample is asked twice, as Q->A (four "question answer" texts) and
as QA->R (four longer "question answer rationale" texts), and a shuffled batch of both is padded to the QA->R length;
VQA questions and SNLI-VE hypotheses vary less. For each task this runs the real ``mad distill`` (a subprocess, one
torch thread, store-fed MAD with the study's teacher, ``shapes-clip``) for ``--steps`` steps with the lever off and
at ``N`` in alternating order, ``--repeats`` times, and reports the median training step (the run's own
``step_time_s``: the median over its steps) and the lever's / plain ratio per repeat. The texts' padded widths come
from the same batching code (``ResumableBatches`` over the training items, one epoch), tokenised by the student, and
so does the share of the padded tokens (text and image) that sub-batches of similar length leave. Either lever makes
a run another run (another cache key): the figures here are the step's cost, not the accuracy.

    python bench/group_by_length.py --json docs/results/bench-group-by-length-avx2.json   # about 11 minutes on 2 cores
    python bench/group_by_length.py --lever length-buckets --json docs/results/bench-length-buckets-avx2.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TASKS = ("vcr", "vqa", "snli-ve")
OFF = {"group-by-length": 0, "length-buckets": 1}  # each lever's value when off


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def widths_and_mix(root: Path, task_name: str, student: str, group: int, batch_size: int,
                   buckets: int = 1) -> tuple[float, float | None, float]:
    """The mean width the student's texts are padded to, over one epoch of the training items' batches, the share
    of those batches whose items all come from one block of the task's training items (VCR: all Q->A or all QA->R;
    None for a task with one block): what grouping by length does to a batch's mix, and the share of the batches'
    padded tokens (text and image) that runs in up to ``buckets`` sub-batches of similar length leave."""
    import numpy as np

    from mad_pipeline.data import load_dataset
    from mad_pipeline.students.vilt import build_vilt
    from mad_pipeline.tasks import get_task
    from mad_pipeline.training.buckets import padded_tokens, plan
    from mad_pipeline.training.collate import StudentTokenizer
    from mad_pipeline.training.sampler import ChunkShuffleSampler, ResumableBatches, text_lengths

    task = get_task(task_name)
    ds = load_dataset(task_name, root / task_name, split="train")
    task.fit(ds.samples)
    items = task.training_samples(ds.samples)  # (VCR: each question as Q->A and as QA->R)
    model = build_vilt(student, task_name, task.num_classes)
    tokenize, image_tokens = StudentTokenizer(model), model.grid[0] * model.grid[1]
    lengths = text_lengths([task.student_texts(s) for s in items], tokenize)
    rows = np.arange(len(items))  # (the store order does not change the widths' mean much: a stand-in)
    batches = list(ResumableBatches(ChunkShuffleSampler(rows, 64, 8, seed=0), batch_size, lengths, group))
    block = rows // len(ds.samples)  # training_samples lists each block whole: the samples, then each copy's block
    one_block = float(np.mean([len(set(block[b])) == 1 for b in batches])) if block.max() > 0 else None
    whole = sum(padded_tokens(lengths[b], [np.arange(len(b))], image_tokens) for b in batches)
    cut = sum(padded_tokens(lengths[b], plan(lengths[b], image_tokens, buckets), image_tokens) for b in batches)
    return float(np.mean([lengths[b].max() for b in batches])), one_block, cut / whole


def distill(root: Path, task: str, n: int, args, tmp: Path, name: str) -> float:
    """One ``mad distill`` run; its median step in seconds."""
    out = tmp / "runs" / name
    cmd = [sys.executable, "-m", "mad_pipeline.cli", "distill", "--task", task, "--data-root", str(root / task),
           "--teacher", "shapes-clip", "--student", args.student, "--init", "scratch", "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), f"--{args.lever}", str(n), "--cache", str(tmp / "cache"),
           "--out", str(out), "--num-workers", "0", "--log-every", "5", "--json", "-q"]
    if args.cpu_bf16:
        cmd.append("--cpu-bf16")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["step_time_s"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS), help="comma list (default vcr,vqa,snli-ve)")
    p.add_argument("--student", default="vilt-mini-l3", help="student preset (default vilt-mini-l3, the study's)")
    p.add_argument("--lever", choices=tuple(OFF), default="group-by-length", help="what the timed runs compare "
                   "with plain batches (default group-by-length)")
    p.add_argument("--group", type=int, default=None, help="its N (default: 8 for --group-by-length, 2 for "
                   "--length-buckets)")
    p.add_argument("--steps", type=int, default=40, help="steps per run (default 40)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed runs each way (0: the batches' widths and mix only)")
    p.add_argument("--world-size", type=int, default=4000, help="shapes-world training images (default 4000, the "
                   "study's main tables)")
    p.add_argument("--cpu-bf16", action="store_true", help="train under bf16 autocast (fast on CPUs with native bf16)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    args.group = args.group or {"group-by-length": 8, "length-buckets": 2}[args.lever]
    from mad_pipeline.machine import machine
    from mad_pipeline.shapes.formats import write_dataset

    t0 = time.perf_counter()
    res: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                 "machine": machine(), "tasks": {}}
    with tempfile.TemporaryDirectory(prefix="mad-bench-group-") as d:
        tmp = Path(d)
        write_dataset(tmp / "world", size=args.world_size, seed=0)
        for task in args.tasks.split(","):
            buckets = args.group if args.lever == "length-buckets" else 2
            group = args.group if args.lever == "group-by-length" else 8  # the widths with grouping, either way
            plain = widths_and_mix(tmp / "world", task, args.student, 0, args.batch_size, buckets)
            grouped = widths_and_mix(tmp / "world", task, args.student, group, args.batch_size)
            res["tasks"][task] = {"width_plain": plain[0], "width_grouped": grouped[0], "one_block_plain": plain[1],
                                  "one_block_grouped": grouped[1], "buckets": buckets, "bucket_token_share": plain[2]}
            if args.repeats:
                res["tasks"][task].update(time_runs(tmp, task, args))
    res["seconds"] = time.perf_counter() - t0
    m = res["machine"]
    print(f"less padding -- {m['cpu']}, 1 thread, student {args.student}, batch {args.batch_size}, {args.steps} "
          f"steps, {'bf16' if args.cpu_bf16 else 'fp32'}, timed: --{args.lever} {args.group} vs {OFF[args.lever]}")
    print("| task | padded text width, plain | grouped by length (8) | one-block batches, plain | grouped | padded "
          "tokens left by sub-batches | ms/step, plain | with the lever | with / plain (per repeat) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for task, r in res["tasks"].items():
        share = [f"{r[k]:.0%}" if r[k] is not None else "-" for k in ("one_block_plain", "one_block_grouped")]
        timing = (f"{r['ms_plain']:.1f} | {r['ms_grouped']:.1f} | {r['ratio']:.2f} "
                  f"({', '.join(f'{x:.2f}' for x in r['ratio_runs'])})" if "ratio" in r else "- | - | -")
        print(f"| {task} | {r['width_plain']:.1f} | {r['width_grouped']:.1f} | {share[0]} | {share[1]} | "
              f"{r['bucket_token_share']:.2f} ({r['buckets']}) | {timing} |")
    print(f"total {res['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


def time_runs(tmp: Path, task: str, args) -> dict:
    """The step time of ``--repeats`` runs each way, alternating, after one short run that builds the stores
    (``ms_grouped``: with the lever, whichever it is)."""
    off = OFF[args.lever]
    distill(tmp / "world", task, off, argparse.Namespace(**{**vars(args), "steps": 2}), tmp, f"{task}-stores")
    runs: dict[int, list[float]] = {off: [], args.group: []}
    for rep in range(args.repeats):
        for g in ((off, args.group) if rep % 2 == 0 else (args.group, off)):
            runs[g].append(distill(tmp / "world", task, g, args, tmp, f"{task}-{g}-{rep}"))
            log(f"{task} --{args.lever} {g} repeat {rep + 1}: {runs[g][-1] * 1000:.1f} ms/step")
    plain, grouped = (statistics.median(runs[g]) for g in (off, args.group))
    return {"ms_plain": plain * 1000, "ms_grouped": grouped * 1000, "ratio": grouped / plain,
            "ratio_runs": [round(b / a, 3) for a, b in zip(runs[off], runs[args.group], strict=True)],
            "ms_runs": {str(g): [round(x * 1000, 1) for x in v] for g, v in runs.items()}}


if __name__ == "__main__":
    raise SystemExit(main())
