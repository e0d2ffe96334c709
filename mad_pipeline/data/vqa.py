"""VQA v2 reader for the official release files.

Official files (https://visualqa.org/download.html), per split ``S`` (``train2014``, ``val2014``, ``test2015``,
``test-dev2015``)::

    v2_OpenEnded_mscoco_{S}_questions.json
        {"info", "task_type", "data_type", "data_subtype", "license",
         "questions": [{"image_id": int, "question": str, "question_id": int}, ...]}
    v2_mscoco_{S}_annotations.json                      (train and val only)
        {"info", "license", "data_type", "data_subtype",
         "annotations": [{"question_id", "image_id", "question_type", "answer_type", "multiple_choice_answer",
                          "answers": [{"answer", "answer_confidence", "answer_id"} x 10]}, ...]}
    {train2014,val2014,test2015}/COCO_{train2014,val2014,test2015}_{image_id:012d}.jpg

Data-root layouts accepted: everything at the root, or the VQA API layout (``Questions/``, ``Annotations/``,
``Images/mscoco/{S}/``). Split names: ``train``, ``val``, ``test``, ``test-dev`` (or the full subtype names).

Each sample is one question: ``id`` = str(question_id), ``texts`` = (question,), ``meta`` = question_id, image_id,
question and, where annotations exist, answers (the ten answer strings, in file order), answer_records (the ten
answer objects as in the file, for the official evaluation), answer_type, question_type, multiple_choice_answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputError
from .base import Dataset, Sample, Skipped
from .jsonio import check_int, check_text, load_json, not_unicode, require
from .paths import CUSTOM_SPLIT, first_file, safe_relpath
from .registry import register_reader

# split -> (file subtype, image folder subtype)
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train2014", "train2014"),
    "val": ("val2014", "val2014"),
    "test": ("test2015", "test2015"),
    "test-dev": ("test-dev2015", "test2015"),
}
QUESTIONS_FILE = "v2_OpenEnded_mscoco_{subtype}_questions.json"
ANNOTATIONS_FILE = "v2_mscoco_{subtype}_annotations.json"
IMAGE_FILE = "COCO_{image_subtype}_{image_id:012d}.jpg"
_QUESTION_DIRS = ("", "Questions", "questions")
_ANNOTATION_DIRS = ("", "Annotations", "annotations")
_IMAGE_PARENTS = ("", "Images/mscoco", "images")


def split_subtypes(split: str) -> tuple[str, str]:
    """``"val"`` (or ``"val2014"``) -> (file subtype, image folder subtype)."""
    if split in SPLITS:
        return SPLITS[split]
    for sub, img in SPLITS.values():
        if split == sub:
            return sub, img
    if CUSTOM_SPLIT.fullmatch(split):  # a custom split named like the official ones (shapes: "shift")
        sub = split if re.search(r"\d{4}$", split) else f"{split}2014"
        return sub, sub
    raise InputError(f"--split {split!r}: VQA v2 splits are {', '.join(SPLITS)} (or a custom NAME with "
                     "v2_OpenEnded_mscoco_NAME2014_questions.json)")


def vqa_files(root: Path, split: str) -> tuple[Path, Path | None, str]:
    """Locate (questions file, annotations file or None, image folder relative to root) for a split."""
    root = Path(root)
    sub, img_sub = split_subtypes(split)
    qname = QUESTIONS_FILE.format(subtype=sub)
    questions = first_file(root, _QUESTION_DIRS, qname)
    if questions is None:
        raise InputError(f"{root / qname}: VQA v2 questions file not found (also looked in "
                         f"{', '.join(str(root / d) for d in _QUESTION_DIRS if d)})")
    aname = ANNOTATIONS_FILE.format(subtype=sub)
    annotations = first_file(root, _ANNOTATION_DIRS, aname)
    if annotations is None and not sub.startswith("test"):
        raise InputError(f"{root / aname}: VQA v2 annotations file not found (the {split} split is annotated; "
                         f"also looked in {', '.join(str(root / d) for d in _ANNOTATION_DIRS if d)})")
    image_dir = img_sub
    for parent in _IMAGE_PARENTS:
        cand = f"{parent}/{img_sub}" if parent else img_sub
        if (root / cand).is_dir():
            image_dir = cand
            break
    return questions, annotations, image_dir


@register_reader("vqa")
def read_vqa(root: Path, split: str, on_error: str = "fail") -> Dataset:
    """Read one VQA v2 split under ``root``; see the module docstring for files and layout."""
    root = Path(root)
    questions, annotations, image_dir = vqa_files(root, split)
    image_sub = split_subtypes(split)[1]

    def image_for(image_id: int) -> str:
        return safe_relpath(f"{image_dir}/{IMAGE_FILE.format(image_subtype=image_sub, image_id=image_id)}", root)

    samples, skipped = parse_vqa(questions, annotations, image_for=image_for, on_error=on_error)
    sources = [questions] + ([annotations] if annotations is not None else [])
    return Dataset(name="vqa", root=root, split=split, samples=samples, skipped=skipped, sources=sources)


def parse_vqa(questions: Path, annotations: Path | None = None, *,
              image_for: Callable[[int], str] | None = None,
              on_error: str = "fail") -> tuple[list[Sample], list[Skipped]]:
    """Parse a questions file and (optionally) its annotations file into samples.

    ``image_for(image_id)`` gives the sample's image path (None: samples carry no image, as for scoring).
    Every problem names the file and the record (``question_id=N`` when known, else ``questions[i]``).
    """
    questions = Path(questions)
    skipped: list[Skipped] = []

    def fail(where: str, sample_id: str | None, reason: str) -> None:
        if on_error == "skip":
            skipped.append(Skipped(where, sample_id, reason))
            return
        raise InputError(f"{where}: {reason}")

    qdoc = load_json(questions, "VQA v2 questions file")
    if not isinstance(qdoc, dict) or not isinstance(qdoc.get("questions"), list):
        raise InputError(f"{questions}: expected a JSON object with a 'questions' list (VQA v2 questions file)")
    if not qdoc["questions"]:
        raise InputError(f"{questions}: no questions")
    anns: dict[int, dict[str, Any]] | None = None
    bad_ann_qids: set[int] = set()
    if annotations is not None:
        annotations = Path(annotations)
        anns, bad_ann_qids = _read_annotations(annotations, fail)
    samples, all_qids = _read_questions(questions, qdoc["questions"], annotations, anns, bad_ann_qids, image_for,
                                        fail)
    if anns is not None:
        for qid in anns:
            if qid not in all_qids:
                fail(f"{annotations}:question_id={qid}", str(qid), f"annotation has no question in {questions}")
    return samples, skipped


def _read_annotations(annotations: Path, fail: Callable[[str, str | None, str], None],
                      ) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """(checked annotations by question_id, question_ids whose annotation was bad and skipped)."""
    adoc = load_json(annotations, "VQA v2 annotations file")
    if not isinstance(adoc, dict) or not isinstance(adoc.get("annotations"), list):
        raise InputError(f"{annotations}: expected a JSON object with an 'annotations' list "
                         "(VQA v2 annotations file)")
    anns: dict[int, dict[str, Any]] = {}
    bad_ann_qids: set[int] = set()
    for i, a in enumerate(adoc["annotations"]):
        qid = _peek_qid(a)
        where = f"{annotations}:question_id={qid}" if qid is not None else f"{annotations}:annotations[{i}]"
        try:
            rec = _check_annotation(a)
            if rec["question_id"] in anns:
                raise ValueError("duplicate annotation for this question_id")
        except ValueError as e:
            if qid is not None:
                bad_ann_qids.add(qid)
            fail(where, None if qid is None else str(qid), str(e))
            continue
        anns[rec["question_id"]] = rec
    return anns, bad_ann_qids


def _read_questions(questions: Path, records: list, annotations: Path | None,
                    anns: dict[int, dict[str, Any]] | None, bad_ann_qids: set[int],
                    image_for: Callable[[int], str] | None, fail: Callable[[str, str | None, str], None],
                    ) -> tuple[list[Sample], set[int]]:
    """(samples, every question_id seen, good or bad) of the questions file's records, joined with ``anns``."""
    samples: list[Sample] = []
    seen: set[int] = set()
    all_qids: set[int] = set()
    for i, q in enumerate(records):
        qid = _peek_qid(q)
        if qid is not None:
            all_qids.add(qid)
        where = f"{questions}:question_id={qid}" if qid is not None else f"{questions}:questions[{i}]"
        sid = None if qid is None else str(qid)
        try:
            if not isinstance(q, dict):
                raise ValueError("expected a JSON object")
            qid = check_int(require(q, "question_id"), "question_id")
            image_id = check_int(require(q, "image_id"), "image_id")
            text = check_text(require(q, "question"), "question")
            if qid in seen:
                raise ValueError("duplicate question_id")
            meta: dict[str, Any] = {"question_id": qid, "image_id": image_id, "question": text}
            if anns is not None:
                ann = anns.get(qid)
                if ann is None:
                    if qid in bad_ann_qids:  # already reported (skip mode) with its annotation
                        continue
                    raise ValueError(f"no annotation for this question in {annotations}")
                if ann["image_id"] != image_id:
                    raise ValueError(f"image_id {image_id} differs from the annotation's image_id "
                                     f"{ann['image_id']} in {annotations}")
                meta.update({k: v for k, v in ann.items() if k not in ("question_id", "image_id")})
            image = image_for(image_id) if image_for is not None else None
        except ValueError as e:
            fail(where, sid, str(e))
            continue
        seen.add(qid)
        samples.append(Sample(id=str(qid), image=image, texts=(text,), meta=meta))
    return samples, all_qids


