"""Does image-text matching (ITM) learn in the student's pretraining? A short run of ``mad student pretrain``'s own
loop under changed conditions, printing the ITM loss and batch accuracy every ``--every`` steps.

Pretraining with MLM + ITM from the first step learns masked language modelling (MLM) but its ITM loss stays at
ln 2 = 0.693 (chance). This script isolates why, one condition at a time, with the library's own pieces
(``mad_pipeline.students.pretrain``: ``Loop.losses`` and ``Loop.update``, the very objectives and optimizer step of
``mad student pretrain``; the share of hard negatives is held at ``--hard-fraction``), or runs the pretraining's own
schedule (``--schedule``: ``Loop.step``, with ``--itm-start``, ``--hard-gate``, ``--hard-ramp``):

- ``--init scratch`` or ``--init DIR`` (a ``mad student pretrain`` output: start from its MLM-grounded weights);
- ``--no-mlm`` (ITM alone) or MLM + ITM as in pretraining, the ITM loss multiplied by ``--itm-weight``;
- ``--hard-fraction`` (share of the non-matching captions that are hard: one attribute changed);
- ``--itm-from N``: MLM alone for the first N steps, then MLM + ITM (an MLM-only phase before matching);
- ``--grad-norms``: print each objective's gradient norm on a few shared parameters at the first batch and stop;
- ``--schedule``: ``mad student pretrain``'s schedule (MLM alone, then ITM, hard negatives once easy ITM is learned).

    python bench/pretrain_itm.py --init DIR --no-mlm --hard-fraction 0 --steps 200 --lr 1e-4 --batch-size 32
    python bench/pretrain_itm.py --init DIR --hard-fraction 0 --steps 160 --lr 1e-4 --batch-size 32
    python bench/pretrain_itm.py --init DIR --grad-norms
    python bench/pretrain_itm.py --init DIR --schedule --itm-start 0 --steps 400 --lr 2e-4 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--init", default="scratch", help="scratch, or a directory written by mad student pretrain")
    ap.add_argument("--no-mlm", action="store_true", help="ITM alone")
    ap.add_argument("--itm-weight", type=float, default=1.0)
    ap.add_argument("--hard-fraction", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--pool", type=int, default=4000, help="training scenes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    ap.add_argument("--itm-from", type=int, default=0, help="MLM alone before this step")
    ap.add_argument("--every", type=int, default=20, help="print the mean of the last N steps every N steps")
    ap.add_argument("--grad-norms", action="store_true")
    ap.add_argument("--schedule", action="store_true", help="the pretraining's own schedule (Loop.step)")
    ap.add_argument("--itm-start", type=float, default=0.6, help="--schedule: share of the steps of MLM alone")
    ap.add_argument("--hard-gate", type=float, default=0.8, help="--schedule: easy-ITM accuracy that lets hard in")
    ap.add_argument("--hard-ramp", type=float, default=0.1, help="--schedule: share of the steps of the hard ramp")
    args = ap.parse_args(argv)

    import torch

    from mad_pipeline.students import pretrain as P

    torch.set_num_threads(args.threads)
    s = P.PretrainSettings(seed=args.seed, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           warmup=args.warmup, hard_fraction=args.hard_fraction, hard_ramp=args.hard_ramp,
                           itm_weight=args.itm_weight, itm_start=args.itm_start, hard_gate=args.hard_gate)
    pool = P.make_pool(args.seed, 0, args.pool)
    loop = P.Loop(s, pool, None if args.init == "scratch" else P.load(args.init).train())

    if args.grad_norms:
        out = loop.losses(loop._batch(), hard=args.hard_fraction)
        named = list(loop.model.named_parameters())
        grads = [torch.autograd.grad(out[k], [p for _, p in named], allow_unused=True) for k in ("mlm", "itm")]
        print(f"{'parameter':64s} {'|grad MLM|':>11s} {'|grad ITM|':>11s}")
        for (name, _), g1, g2 in zip(named, *grads, strict=True):
            if any(k in name for k in ("word_embeddings", "patch_embeddings.projection.weight", "layer.0.attention",
                                       "layer.3.output.dense.weight", "pooler.dense.weight", "itm_score.weight")):
                n1 = 0.0 if g1 is None else g1.norm().item()
                n2 = 0.0 if g2 is None else g2.norm().item()
                print(f"{name:64s} {n1:11.2e} {n2:11.2e}")
        print(f"losses: MLM {out['mlm'].item():.3f}, ITM {out['itm'].item():.3f}")
        return 0

    t0, hist = time.perf_counter(), []
    for step in range(args.steps):
        if args.schedule:
            info = loop.step(step)
            hist.append((info["mlm"], info["itm"], info["itm_acc"], info["hard"]))
        else:
            out = loop.losses(loop._batch(), mlm=not args.no_mlm, itm=step >= args.itm_from,
                              hard=args.hard_fraction)
            zero = torch.zeros(())
            l_mlm, l_itm = out.get("mlm", zero), out.get("itm", zero)
            loop.update(l_mlm + s.itm_weight * l_itm, P.lr_at(step, s))
            hist.append((l_mlm.item(), l_itm.item(), out["itm_acc"].item() if "itm_acc" in out else 0.5,
                         args.hard_fraction))
        if (step + 1) % args.every == 0:
            m = np.mean(hist[-args.every:], axis=0)
            print(f"step {step + 1:5d}  MLM loss {m[0]:.3f}  ITM loss {m[1]:.3f}  ITM batch accuracy {m[2]:.3f}  "
                  f"hard share {m[3]:.2f}  {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
