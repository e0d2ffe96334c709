"""The C allocator's settings for a ``mad`` process: keep freed memory instead of handing it back to the kernel.

On CPU, every training step allocates and frees the same large tensors (activations, attention scores, gradients:
tens of MB each). glibc's ``malloc`` serves blocks of that size with ``mmap`` and returns them with ``munmap`` when
freed, so the next step's tensor lands on fresh pages and the kernel zeroes each page on first touch: on a 2-core
AMD EPYC, 47 s of a 168 s single-thread run went to system time (docs/distill.md, "The C allocator on CPU"; most of
the gain is in evaluation's larger batches). With ``mmap`` off and the heap's trim threshold raised, freed blocks
stay in the heap and are reused; the arithmetic is untouched, so results are bit for bit the same. The cost: the
process keeps its peak heap until it exits.

:func:`keep_freed_memory` sets it through ``mallopt`` (the same as ``MALLOC_MMAP_MAX_=0`` and a large
``MALLOC_TRIM_THRESHOLD_`` in the environment before start). The ``mad`` command calls it at start; a library user
who owns the process can call it too. ``MAD_MALLOC=system`` leaves the allocator as it is. Not glibc (macOS,
musl): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

ENV = "MAD_MALLOC"  # "system": leave the C allocator's settings alone
M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # bytes of free heap top kept before any is returned (the largest a C int holds is 2 GiB)


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed memory for reuse (no ``mmap`` blocks, a 1 GiB trim threshold). True when
    applied; False where ``MAD_MALLOC=system`` says not to or the C library is not glibc."""
    if os.environ.get(ENV, "").strip().lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: musl has mallopt as a stub
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


__all__ = ["ENV", "keep_freed_memory"]
