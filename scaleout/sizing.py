"""How many actors the pool wants: ``--ray-actors MIN-MAX``, and when to start or stop one.

Pure Python (the pool asks, the tests check it without Ray). The rules, with their reasons in
docs/CONTRACT.md ("Scale-out: pool size"):

- start one actor when a job has waited longer than one job's time (the mean of the jobs finished so
  far): a shorter wait ends sooner on the actors already there than on one still importing torch;
- stop an actor that has been idle for ``idle_stop_s`` while more than MIN are up;
- never more than MAX, nor more than the cluster has free slots for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# An idle actor is stopped after this long. Starting one costs about 10 s here (a Ray worker importing
# torch and diffusers, then the pipeline build), so an idle spell under a few starts' worth is cheaper
# kept than restarted; 60 s is six starts.
IDLE_STOP_S = 60.0


@dataclass(frozen=True)
class PoolSize:
    """MIN-MAX actors; ``hi`` None: the cluster's GPUs, else its CPU slots."""

    lo: int = 1
    hi: int | None = None

    @classmethod
    def parse(cls, text: str) -> PoolSize:
        """``N`` (exactly N) or ``MIN-MAX``; ValueError names what is wrong."""
        raw = text.strip()
        lo_text, dash, hi_text = raw.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if dash else lo
        except ValueError:
            raise ValueError(f"--ray-actors: expected N or MIN-MAX (e.g. 1-4), got {text!r}") from None
        if lo < 1 or hi < lo:
            raise ValueError(f"--ray-actors: need 1 <= MIN <= MAX, got {text!r}")
        return cls(lo, hi)

    def bounds(self, slots: int) -> tuple[int, int]:
        """(MIN, MAX) on a cluster with ``slots`` actor slots (MIN is kept even above the slots)."""
        hi = self.hi if self.hi is not None else max(1, slots)
        return min(self.lo, hi), hi


def size_from_env(default: PoolSize | None = None) -> PoolSize | None:
    """LORAGRAPH_RAY_ACTORS=N caps the actors at N (default: the cluster's slots)."""
    raw = os.environ.get("LORAGRAPH_RAY_ACTORS", "").strip()
    if raw.isdigit() and int(raw) > 0:
        return PoolSize(1, int(raw))
    return default


def want_more(longest_wait_s: float, job_s: float | None, alive: int, starting: int, hi: int) -> bool:
    """Start an actor: a job has waited longer than one job's time, and MAX is not reached."""
    return job_s is not None and longest_wait_s > job_s and alive + starting < hi and starting == 0


def idle_to_stop(idle_for: dict[str, float], alive: int, lo: int, idle_stop_s: float) -> str | None:
    """The actor idle the longest, once past ``idle_stop_s``, while more than MIN are up."""
    if alive <= lo:
        return None
    over = [(idle, name) for name, idle in idle_for.items() if idle >= idle_stop_s]
    return max(over)[1] if over else None
