"""The machine a stage ran on, as its record keeps it: the kind of CPU and its native bf16, torch's thread count, the
GPUs in use.

A long training's bytes depend on these (other instruction sets and thread counts take other kernels, which round
differently), while a cache key names the recipe only; so every stage record (``stage.json``) says what made it, and
a cache shared between machines tells which kind of CPU each entry came from. Read from Linux's ``/proc/cpuinfo``;
elsewhere the CPU is what :mod:`platform` says and its native bf16 is unknown.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path
from typing import Any

CPUINFO = "/proc/cpuinfo"
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 instruction sets with native bf16 matrix arithmetic


def _field(lines: tuple[str, ...], name: str) -> str | None:
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.split(":", 1)[0].strip() == name and ":" in ln),
                None)


@functools.lru_cache(maxsize=8)
def _lines(cpuinfo: str | Path) -> tuple[str, ...] | None:
    """The file's lines, read once per process (every stage record asks; the CPU does not change under it)."""
    try:
        return tuple(Path(cpuinfo).read_text().splitlines())
    except OSError:
        return None


def cpu_bf16_flags(cpuinfo: str | Path = CPUINFO) -> list[str] | None:
    """The x86 CPU's native bf16 instruction sets (``avx512_bf16``, ``amx_bf16``): empty when it has none; None where
    that is not known (no ``cpuinfo`` file, or a CPU that lists no x86 ``flags`` line, such as ARM's)."""
    lines = _lines(cpuinfo)
    flags = None if lines is None else _field(lines, "flags")
    return None if flags is None else sorted(set(flags.split()) & set(BF16_CPU_FLAGS))


def cpu_model(cpuinfo: str | Path = CPUINFO) -> str:
    """The CPU's model name (``AMD EPYC``, ``Intel(R) Xeon(R) Platinum 8480+``), else what :mod:`platform` knows."""
    lines = _lines(cpuinfo) or ()
    return _field(lines, "model name") or platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """This process's machine for a record: CPU model, architecture, native bf16 flags (None: unknown), torch's
    threads, and the CUDA devices this process has opened (none named unless CUDA is already in use: asking would
    start it)."""
    import torch

    cuda = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if torch.cuda.is_initialized() else [])
    return {"cpu": cpu_model(), "arch": platform.machine(), "cpu_bf16": cpu_bf16_flags(),
            "threads": torch.get_num_threads(), "cuda": cuda}


def machine_label(record: dict[str, Any] | None) -> str | None:
    """What a report calls the machine of a :func:`machine` record: its GPUs, else its CPU model (None: no record)."""
    if not record:
        return None
    return ", ".join(record.get("cuda") or []) or record.get("cpu") or "unknown"


__all__ = ["BF16_CPU_FLAGS", "CPUINFO", "cpu_bf16_flags", "cpu_model", "machine", "machine_label"]
