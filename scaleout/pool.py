"""A pool of engine actors on a Ray cluster: start or join the cluster, feed the actors, retry lost jobs.

One driver thread per actor asks the router for that actor's next job, runs it (the actor streams
its executor events, then the result) and reports back. Faults:

- the actor dies (killed, its node lost): every job it held goes back to the router and runs on
  another actor; the one it was running counts an attempt, and a job that has used up
  ``max_attempts`` fails with a message saying so. Files come back only with a finished job, so a
  lost attempt leaves none behind and none is written twice;
- the job fails on its own input (a bad LoRA file): that is a finished job with status ``error``,
  reported once and never retried;
- ``interrupt`` stops the running jobs at their next step, ``shutdown`` stops the threads and the
  actors (and the local Ray, if the pool started it).
"""

from __future__ import annotations

import collections
import itertools
import logging
import statistics
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import require_ray
from .actor import EngineActor
from .router import Job, Router
from .sizing import IDLE_STOP_S, PoolSize, idle_to_stop, want_more

logger = logging.getLogger(__name__)

# A job is started at most this many times: one actor dying under it is bad luck, three is the job.
DEFAULT_MAX_ATTEMPTS = 3

DoneFn = Callable[[Job, "Outcome"], None]
EventFn = Callable[[Job, str, tuple[str, dict[str, Any]]], None]


