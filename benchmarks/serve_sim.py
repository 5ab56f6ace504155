"""Ray Serve's model multiplexing, simulated as Ray Serve 2.60 routes (``ray/serve/_private/request_router``).

``benchmarks/sweep.py`` runs this for its ``ray-serve`` policy; ``benchmarks/farm.py`` checks it against a
real deployment (``benchmarks/serve_app.py``). What Serve's router does, and what is modelled:

- **Routing tasks.** Requests wait in the handle's router in arrival order. At most 2 x replicas routing
  tasks run; each takes the next request and tries to place it until it is placed.
- **Candidates** (``MultiplexMixin.apply_multiplex_routing``). First try: the replicas whose model list
  (as the router last heard it) has the request's model; none, and no other request of that model has
  just fallen back: the replicas with the fewest models. Every later try within the matching timeout
  (uniform 1-2 s): the replicas with the fewest models (with every LRU full, all of them); after it,
  those once more, then all replicas.
- **Choice** (``PowerOfTwoChoicesRequestRouter``): two random candidates; by the router's queue-length
  cache, the one with fewer requests, if under ``max_ongoing_requests`` (5); with both full by the
  cache, it asks them (a probe, which the task waits for).
- **Who gets the replica** (``FIFOMixin``): the first request waiting for the same model, in the order
  the router indexed them. A task whose own request was placed takes the next one and tries it at once;
  one whose request another task took is cancelled, and a new one starts on the next request.
- **Sending, and refusals.** A task does not wait while the cache shows room, and the cache counts a
  request only once it is sent, after the task waits: one task places request after request on the
  replica that freed a slot. The requests race to the replica, which accepts those it has room for
  and refuses the rest (Serve's strict ``max_ongoing_requests``); a refused request is routed again, at
  its place in arrival order (and at the end of its model's index, if it had left it). This is why a
  burst of requests is not served in arrival order, and why a freed slot often goes to a request of a
  model the replica holds (checked against a real deployment: farm.py).
- **Backoff.** A try that places nothing is retried at once, then after 25, 50, 100 ... ms, at most
  500 ms (Serve's router retry backoff).
- **What the router knows a replica holds** is late: the replica pushes its model list every 0.1 s
  when it changed, the controller hands it to the routers in its 0.1 s control loop.
- **The replica** runs its requests one at a time in arrival order (benchmarks/serve_app.py's lock);
  its LRU of 3 moves when a request arrives (``get_model`` at the top of the handler), the engine
  (one active LoRA, two parked) prices the switch when the request runs.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

MAX_ONGOING = 5  # Serve's default max_ongoing_requests per replica (serve_app.py writes it out)
MODELS_PER_REPLICA = 3  # @serve.multiplexed(max_num_models_per_replica=3)
TASKS_PER_REPLICA = 2  # Serve's router runs at most 2 x replicas routing tasks (cap 50)
TASKS_CAP = 50
BACKOFF_FIRST_S, BACKOFF_FACTOR, BACKOFF_MAX_S = 0.025, 2, 0.5  # RAY_SERVE_ROUTER_RETRY_* defaults
MATCHING_TIMEOUT_S = 1.0  # RAY_SERVE_MULTIPLEXED_MODEL_ID_MATCHING_TIMEOUT_S: uniform(1x, 2x) per try
PUSH_INTERVAL_S = 0.1  # PUSH_MULTIPLEXED_MODEL_IDS_INTERVAL_S: a replica pushes its model list
# Assumed, not Serve's: a request reaching a replica (a Ray actor call on one machine; those sent
# together race) and a queue-length probe's answer. 0.5-10 ms and 2-20 ms move the farm check's Ray
# Serve loads per job by a few percent (all within 11% of every measured run).
RPC_S = 0.002
PROBE_S = 0.002
CONTROL_LOOP_S = 0.1  # RAY_SERVE_CONTROL_LOOP_INTERVAL_S: the controller passes it to the routers


@dataclass
class Request:
    id: int
    model: int
    arrival: float
    placed: bool = False
    match_start: float | None = None  # routing_context.multiplexed_start_matching_time
    tried_first: bool = False
    tried_fewest: bool = False
    task: Task | None = None


@dataclass
class Task:
    request: Request
    entered_backoff: bool = False
    attempt: int = 0
    alive: bool = True


@dataclass
class Replica:
    name: str
    engine: Any  # sweep.EngineModel
    lru: OrderedDict[int, None] = field(default_factory=OrderedDict)
    known: frozenset[int] = frozenset()  # the model list as the router last heard it
    in_flight: int = 0  # requests it accepted and has not answered
    cached: int = 0  # the router's queue-length cache for it
    local: deque[Request] = field(default_factory=deque)
    running: Request | None = None
    push_due: bool = False


class ServeSim:
    """One run of requests through Serve's router onto replicas of loragraph's engine (see module doc)."""

    def __init__(self, names: list[str], engines: dict[str, Any], job_time: Any, seed: int) -> None:
        self.rng = random.Random(seed)
        self.replicas = {n: Replica(n, engines[n]) for n in names}
        for i, r in enumerate(self.replicas.values()):
            # each replica ran one warm-up request with its own model id (the pipeline build)
            r.lru[-1 - i] = None
            r.known = frozenset(r.lru)
        self.job_time = job_time  # (replica name, engine, model) -> (busy seconds, compute seconds)
        self.waiting: list[Request] = []  # not placed, in arrival order (_pending_requests_to_fulfill)
        self.to_route: deque[Request] = deque()  # not yet taken by a task (_pending_requests_to_route)
        self.tasks: list[Task] = []
        self.by_model: dict[int, deque[Request]] = {}  # _pending_requests_by_model_id
        self.refused = 0
        self.fallback: set[int] = set()  # models that fell back to "fewest models" with no match
        self.events: list[tuple[float, int, str, Any]] = []
        self.seq = 0
        self.push_phase = {n: self.rng.uniform(0, PUSH_INTERVAL_S) for n in names}
        self.control_phase = self.rng.uniform(0, CONTROL_LOOP_S)
        self.latencies: list[float] = []
        self.placed: list[tuple[int, int, str, bool]] = []  # (request, model, replica, in its LRU): checks
        self.busy = self.compute = 0.0
        self.now = 0.0

    # --- events ------------------------------------------------------------------------------------

    def at(self, t: float, kind: str, data: Any) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, data))
        self.seq += 1

    def run(self, trace: list[tuple[float, int]]) -> float:
        for i, (t, model) in enumerate(trace):
            self.at(t, "arrive", Request(i, model, t))
        while self.events:
            self.now, _, kind, data = heapq.heappop(self.events)
            if kind == "arrive":
                self.waiting.append(data)
                self.by_model.setdefault(data.model, deque()).append(data)
                self.to_route.append(data)
                self.start_tasks()
            elif kind == "wake":
                if data.alive:
                    self.step(data)
            elif kind == "done":
                self.finish(data)
            elif kind == "sent":
                self.replicas[data].cached += 1
            elif kind == "reach":
                self.reach(*data)
            elif kind == "probed":
                self.probed(*data)
            elif kind == "push":
                self.push(data)
            elif kind == "heard":
                name, models = data
                self.replicas[name].known = models
        return self.now

    # --- the router --------------------------------------------------------------------------------

    def target_tasks(self) -> int:
        cap = min(TASKS_CAP, TASKS_PER_REPLICA * len(self.replicas))
        return min(len(self.waiting), cap)

    def start_tasks(self) -> None:
        """_maybe_start_routing_tasks: up to the target, each on the next request not yet taken."""
        while len(self.tasks) < self.target_tasks():
            if not self.take_next(None):
                return

    def take_next(self, task: Task | None) -> bool:
        """A task (new, or one whose request was placed) takes the next request not yet taken; a new
        task tries it in an event of its own, a going one at once (``step``'s loop)."""
        while self.to_route and self.to_route[0].placed:
            self.to_route.popleft()
        if not self.to_route or (task is not None and len(self.tasks) > self.target_tasks()):
            if task is not None:
                self.retire(task)
            return False
        request = self.to_route.popleft()
        if task is None:
            task = Task(request)
            self.tasks.append(task)
            self.at(self.now, "wake", task)
        else:
            task.request, task.entered_backoff, task.attempt = request, False, 0
        request.task = task
        return True

    def retire(self, task: Task) -> None:
        task.alive = False
        if task in self.tasks:
            self.tasks.remove(task)

    def fewest(self) -> set[str]:
        least = min(len(r.known) for r in self.replicas.values())
        return {n for n, r in self.replicas.items() if len(r.known) == least}

    def candidates(self, request: Request) -> set[str]:
        """MultiplexMixin.apply_multiplex_routing, on the router's (late) view of the model lists."""
        if request.match_start is None:
            request.match_start = self.now
        if self.now - request.match_start < self.rng.uniform(MATCHING_TIMEOUT_S, 2 * MATCHING_TIMEOUT_S):
            having = {n for n, r in self.replicas.items() if request.model in r.known}
            if (not having and request.model not in self.fallback) or request.tried_first:
                having = self.fewest()
                self.fallback.add(request.model)
            elif having:
                self.fallback.discard(request.model)
            request.tried_first = True
            return having
        if not request.tried_fewest:
            request.tried_fewest = True
            return self.fewest()
        return set(self.replicas)

    def choose(self, candidates: set[str]) -> tuple[str | None, list[str]]:
        """Two random candidates (pow_2_router); by the router's queue-length cache, the one with fewer
        requests, if under the limit. Else the ones to probe (``_select_from_candidate_replicas``)."""
        names = sorted(candidates)
        chosen = self.rng.sample(names, 2) if len(names) > 1 else names
        best, fewest_queued = None, MAX_ONGOING
        for n in chosen:
            if self.replicas[n].cached < fewest_queued:
                best, fewest_queued = n, self.replicas[n].cached
        return best, [n for n in chosen if self.replicas[n].cached >= MAX_ONGOING]

    def step(self, task: Task) -> None:
        """The task's routing loop (choose_replicas, select, backoff) until it has to wait. Nothing waits
        while the cache shows room: one task places request after request on the same replica (the
        requests are sent, and the cache counts them, only once the task waits)."""
        while task.alive:
            request = task.request
            if request.placed:  # taken by another task's match
                if self.take_next(task):
                    continue
                return
            candidates = self.candidates(request)
            if not candidates:
                self.backoff(task)
                return
            target, probe = self.choose(candidates)
            if target is None:  # every candidate full by the cache: ask them (the task waits)
                self.at(self.now + PROBE_S, "probed", (task, probe))
                return
            if not self.placed_by(task, target):
                return

    def probed(self, task: Task, names: list[str]) -> None:
        for n in names:
            self.replicas[n].cached = self.replicas[n].in_flight
        if not task.alive:
            return
        room = [n for n in names if self.replicas[n].in_flight < MAX_ONGOING]
        if task.request.placed or (room and self.placed_by(
                task, min(room, key=lambda n: self.replicas[n].in_flight))):
            self.step(task)
        elif not room:
            self.backoff(task)

    def placed_by(self, task: Task, target: str) -> bool:
        """Place the matching request; True when the task goes on at once with a next request."""
        self.place(self.matching(task.request), target, task)
        if task.request.placed:
            return self.take_next(task)
        self.backoff(task)
        return False

    def backoff(self, task: Task) -> None:
        if not task.entered_backoff:
            task.entered_backoff = True
            self.at(self.now, "wake", task)
        else:
            # at most the cap (Serve catches the overflow of a long-retried request's growing factor)
            sleep = min(BACKOFF_FIRST_S * BACKOFF_FACTOR ** min(task.attempt, 30), BACKOFF_MAX_S)
            self.at(self.now + sleep, "wake", task)
            task.attempt += 1

    def matching(self, request: Request) -> Request:
        """FIFOMixin: the replica goes to the first request waiting for the same model, in the order
        the router indexed them (a refused request that had left the index comes back at its end)."""
        order = self.by_model[request.model]
        while order and order[0].placed:
            order.popleft()
        return order[0]

    def place(self, request: Request, name: str, by: Task) -> None:
        """The router gives the request this replica; it sends it once the task waits, and the replica
        accepts it if it has room when the request reaches it, else refuses it (routed again)."""
        request.placed = True
        self.waiting.remove(request)
        other = request.task
        if other is not None and other is not by and other.alive and other.request is request:
            self.retire(other)  # its request was taken: Serve cancels the task, a new one starts
            self.start_tasks()
        self.at(self.now, "sent", name)  # after this event: the cache counts it once the task waits
        self.at(self.now + self.rng.uniform(0, RPC_S), "reach", (request, name))

    def reach(self, request: Request, name: str) -> None:
        replica = self.replicas[name]
        if replica.in_flight >= MAX_ONGOING:  # refused: back in the queues, in arrival order
            replica.cached = replica.in_flight
            request.placed = False
            bisect.insort(self.waiting, request, key=lambda r: r.id)
            if request not in self.to_route:
                bisect.insort(self.to_route, request, key=lambda r: r.id)
            if request not in self.by_model[request.model]:
                self.by_model[request.model].append(request)
            self.refused += 1
            self.start_tasks()
            return
        replica.in_flight += 1
        replica.cached = replica.in_flight
        self.placed.append((request.id, request.model, name, request.model in replica.lru))
        if request.model in replica.lru:  # get_model: the LRU moves when the request arrives
            replica.lru.move_to_end(request.model)
        else:
            if len(replica.lru) >= MODELS_PER_REPLICA:
                replica.lru.popitem(last=False)
            replica.lru[request.model] = None
            self.schedule_push(replica)
        replica.local.append(request)
        if replica.running is None:
            self.run_next(replica)

    # --- what the router hears ---------------------------------------------------------------------

    def schedule_push(self, replica: Replica) -> None:
        if replica.push_due:
            return
        replica.push_due = True
        phase = self.push_phase[replica.name]
        ticks = int((self.now - phase) // PUSH_INTERVAL_S) + 1
        self.at(phase + ticks * PUSH_INTERVAL_S, "push", replica.name)

    def push(self, name: str) -> None:
        replica = self.replicas[name]
        replica.push_due = False
        ticks = int((self.now - self.control_phase) // CONTROL_LOOP_S) + 1
        self.at(self.control_phase + ticks * CONTROL_LOOP_S, "heard", (name, frozenset(replica.lru)))

    # --- the replica -------------------------------------------------------------------------------

    def run_next(self, replica: Replica) -> None:
        if not replica.local:
            replica.running = None
            return
        request = replica.local.popleft()
        replica.running = request
        took, compute = self.job_time(replica.name, replica.engine, request.model)
        self.busy += took
        self.compute += compute
        self.at(self.now + took, "done", replica.name)

    def finish(self, name: str) -> None:
        replica = self.replicas[name]
        request = replica.running
        assert request is not None
        replica.in_flight -= 1
        replica.cached = max(0, replica.cached - 1)
        self.latencies.append(self.now - request.arrival)
        self.run_next(replica)
