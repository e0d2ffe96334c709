"""A run directory (``mad distill --out``): locked while a process uses it, claimed once the run has started.

- **Locked.** :func:`locked` holds an OS file lock (``flock``) on ``<out>/.mad-run.lock`` for the whole run. A second
  process on the same directory stops with one line naming the directory and the holder's pid (or, asked to, waits
  for it). The OS releases the lock when the holder dies, so a killed run can be resumed at once.
- **Claimed late.** :func:`check` only reads: it refuses a directory that holds another run (the first differing
  setting named) or something that is not a run. :func:`claim` writes ``run.json`` (the settings fingerprint) and is
  called once the data is read, the stores are there and the student is built: a run that fails on a mistake before
  that (a misspelt teacher, a missing data root) leaves nothing behind, and the corrected command runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..jsonio import dump_json

LOCK_NAME = ".mad-run.lock"
MARKER = "run.json"


@contextlib.contextmanager
def locked(out: Path, wait: bool = False, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the lock of run directory ``out`` (created if needed). Held by another process: one
    :class:`InputError` line naming it, or with ``wait`` block until it ends (``on_wait(holder)`` is called once).
    A directory this call created is removed again if the run never claimed it."""
    out = Path(out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create the run directory ({e.strerror or e})") from None
    f = _acquire(out, wait, on_wait)
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        yield
    finally:
        # removed while held: a process waiting on this file sees it gone and opens the new one (see _acquire)
        with contextlib.suppress(OSError):
            (out / LOCK_NAME).unlink()
        if created and not (out / MARKER).exists():
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _acquire(out: Path, wait: bool, on_wait: Callable[[str], None] | None):
    path = out / LOCK_NAME
    told = False
    while True:
        out.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                f.close()
                raise InputError(f"--out {out}: in use by another mad process ({holder}); wait for it to end, "
                                 "use another --out, or pass --wait") from None
            if on_wait is not None and not told:
                on_wait(holder)
                told = True
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()  # the holder removed the file as it finished: lock the current one


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        if text.startswith("pid "):
            return text
    return "pid unknown"


def check(out: Path, fingerprint: dict[str, Any], overwrite: bool) -> None:
    """Refuse (one line) a run directory that holds another run or is not a run directory, unless ``overwrite``
    (then :func:`claim` empties it). Writes nothing."""
    out = Path(out)
    if overwrite or not out.exists() or not _contents(out):
        return
    marker = out / MARKER
    if not marker.exists():
        raise InputError(f"--out {out}: exists and is not a mad run directory; choose another --out")
    try:
        old = json.loads(marker.read_text()).get("fingerprint")
    except (OSError, ValueError, RecursionError, AttributeError):
        raise InputError(f"--out {out}: {MARKER} is not readable; use another --out or --overwrite") from None
    if old != fingerprint:
        diff = first_difference(old if isinstance(old, dict) else {}, fingerprint)
        raise InputError(f"--out {out}: holds a run with other settings ({diff}); use another --out or --overwrite")


def claim(out: Path, run_json: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` this run's directory: with ``overwrite`` empty it first (the old run is deleted; the lock file
    stays), then write ``run.json``. Call :func:`check` first, under :func:`locked`."""
    out = Path(out)
    if overwrite:
        for p in _contents(out):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)
    dump_json(out / MARKER, run_json)


def _contents(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK_NAME]


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    """The first setting (dotted) whose value differs between fingerprints ``a`` (there) and ``b`` (now)."""
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = first_difference(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k}: {va!r} there, {vb!r} now"
    return ""


__all__ = ["LOCK_NAME", "MARKER", "check", "claim", "first_difference", "locked"]
