"""``mad teachers``: the teacher registry as a table."""

from __future__ import annotations

import json

import typer
from mad_pipeline.stages import teachers as stage
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .app import app

DESCRIPTION_MIN = 30  # the description column's least width in the one-field-per-column table


@app.command("teachers")
def teachers_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table.")):
    """List registered teachers (name, towers, model, pretrained tag).

    Example: mad teachers
    """
    rows = stage.run(stage.TeachersConfig())
    if as_json:
        typer.echo(json.dumps(rows))
        return
    console = Console()
    console.print(_wide(rows) if console.width >= _wide_width(rows) else _narrow(rows))


def _wide_width(rows: list[dict]) -> int:
    """Columns the one-field-per-column table needs to show every name, model and weights whole on one line and
    no word of a description cut."""
    cells = [[r["name"], "+".join(r["towers"]), r["model"], r["weights"]] for r in rows]
    widest = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(("name", "towers", "model", "weights"))]
    words = max((len(w) for r in rows for w in r["description"].split()), default=0)
    return sum(widest) + max(DESCRIPTION_MIN, words) + 3 * 5 + 1  # cells, their padding and the borders


def _wide(rows: list[dict]) -> Table:
    table = Table(title="teachers")
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("towers", no_wrap=True)
    table.add_column("model", no_wrap=True, overflow="fold")
    table.add_column("weights", no_wrap=True, overflow="fold")
    table.add_column("description", ratio=1, min_width=DESCRIPTION_MIN, overflow="fold")
    for r in rows:
        table.add_row(r["name"], "+".join(r["towers"]), r["model"], r["weights"], r["description"])
    return table


def _narrow(rows: list[dict]) -> Table:
    """Each name whole with its towers under it; the model and weights on one line, the description wrapped under
    them (at 80 columns the longest model id, sentence-transformers/all-MiniLM-L6-v2, still fits on its line)."""
    table = Table(title="teachers", show_lines=True)
    table.add_column("name / towers", no_wrap=True)
    table.add_column("model · weights / description", ratio=1, overflow="fold")
    for r in rows:
        name = Text(r["name"], style="bold")
        name.append("\n" + "+".join(r["towers"]), style="dim")
        cell = Text(r["model"], style="cyan")
        if r["weights"]:
            cell.append(f" · {r['weights']}")
        if r["description"]:
            cell.append(f"\n{r['description']}")
        table.add_row(name, cell)
    return table
