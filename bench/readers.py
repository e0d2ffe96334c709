"""How long the benchmark readers take to read a split at its real size: VQA v2 train (443,757 questions with ten
answers each, over 82,783 images), SNLI-VE train (529,527 pairs over 29,783 images) and VCR train (212,923
questions), written in the official formats with synthetic contents (random words, the official fields and their
usual sizes, SNLI's parse trees included) and read through ``load_dataset`` twice in one process: the first read
parses and checks every record; the second is what the later stages of a ``mad run`` process get (the split read
again, unchanged).

    python bench/readers.py                       # the real sizes: about 2 GB of files in a temporary folder
    python bench/readers.py --scale 0.1 --json docs/results/bench-readers.json

Prints one row per split: records, file size, seconds and records per second of each read, peak RSS after it.
The files are written once per ``--dir`` and reused (their modification time is set an hour back, as a dataset's
files are: not written a moment before they are read).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mad_pipeline.data import load_dataset  # noqa: E402

SIZES = {"vqa": (443_757, 82_783), "snli-ve": (529_527, 29_783), "vcr": (212_923, 80_000)}
WORDS = [f"w{i}" for i in range(2000)]
QTYPES = ["what color is the", "how many", "is there a", "what is the", "where is the"]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def write_vqa(root: Path, n: int, images: int, rng: random.Random) -> None:
    questions, annotations = [], []
    for q in range(n):
        image_id = q % images
        questions.append({"image_id": image_id, "question": words(rng, 6) + "?", "question_id": q})
        answers = [{"answer": words(rng, 1), "answer_confidence": rng.choice(["yes", "maybe", "no"]),
                    "answer_id": j + 1} for j in range(10)]
        annotations.append({"question_type": rng.choice(QTYPES), "multiple_choice_answer": answers[0]["answer"],
                            "answers": answers, "image_id": image_id, "answer_type": "other", "question_id": q})
    info = {"description": "synthetic", "version": "2.0"}
    (root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps(
        {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": "train2014",
         "questions": questions}))
    (root / "v2_mscoco_train2014_annotations.json").write_text(json.dumps(
        {"info": info, "data_type": "mscoco", "data_subtype": "train2014", "annotations": annotations}))


def write_snli_ve(root: Path, n: int, images: int, rng: random.Random) -> None:
    with (root / "snli_ve_train.jsonl").open("w") as f:
        for i in range(n):
            fid = str(1000000 + i % images)
            s1, s2 = words(rng, 12), words(rng, 7)
            label = rng.choice(["entailment", "neutral", "contradiction"])
            f.write(json.dumps({"Flickr30K_ID": fid, "annotator_labels": [label], "captionID": f"{fid}.jpg#{i % 5}",
                                "gold_label": label, "pairID": f"{fid}.jpg#{i % 5}r{i}", "sentence1": s1,
                                "sentence1_binary_parse": f"( ( {s1} ) . )", "sentence1_parse": f"(ROOT (S {s1}))",
                                "sentence2": s2, "sentence2_binary_parse": f"( ( {s2} ) . )",
                                "sentence2_parse": f"(ROOT (S {s2}))"}, sort_keys=True) + "\n")


def write_vcr(root: Path, n: int, images: int, rng: random.Random) -> None:
    def tokens(k: int, objects: int) -> list:
        return [[rng.randrange(objects)] if rng.random() < 0.15 else rng.choice(WORDS) for _ in range(k)] + ["?"]

    with (root / "train.jsonl").open("w") as f:
        for i in range(n):
            objects = ["person"] * rng.randint(2, 6)
            frame = f"movie{i % images // 50}/frame{i % images}"
            f.write(json.dumps({
                "movie": frame.split("/")[0], "objects": objects, "interesting_scores": [0],
                "answer_likelihood": "likely", "img_fn": f"{frame}.jpg", "metadata_fn": f"{frame}.json",
                "answer_orig": words(rng, 8), "question_orig": words(rng, 8), "rationale_orig": words(rng, 14),
                "question": tokens(8, len(objects)), "answer_match_iter": [3, 0, 2, 1],
                "answer_sources": [1, 2, 3, 4], "answer_choices": [tokens(9, len(objects)) for _ in range(4)],
                "answer_label": rng.randrange(4), "rationale_choices": [tokens(15, len(objects)) for _ in range(4)],
                "rationale_sources": [1, 2, 3, 4], "rationale_match_iter": [1, 3, 2, 0],
                "rationale_label": rng.randrange(4), "img_id": f"train-{i % images}", "question_number": 0,
                "annot_id": f"train-{i}", "match_fold": "train-0", "match_index": i}) + "\n")


WRITERS = {"vqa": write_vqa, "snli-ve": write_snli_ve, "vcr": write_vcr}


def prepare(base: Path, name: str, scale: float) -> Path:
    """The split's folder under ``base``, written unless a complete earlier one of the same size is there."""
    n, images = (max(1, round(v * scale)) for v in SIZES[name])
    root = base / f"{name}-{n}"
    done = root / ".complete"
    if not done.exists():
        root.mkdir(parents=True, exist_ok=True)
        WRITERS[name](root, n, images, random.Random(0))
        done.touch()
    hour_ago = time.time() - 3600
    for path in (root, *root.iterdir()):
        os.utime(path, (hour_ago, hour_ago))
    return root


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real sizes (default: the real sizes)")
    ap.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "mad-bench-readers",
                    help="where the files are written (kept for the next run)")
    ap.add_argument("--only", action="append", choices=list(SIZES), help="one split (repeatable)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    rows = []
    print("| split | records | files | first read | again (the same process) | peak RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.only or list(SIZES):
        root = prepare(args.dir, name, args.scale)
        size = sum(p.stat().st_size for p in root.iterdir() if p.is_file())
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            ds = load_dataset(name, root, split="train")
            times.append(time.perf_counter() - t0)
        n = len(ds.samples)
        row = {"split": f"{name} train", "records": n, "bytes": size, "first_s": times[0], "again_s": times[1],
               "peak_rss_mb": peak_rss_mb()}
        rows.append(row)
        print(f"| {row['split']} | {n:,} | {size / 1e6:,.0f} MB | {times[0]:.2f} s ({n / times[0]:,.0f}/s) | "
              f"{times[1]:.2f} s | {row['peak_rss_mb']:,.0f} MB |", flush=True)
        del ds
    if args.json:
        args.json.write_text(json.dumps({"scale": args.scale, "rows": rows, "python": sys.version.split()[0]},
                                        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
