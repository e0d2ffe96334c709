"""The C allocator's settings (mad_pipeline/allocator.py): freed large blocks are reused instead of returned to the
kernel, so a loop that allocates and frees the same large array stops page-faulting; MAD_MALLOC=system opts out."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")

LOOP = """
import json, resource, sys
import numpy as np
from mad_pipeline.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tune" else None
if sys.argv[1] == "cli":
    from mad_pipeline.cli.main import main
    try:
        main(["--help"])
    except SystemExit:
        pass
np.ones(8 << 20)  # 64 MB, allocated, touched and freed once before counting
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(8 << 20)
    del a
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}), file=sys.stderr)
"""


def _loop(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stderr.strip().splitlines()[-1])


def test_freed_memory_is_reused_instead_of_faulted_in_again():
    plain, tuned = _loop("plain"), _loop("tune")
    assert tuned["applied"] is True
    assert plain["faults"] >= 100  # ten fresh 64 MB blocks: 16,000 4-KB pages each (32 with 2-MB huge pages)
    assert tuned["faults"] < plain["faults"] / 10


def test_mad_malloc_system_leaves_the_allocator_alone():
    out = _loop("tune", MAD_MALLOC="system")
    assert out["applied"] is False
    assert out["faults"] >= 100


def test_the_mad_command_applies_it():
    out = _loop("cli")  # the mad command's entry point runs first (--help), then the same loop
    assert out["applied"] is None
    assert out["faults"] < 100
