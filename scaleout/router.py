"""Which actor runs which job, and in what order. Pure Python: the pool and the simulator share it.

Affinity routing (``policy="affinity"``):
- a job goes to an actor that has built its base pipeline, then to the one that holds (or will hold,
  counting the jobs already queued to it) the most of its LoRA files; ties and misses go to the
  least-loaded actor;
- an actor runs next, from its own queue, a job with the LoRA set it has just used, else the one
  sharing the most LoRAs with what it holds, else the oldest: jobs group by LoRA set, so an
  actor switches LoRAs once per group instead of once per job;
- an actor with nothing queued takes work from the most loaded actor, once that one has
  ``steal_min_waiting`` jobs waiting: the job sharing the most LoRAs with what it holds, else the
  newest job outside the group that actor is running. This is what keeps all actors busy when one
  LoRA is popular; the thief then holds that LoRA too.

``policy="round-robin"``: job i goes to actor i mod N and each actor runs its jobs in order (what
ComfyUI-Distributed and SwarmUI do): the baseline of the benchmark and the tests.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .needs import Needs

POLICIES = ("affinity", "round-robin")


@dataclass
class Job:
    id: int  # the run order: results are reported and files numbered in this order
    needs: Needs = field(default_factory=Needs)
    payload: Any = None
    attempts: int = 0  # times it was started; bounded by the pool's retry limit
    last_actor: str | None = None
    queued_at: float = 0.0  # time.monotonic() when the pool took it: how long it has waited
    started_at: float = 0.0  # time.monotonic() when its actor started it: how long until it ends


@dataclass
class ActorSlot:
    """The router's view of one actor: what it holds (as last reported) and what it was given."""

    name: str
    bases: set[str] = field(default_factory=set)
    adapters: set[str] = field(default_factory=set)
    current: frozenset[str] | None = None  # the LoRA set of the job it ran last
    queue: list[Job] = field(default_factory=list)
    running: Job | None = None
    alive: bool = True
    # what the queued and running jobs need, counted (kept by the router: a sum over a long queue
    # on every placement would make placing quadratic)
    coming_bases: Counter = field(default_factory=Counter)
    coming_adapters: Counter = field(default_factory=Counter)

    @property
    def load(self) -> int:
        return len(self.queue) + (self.running is not None)

    def expected(self) -> tuple[set[str], set[str]]:
        """What it will hold once its queue has run: held now plus what queued jobs load."""
        return self.bases | set(self.coming_bases), self.adapters | set(self.coming_adapters)

    def take(self, job: Job) -> None:
        self.coming_bases.update(job.needs.bases)
        self.coming_adapters.update(job.needs.adapters)

    def drop(self, job: Job) -> None:
        self.coming_bases.subtract(job.needs.bases)
        self.coming_adapters.subtract(job.needs.adapters)
        self.coming_bases = +self.coming_bases  # drop the zeros
        self.coming_adapters = +self.coming_adapters


# An idle actor takes a job from another once that one has this many waiting. 1: at the end of a batch
# (a sweep) an idle actor has nothing else to do; 2 halves the switches of a busy farm at some p95
# latency (benchmarks/sweep.py's simulation: 0.53 -> 0.29 loads per job, p95 0.82 -> 1.00 s).
STEAL_MIN_WAITING = 1