@dataclass
class Outcome:
    """How a job ended: ``result`` is EngineActor.run's dict, else ``error`` says why there is none."""

    actor: str | None
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class ActorInfo:
    name: str
    handle: Any
    alive: bool = True
    retired: bool = False  # stopped by the pool (idle), not lost
    node: str = ""  # the Ray node id it runs on
    work_dir: str = ""
    jobs: int = 0
    loads: int = 0
    swaps: int = 0
    busy_s: float = 0.0
    lost_jobs: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class Pool:
    def __init__(self, models_dir: str | None, *, address: str | None = None, actors: int | None = None,
                 limit: int | None = None, threads: int = 1, policy: str = "affinity",
                 max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 on_done: DoneFn | None = None, on_event: EventFn | None = None,
                 memory_budget: int | None = None, size: PoolSize | None = None,
                 start_actors: int | None = None, idle_stop_s: float = IDLE_STOP_S) -> None:
        self.models_dir = models_dir
        self.address = address
        # actors=N: exactly N (the tests, the benchmark); else size MIN-MAX, default 1-the cluster's slots
        self.size = PoolSize(actors, actors) if actors else (size or PoolSize())
        self.start_actors = start_actors  # a batch knows its queue: start this many (within MIN-MAX)
        self.limit = limit  # never more actors than this (the number of jobs of a run)
        self.idle_stop_s = idle_stop_s
        self.threads = max(1, int(threads))
        self.policy = policy
        self.max_attempts = max_attempts
        self.on_done = on_done
        self.on_event = on_event
        self.memory_budget = memory_budget
        self.waiting_outside: Callable[[], float] | None = None  # serve: the oldest prompt's wait, s
        self.actors: dict[str, ActorInfo] = {}
        self.router: Router | None = None
        self.cond = threading.Condition()
        self._closed = False  # no more jobs will be submitted
        self._stopping = False  # take no new job (interrupted, shutting down)
        self._started_ray = False
        self._ray: Any = None
        self._remote: Any = None
        self._options: dict[str, Any] = {}
        self._bounds = (1, 1)
        self._starting = 0
        self._names = itertools.count()
        self.job_s: float | None = None  # a finished job's time, median of the last 10 (the sizing unit)
        self._recent: collections.deque[float] = collections.deque(maxlen=10)
        self.started_at = 0.0
        self.ended_at: float | None = None
        self.retried = 0
        self.moved: dict[int, list[str]] = {}  # job id -> the actors it was lost with, in order
        self.moved_to: dict[int, str] = {}  # job id (moved) -> the actor that finished it

    # --- life ---------------------------------------------------------------------------------

    def start(self) -> Pool:
        ray = self._ray = require_ray()
        if not ray.is_initialized():
            # address None: Ray's own RAY_ADDRESS, else a new local cluster on this machine.
            ray.init(address=self.address, include_dashboard=False, logging_level=logging.WARNING,
                     log_to_driver=logger.isEnabledFor(logging.DEBUG), namespace="loragraph")
            self._started_ray = True
        slots, self._options = self._placement(ray.cluster_resources())
        lo, hi = self.size.bounds(slots)
        if self.limit:
            lo, hi = min(lo, self.limit), min(hi, self.limit)
        self._bounds = (lo, hi)
        count = max(lo, min(hi, self.start_actors or lo))
        self._remote = ray.remote(EngineActor)
        self.router = Router([], self.policy)
        self.started_at = time.perf_counter()
        infos = [self._create() for _ in range(count)]
        readies = ray.get([info.handle.ready.remote() for info in infos])
        for info, ready in zip(infos, readies, strict=True):
            self._join(info, ready)
        if lo < hi:
            threading.Thread(target=self._size_loop, name="loragraph-pool-size", daemon=True).start()
        logger.info("pool: %d actors (%d-%d, %s), %s routing", count, lo, hi, self._options, self.policy)
        return self

    def _placement(self, resources: Mapping[str, float]) -> tuple[int, dict[str, Any]]:
        """Actor slots and options: one actor per GPU; without GPUs, one per ``threads`` CPUs."""
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        if gpus:
            return gpus, {"num_gpus": 1, "num_cpus": max(0, min(self.threads, cpus // gpus))}
        return max(1, cpus // self.threads), {"num_cpus": self.threads}

    def _create(self) -> ActorInfo:
        name = f"a{next(self._names)}"
        handle = self._remote.options(max_concurrency=2, max_restarts=0, **self._options).remote(
            self.models_dir, self.threads, self.memory_budget)
        return ActorInfo(name, handle)

    def _join(self, info: ActorInfo, ready: Mapping[str, Any]) -> None:
        info.node, info.work_dir = ready.get("node_id", ""), ready.get("work_dir", "")
        with self.cond:
            self.actors[info.name] = info
            self.router.join(info.name)
            info.thread = threading.Thread(target=self._loop, args=(info,), name=f"loragraph-{info.name}",
                                           daemon=True)
            info.thread.start()
            self.cond.notify_all()

    @property
    def bounds(self) -> tuple[int, int]:
        """(MIN, MAX) actors on this cluster."""
        return self._bounds

    def alive_count(self) -> int:
        return sum(info.alive for info in self.actors.values())

    # --- size ---------------------------------------------------------------------------------

    def _size_loop(self) -> None:
        """Grow when a job waits longer than one job's time; shrink after an idle spell (sizing.py)."""
        lo, hi = self._bounds
        while not self._stopping:
            time.sleep(0.25)
            now = time.monotonic()
            with self.cond:
                if self._stopping:
                    return
                queued = [j for slot in self.router.alive() for j in slot.queue]
                wait = max((now - j.queued_at for j in queued), default=0.0)
                if self.waiting_outside is not None:
                    wait = max(wait, self.waiting_outside())
                alive = self.alive_count()
                grow = want_more(wait, self.job_s, alive, self._starting, hi) and self._has_room()
                if grow:
                    self._starting += 1
                idle = {i.name: now - i.idle_since for i in self.actors.values()
                        if i.alive and self.router.actors[i.name].load == 0}
                victim = None if grow else idle_to_stop(idle, alive, lo, self.idle_stop_s)
                if victim is not None and self.router.retire(victim):
                    info = self.actors[victim]
                    info.alive, info.retired = False, True
                    self.cond.notify_all()
                else:
                    victim = None
            if grow:
                threading.Thread(target=self._grow, name="loragraph-pool-grow", daemon=True).start()
            if victim is not None:
                logger.info("pool: %s idle for %.0f s, stopped", victim, idle[victim])
                self._end(self.actors[victim])

    def _has_room(self) -> bool:
        free = self._ray.available_resources()
        need = {"CPU": self._options.get("num_cpus", 0), "GPU": self._options.get("num_gpus", 0)}
        return all(free.get(k, 0) >= v for k, v in need.items() if v)

    def _grow(self) -> None:
        info = None
        try:
            info = self._create()
            ready = self._ray.get(info.handle.ready.remote(), timeout=300)
            if self._stopping:
                self._end(info)
                return
            self._join(info, ready)
            logger.info("pool: %s started (a job waited longer than %.2f s)", info.name, self.job_s or 0)
        except BaseException:  # no room after all, a node gone, Ray shut down: the next check tries again
            logger.warning("pool: a new actor did not start", exc_info=not self._stopping)
            if info is not None:
                self._end(info)
        finally:
            with self.cond:
                self._starting -= 1

    def _end(self, info: ActorInfo, close: bool = True) -> None:
        """Remove the actor's work folder (``close``: it is alive to do it), then end it."""
        try:
            if close:
                self._ray.get(info.handle.close.remote(), timeout=30)  # a loaded machine answers late
        except Exception:  # lost meanwhile: its folder stays on its node
            logger.debug("could not close actor %s", info.name, exc_info=True)
        try:
            self._ray.kill(info.handle)
        except Exception:  # already gone
            logger.debug("could not kill actor %s", info.name, exc_info=True)

    def shutdown(self, kill: bool = True) -> None:
        """Stop taking jobs, interrupt the running ones, end the threads and the actors."""
        with self.cond:
            self._stopping = self._closed = True
            self.cond.notify_all()
        self.interrupt()
        for info in list(self.actors.values()):
            if info.thread is not None and info.thread is not threading.current_thread():
                info.thread.join(timeout=30 if not kill else 5)
        if self._ray is not None and kill:
            for info in list(self.actors.values()):
                if not info.retired:
                    self._end(info, close=info.alive)
            if self._started_ray:
                self._ray.shutdown()
        self.ended_at = self.ended_at or time.perf_counter()

    # --- jobs ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self.cond:
            assert self.router is not None, "start() the pool first"
            job.queued_at = job.queued_at or time.monotonic()
            try:
                self.router.add(job)
            except LookupError:
                self._fail(job, "no actor is left in the pool to run it")
                return
            self.cond.notify_all()

    def close(self) -> None:
        """No more jobs: threads end once the queues are empty."""
        with self.cond:
            self._closed = True
            self.cond.notify_all()

    def stop_taking(self) -> None:
        """Start no new job (Ctrl-C): the running ones end (``interrupt`` them to end them sooner)."""
        with self.cond:
            self._stopping = True
            self.cond.notify_all()

    def interrupt(self, job_id: int | None = None) -> bool:
        """Interrupt the running job ``job_id``, or every running job; True if one was running."""
        found = False
        with self.cond:
            running = [(name, slot.running)
                       for name, slot in (self.router.actors.items() if self.router else [])
                       if slot.running is not None and slot.alive]
        for name, job in running:
            if job_id is None or job.id == job_id:
                found = True
                try:
                    self.actors[name].handle.interrupt.remote()
                except Exception:  # a dead actor is interrupted enough
                    logger.debug("could not interrupt %s", name, exc_info=True)
        return found

    def running_jobs(self) -> list[Job]:
        with self.cond:
            return [slot.running for slot in (self.router.actors.values() if self.router else [])
                    if slot.running is not None]

    def remove(self, job_ids: set[int]) -> list[Job]:
        """Take queued (not yet running) jobs out of the pool; returns them."""
        removed = []
        with self.cond:
            for slot in (self.router.actors.values() if self.router else []):
                keep = [j for j in slot.queue if j.id not in job_ids]
                removed += [j for j in slot.queue if j.id in job_ids]
                slot.queue = keep
        return removed

    def broadcast(self, method: str, *args: Any) -> None:
        """Call ``method`` on every live actor and wait (``/free``)."""
        with self.cond:
            handles = [info.handle for info in self.actors.values() if info.alive]
        self._ray.get([getattr(h, method).remote(*args) for h in handles])

    # --- the threads --------------------------------------------------------------------------

    def _loop(self, info: ActorInfo) -> None:
        assert self.router is not None
        while True:
            with self.cond:
                while True:
                    if self._stopping or not info.alive:
                        return
                    job = self.router.next_job(info.name)
                    if job is not None:
                        break
                    if self._closed and self.router.pending() == 0:
                        return
                    self.cond.wait(0.5)
            if not self._run(info, job):
                return

    def _run(self, info: ActorInfo, job: Job) -> bool:
        """Run one job on the actor; False when the actor is gone."""
        ray = self._ray
        payload = job.payload or {}
        result = None
        try:
            stream = info.handle.run.options(num_returns="streaming").remote(
                job.id, payload.get("prompt"), payload.get("extra_data"), payload.get("prompt_id"),
                payload.get("execute_outputs"), payload.get("allow_partial", False))
            for ref in stream:
                kind, value = ray.get(ref)
                if kind == "event":
                    if self.on_event is not None:
                        self.on_event(job, info.name, value)
                else:
                    result = value
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as ex:
            self._actor_lost(info, job, ex)
            return False
        except Exception as ex:  # the job's own failure (a bug, a bad payload): once
            if not self._responds(info):  # unless the actor itself is gone (its node left)
                self._actor_lost(info, job, ex)
                return False
            logger.warning("job %d failed on %s: %s", job.id, info.name, ex)
            with self.cond:
                self.router.finished(info.name, job)
                self.cond.notify_all()
            self._done(job, Outcome(info.name, error=f"{type(ex).__name__}: {ex}"))
            return True
        if result is None:  # the stream ended without a result: treat as a lost actor
            self._actor_lost(info, job, RuntimeError("the actor's stream ended early"))
            return False
        with self.cond:
            self.router.finished(info.name, job, result.get("bases"), result.get("adapters"))
            info.jobs += 1
            info.loads += result.get("loads", 0)
            info.swaps += result.get("swaps", 0)
            info.busy_s += result.get("busy_s", 0.0)
            info.idle_since = time.monotonic()
            if job.id in self.moved:
                self.moved_to[job.id] = info.name
            # the median of the last 10 jobs: the sizing unit follows the work, and an actor's first job
            # (which builds the pipeline, seconds) does not count for ten
            self._recent.append(result.get("busy_s", 0.0))
            self.job_s = statistics.median(self._recent)
            self.cond.notify_all()
        self._done(job, Outcome(info.name, result=result))
        return True

    def _responds(self, info: ActorInfo) -> bool:
        try:
            self._ray.get(info.handle.ready.remote(), timeout=30)
            return True
        except Exception:  # dead, or its node is gone
            return False

    def _actor_lost(self, info: ActorInfo, job: Job, ex: BaseException) -> None:
        logger.warning("actor %s is gone (%s); its jobs go to the others", info.name, type(ex).__name__)
        failed = []
        with self.cond:
            info.alive = False
            jobs = self.router.lost(info.name)
            info.lost_jobs += len(jobs)
            for lost in jobs:
                self.moved.setdefault(lost.id, []).append(info.name)
                if lost.attempts >= self.max_attempts:
                    failed.append((lost, f"lost {lost.attempts} times with its actor (last: {info.name})"))
                    continue
                try:
                    self.router.add(lost)
                    self.retried += lost is job
                except LookupError:
                    failed.append((lost, "every actor of the pool is gone"))
            self.cond.notify_all()
        for lost, why in failed:
            self._fail(lost, why)

    def _fail(self, job: Job, why: str) -> None:
        self._done(job, Outcome(None, error=why))

    def _done(self, job: Job, outcome: Outcome) -> None:
        if self.on_done is not None:
            try:
                self.on_done(job, outcome)
            except Exception:  # a reporting bug must not kill the actor's thread
                logger.exception("reporting job %d failed", job.id)

    # --- reports ------------------------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """Per actor: jobs, LoRA loads, hot-swaps, busy and idle seconds (since the pool started)."""
        wall = (self.ended_at or time.perf_counter()) - self.started_at
        return [{"actor": i.name, "alive": i.alive, "retired": i.retired, "node": i.node, "jobs": i.jobs,
                 "loads": i.loads, "swaps": i.swaps, "busy_s": i.busy_s, "idle_s": max(0.0, wall - i.busy_s)}
                for i in self.actors.values()]
