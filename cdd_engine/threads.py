"""How many torch CPU threads to use when the user did not say (``cdd-engine demo`` without
``--threads``).

torch's default is one thread per core. On a machine whose cores are already busy that is much
slower than fewer threads: torch's threads wait for each other at every operator, and one
descheduled thread stalls them all. The rule, measured in benchmarks/RESULTS.md ("Thread rule"):
take the cores this process may use, subtract the work already running (the 1-minute load
average, read before we start computing), round to the nearest whole core, and use at least one.
"""
from __future__ import annotations

import os
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:  # a container limited to "quota period" microseconds gets quota/period cores
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def load_average() -> float:
    """The 1-minute load average (runnable threads, in cores); 0 where the platform has none."""
    try:
        return max(0.0, os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def describe() -> str:
    """One line for the user: why :func:`auto_threads` picked what it picked."""
    return f"auto: load average {load_average():.1f} on {usable_cores()} core(s)"


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for torch: ``round(cores - load)`` clamped to ``[1, cores]``.

    Args:
        cores: usable cores (default :func:`usable_cores`).
        load: the work already running, in cores (default: the 1-minute load average; 0 where the
            platform has none).
    """
    cores = usable_cores() if cores is None else max(1, int(cores))
    load = load_average() if load is None else max(0.0, float(load))
    free = cores - load
    return max(1, min(cores, int(free + 0.5)))
