"""What a cheaper student would buy the low-shot study on a CPU: the training-step cost of ``vilt-tiny`` and of
smaller variants of it, on the study's own batch shapes, and the study's time scaled by it.

For each variant (fewer layers, a narrower model, fewer image tokens: a larger patch on the same 64-pixel image) it
times the student's forward, a cross-entropy on its pooled logits and the backward, under bf16 autocast as the study
trains on CPU (``train.cpu_bf16``), at one torch thread (the study's ``--jobs 2`` schedule on 2 cores), on two batch
shapes: VQA / SNLI-VE (32 texts of ``--text-len`` tokens) and VCR (32 items x 4 choices = 128 texts of
``--vcr-text-len`` tokens). Step time is the median over ``--steps`` steps after ``--warmup``. The study's estimate
scales the distill-stage seconds of a ``bench/lowshot.py`` record (``lowshot.json``) task by task by the variant's
ratio to ``vilt-tiny``: the same number of steps to converge is assumed, which a smaller student need not keep, and
the rest of a step (the batch, AdamW, the distillation loss: about 6% of a VCR step) is scaled with it.

    python bench/student_cost.py          # nothing else running: the figures are one-thread wall times
    python bench/student_cost.py --record docs/results/study-shipped/world4000-bf16-converged-floor/lowshot.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mad_pipeline.students.vilt import VILT_CONFIGS, build_vilt  # noqa: E402

# name -> changes to vilt-tiny's config (hidden 128, 4 layers, 4 heads, MLP 512, 64-pixel image, patch 8)
VARIANTS = {
    "vilt-tiny": {},
    "2 layers": {"num_hidden_layers": 2},
    "hidden 96, MLP 384": {"hidden_size": 96, "intermediate_size": 384},
    "patch 16 (16 image tokens)": {"patch_size": 16},
    "3 layers, patch 16 (vilt-mini-l3)": {"num_hidden_layers": 3, "patch_size": 16},
    "2 layers, patch 16 (vilt-mini)": {"num_hidden_layers": 2, "patch_size": 16},
}
RECORD = ROOT / "docs" / "results" / "study-shipped" / "world4000-bf16-converged-floor" / "lowshot.json"


def step_time(student, images: int, choices: int, text_len: int, steps: int, warmup: int) -> float:
    """Median seconds of forward + loss + backward for ``images`` images with ``choices`` texts each."""
    g = torch.Generator().manual_seed(0)
    size = student.image_size
    pixels = torch.randn(images, 3, size, size, generator=g)
    boxes = torch.tensor([[0.0, 0.0, size, size]]).repeat(images, 1)
    shape = (images, choices, text_len) if choices > 1 else (images, text_len)
    ids = torch.randint(1000, 2000, shape, generator=g)
    mask = torch.ones_like(ids)
    target = torch.zeros(images, dtype=torch.long)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = student(pixels, boxes, ids, mask)
        loss = torch.nn.functional.cross_entropy(out.logits.float(), target)
        loss.backward()
        student.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def variant_row(name: str, change: dict, args) -> tuple[str, int, float, float]:
    """(name, backbone parameters, VQA-batch step, VCR-batch step) of vilt-tiny with ``change`` to its config."""
    VILT_CONFIGS["bench-variant"] = {**VILT_CONFIGS["vilt-tiny"], **change}
    torch.manual_seed(0)
    mc = build_vilt("bench-variant", "vcr", 1)
    single = build_vilt("bench-variant", "vqa", 10)
    params = sum(p.numel() for p in single.backbone.parameters())
    vqa = step_time(single, 32, 1, args.text_len, args.steps, args.warmup)
    vcr = step_time(mc, 32, 4, args.vcr_text_len, args.steps, args.warmup)
    print(f"{name}: {params / 1e6:.2f} M backbone parameters, VQA batch {vqa * 1e3:.0f} ms, "
          f"VCR batch {vcr * 1e3:.0f} ms", file=sys.stderr, flush=True)
    return name, params, vqa, vcr


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--text-len", type=int, default=16, help="tokens per VQA / SNLI-VE text (padded batch)")
    ap.add_argument("--vcr-text-len", type=int, default=39, help="tokens per VCR text (padded batch)")
    ap.add_argument("--record", type=Path, default=RECORD, help="a bench/lowshot.py lowshot.json to scale")
    args = ap.parse_args(argv)
    seconds = json.loads(args.record.read_text())["distill_stage_seconds"]
    by_task = {task: sum(v.values()) for task, v in seconds.items()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = [variant_row(name, change, args) for name, change in VARIANTS.items()]
    finally:
        torch.set_num_threads(threads)
        VILT_CONFIGS.pop("bench-variant", None)
    _, _, vqa0, vcr0 = rows[0]
    total0 = sum(by_task.values())
    record = args.record.resolve()
    shown = record.relative_to(ROOT) if record.is_relative_to(ROOT) else record
    print(f"\nOne torch thread, bf16 autocast; the study's record: {shown} "
          f"({total0:,.0f} s of one-thread distill stages)\n")
    print("| student | backbone parameters | VQA batch (32 texts) | VCR batch (128 texts) | the study's distill "
          "stages, scaled | hours at two at a time |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, params, vqa, vcr in rows:
        total = sum(s * (vcr / vcr0 if task == "vcr" else vqa / vqa0) for task, s in by_task.items())
        print(f"| {name} | {params / 1e6:.2f} M | {vqa * 1e3:.0f} ms ({vqa / vqa0:.2f}x) | {vcr * 1e3:.0f} ms "
              f"({vcr / vcr0:.2f}x) | {total:,.0f} s | {total / 2 / 3600:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
