"""The Typer apps the command modules attach to: ``app`` (``mad``) and ``store_app`` (``mad store``).

They live here, apart from :mod:`mad_pipeline.cli.main`, so that a command module imports only this module and
``main`` can import every command module without an import cycle.
"""

from __future__ import annotations

import typer

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
