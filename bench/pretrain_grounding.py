"""What a pretrained student reads from the image: MLM accuracy per kind of content word (colour, shape, place) on
held-out scenes, with each caption's own image and with another scene's image (same captions, same masks).

    python bench/pretrain_grounding.py                              # the shipped shapes-vilt-tiny
    python bench/pretrain_grounding.py DIR [DIR ...]                # weights directories (mad student pretrain --out)

A kind the model reads from the image drops with another scene's image; what stays is guessed from the text
("top" is followed by "left" or "right"). Prints one table; ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mad_pipeline.students import pretrain as P
from mad_pipeline.students import pretrain_eval as E
from mad_pipeline.students.weights import PRESET_WEIGHTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights", nargs="*", type=Path, help="weights directories (default: the shipped student)")
    ap.add_argument("--scenes", type=int, default=500, help="held-out scenes (past the training pool)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    dirs = args.weights or [Path(PRESET_WEIGHTS["vilt-tiny"])]
    s = P.PretrainSettings()
    pool = P.make_pool(s.seed, s.pool_size, args.scenes)  # the held-out scenes the pretraining figures use
    rows = {}
    for d in dirs:
        model = P.load(d).float().eval()
        with torch.no_grad():
            own = E.mlm_accuracy(model, pool, s.seed, 64, s.mask_prob)
            other = E.mlm_grounding(model, pool, s.seed, 64, s.mask_prob)
        rows[d.name] = {k: (round(100 * own[f"mlm_{k}"], 1), round(100 * other[f"mlm_{k}_other_image"], 1))
                        for k in E.WORD_KINDS}
    if args.json:
        print(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"MLM accuracy (%) per kind of word, {args.scenes} held-out scenes: own image / another image")
    t.add_column("weights")
    for k in E.WORD_KINDS:
        t.add_column(k, justify="right")
    for d, r in rows.items():
        t.add_row(d, *(f"{a:.1f} / {b:.1f}" for a, b in r.values()))
    Console().print(t)


if __name__ == "__main__":
    main()
