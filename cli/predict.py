"""``mad predict``: a trained student's answer for one image and one or more texts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from mad_pipeline.stages import predict as stage
from rich.console import Console
from rich.table import Table

from .app import app

HELP = """Run a trained student (a `mad distill` run directory) on one image and print its prediction: for VQA \
the answer (and the next best, with their scores), for SNLI-VE the label of each hypothesis; for a \
multiple-choice task (VCR) the texts are the choices ("question answer") and the best one is marked.

The image goes through the student's own preprocessing (shortest-side resize and centre crop to its input size, \
e.g. 64x64 for vilt-tiny), as in `mad eval`.

Examples:

  mad predict --run runs/vqa-mad --image photo.jpg --text "what colour is the circle?"

  mad predict --run runs/vqa-mad --image photo.jpg --text "how many shapes?" --text "is there a square?" --json

  mad predict --run runs/vcr --image movie.jpg --text "why is he smiling? he won" --text "why is he smiling? he lost"
"""


@app.command("predict", help=HELP)
def predict_cmd(
    run: Path = typer.Option(..., "--run", help="A `mad distill` run directory."),
    image: Path = typer.Option(..., "--image", help="The image file."),
    text: list[str] = typer.Option(..., "--text", help="A question or hypothesis (repeat for more; for a "
                                   "multiple-choice task, one per choice)."),
    top_k: int = typer.Option(5, "--top-k", help="Classes shown per text (classifier tasks)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda ..."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
):
    res = stage.run(stage.PredictConfig(run=run, image=image, texts=tuple(text), top_k=top_k, device=device))
    if as_json:
        typer.echo(json.dumps(res))
        return
    table = Table(title=f"mad predict: {res['task']}, {image.name}")
    if res["multiple_choice"]:
        for col, just in (("choice", "right"), ("text", "left"), ("score", "right"), ("", "left")):
            table.add_column(col, justify=just)
        for i, c in enumerate(res["choices"]):
            table.add_row(str(i), c["text"], f"{c['score']:.3f}", "<- predicted" if i == res["choice"] else "")
    else:
        for col, just in (("text", "left"), ("rank", "right"), ("prediction", "left"), ("score", "right")):
            table.add_column(col, justify=just)
        for p in res["predictions"]:
            for rank, t in enumerate(p["top"], 1):
                table.add_row(p["text"] if rank == 1 else "", str(rank), t["label"], f"{t['score']:.3f}",
                              end_section=rank == len(p["top"]))
    Console().print(table)
