"""Shared by the bench scripts: wall time, this process's CPU time and the cores other processes used meanwhile
(a bench run on a shared machine reports how contended it was)."""

from __future__ import annotations

import os
import resource
import time


def machine_busy_s() -> float:
    """CPU-seconds all processes on the machine have spent busy since boot (from /proc/stat); nan if unavailable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """This process's CPU time plus its finished children's (DataLoader workers, once joined)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """``with Meter() as m:`` -> ``m.wall``, ``m.cpu`` (own), ``m.foreign`` (cores other processes used on average),
    ``m.load1`` (1-minute load average at the end)."""

    def __enter__(self):
        self.t0, self.c0, self.m0 = time.perf_counter(), own_cpu_s(), machine_busy_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = own_cpu_s() - self.c0
        self.foreign = max(0.0, (machine_busy_s() - self.m0 - self.cpu) / max(self.wall, 1e-9))
        self.load1 = os.getloadavg()[0]
        return False
