"""How many CPU threads torch may use: ``--threads N``, or a default that does not oversubscribe.

torch's own default is one intra-op thread per physical core, whatever else runs there. Its
OpenMP threads spin while they wait for each other, so when another process holds one of those
cores every parallel region waits for a descheduled thread: on a busy 2-core machine the 32x32
quickstart ran 25-60x slower at torch's default than at one thread. The default here
counts only the cores that are free now: the CPUs this process may run on minus the 1-minute load
average (or the processes runnable now, when more), at least 1. ``benchmarks/threads.py`` measures
the rule; the figures are in docs/performance.md.
"""

from __future__ import annotations

import logging
import os
import sys

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so containers and taskset are honoured)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def load_average() -> float:
    """How many cores other work keeps busy: the 1-minute load average, or the processes runnable
    right now (besides this one) when more, since the average lags a job that just started."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average on this OS
        return 0.0
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])  # "0.52 0.31 0.12 3/250 1234"
        load = max(load, float(running - 1))
    except (OSError, ValueError, IndexError):
        pass
    return load


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """Free cores now: ``cpus - round(load)``, clamped to 1..cpus.

    The load is rounded, not floored: a core busy 60% of the time is not free enough for a thread
    that every parallel region waits on.
    """
    cpus = available_cpus() if cpus is None else cpus
    load = load_average() if load is None else load
    return max(1, min(cpus, cpus - round(load)))


def choose_threads(requested: int | None) -> tuple[int, str]:
    """The thread count to use and why: ``--threads``, else ``OMP_NUM_THREADS``, else the default rule."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be at least 1, got {requested}")
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    cpus, load = available_cpus(), load_average()
    return default_threads(cpus, load), f"{cpus} CPU{'s' * (cpus != 1)} available, load {load:.2f}"


def apply_threads(requested: int | None) -> int:
    """Set torch's intra-op threads (``--threads``, or the default rule); returns the number set."""
    n, why = choose_threads(requested)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    else:  # torch reads it when first imported: `serve` shows its URL without waiting for torch
        os.environ["OMP_NUM_THREADS"] = str(n)
    logger.info("torch uses %d CPU thread%s (%s)", n, "s" * (n != 1), why)
    return n
