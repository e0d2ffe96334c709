"""``mad datasets``: generate datasets (the embedded shapes world) in the official benchmark formats."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import make_shapes as stage
from rich.console import Console
from rich.table import Table

from .app import app

datasets_app = typer.Typer(help="Generate datasets in the official VQA v2 / SNLI-VE / VCR formats.\n\n"
                           "Example:\n\n  mad datasets make shapes --out shapes --size 2000 --seed 0",
                           no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")


@datasets_app.command(
    "make",
    help="Write the shapes world (64x64 images of coloured shapes, with questions, entailment hypotheses and "
    "four-way multiple-choice items) in the official VQA v2, SNLI-VE and VCR formats. Deterministic per seed. "
    "Splits: train, val (SNLI-VE: dev), test, and shift (held-out colour+shape pairs).\n\n"
    "Examples:\n\n  mad datasets make shapes --out shapes\n\n"
    "  mad datasets make shapes --out shapes-small --size 200 --seed 3\n\n"
    "  mad extract --teacher shapes-clip --dataset vqa --data-root shapes/vqa --split val",
)
def make_cmd(
    kind: str = typer.Argument(..., help="What to make: shapes."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (new, empty, or an earlier shapes world)."),
    size: int = typer.Option(2000, "--size", "-n", help="Training images; val, test and shift get size/4 each."),
    seed: int = typer.Option(0, "--seed", help="World seed: the same seed gives byte-identical files."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
):
    result = stage.run(stage.MakeShapesConfig(out=out, kind=kind, size=size, seed=seed,
                                              progress=not (quiet or as_json)))
    if as_json:
        typer.echo(json.dumps(result.as_dict()))
        return
    m = result.manifest
    table = Table(title=f"shapes world (seed {m['seed']}) -> {result.out} in {result.seconds:.1f} s")
    for col in ("split", "images", "VQA questions", "SNLI-VE pairs", "VCR items"):
        table.add_column(col)
    for split, s in m["splits"].items():
        table.add_row(split, str(s["images"]), str(s["vqa_questions"]), str(s["snli_ve_pairs"]), str(s["vcr_items"]))
    con = Console()
    con.print(table)
    con.print(f"data roots: {result.out / 'vqa'} (VQA v2), {result.out / 'snli-ve'} (SNLI-VE), "
              f"{result.out / 'vcr'} (VCR); held-out pairs (split shift): "
              + ", ".join(f"{c} {s}" for c, s in m["held_out_pairs"]))
