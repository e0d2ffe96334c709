"""Score predictions with the tasks' official metrics.

Prediction files (one JSON array; every annotated record needs exactly one prediction, none may be unknown):

- ``vqa``: the official VQA results format ``[{"question_id": int, "answer": str}, ...]``, scored against the
  ``v2_OpenEnded_mscoco_*_questions.json`` / ``v2_mscoco_*_annotations.json`` pair.
- ``snli-ve``: ``[{"pairID": str, "label": "entailment" | "neutral" | "contradiction"}, ...]`` (``label`` may
  also be the index 0/1/2 in that order), scored against ``snli_ve_{dev,test}.jsonl``.
- ``vcr``: ``[{"annot_id": str, "answer": 0-3, "rationale": 0-3}, ...]`` (``rationale`` is the choice made given
  the right answer, as in the official QA->R protocol), scored against ``val.jsonl``.

All accuracies are percentages, unrounded (the official VQA code prints them rounded to 2 decimals).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.data.snli_ve import LABELS, parse_snli_ve
from mad_pipeline.data.vcr import NUM_CHOICES, parse_vcr
from mad_pipeline.data.vqa import load_json, parse_vqa
from mad_pipeline.errors import InputError
from mad_pipeline.tasks import TASKS
from mad_pipeline.tasks.metrics import snli_ve_evaluate, vcr_evaluate, vqa_evaluate


@dataclass(frozen=True)
class ScoreConfig:
    task: str  # "vqa" | "snli-ve" | "vcr"
    predictions: Path | None
    annotations: Path
    questions: Path | None = None  # VQA only: the questions file paired with the annotations
    zeroshot: Path | None = None  # score the teacher's zero-shot store instead of a predictions file
    write_predictions: Path | None = None  # with zeroshot: where to write them in the official format


def run(cfg: ScoreConfig) -> dict[str, Any]:
    if cfg.task not in TASKS:
        raise InputError(f"--task {cfg.task!r}: known tasks are {', '.join(TASKS)}")
    if (cfg.predictions is None) == (cfg.zeroshot is None):
        raise InputError("give exactly one of --predictions FILE or --zeroshot STORE")
    if cfg.zeroshot is not None:
        return _score_zeroshot(cfg)
    if cfg.task == "vqa":
        out = _score_vqa(cfg)
    elif cfg.task == "snli-ve":
        out = _score_snli_ve(cfg)
    else:
        out = _score_vcr(cfg)
    return {"task": cfg.task, **out, "predictions": str(cfg.predictions), "annotations": str(cfg.annotations)}


def _score_vqa(cfg: ScoreConfig) -> dict[str, Any]:
    if cfg.questions is None:
        raise InputError("--questions is required with --task vqa (the v2_OpenEnded_mscoco_*_questions.json "
                         "file that goes with --annotations)")
    samples, _ = parse_vqa(Path(cfg.questions), Path(cfg.annotations))
    anns = {s.meta["question_id"]: s.meta for s in samples}

    def parse(rec: dict[str, Any]) -> str:
        answer = rec.get("answer")
        if not isinstance(answer, str):
            raise ValueError("field 'answer' must be a string" if "answer" in rec else "missing field 'answer'")
        return answer

    preds = _load_predictions(Path(cfg.predictions), "question_id", int, parse, anns, Path(cfg.annotations))
    res = vqa_evaluate(preds, anns)
    res.pop("per_question")
    return res


def _score_snli_ve(cfg: ScoreConfig) -> dict[str, Any]:
    samples, _ = parse_snli_ve(Path(cfg.annotations))
    gold = {s.id: s.meta["gold_label"] for s in samples}

    def parse(rec: dict[str, Any]) -> str:
        if "label" not in rec:
            raise ValueError("missing field 'label'")
        label = rec["label"]
        if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(LABELS):
            return LABELS[label]
        if label not in LABELS:
            raise ValueError(f"label {label!r} is not one of {', '.join(LABELS)} (or 0-{len(LABELS) - 1})")
        return label

    preds = _load_predictions(Path(cfg.predictions), "pairID", str, parse, gold, Path(cfg.annotations))
    return snli_ve_evaluate(preds, gold)


def _score_vcr(cfg: ScoreConfig) -> dict[str, Any]:
    samples, _ = parse_vcr(Path(cfg.annotations), require_labels=True)
    gold = {s.id: (s.meta["answer_label"], s.meta["rationale_label"]) for s in samples}

    def choice(rec: dict[str, Any], field: str) -> int:
        if field not in rec:
            raise ValueError(f"missing field {field!r}")
        v = rec[field]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < NUM_CHOICES:
            raise ValueError(f"field {field!r} must be a choice index 0-{NUM_CHOICES - 1}")
        return v

    def parse(rec: dict[str, Any]) -> tuple[int, int]:
        return choice(rec, "answer"), choice(rec, "rationale")

    preds = _load_predictions(Path(cfg.predictions), "annot_id", str, parse, gold, Path(cfg.annotations))
    return vcr_evaluate(preds, gold)


def _load_predictions(path: Path, key: str, key_type: type, parse: Callable[[dict[str, Any]], Any],
                      expected: dict[Any, Any], annotations: Path) -> dict[Any, Any]:
    """A JSON array of prediction objects keyed by ``key``; exactly one per annotated record."""
    doc = load_json(path, "predictions file")
    if not isinstance(doc, list):
        raise InputError(f"{path}: expected a JSON array of prediction objects")
    preds: dict[Any, Any] = {}
    for i, rec in enumerate(doc):
        where = f"{path}:[{i}]"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: expected a JSON object")
        if key not in rec:
            raise InputError(f"{where}: missing field {key!r}")
        k = rec[key]
        if not isinstance(k, key_type) or isinstance(k, bool):
            raise InputError(f"{where}: field {key!r} must be {'an integer' if key_type is int else 'a string'}")
        where = f"{path}:{key}={k}"
        if k in preds:
            raise InputError(f"{where}: duplicate prediction")
        if k not in expected:
            raise InputError(f"{where}: not in {annotations}")
        try:
            preds[k] = parse(rec)
        except ValueError as e:
            raise InputError(f"{where}: {e}") from None
    missing = [k for k in expected if k not in preds]
    if missing:
        raise InputError(f"{path}: no prediction for {key}={missing[0]} ({len(missing)} of {len(expected)} "
                         f"annotated records have none; every one needs a prediction)")
    return preds


def _score_zeroshot(cfg: ScoreConfig) -> dict[str, Any]:
    """Turn the teacher's zero-shot store into official-format predictions, then score them like any others."""
    import dataclasses
    import tempfile

    from mad_pipeline.extraction.zeroshot import zeroshot_results

    try:
        task, results = zeroshot_results(str(cfg.zeroshot))
    except ValueError as e:
        raise InputError(f"--zeroshot {cfg.zeroshot}: {e}") from None
    if task != cfg.task:
        raise InputError(f"--zeroshot {cfg.zeroshot}: a {task} zero-shot store, not {cfg.task}")
    out = cfg.write_predictions
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="mad-zs-")) / "predictions.json"
    Path(out).write_text(json.dumps(results))
    res = run(dataclasses.replace(cfg, predictions=Path(out), zeroshot=None))
    res["zeroshot_store"] = str(cfg.zeroshot)
    return res
