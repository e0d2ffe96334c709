"""Majority-answer baseline in the official VQA results format: for each question type, the most common
`multiple_choice_answer` of the training split. Score it with `mad score --per-question-type`.

    python bench/majority_baseline.py --data-root shapes/vqa --split val --out majority_val.json
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from mad_pipeline.data import load_dataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    train = load_dataset("vqa", args.data_root, split="train")
    by_type: dict[str, Counter] = {}
    for s in train.samples:
        by_type.setdefault(s.meta["question_type"], Counter())[s.meta["multiple_choice_answer"]] += 1
    majority = {t: c.most_common(1)[0][0] for t, c in by_type.items()}
    overall = Counter(s.meta["multiple_choice_answer"] for s in train.samples).most_common(1)[0][0]
    ev = load_dataset("vqa", args.data_root, split=args.split)
    preds = [{"question_id": s.meta["question_id"], "answer": majority.get(s.meta["question_type"], overall)}
             for s in ev.samples]
    args.out.write_text(json.dumps(preds))
    print(json.dumps({"split": args.split, "n": len(preds), "majority_per_type": majority}))


if __name__ == "__main__":
    main()
