"""``mad teachers``: the teacher registry as a table."""

from __future__ import annotations

import json

import typer
from mad_pipeline.stages import teachers as stage
from rich.console import Console
from rich.table import Table

from .app import app


@app.command("teachers")
def teachers_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table.")):
    """List registered teachers (name, towers, model, pretrained tag).

    Example: mad teachers
    """
    rows = stage.run(stage.TeachersConfig())
    if as_json:
        typer.echo(json.dumps(rows))
        return
    table = Table(title="teachers")
    for col in ("name", "towers", "model", "weights", "description"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], "+".join(r["towers"]), r["model"], r["weights"], r["description"])
    Console().print(table)
