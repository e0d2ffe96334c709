"""``mad``: the entry point. The Typer apps live in :mod:`mad_pipeline.cli.app`; each command lives in its own
module and attaches itself to them when imported; :func:`_register` imports them all."""

from __future__ import annotations

import os
import sys

import typer

from mad_pipeline.errors import MadError

from .app import app


def _register() -> None:
    # one import per command module; each attaches its commands to `app` (or `store_app`)
    from . import datasets, distill, extract, predict, run, score, store, store_export, teacher, teachers  # noqa: F401


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
