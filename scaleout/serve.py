"""``loragraph serve --ray``: the ComfyUI-API server in front of a pool of engine actors.

``PoolWorker`` stands in for ``server.worker.PromptWorker`` (same ``start`` / ``stop`` /
``interrupt`` / ``client_id`` / ``last_node_id``), so the routes, queue, history and websockets are
the server's own. Prompts leave the queue in order, each placed by ``run --ray``'s rule
(``Router.best``: most of its LoRAs held, then its base, then the least loaded): on that actor if it
is idle, or if it holds every LoRA of the prompt and its work ends within ``affinity_wait_s``;
else on the best idle actor; with none idle the prompt stays pending. ``/queue`` shows it running
from then on, its actor in ``extra_data["ray_actor"]``.
Each actor streams its executor events; they reach ``/ws`` as one process sends them (to
the queuing client, ``progress`` and ``execution_interrupted`` to everyone without one). The driver
writes the files (``output_commit.py``) before the prompt enters history, so ``/history`` and ``/view`` see
them as on one machine. ``/interrupt`` stops the prompt named (or every running prompt) on its actor;
``/free`` reaches every actor.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..graph.events import EXECUTING, EXECUTION_ERROR, EXECUTION_INTERRUPTED, PROGRESS, timestamp_ms
from .needs import job_needs
from .output_commit import commit_files
from .pool import Outcome, Pool
from .router import Job
from .sizing import PoolSize, size_from_env

logger = logging.getLogger(__name__)

_SENT_WITHOUT_CLIENT = frozenset({PROGRESS, EXECUTION_INTERRUPTED})  # as server/worker.py


# A prompt waits at most this long for a busy actor that holds its LoRAs. Waiting no longer than a
# cold LoRA load (lora_ops_cpu.json: 254-305 ms; benchmarks/sweep.py measures it again) ends no later
# than loading it on an idle actor, and saves that actor the load. Longer trades latency for loads.
DEFAULT_AFFINITY_WAIT_S = 0.3
ACTOR_KEY = "ray_actor"  # extra_data key naming the prompt's actor in /queue and /history


def worker_factory(models_dir: str | None, address: str | None = None, actors: int | None = None,
                   threads: int = 1, size: PoolSize | None = None,
                   affinity_wait_s: float | None = None) -> Callable[[Any], PoolWorker]:
    """For ``ServerConfig(worker_factory=...)``: the server's worker becomes a pool of actors."""

    def make(server: Any) -> PoolWorker:
        pool = Pool(models_dir, address=address, actors=actors, threads=threads,
                    size=size or size_from_env())
        return PoolWorker(server.queue, server.hub, pool, affinity_wait_s)

    return make


