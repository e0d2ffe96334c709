"""How much a pretrained student's pooled output (the [CLS] projection its ITM head and every task head read) varies
from image to image, and a copy of the weights with a fresh pooler.

    python bench/pretrain_pooler.py                                  # the shipped shapes-vilt-tiny
    python bench/pretrain_pooler.py DIR [DIR ...]                    # weights directories (mad student pretrain --out)
    python bench/pretrain_pooler.py DIR --reset-pooler OUT           # OUT: DIR with the pooler drawn afresh

For each weights directory and question, over held-out scenes with the same question: the standard deviation across
images of the [CLS] token's last hidden state and of the pooled output (mean over dimensions), and the mean of
1 - tanh^2 (the pooler's gradient factor). A student whose ITM training squeezed the pooled output into a
match / no-match code shows a small pooled spread beside a normal [CLS] spread; its task head then starts from
nearly the same input for every image. ``--reset-pooler OUT`` writes DIR with the pooler's weights drawn as
transformers initialises them (normal, std = the config's initializer_range; bias zero; seeded), to finetune from
(``mad distill --pretrained OUT``, or ``pretrained=OUT`` in a ``mad run`` YAML).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from mad_pipeline.students import pretrain as P
from mad_pipeline.students.pretrain_data import pixels, tokenize
from mad_pipeline.students.vilt import draw_pooler, load_tokenizer
from mad_pipeline.students.weights import PRESET_WEIGHTS

QUESTIONS = ("what color is the circle?", "is there a red square?")


def spread(model: P.PretrainModel, pool: P.Pool, question: str, tokenizer) -> dict[str, float]:
    ids, att, _ = tokenize(tokenizer, [question] * len(pool.scenes), model.config.max_position_embeddings)
    with torch.no_grad():
        hidden, pooled = model.encode(pixels(pool.images), ids, att)
    return {"cls_std": hidden[:, 0].std(0).mean().item(), "pooled_std": pooled.std(0).mean().item(),
            "tanh_grad": (1 - pooled**2).mean().item()}


def reset_pooler(src: Path, dst: Path, seed: int = 0) -> None:
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst, dirs_exist_ok=True)
    state = load_file(src / "model.safetensors")
    std = json.loads((src / "config.json").read_text()).get("initializer_range", 0.02)
    out_features, in_features = state["vilt.pooler.dense.weight"].shape
    dense = torch.nn.Linear(in_features, out_features)
    draw_pooler(dense, std, torch.Generator().manual_seed(seed))  # as `mad distill --fresh-pooler` draws it
    state["vilt.pooler.dense.bias"] = dense.bias.detach().to(state["vilt.pooler.dense.bias"])
    state["vilt.pooler.dense.weight"] = dense.weight.detach()
    save_file({k: v.contiguous() for k, v in state.items()}, dst / "model.safetensors", metadata={"format": "pt"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="*", type=Path, help="weights directories (default: the shipped student)")
    ap.add_argument("--scenes", type=int, default=128, help="held-out scenes (past the training pool)")
    ap.add_argument("--reset-pooler", type=Path, metavar="OUT", help="write the (one) DIR with a fresh pooler to OUT")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dirs = args.weights or [Path(PRESET_WEIGHTS["vilt-tiny"])]
    if args.reset_pooler:
        if len(dirs) != 1:
            ap.error("--reset-pooler takes one weights directory")
        reset_pooler(dirs[0], args.reset_pooler)
        print(f"wrote {args.reset_pooler}")
        return
    s = P.PretrainSettings()
    pool = P.make_pool(s.seed, s.pool_size, args.scenes)
    tokenizer = load_tokenizer(None)
    rows = {}
    for d in dirs:
        model = P.load(d).float().eval()
        rows[d.name] = {q: {k: round(v, 3) for k, v in spread(model, pool, q, tokenizer).items()} for q in QUESTIONS}
    if args.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"Spread across {args.scenes} held-out images (std per dimension, mean over dimensions)")
    for c in ("weights", "question", "[CLS] std", "pooled std", "mean 1 - tanh^2"):
        t.add_column(c, justify="left" if c in ("weights", "question") else "right")
    for d, by_q in rows.items():
        for q, r in by_q.items():
            t.add_row(d, q, f"{r['cls_std']:.3f}", f"{r['pooled_std']:.3f}", f"{r['tanh_grad']:.3f}")
    Console().print(t)


if __name__ == "__main__":
    main()
