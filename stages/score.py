"""Score predictions with the tasks' official metrics.

Prediction files (one JSON array; every annotated record needs exactly one prediction, none may be unknown):

- ``vqa``: the official VQA results format ``[{"question_id": int, "answer": str}, ...]``, scored against the
  ``v2_OpenEnded_mscoco_*_questions.json`` / ``v2_mscoco_*_annotations.json`` pair.
- ``snli-ve``: ``[{"pairID": str, "label": "entailment" | "neutral" | "contradiction"}, ...]`` (``label`` may
  also be the index 0/1/2 in that order), scored against ``snli_ve_{dev,test}.jsonl``.
- ``vcr``: ``[{"annot_id": str, "answer": 0-3, "rationale": 0-3}, ...]`` (``rationale`` is the choice made given
  the right answer, as in the official QA->R protocol), or the leaderboard's CSV of per-choice probabilities
  (``annot_id,answer_0..answer_3,rationale_conditioned_on_a0_0..rationale_conditioned_on_a3_3``, scored as the
  leaderboard does: argmax answer, argmax rationale given the right answer), scored against ``val.jsonl``.

The result has the same metric names as ``mad eval``'s: ``metric`` and ``value`` (the headline), ``metrics`` (the
headline and every figure of the task's score) and the same figures at the top level.

All accuracies are percentages, unrounded (the official VQA code prints them rounded to 2 decimals). VQA accuracy
follows the rules ``vqa_eval`` names: ``official`` (the evaluation code as it is today, the default) or ``legacy``
(its 2017 Python 3 port); see :mod:`mad_pipeline.tasks.metrics` for the difference. Other tasks ignore it.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mad_pipeline.errors import InputError
from mad_pipeline.tasks import get_task
from mad_pipeline.tasks.vqa import vqa_eval_setting


@dataclass(frozen=True)
class ScoreConfig:
    task: str  # a task name (vqa, snli-ve, vcr or a plugin's)
    predictions: Path | None
    annotations: Path
    questions: Path | None = None  # VQA only: the questions file paired with the annotations
    zeroshot: Path | None = None  # score the teacher's zero-shot store instead of a predictions file
    write_predictions: Path | None = None  # with zeroshot: where to write them in the official format
    detail: bool = False  # more table rows (VQA: per question type)
    vqa_eval: str = vqa_eval_setting()


def run(cfg: ScoreConfig) -> dict[str, Any]:
    task = get_task(cfg.task, vqa_eval=cfg.vqa_eval)
    if (cfg.predictions is None) == (cfg.zeroshot is None):
        raise InputError("give exactly one of --predictions FILE or --zeroshot STORE")
    if cfg.zeroshot is not None:
        return _score_zeroshot(cfg)
    out = task.score_file(Path(cfg.predictions), Path(cfg.annotations),
                          Path(cfg.questions) if cfg.questions else None)
    metrics = task.headline(out)
    return {"task": cfg.task, **task.settings_in_key(vars(cfg)), **out, "metric": metrics["metric"],
            "value": metrics["value"], "metrics": metrics, "predictions": str(cfg.predictions),
            "annotations": str(cfg.annotations), "rows": task.report_rows(out, detail=cfg.detail)}


def _score_zeroshot(cfg: ScoreConfig) -> dict[str, Any]:
    """Turn the teacher's zero-shot store into official-format predictions, then score them like any others."""
    from mad_pipeline.extraction.zeroshot import zeroshot_results

    try:
        task, results = zeroshot_results(str(cfg.zeroshot))
    except ValueError as e:
        raise InputError(f"--zeroshot {cfg.zeroshot}: {e}") from None
    if task != cfg.task:
        raise InputError(f"--zeroshot {cfg.zeroshot}: a {task} zero-shot store, not {cfg.task}")
    with tempfile.TemporaryDirectory(prefix="mad-zs-") as d:  # without --write-predictions: gone after scoring
        path = Path(cfg.write_predictions or Path(d) / "predictions.json")
        path.write_text(json.dumps(results))
        res = run(dataclasses.replace(cfg, predictions=path, zeroshot=None))
    if cfg.write_predictions is None:
        res["predictions"] = None
    res["zeroshot_store"] = str(cfg.zeroshot)
    return res


__all__ = ["ScoreConfig", "run"]
