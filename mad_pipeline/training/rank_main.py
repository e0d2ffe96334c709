"""The program each process of ``--nproc N`` runs: ``python -m mad_pipeline.training.rank_main FOLDER``.

:func:`mad_pipeline.training.distributed.run_in_processes` writes ``FOLDER/call.pkl`` (the function to call, as
``module:name``, and its settings object) into a private temporary folder; every rank calls it with a ``log`` that
prints to stderr (when the settings ask for progress output) and rank 0 writes what it returns to
``FOLDER/result.pkl``. A :class:`~mad_pipeline.errors.MadError` is the rank's one ``error:`` line and exit code 2.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from pathlib import Path

from ..allocator import keep_freed_memory
from ..errors import MadError

CALL = "call.pkl"
RESULT = "result.pkl"


def main(argv: list[str]) -> None:
    keep_freed_memory()  # as the mad command does: freed tensors stay in the heap
    folder = Path(argv[0])
    with open(folder / CALL, "rb") as f:
        target, settings = pickle.load(f)  # noqa: S301 - written by the launcher into its private folder
    module, _, name = target.partition(":")
    fn = getattr(importlib.import_module(module), name)
    quiet = not getattr(settings, "progress", False)
    try:
        result = fn(settings, log=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    except MadError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    if os.environ.get("RANK", "0") == "0":
        tmp = folder / f".{RESULT}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(result, f)
        os.replace(tmp, folder / RESULT)


if __name__ == "__main__":
    main(sys.argv[1:])