class PoolWorker:
    def __init__(self, queue: Any, hub: Any, pool: Pool, affinity_wait_s: float | None = None) -> None:
        self.queue = queue
        self.hub = hub
        self.pool = pool
        self.affinity_wait_s = DEFAULT_AFFINITY_WAIT_S if affinity_wait_s is None else affinity_wait_s
        pool.on_done = self._done
        pool.on_event = self._event
        pool.waiting_outside = self._longest_wait
        self._needs: dict[str, Any] = {}  # prompt id -> its Needs (read once: it hashes LoRA files)
        self._seen: dict[str, float] = {}  # pending prompt id -> when the dispatcher first saw it
        self.client_id: str | None = None  # of the prompt that sent the latest event (reconnects)
        self.last_node_id: str | None = None
        self._tasks: dict[int, tuple[Any, int, float]] = {}  # job id -> (queue item, task id, start)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # --- the PromptWorker interface -----------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="loragraph-pool-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.pool.shutdown()

    def interrupt(self, prompt_id: str | None = None) -> bool:
        if prompt_id and prompt_id not in self.queue.running_prompt_ids():
            logger.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
            return False
        with self._lock:
            jobs = [job_id for job_id, (item, _, _) in self._tasks.items()
                    if not prompt_id or item[1] == prompt_id]
        for job_id in jobs:
            self.pool.interrupt(job_id)
        return bool(jobs)

    # --- dispatch -----------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            self.pool.start()
        except BaseException as ex:  # reported on every prompt, and in the log
            logger.error("the Ray pool did not start: %s", ex)
            self.error = ex
        while not self._stopping.is_set():
            self._apply_flags(self.queue.take_flags())
            if self.error is not None:  # every prompt fails, saying why
                got = self.queue.get(timeout=1.0)
                if got is not None:
                    self._submit(*got, None, f"the Ray pool did not start: {self.error}")
                continue
            _running, pending = self.queue.current_queue()
            now = time.monotonic()
            self._seen = {item[1]: self._seen.get(item[1], now) for item in pending}
            self._needs = {k: v for k, v in self._needs.items() if k in self._seen}  # deleted ones go
            if pending and self._pool_gone():
                got = self.queue.get(timeout=0)
                if got is not None:
                    self._submit(*got, None, "every actor of the Ray pool is gone")
                continue
            actor = self._place(self._needs_of(pending[0])) if pending else None
            if actor is None:
                time.sleep(0.05)
                continue
            got = self.queue.get(timeout=0)
            if got is not None:
                item, task_id = got
                if item[1] != pending[0][1]:  # deleted meanwhile: place the one that came instead
                    actor = self._place(self._needs_of(item)) or actor
                self._submit(item, task_id, actor)

    def _needs_of(self, item: Any) -> Any:
        prompt_id = item[1]
        if prompt_id not in self._needs:
            self._needs[prompt_id] = job_needs(item[2])
        return self._needs[prompt_id]

    def _place(self, needs: Any) -> str | None:
        """The actor for the next prompt, or None: it waits in the queue (see the module's docstring)."""
        router = self.pool.router
        if router is None:
            return None
        with self.pool.cond:
            best = router.best(needs)
            if best is None:
                return None
            if best.load == 0:
                return best.name
            job_s = self.pool.job_s
            if job_s is not None and router.holds(best, needs) and \
                    router.wait_s(best, job_s, time.monotonic()) <= self.affinity_wait_s:
                return best.name
            idle = [a.name for a in router.alive() if a.load == 0]
            return router.best(needs, among=idle).name if idle else None

    def _longest_wait(self) -> float:
        """How long the oldest pending prompt has waited (the pool grows past one job's time)."""
        seen = list(self._seen.values())
        return time.monotonic() - min(seen) if seen else 0.0

    def _pool_gone(self) -> bool:
        """No actor alive, and the pool cannot start one (a fixed size): prompts would wait forever."""
        lo, hi = self.pool.bounds
        return self.pool.router is not None and self.pool.alive_count() == 0 and lo == hi

    def _submit(self, item: Any, task_id: int, actor: str | None, why: str = "") -> None:
        _number, prompt_id, prompt, extra_data, outputs = item
        job = Job(next(self._ids), self._needs.pop(prompt_id, None) or job_needs(prompt), {
            "prompt": prompt, "extra_data": dict(extra_data or {}), "prompt_id": prompt_id,
            "execute_outputs": outputs, "allow_partial": True})
        self._seen.pop(prompt_id, None)
        with self._lock:
            self._tasks[job.id] = (item, task_id, time.perf_counter())
        if actor is None:
            self._done(job, Outcome(None, error=why))
            return
        self._show_actor(item, actor)
        job.queued_at = time.monotonic()
        with self.pool.cond:
            try:
                self.pool.router.add(job, among=[actor])
            except LookupError:
                self.pool.router.add(job)  # that actor died meanwhile: any live one
            self.pool.cond.notify_all()

    @staticmethod
    def _show_actor(item: Any, actor: str) -> None:
        """Name the actor in the queue item's extra_data: /queue and /history show it."""
        if isinstance(item[3], dict):
            item[3][ACTOR_KEY] = actor

    def _apply_flags(self, flags: dict[str, Any]) -> None:
        free_memory = bool(flags.get("free_memory", False))
        unload = bool(flags.get("unload_models", free_memory))
        if (free_memory or unload) and self.pool.router is not None:
            self.pool.broadcast("free", free_memory, unload)

    # --- from the actors ----------------------------------------------------------------------

    def _client_of(self, job: Job) -> str | None:
        return (job.payload.get("extra_data") or {}).get("client_id") or None

    def _event(self, job: Job, actor: str, event: tuple[str, dict[str, Any]]) -> None:
        name, data = event
        with self._lock:
            task = self._tasks.get(job.id)
        if task is not None:
            self._show_actor(task[0], actor)  # a job moved after its actor was lost: its new actor
        client_id = self._client_of(job)
        if name == EXECUTING:
            if data.get("node") is None:
                return  # sent once the prompt is in history
            self.client_id, self.last_node_id = client_id, data["node"]
        if client_id is not None:
            self.hub.send_sync(name, data, client_id)
        elif name in _SENT_WITHOUT_CLIENT:
            self.hub.send_sync(name, data, None)

    def _done(self, job: Job, outcome: Outcome) -> None:
        with self._lock:
            item, task_id, started = self._tasks.pop(job.id)
        prompt_id, client_id = item[1], self._client_of(job)
        if outcome.result is not None:
            result = outcome.result["result"]
            try:
                commit_files(outcome.result["files"], result.outputs)
                history, status = self._history_entry(result, client_id)
            except Exception as ex:  # e.g. the output folder is not writable
                logger.exception("prompt %s: writing its files failed", prompt_id)
                history, status = self._failed(prompt_id, client_id, f"{type(ex).__name__}: {ex}")
        else:
            history, status = self._failed(prompt_id, client_id, outcome.error or "lost")
        self.queue.task_done(task_id, history, status)
        if client_id is not None:
            self.hub.send_sync(EXECUTING, {"node": None, "prompt_id": prompt_id}, client_id)
        if self.last_node_id is not None and self.client_id == client_id:
            self.last_node_id = None
        logger.info("Prompt executed in %.2f seconds on %s", time.perf_counter() - started, outcome.actor)

    def _history_entry(self, result: Any, client_id: str | None) -> tuple[dict, dict]:
        messages = list(result.messages)
        if result.status == "invalid":  # as server/worker.py: valid when queued, invalid when run
            message = _error_message(result.prompt_id, next(iter(result.node_errors), None), None,
                                     "\n".join(result.error_lines()))
            messages.append((EXECUTION_ERROR, message))
            if client_id is not None:
                self.hub.send_sync(EXECUTION_ERROR, message, client_id)
        meta = {n: {"node_id": n, "display_node": n, "parent_node": None,
                    "real_node_id": n} for n in result.outputs}
        status = {"status_str": "success" if result.ok else "error", "completed": result.ok,
                  "messages": messages}
        return {"outputs": result.outputs, "meta": meta}, status

    def _failed(self, prompt_id: str, client_id: str | None, text: str) -> tuple[dict, dict]:
        message = _error_message(prompt_id, None, None, text)
        if client_id is not None:
            self.hub.send_sync(EXECUTION_ERROR, message, client_id)
        return {"outputs": {}, "meta": {}}, {"status_str": "error", "completed": False,
                                             "messages": [(EXECUTION_ERROR, message)]}


def _error_message(prompt_id: str, node_id: str | None, node_type: str | None, text: str) -> dict[str, Any]:
    return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type, "executed": [],
            "exception_message": text, "exception_type": "loragraph.server.PromptFailed",
            "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": timestamp_ms()}