class Router:
    def __init__(self, names: Iterable[str], policy: str = "affinity",
                 steal_min_waiting: int = STEAL_MIN_WAITING) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}; choose one of {', '.join(POLICIES)}")
        self.policy = policy
        self.steal_min_waiting = max(1, steal_min_waiting)
        self.actors: dict[str, ActorSlot] = {n: ActorSlot(n) for n in names}
        self._turn = itertools.count()

    def alive(self) -> list[ActorSlot]:
        return [a for a in self.actors.values() if a.alive]

    def join(self, name: str) -> None:
        """A new actor (the pool grew): it holds nothing yet; an idle actor steals, so it gets work."""
        self.actors[name] = ActorSlot(name)

    def retire(self, name: str) -> bool:
        """Take an idle actor out (the pool shrinks); False, and nothing changes, if it has work."""
        slot = self.actors[name]
        if slot.load:
            return False
        slot.alive = False
        return True

    def best(self, needs: Needs, among: Iterable[str] | None = None) -> ActorSlot | None:
        """The actor affinity would pick for a job with these needs (None: no actor alive)."""
        choices = [a for a in self.alive() if among is None or a.name in set(among)]
        return max(choices, key=lambda a: self._rank(a, needs)) if choices else None

    @staticmethod
    def wait_s(slot: ActorSlot, job_s: float, now: float) -> float:
        """How long a job queued now on this actor waits: the running job's rest, then the queue's."""
        rest = max(0.0, job_s - (now - slot.running.started_at)) if slot.running is not None else 0.0
        return rest + len(slot.queue) * job_s

    def holds(self, slot: ActorSlot, needs: Needs) -> bool:
        """The actor holds, or will hold, every LoRA of the job (and it has some)."""
        return bool(needs.adapters) and self._score(slot, needs)[0] == len(needs.adapters)

    # --- placing ------------------------------------------------------------------------------

    def add(self, job: Job, among: Iterable[str] | None = None) -> str:
        """Queue a job on an actor (among ``among``, default all alive); returns the actor's name."""
        choices = [a for a in self.alive() if among is None or a.name in set(among)]
        if not choices:
            raise LookupError("no actor is alive to take the job")
        if self.policy == "round-robin":
            slot = choices[next(self._turn) % len(choices)]
        else:
            slot = max(choices, key=lambda a: self._rank(a, job.needs))
        slot.queue.append(job)
        slot.take(job)
        return slot.name

    @classmethod
    def _rank(cls, slot: ActorSlot, needs: Needs) -> tuple[int, int, int, int]:
        """Its base built there (a pipeline build costs seconds), then most LoRAs held or coming, then the
        least loaded. Only a base already built counts first: before any actor has reported one, a job
        queued to an actor "brings" the base there, and ranking that first would pile every job of a
        batch on the first actor; the base coming with queued jobs only breaks the last ties."""
        adapters, bases = cls._score(slot, needs)
        built = sum(1 for b in needs.bases if b in slot.bases)
        return built, adapters, -slot.load, bases

    @staticmethod
    def _score(slot: ActorSlot, needs: Needs) -> tuple[int, int]:
        """(LoRAs, bases) of the job that the actor holds or will hold: see ``expected``."""
        adapters = sum(1 for a in needs.adapters if a in slot.adapters or slot.coming_adapters[a] > 0)
        bases = sum(1 for b in needs.bases if b in slot.bases or slot.coming_bases[b] > 0)
        return adapters, bases

    # --- taking -------------------------------------------------------------------------------

    def next_job(self, name: str) -> Job | None:
        """The job actor ``name`` should run now (marked running), or None when there is none for it."""
        slot = self.actors[name]
        if not slot.alive:
            return None
        if self.policy == "round-robin":
            job = slot.queue.pop(0) if slot.queue else None
        else:
            job = self._pick(slot, slot.queue) if slot.queue else self._steal(slot)
        if job is not None:
            slot.running = job
            job.started_at = time.monotonic()
            job.attempts += 1
            job.last_actor = name
        return job

    @staticmethod
    def _pick(slot: ActorSlot, queue: list[Job]) -> Job:
        def rank(item: tuple[int, Job]) -> tuple[bool, int, int]:
            index, job = item
            return (job.needs.adapters == slot.current, len(job.needs.adapters & slot.adapters), -index)

        index, job = max(enumerate(queue), key=rank)
        del queue[index]
        return job

    def _steal(self, thief: ActorSlot) -> Job | None:
        victims = [a for a in self.alive() if a is not thief and a.queue]
        if not victims:
            return None
        victim = max(victims, key=lambda a: a.load)
        if len(victim.queue) < max(self.steal_min_waiting, 1 if victim.running is not None else 2):
            return None  # it gets to them soon: a switch here would cost more than the wait
        _, held = thief.expected()
        best = max(range(len(victim.queue)), key=lambda i: (len(victim.queue[i].needs.adapters & held), i))
        if not victim.queue[best].needs.adapters & held:
            keep = victim.running.needs.adapters if victim.running else victim.current
            outside = [i for i, j in enumerate(victim.queue) if j.needs.adapters != keep]
            best = outside[-1] if outside else len(victim.queue) - 1
        job = victim.queue.pop(best)
        victim.drop(job)
        thief.take(job)
        return job

    # --- reports ------------------------------------------------------------------------------

    def finished(self, name: str, job: Job, bases: Iterable[str] | None = None,
                 adapters: Iterable[str] | None = None) -> None:
        """Job done on actor ``name``; ``bases``/``adapters``: what the actor reports it holds now."""
        slot = self.actors[name]
        if slot.running is job:
            slot.running = None
            slot.drop(job)
        slot.current = job.needs.adapters
        if bases is not None:
            slot.bases = set(bases)
        if adapters is not None:
            slot.adapters = set(adapters)

    def lost(self, name: str) -> list[Job]:
        """Actor ``name`` is gone: the jobs it held (running first), to be placed again."""
        slot = self.actors[name]
        slot.alive = False
        jobs = ([slot.running] if slot.running else []) + slot.queue
        slot.running, slot.queue = None, []
        slot.coming_bases, slot.coming_adapters = Counter(), Counter()
        return jobs

    def pending(self) -> int:
        return sum(a.load for a in self.actors.values())
