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
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, powershell)
    rich_markup_mode="rich",
)
store_app = typer.Typer(help="List, inspect, verify and share feature stores (ls, info, verify, push, pull, gc).",
                        no_args_is_help=True)
app.add_typer(store_app, name="store")


def package_version() -> str:
    """The installed mad-pipeline distribution's version (``unknown`` when run from an uninstalled tree)."""
    from importlib import metadata

    try:
        return metadata.version("mad-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"mad {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print mad's version and exit.")) -> None:
    pass
