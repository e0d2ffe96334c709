"""``mad extract``: run frozen teachers once and write token-level feature stores."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import extract as stage
from rich.console import Console
from rich.table import Table

from .app import app

EXAMPLES = """
Examples:

  mad extract --teacher clip-vit-l --manifest data.jsonl --data-root DIR

  mad extract --teacher clip-vit-l --weights ViT-L-14.safetensors --manifest data.jsonl --data-root DIR --json

  mad extract --teacher clip-vit-l --text-teacher minilm --manifest data.jsonl --data-root DIR

  mad extract --teacher shapes-clip --dataset vqa --split val --task vqa --data-root shapes/

  mad extract --teacher clip-vit-l --dataset webdataset --data-root 'shards/{00000..00127}.tar'

  mad extract --teacher clip-vit-l --manifest data.jsonl --data-root DIR --workers 8

  mad extract --teacher clip-vit-l --manifest data.jsonl --data-root DIR --scheduler tcp://head:8786

  mad extract --teacher clip-vit-l --manifest data.jsonl --data-root DIR --storage int8 --keep-tokens 64
"""


@app.command("extract", help="Run frozen teachers over a dataset and write token-level Zarr feature stores, "
             "cached by content hash (a rerun with the same inputs does no teacher work)." + EXAMPLES)
def extract_cmd(
    teacher: str = typer.Option(..., "--teacher", "-t", help="Registered teacher, open_clip:MODEL/PRETRAINED or "
                                "hf:REPO (see `mad teachers`)."),
    data_root: Path = typer.Option(..., "--data-root", help="Folder that image paths are relative to; for "
                                   "webdataset the shards: 'shards/{00000..00127}.tar', a glob or a folder."),
    manifest: Path = typer.Option(None, "--manifest", help="JSONL ({id, image, text} per line), parquet or CSV "
                                  "file (image and caption columns)."),
    dataset: str = typer.Option("jsonl", "--dataset", help="Reader: jsonl, webdataset, parquet, csv, vqa, snli-ve, "
                                "vcr (see docs/inputs.md)."),
    split: str = typer.Option(None, "--split", help="Split for the benchmark readers (train, val, ...)."),
    text_teacher: str = typer.Option(None, "--text-teacher", help="Another teacher for texts (e.g. minilm)."),
    weights: str = typer.Option(None, "--weights", help="Local checkpoint file/dir for --teacher (else hub)."),
    text_weights: str = typer.Option(None, "--text-weights", help="Local weights for --text-teacher."),
    cache: Path = typer.Option(None, "--cache", envvar="MAD_CACHE", help="Cache root (env MAD_CACHE)."),
    device: str = typer.Option("auto", "--device", help="auto (cuda when available), cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 on cuda, fp32 on cpu), fp32, bf16."),
    batch_size: str = typer.Option("32", "--batch-size", help="Teacher batch size, or auto (from the GPU's memory; "
                                   "32 on CPU). Not part of the cache key."),
    num_workers: str = typer.Option("auto", "--num-workers", help="Decode worker processes; auto: 2 on CPU, one per "
                                    "core but one on a GPU (not in the key)."),
    on_error: str = typer.Option("fail", "--on-error", help="fail: stop at the first bad input; skip: record it."),
    max_text_length: int = typer.Option(None, "--max-text-length", help="Token length for transformers teachers."),
    shard_rows: int = typer.Option(None, "--shard-rows", help="Rows per resumable shard (default ~32 MB)."),
    task: str = typer.Option(None, "--task", help="vqa, snli-ve or vcr: also write the teacher's zero-shot store."),
    zs_prompt: str = typer.Option("auto", "--zs-prompt", help="VQA zero-shot candidates: auto, shapes, template."),
    zs_template: str = typer.Option(None, "--zs-template", help="Template prompt, e.g. 'question: {q} answer: {a}'."),
    train_fraction: float = typer.Option(1.0, "--train-fraction", help="Deterministic subset of the samples."),
    seed: int = typer.Option(0, "--seed", help="Seed of the --train-fraction subset."),
    workers: int = typer.Option(None, "--workers", help="Start a local dask cluster of N worker processes (one per "
                                "GPU on a GPU machine); one task per shard (not in the key)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Use an existing dask cluster: its scheduler address, "
                                  "e.g. tcp://head:8786 (not in the key)."),
    storage: str = typer.Option("fp16", "--storage", help="Image tokens as fp16, int8 (one scale per token, read "
                                "back as float16) or bitround:N (N of float16's 10 mantissa bits kept, then zstd). "
                                "In the image store's key unless fp16."),
    keep_tokens: int = typer.Option(None, "--keep-tokens", help="Store only each image's CLS + K best patches (and "
                                    "their grid positions); training then selects among them. In the key."),
    keep_policy: str = typer.Option("teacher-saliency", "--keep-policy", help="The selection policy that ranks the "
                                    "patches for --keep-tokens (a teacher-side one, e.g. teacher-saliency)."),
    dense: bool = typer.Option(False, "--dense", help="Also store each image token's dense joint-space features "
                               "(MaskCLIP's value path of an open_clip ViT, array 'dense'); question-aware "
                               "selection ranks by them. In the image store's key when on."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object as the last line."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
):
    cfg = stage.ExtractConfig(
        teacher=teacher, data_root=data_root, dataset=dataset, manifest=manifest, split=split,
        text_teacher=text_teacher, weights=weights, text_weights=text_weights, cache=cache, device=device,
        precision=precision, batch_size=batch_size, num_workers=num_workers, on_error=on_error,
        max_text_length=max_text_length, shard_rows=shard_rows, task=task, zs_prompt=zs_prompt,
        zs_template=zs_template, train_fraction=train_fraction, seed=seed, progress=not (quiet or as_json),
        workers=workers, scheduler=scheduler, storage=storage, keep_tokens=keep_tokens, keep_policy=keep_policy,
        dense=dense,
    )
    err = Console(stderr=True)
    result = stage.run(cfg, log=lambda m: err.print(m, markup=False, highlight=False, soft_wrap=True))
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    table = Table(title=f"mad extract ({result.samples} samples, {result.seconds:.1f} s)")
    for col in ("store", "status", "rows", "computed", "reused", "seconds", "key"):
        table.add_column(col)
    for kind, s in result.stores.items():
        status = "cached" if s.cached else ("resumed" if s.shards_resumed else "built")
        table.add_row(kind, status, str(s.rows), str(s.rows_computed), str(s.rows_reused), f"{s.seconds:.1f}",
                      s.key[:16])
    console = Console()
    console.print(table)
    for kind, s in result.stores.items():
        console.print(f"{kind:>5}: {s.path}", soft_wrap=True)
    if result.skipped:
        err.print(f"[yellow]{len(result.skipped)} input(s) skipped:[/yellow]")
        for s in result.skipped[:20]:
            err.print(f"  {s['source']}: {s['reason']}")
        if len(result.skipped) > 20:
            err.print(f"  ... and {len(result.skipped) - 20} more (all recorded in the store manifests)")
