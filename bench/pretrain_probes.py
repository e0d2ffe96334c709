"""Why the pretrained student's probe figures trail a from-scratch model's: two checks on the shipped weights.

`mad student pretrain` reports probes of the *first object in reading order* (its colour and shape, and the number of
objects), each model fine-tuned end to end for 200 labelled steps. The pretrained `shapes-vilt-tiny` trails the
from-scratch model on the first object's colour and shape. Two questions, each answered by a table:

- ``--lrs``: is it the fine-tuning learning rate (the pretraining's 5e-4 may overwrite what pretraining learned)?
  Both models fine-tuned at each learning rate given.
- ``--presence``: is it the probe? Captions name objects in a random order, so "first in reading order" is nothing
  pretraining teaches; *presence* probes (which colours / which shapes are in the scene, multi-hot, exact-set and
  per-label accuracy) ask what captions do say. Fine-tuned end to end for both models, and linear on the pretrained
  model's frozen features.

    python bench/pretrain_probes.py --lrs 1e-4,2e-4 --presence      # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mad_pipeline.shapes.world import COLOUR_NAMES, SHAPES
from mad_pipeline.students import pretrain as P
from mad_pipeline.students import pretrain_eval as E
from mad_pipeline.students.weights import PRESET_WEIGHTS


def presence_labels(pool: P.Pool) -> tuple[torch.Tensor, torch.Tensor]:
    colours = torch.zeros(len(pool.scenes), len(COLOUR_NAMES))
    shapes = torch.zeros(len(pool.scenes), len(SHAPES))
    for i, scene in enumerate(pool.scenes):
        for o in scene.objects:
            colours[i, COLOUR_NAMES.index(o.colour)] = 1
            shapes[i, SHAPES.index(o.shape)] = 1
    return colours, shapes


def presence_probes(model, s: P.PretrainSettings, train_pool, test_pool, e: E.EvalSettings,
                    frozen: bool = False) -> dict[str, float]:
    """Two multi-hot linear heads (colours, shapes present) on :func:`E.image_features`; the model trained with them
    (AdamW at the pretraining's lr, as the first-object probes) or frozen (AdamW at the linear probes' lr)."""
    model = copy.deepcopy(model)
    torch.manual_seed(s.seed)
    width = 2 * model.config.hidden_size
    heads = torch.nn.ModuleList([torch.nn.Linear(width, len(COLOUR_NAMES)), torch.nn.Linear(width, len(SHAPES))])
    params = list(heads.parameters()) + ([] if frozen else list(model.parameters()))
    opt = torch.optim.AdamW(params, lr=e.probe_lr if frozen else s.lr, weight_decay=s.weight_decay)
    (c_tr, s_tr), (c_te, s_te) = presence_labels(train_pool), presence_labels(test_pool)
    rng = np.random.default_rng([s.seed, 24])
    model.train()
    for step in range(e.probe_steps):
        if not frozen:
            for g in opt.param_groups:
                g["lr"] = s.lr * min(1.0, (step + 1) / max(1, min(s.warmup, e.probe_steps // 10)))
        idx = torch.from_numpy(rng.choice(len(c_tr), size=min(e.batch_size, len(c_tr)), replace=False))
        f = E.image_features(model, train_pool.images[idx])
        loss = (F.binary_cross_entropy_with_logits(heads[0](f), c_tr[idx])
                + F.binary_cross_entropy_with_logits(heads[1](f), s_tr[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        f = torch.cat([E.image_features(model, test_pool.images[a:a + e.batch_size])
                       for a in range(0, len(test_pool.scenes), e.batch_size)])
        pc, ps = heads[0](f) > 0, heads[1](f) > 0
    return {"colours (set)": float((pc == c_te.bool()).all(1).float().mean()),
            "colours (per label)": float((pc == c_te.bool()).float().mean()),
            "shapes (set)": float((ps == s_te.bool()).all(1).float().mean()),
            "shapes (per label)": float((ps == s_te.bool()).float().mean())}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, default=PRESET_WEIGHTS["vilt-tiny"], help="pretrained weights directory")
    ap.add_argument("--lrs", default="", help="fine-tuning learning rates of the first-object probes, e.g. 1e-4,2e-4")
    ap.add_argument("--presence", action="store_true", help="the presence probes")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = P.load(args.weights)
    s = P.PretrainSettings()
    e = E.EvalSettings()
    train_pool = P.make_pool(s.seed, 0, e.probe_train)
    test_pool = P.make_pool(s.seed, s.pool_size, 500)  # the stage's held-out scenes
    rows = []
    for lr in [float(x) for x in args.lrs.split(",") if x]:
        t0 = time.perf_counter()
        ss = dataclasses.replace(s, lr=lr)
        pre = E.finetuned_probes(model, ss, train_pool, test_pool, e)
        scr = E.finetuned_probes(P.build_model(s.student, s.seed, s.pos_init_std), ss, train_pool, test_pool, e)
        rows += [(f"first object, fine-tuned at lr {lr:g}", k.removeprefix("probe_"), pre[k], scr[k]) for k in pre]
        print(f"lr {lr:g}: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.presence:
        pre = presence_probes(model, s, train_pool, test_pool, e)
        lin = presence_probes(model, s, train_pool, test_pool, e, frozen=True)
        scr = presence_probes(P.build_model(s.student, s.seed, s.pos_init_std), s, train_pool, test_pool, e)
        rows += [("presence, fine-tuned", k, pre[k], scr[k]) for k in pre]
        rows += [("presence, linear (frozen)", k, lin[k], None) for k in lin]
    print("| probe | label | pretrained | from scratch | diff |\n|---|---|---:|---:|---:|")
    for probe, label, a, b in rows:
        diff = "" if b is None else f"{100 * (a - b):+.1f}"
        print(f"| {probe} | {label} | {100 * a:.1f} | {'-' if b is None else f'{100 * b:.1f}'} | {diff} |")


if __name__ == "__main__":
    main()
