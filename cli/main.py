"""``mad``: the Typer app. Each command lives in its own module and registers itself on ``app`` here."""

from __future__ import annotations

import os
import sys

import typer

from mad_pipeline.errors import MadError

app = typer.Typer(
    name="mad",
    help="Multimodal Adaptive Distillation: extract frozen-teacher features once, distill students from them.\n\n"
    "Examples:\n\n"
    "  mad teachers\n\n"
    "  mad extract --teacher clip-vit-l --manifest data.jsonl --data-root DIR\n\n"
    "  mad store info ~/.cache/mad/stores/image/<key>.zarr",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
store_app = typer.Typer(help="List, inspect, verify and share feature stores (ls, info, verify, push, pull, gc).",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


def _register() -> None:
    # one import per command module; each attaches its commands to `app` (or a sub-app above)
    from . import datasets, distill, extract, run, score, store, teacher, teachers  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register()
    try:
        app(args=argv, prog_name="mad")
    except MadError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