def _peek_qid(rec: Any) -> int | None:
    if isinstance(rec, dict):
        qid = rec.get("question_id")
        if isinstance(qid, int) and not isinstance(qid, bool):
            return qid
    return None


def _check_annotation(a: Any) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise ValueError("expected a JSON object")
    out: dict[str, Any] = {
        "question_id": check_int(require(a, "question_id"), "question_id"),
        "image_id": check_int(require(a, "image_id"), "image_id"),
        "question_type": check_text(require(a, "question_type"), "question_type"),
        "answer_type": check_text(require(a, "answer_type"), "answer_type"),
        "multiple_choice_answer": check_text(require(a, "multiple_choice_answer"), "multiple_choice_answer"),
    }
    answers = require(a, "answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError("field 'answers' must be a non-empty list of answer objects")
    if not _answers_ok(answers):  # the common case checked without building a message per answer
        for j, ans in enumerate(answers):
            _check_answer(j, ans)
    out["answers"] = [ans["answer"] for ans in answers]
    out["answer_records"] = answers  # the file's objects as parsed (each load parses its own)
    return out


def _answers_ok(answers: list) -> bool:
    """Whether every answer object passes :func:`_check_answer` (which names what is wrong when one does not)."""
    try:
        texts = [ans["answer"] for ans in answers]
        ids = [ans.get("answer_id", 0) for ans in answers]
        confidences = [ans.get("answer_confidence", "") for ans in answers]
    except (TypeError, KeyError, AttributeError):  # not an object, or no 'answer'
        return False
    return (all(type(t) is str for t in texts) and not not_unicode("".join(texts))
            and all(type(i) is int for i in ids) and all(type(c) is str for c in confidences))


def _check_answer(j: int, ans: Any) -> None:
    if not isinstance(ans, dict):
        raise ValueError(f"answers[{j}] must be a JSON object")
    if "answer" not in ans:
        raise ValueError(f"answers[{j}]: missing field 'answer'")
    check_text(ans["answer"], f"answers[{j}].answer")
    if "answer_id" in ans:
        check_int(ans["answer_id"], f"answers[{j}].answer_id")
    if "answer_confidence" in ans and not isinstance(ans["answer_confidence"], str):
        raise ValueError(f"field 'answers[{j}].answer_confidence' must be a string")
