"""``mad distill`` (train a student from the feature stores) and ``mad eval`` (evaluate a trained student)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from mad_pipeline.stages import distill as stage
from mad_pipeline.stages import evaluate as eval_stage
from rich.console import Console
from rich.table import Table

from mad_pipeline.losses import MADConfig
from mad_pipeline.progress import quiet_library_bars
from mad_pipeline.students import STUDENTS
from mad_pipeline.training.config import NUM_WORKERS_HELP, TrainConfig, parse_num_workers
from mad_pipeline.training.distributed import RankFailed

from .app import app
from .options import setting_option
from .tables import metrics_table

_D = TrainConfig()

DISTILL_HELP = """Train a student on a task, distilled from frozen teachers through the stage-1 feature stores \
(extracted first if needed; cached by content hash), and evaluate it with the task's official metric.

Writes under --out: metrics.json, metrics.jsonl, training.png, student/ (save_pretrained), \
predictions/<split>.json (official results format) and checkpoints/ (rerun the same command to resume exactly).

Objective: --preset full (MAD: every aligned token, confidence weighting, adaptive alpha; --select \
teacher-saliency --top-k 0.5 gives the paper's token selection), \
--preset naive (all tokens, no confidence, constant alpha) or --no-distill (plain finetuning); the individual \
switches (--select, --top-k, --confidence, --alpha-schedule, --alpha, --logit-kd, --no-text-tokens, ...) apply on \
top.

Examples:

  mad distill --task vqa --data-root shapes/vqa --teacher shapes-clip --out runs/vqa-mad

  mad distill --task vqa --data-root shapes/vqa --no-distill --train-fraction 0.05 --out runs/vqa-base

  mad distill --task vqa --data-root shapes/vqa --preset naive --alpha 20 --out runs/vqa-naive

  mad distill --task snli-ve --data-root shapes/snli-ve --select random --top-k 8 --out runs/snli-random

  mad distill --task vqa --data-root coco --teacher clip-vit-l --student vilt-b32 --pretrained DIR --out runs/b32
"""

EVAL_HELP = """Evaluate a trained student (a `mad distill` run directory) on a split with the official metric and \
write its predictions in the official results format (RUN/predictions/<split>.json), readable by `mad score`.

Examples:

  mad eval --run runs/vqa-mad --split test

  mad eval --run runs/vqa-mad --split val --out results.json --json
"""


@app.command("distill", help=DISTILL_HELP)
def distill_cmd(
    task: str = typer.Option(..., "--task", help="vqa, snli-ve or vcr."),
    data_root: Path = typer.Option(..., "--data-root", help="The task's data root (official file layout)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (resumed when it holds the same run)."),
    teacher: str = typer.Option("shapes-clip", "--teacher", "-t", help="Image(+text) teacher (see `mad teachers`)."),
    weights: str = typer.Option(None, "--weights", help="Local checkpoint for --teacher."),
    text_teacher: str = typer.Option(None, "--text-teacher", help="Another text teacher (default: the teacher's)."),
    text_weights: str = typer.Option(None, "--text-weights", help="Local weights for --text-teacher."),
    student: str = typer.Option("vilt-tiny", "--student", help=f"Student preset ({', '.join(STUDENTS)})."),
    pretrained: str = typer.Option(None, "--pretrained", help="Student backbone weights (directory or hub id)."),
    init: str = setting_option(stage.DistillConfig, "init", "--init"),
    fresh_pooler: bool = setting_option(stage.DistillConfig, "fresh_pooler", "--fresh-pooler"),
    dataset: str = typer.Option(None, "--dataset", help="Reader (default: the task's)."),
    train_split: str = typer.Option("train", "--train-split", help="Training split."),
    eval_split: str = typer.Option(None, "--eval-split", help="Evaluation split (default val; SNLI-VE dev)."),
    test_split: list[str] = typer.Option([], "--test-split", help="Also evaluate these splits at the end."),
    preset: str = typer.Option("full", "--preset", help="full (MAD), naive or baseline."),
    no_distill: bool = typer.Option(False, "--no-distill", help="Plain finetuning (= --preset baseline)."),
    select: str = typer.Option(None, "--select", help="Token selection: all (the full preset's), teacher-saliency, "
                               "question-aware, random, student-gap."),
    top_k: str = typer.Option(None, "--top-k", help="Tokens kept: a fraction in (0, 1] or a count."),
    confidence: str = typer.Option(None, "--confidence", help="Confidence weighting: none or prob."),
    alpha_schedule: str = typer.Option(None, "--alpha-schedule", help="constant, linear, cosine or adaptive."),
    alpha: float = typer.Option(None, "--alpha", help="alpha0 of the constant/linear/cosine schedules."),
    alpha_ratio: float = typer.Option(None, "--alpha-ratio", help="adaptive: distill term / task loss."),
    logit_kd: bool = typer.Option(None, "--logit-kd/--no-logit-kd", help="Logit KD from the zero-shot scores."),
    token_loss: str = typer.Option(None, "--token-loss", help="cosine or smooth-l1."),
    no_image_tokens: bool = typer.Option(False, "--no-image-tokens", help="Drop the image token term."),
    no_text_tokens: bool = typer.Option(False, "--no-text-tokens", help="Drop the text token term."),
    no_pooled: bool = typer.Option(False, "--no-pooled", help="Drop the pooled-embedding term."),
    train_fraction: float = typer.Option(1.0, "--train-fraction", help="Deterministic low-shot subset."),
    seed: int = typer.Option(0, "--seed", help="Training seed (and the subset's, unless --subset-seed)."),
    subset_seed: int = typer.Option(None, "--subset-seed", help="Seed of the --train-fraction subset."),
    vocab_min_count: int = typer.Option(9, "--vocab-min-count", help="VQA: answers seen at least this often."),
    vqa_eval: str = setting_option(stage.DistillConfig, "vqa_eval", "--vqa-eval"),
    online_teacher: bool = typer.Option(False, "--online-teacher", help="Run the teacher in the loop (no stores)."),
    storage: str = typer.Option("fp16", "--storage", help="Image tokens in stage 1's store: fp16, int8 or "
                                "bitround:N (see mad extract)."),
    keep_tokens: int = typer.Option(None, "--keep-tokens", help="Stage 1 keeps only each image's CLS + K best "
                                    "patches; --select must then choose among them."),
    keep_policy: str = typer.Option("teacher-saliency", "--keep-policy", help="The policy ranking the kept patches."),
    dense: bool = setting_option(stage.DistillConfig, "dense", "--dense"),
    steps: int = typer.Option(_D.steps, "--steps", help="Optimizer steps."),
    batch_size: int = typer.Option(_D.batch_size, "--batch-size", help="Micro-batch size, all --nproc together."),
    grad_accum: int = typer.Option(_D.grad_accum, "--grad-accum", help="Micro-batches per step."),
    lr: float = typer.Option(_D.lr, "--lr", help="Peak learning rate (AdamW)."),
    weight_decay: float = typer.Option(_D.weight_decay, "--weight-decay", help="AdamW weight decay."),
    warmup: float = typer.Option(_D.warmup, "--warmup", help="Linear warmup: steps (a whole number), or a fraction "
                                 "of --steps below 1 (0.1: the first 10%)."),
    min_lr_ratio: float = typer.Option(_D.min_lr_ratio, "--min-lr-ratio", help="Cosine decay floor / peak."),
    head_lr_mult: float = setting_option(TrainConfig, "head_lr_mult", "--head-lr-mult"),
    grad_clip: float = typer.Option(_D.grad_clip, "--grad-clip", help="Max grad norm (0: off)."),
    group_by_length: int = setting_option(TrainConfig, "group_by_length", "--group-by-length"),
    length_buckets: int = setting_option(TrainConfig, "length_buckets", "--length-buckets"),
    eval_every: int = typer.Option(_D.eval_every, "--eval-every", help="Evaluate every N steps (0: at the end)."),
    checkpoint_every: int = typer.Option(_D.checkpoint_every, "--checkpoint-every", help="Checkpoint every N steps."),
    log_every: int = typer.Option(_D.log_every, "--log-every", help="Log training metrics every N steps."),
    patience: int = typer.Option(_D.patience, "--patience", help="Early stopping: stop after N dev evaluations "
                                 "without improvement (0: never; --steps is the cap)."),
    dev_fraction: float = setting_option(TrainConfig, "dev_fraction", "--dev-fraction"),
    min_dev: int = setting_option(TrainConfig, "min_dev", "--min-dev"),
    dev_every: int = setting_option(TrainConfig, "dev_every", "--dev-every"),
    min_steps: int = setting_option(TrainConfig, "min_steps", "--min-steps"),
    dev_metric: str = setting_option(TrainConfig, "dev_metric", "--dev-metric"),
    num_workers: str = typer.Option(_D.num_workers, "--num-workers", help=NUM_WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    nproc: int = typer.Option(1, "--nproc", help="Processes training together (torchrun, DDP; on GPUs one per "
                              "device); --batch-size is their global batch. Or run under torchrun yourself."),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="bf16 autocast on CUDA."),
    cpu_bf16: bool = setting_option(TrainConfig, "cpu_bf16", "--cpu-bf16"),
    text_view: str = setting_option(stage.DistillConfig, "text_view", "--text-view"),
    cache: Path = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Store cache root [env MAD_CACHE]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different run in --out."),
    wait: bool = typer.Option(False, "--wait", help="If another process is using --out, wait for it to end "
                              "(default: stop with an error)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (transformers' included)."),
):
    opts = dict(locals())  # every option, by name
    _run_and_print(_distill_config(opts), quiet or as_json, as_json)


def _distill_config(o: dict) -> stage.DistillConfig:
    """The stage's settings from the options: each TrainConfig / DistillConfig field from the option of its name."""
    mad = MADConfig.from_switches(
        "baseline" if o["no_distill"] else o["preset"], select=o["select"], top_k=o["top_k"],
        confidence=o["confidence"], alpha_schedule=o["alpha_schedule"], alpha=o["alpha"], alpha_ratio=o["alpha_ratio"],
        logit_kd=o["logit_kd"], token_loss=o["token_loss"], image_tokens=False if o["no_image_tokens"] else None,
        text_tokens=False if o["no_text_tokens"] else None, pooled=False if o["no_pooled"] else None)
    train = TrainConfig(**{**_named(TrainConfig, o), "num_workers": parse_num_workers(o["num_workers"])})
    return stage.DistillConfig(**{**_named(stage.DistillConfig, o), "mad": mad, "train": train,
                                  "test_splits": tuple(o["test_split"]),
                                  "progress": not (o["quiet"] or o["as_json"])})


def _named(cls, o: dict) -> dict:
    return {f.name: o[f.name] for f in dataclasses.fields(cls) if f.name in o}


def _run_and_print(cfg: stage.DistillConfig, quiet: bool, as_json: bool) -> None:
    if quiet:
        quiet_library_bars()  # transformers' bars too
    err = Console(stderr=True)
    try:
        result = stage.run(cfg, log=(lambda m: None) if quiet else (lambda m: err.print(m, markup=False,
                                                                                          soft_wrap=True)))
    except RankFailed as e:
        if e.reported:  # the rank printed its own one-line error
            raise typer.Exit(e.exit_code) from None
        raise
    if not result.main:  # another rank of a torchrun group: rank 0 prints the results
        return
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
    else:
        _print_distill(result)


def _print_distill(result) -> None:
    m = result.metrics
    rules = f", {m['vqa_eval']} VQA rules" if "vqa_eval" in m else ""
    table = Table(title=f"mad distill: {m['task']}, {m['objective']}, {m['train_samples']} training samples, "
                  f"{m['steps']} steps{rules}")
    for col in ("split", "metric", "student (%)", "teacher zero-shot (%)"):
        table.add_column(col)
    tz = m.get("teacher_zeroshot") or {}
    for split, res in m["eval"].items():
        t = f"{tz['value']:.2f}" if tz and split == m["eval_split"] else ""
        table.add_row(split, res["metric"] if res else "-", f"{res['value']:.2f}" if res else "(no labels)", t)
    con = Console()
    con.print(table)
    step = f"{m['step_time_s'] * 1000:.0f} ms/step" if m.get("step_time_s") else ""
    con.print(f"run: {result.out}  ({step}; {m['seconds']['total']:.0f} s total)", soft_wrap=True)


@app.command("eval", help=EVAL_HELP)
def eval_cmd(
    run: Path = typer.Option(..., "--run", help="A `mad distill` run directory."),
    split: str = typer.Option(..., "--split", help="Split to evaluate (e.g. val, test, shift; SNLI-VE dev)."),
    data_root: Path = typer.Option(None, "--data-root", help="Data root (default: the run's)."),
    out: Path = typer.Option(None, "--out", "-o", help="Predictions file (default RUN/predictions/<split>.json)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Samples per batch."),
    num_workers: str = typer.Option("auto", "--num-workers", help=NUM_WORKERS_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda ..."),
    vqa_eval: str = setting_option(eval_stage.EvalConfig, "vqa_eval", "--vqa-eval"),
    leaderboard: bool = typer.Option(False, "--leaderboard", help="VCR: write the leaderboard's CSV on a labelled "
                                     "split too (QA->R under all four answers: four passes instead of one; a split "
                                     "without labels always gets it)."),
    precision: str = typer.Option("trained", "--precision", help="Autocast of the student: trained (the run's "
                                  "own: bf16 on CUDA unless trained without it, bf16 on CPU when trained with "
                                  "--cpu-bf16; how its dev and test splits were scored), fp32 or bf16."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars (transformers' included)."),
):
    if quiet or as_json:
        quiet_library_bars()
    res = eval_stage.run(eval_stage.EvalConfig(run=run, split=split, data_root=data_root, out=out,
                                               batch_size=batch_size, num_workers=parse_num_workers(num_workers),
                                               device=device, vqa_eval=vqa_eval, leaderboard=leaderboard,
                                               progress=not (quiet or as_json), precision=precision))
    if as_json:
        res.pop("rows")
        typer.echo(json.dumps(res))
        return
    con = Console()
    if res["metrics"] is None:
        con.print(f"{res['task']} {split}: {res['n']} predictions (no labels to score) -> {res['predictions']}",
                  soft_wrap=True)
        return
    rules = f", {res['vqa_eval']} VQA rules" if "vqa_eval" in res else ""
    table = Table(title=f"mad eval: {res['task']}, {split}, {res['n']} samples{rules}, {res['precision']}")
    metrics_table(table, res["rows"])
    con.print(table)
    for kind, path in res["files"].items():
        con.print(f"{kind}: {path}", soft_wrap=True, highlight=False)
