"""``mad``: the entry point. The Typer apps live in :mod:`mad_pipeline.cli.app`; each command lives in its own
module and attaches itself to them when imported; :func:`_register` imports them all."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys

import typer

# typer vendors click: its parse errors are typer._click's
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from mad_pipeline.allocator import keep_freed_memory
from mad_pipeline.errors import MadError

from .app import app, package_version

# the command modules; each attaches its commands to `app` (or `store_app`) when imported
COMMAND_MODULES = ("datasets", "distill", "extract", "predict", "run", "score", "store", "store_export", "student",
                   "teacher", "teachers")


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f".{name}", __package__)


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    keep_freed_memory()  # freed tensors stay in the heap: no page zeroing per CPU step (bit-identical results)
    if not sys.stdout.isatty():  # a log file or a pipe: each line as it is printed, not at exit (4 KB blocks)
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(line_buffering=True)
    if (sys.argv[1:] if argv is None else list(argv)) == ["--version"]:  # answered before importing every command
        typer.echo(f"mad {package_version()}")
        sys.exit(0)
    _register()
    try:
        # standalone_mode=False: Click's own parse errors come back to us as exceptions (one line below) instead
        # of a rich box; --help, --version and typer.Exit come back as an exit code
        code = app(args=argv, prog_name="mad", standalone_mode=False)
    except NoArgsIsHelpError as e:  # `mad` / `mad store` alone: the help, as before
        e.show()
        sys.exit(e.exit_code)
    except UsageError as e:
        typer.echo(f"error: {usage_line(e)}", err=True)
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # Click's other errors (a file that cannot be opened, ...)
        typer.echo(f"error: {one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except MadError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def main_to_log(argv: list[str], log: str) -> None:
    """``mad <argv>`` in this process with everything it prints, and what the processes it starts print, written
    to the file ``log`` (file descriptors 1 and 2 point there): how a driver that forks its runs from one process
    that imported the library once starts each. Exits with the command's code."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    main(argv)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def usage_line(e: UsageError) -> str:
    """A parse error as one line that names the option and the command: ``No such option: --bogus (Possible
    options: --out); see 'mad distill --help'``."""
    msg = one_line(e.format_message()).rstrip(".")
    return f"{msg}; see '{e.ctx.command_path} --help'" if e.ctx is not None else msg
