"""Fixed points where a test can pause a real process or make an operation fail the way a full disk does.

Inert unless the environment asks for it (only tests set these variables):

- ``MAD_TEST_PAUSE=<point>=<dir>``: a process reaching :func:`pause` ``(point)`` writes ``<dir>/<point>.reached``
  (holding its pid) and waits until ``<dir>/<point>.release`` exists (at most 10 minutes). Two processes can so be
  ordered at a known place without guessing at timings.
- ``MAD_TEST_FAIL=<point>@<n>``: :func:`fail` ``(point, n)`` raises ``OSError(ENOSPC)`` (no space left on device).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

PAUSE_ENV = "MAD_TEST_PAUSE"
FAIL_ENV = "MAD_TEST_FAIL"
PAUSE_LIMIT_S = 600.0


def pause(point: str) -> None:
    spec = os.environ.get(PAUSE_ENV, "")
    name, _, folder = spec.partition("=")
    if not spec or name != point or not folder:
        return
    d = Path(folder)
    (d / f"{point}.reached").write_text(f"{os.getpid()}\n")
    deadline = time.monotonic() + PAUSE_LIMIT_S
    while not (d / f"{point}.release").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def fail(point: str, n: int | None = None) -> None:
    spec = os.environ.get(FAIL_ENV, "")
    name, _, at = spec.partition("@")
    if spec and name == point and (not at or (n is not None and at == str(n))):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


__all__ = ["FAIL_ENV", "PAUSE_ENV", "fail", "pause"]
