"""Render the CLI reference (docs/cli.md) from the app itself: ``python -m mad_pipeline.cli.docs > docs/cli.md``.

tests/test_cli_docs.py fails when docs/cli.md and the app's help drift apart.
"""

from __future__ import annotations

import os

import typer
from typer.testing import CliRunner

from .app import app
from .main import _register

HEADER = """# CLI reference

Generated from the app's own help by `python -m mad_pipeline.cli.docs > docs/cli.md`; a test keeps it in sync.
Every command prints one clear `error: ...` line and exits 2 on a user mistake.
"""


def _walk(cmd, path: list[str]):
    yield path, cmd
    if getattr(cmd, "commands", None):  # a group (typer vendors its own click: no isinstance check)
        for name in sorted(cmd.commands):
            yield from _walk(cmd.commands[name], [*path, name])


def render() -> str:
    _register()
    os.environ.setdefault("TERM", "dumb")
    runner = CliRunner()
    parts = [HEADER]
    root = typer.main.get_command(app)
    for path, _ in _walk(root, []):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"},
                               prog_name="mad")
        title = " ".join(["mad", *path])
        body = "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())
        parts.append(f"## `{title}`\n\n```text\n{body}\n```\n")
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
