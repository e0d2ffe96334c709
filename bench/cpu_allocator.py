"""A CPU training step of the shipped-size student with the C allocator as `mad` sets it and as the system leaves it.

The `mad` command asks glibc's malloc to keep freed memory (mad_pipeline/allocator.py); `MAD_MALLOC=system` leaves
it alone. This times the same student step both ways, each in its own process, interleaved: `vilt-tiny` forward and
backward under bf16 autocast (as `train.cpu_bf16=true`) on a VCR-shaped batch (32 images x 4 choices, 32 text
tokens), AdamW step included, one thread per process unless --threads says otherwise. It reports the mean step
(some steps page-fault far more than others), its user and system CPU time and the page faults per step; --pairs 2
runs two processes of each mode at once, as `bench/lowshot.py --jobs 2` does.

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
B, C, T = 32, 4, 32
ids = torch.randint(1000, 2000, (B, C, T))
mask = torch.ones(B, C, T, dtype=torch.long)
pixels, boxes = torch.randn(B, 3, 64, 64), torch.tensor([[0.0, 0.0, 64.0, 64.0]]).repeat(B, 1)
opt = torch.optim.AdamW(student.parameters(), 1e-4)
times, users, systems, faults = [], [], [], []
for i in range(steps + 2):  # two warm-up steps
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = student(pixels, boxes, ids, mask)
    (out.logits.float().pow(2).mean() + out.visual_tokens.float().pow(2).mean()).backward()
    opt.step()
    opt.zero_grad()
    t, r = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    if i >= 2:
        times.append(t); users.append(r.ru_utime - r0.ru_utime); systems.append(r.ru_stime - r0.ru_stime)
        faults.append(r.ru_minflt - r0.ru_minflt)
print(json.dumps({"step_s": statistics.mean(times), "user_s": statistics.mean(users),
                  "sys_s": statistics.mean(systems), "faults": statistics.mean(faults)}))
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
    print(f"vilt-tiny step, VCR-shaped batch (128 texts), bf16 autocast, {args.threads} thread(s), "
          f"{args.pairs} process(es) at once, mean per step over {args.steps} steps, "
          f"median of {args.repeats} x {args.pairs} processes")
    print(f"{'allocator':<28}{'step s':>9}{'user s':>9}{'sys s':>9}{'faults':>9}")
    for mode, label in (("system", "system (MAD_MALLOC=system)"), ("mad", "mad (keep freed memory)")):
        r = rows[mode]
        print(f"{label:<28}{r['step_s']:>9.3f}{r['user_s']:>9.3f}{r['sys_s']:>9.3f}{r['faults']:>9.0f}")
    print(f"step time, mad / system: {rows['mad']['step_s'] / rows['system']['step_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
