"""CPU training steps and evaluation batches of the shipped-size student, with the C allocator as `mad` sets it and as
the system leaves it.

The `mad` command asks glibc's malloc to keep freed memory (mad_pipeline/allocator.py); `MAD_MALLOC=system` leaves
it alone. This times the same work both ways, each in its own process, interleaved: `vilt-tiny` forward and
backward under bf16 autocast (as `train.cpu_bf16=true`) on a VCR-shaped batch (32 images x 4 choices, 32 text
tokens), AdamW step included; then forward alone on an evaluation batch (64 items, the default eval batch size).
One thread per process unless --threads says otherwise. It reports the mean step (some steps page-fault far more
than others), its user and system CPU time and the page faults per step; --pairs 2 runs two processes of each mode
at once, as `bench/lowshot.py --jobs 2` does.

    python bench/cpu_allocator.py                 # ~1 minute on 2 cores
    python bench/cpu_allocator.py --pairs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = r"""
import json, resource, statistics, sys, time  # noqa: E401
import torch
from mad_pipeline.allocator import keep_freed_memory
from mad_pipeline.students import build_student
if sys.argv[1] == "mad":
    keep_freed_memory()
torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[2]))
steps = int(sys.argv[3])
student = build_student("vilt-tiny", "vcr", 1)
opt = torch.optim.AdamW(student.parameters(), 1e-4)


def batch(items):
    ids = torch.randint(1000, 2000, (items, 4, 32))
    boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(items, 1)
    return torch.randn(items, 3, 64, 64), boxes, ids, torch.ones_like(ids)


def train(inputs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(*inputs)
    (out.logits.float().pow(2).mean() + out.visual_tokens.float().pow(2).mean()).backward()
    opt.step()
    opt.zero_grad()


def evaluate(inputs):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        student(*inputs)


result = {}
for phase, fn, inputs in (("train", train, batch(32)), ("eval", evaluate, batch(64))):
    rows = []
    for i in range(steps + 2):  # two warm-up steps
        r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        fn(inputs)
        t, r = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
        if i >= 2:
            rows.append((t, r.ru_utime - r0.ru_utime, r.ru_stime - r0.ru_stime, r.ru_minflt - r0.ru_minflt))
    for k, name in enumerate(("step_s", "user_s", "sys_s", "faults")):
        result[f"{phase}_{name}"] = statistics.mean(row[k] for row in rows)
print(json.dumps(result))
"""


def run_mode(mode: str, threads: int, steps: int, pairs: int) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", STEP, mode, str(threads), str(steps)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(pairs)]
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"error: a {mode} step process failed (exit {[p.returncode for p in procs]})")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=15, help="timed steps per process (after 2 warm-up steps)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each mode")
    ap.add_argument("--pairs", type=int, default=1, help="processes of one mode at once (2: as --jobs 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if platform.system() != "Linux":
        raise SystemExit("error: the allocator setting is glibc's (Linux); nothing to compare here")
    results: dict[str, list[dict]] = {"system": [], "mad": []}
    for _ in range(args.repeats):
        for mode in results:  # interleaved: system, mad, system, mad ...
            results[mode] += run_mode(mode, args.threads, args.steps, args.pairs)
    rows = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in results.items()}
    print(f"vilt-tiny, VCR-shaped batches, bf16 autocast, {args.threads} thread(s), {args.pairs} process(es) at once; "
          f"mean per step over {args.steps} steps, median of {args.repeats} x {args.pairs} processes")
    print(f"{'phase':<40}{'allocator':<28}{'s/step':>8}{'user s':>8}{'sys s':>8}{'faults':>8}")
    for phase, what in (("train", "train step (32 items, 128 texts)"), ("eval", "eval batch (64 items, 256 texts)")):
        for mode, label in (("system", "system (MAD_MALLOC=system)"), ("mad", "mad (keep freed memory)")):
            r = {k: rows[mode][f"{phase}_{k}"] for k in ("step_s", "user_s", "sys_s", "faults")}
            print(f"{what:<40}{label:<28}{r['step_s']:>8.3f}{r['user_s']:>8.3f}{r['sys_s']:>8.3f}{r['faults']:>8.0f}")
        print(f"{what}: mad / system {rows['mad'][phase + '_step_s'] / rows['system'][phase + '_step_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
