"""``mad score``: official metrics for predictions (VQA v2, SNLI-VE, VCR)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import score as stage
from rich.console import Console
from rich.table import Table

from .app import app
from .options import setting_option
from .tables import metrics_table

_HELP = (
    "Score predictions with the task's official metric (accuracies in %).\n\n"
    "Examples:\n\n"
    "  mad score --task vqa --predictions results.json --questions Q.json --annotations A.json\n\n"
    "  mad score --task snli-ve --predictions preds.json --annotations snli_ve_dev.jsonl\n\n"
    "  mad score --task vcr --predictions preds.json --annotations val.jsonl --json\n\n"
    "  mad score --task vcr --predictions val.leaderboard.csv --annotations val.jsonl\n\n"
    "  mad score --task vqa --zeroshot STORE --questions Q.json --annotations A.json --per-question-type\n\n"
    'vqa: official results format [{"question_id": ..., "answer": ...}]; Q = '
    "v2_OpenEnded_mscoco_val2014_questions.json, A = v2_mscoco_val2014_annotations.json; official answer "
    "normalisation and 10-choose-9 averaging (--vqa-eval official: the official code as it is today, the default; "
    "legacy: its 2017 Python 3 port, for comparing with papers that used it); prints overall and per-answer-type "
    "accuracy.\n\n"
    'snli-ve: [{"pairID": ..., "label": "entailment" | "neutral" | "contradiction"}]; prints accuracy and '
    "accuracy per gold label.\n\n"
    'vcr: [{"annot_id": ..., "answer": 0-3, "rationale": 0-3}] (the rationale chosen given the right answer), or the '
    "leaderboard's CSV of per-choice probabilities (annot_id, answer_0..answer_3, "
    "rationale_conditioned_on_a0_0..rationale_conditioned_on_a3_3; `mad eval` writes it beside its JSON); "
    "prints Q->A, QA->R and Q->AR (right only when both answer and rationale are).\n\n"
    "--json: the same metric names as `mad eval --json` (metric, value, metrics)."
)


@app.command("score", help=_HELP)
def score_cmd(
    task: str = typer.Option(..., "--task", help="vqa, snli-ve or vcr."),
    predictions: Path = typer.Option(None, "--predictions",
                                     help="Predictions file: JSON (format per task above); VCR also the CSV."),
    zeroshot: Path = typer.Option(None, "--zeroshot", help="Score a teacher's zero-shot store (mad extract --task)."),
    write_predictions: Path = typer.Option(None, "--write-predictions",
                                           help="With --zeroshot: also write them in the official format."),
    per_question_type: bool = typer.Option(False, "--per-question-type", help="VQA: one row per question type."),
    annotations: Path = typer.Option(..., "--annotations",
                                     help="Ground truth: v2_mscoco_*_annotations.json, snli_ve_*.jsonl or *.jsonl."),
    questions: Path | None = typer.Option(None, "--questions",
                                          help="VQA only: the v2_OpenEnded_mscoco_*_questions.json file."),
    vqa_eval: str = setting_option(stage.ScoreConfig, "vqa_eval", "--vqa-eval"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (last line) instead of a table."),
):
    res = stage.run(stage.ScoreConfig(task=task, predictions=predictions, annotations=annotations,
                                      questions=questions, zeroshot=zeroshot, write_predictions=write_predictions,
                                      detail=per_question_type, vqa_eval=vqa_eval))
    if as_json:
        res.pop("rows")
        typer.echo(json.dumps(res))
        return
    source = predictions.name if predictions else f"zero-shot {Path(zeroshot).name[:16]}"
    rules = f", {res['vqa_eval']} VQA rules" if "vqa_eval" in res else ""
    table = Table(title=f"{task}: {res['n']} scored ({source}{rules})")
    metrics_table(table, res["rows"])
    Console().print(table)

