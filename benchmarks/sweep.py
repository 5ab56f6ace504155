"""Scale-out: a sweep on a Ray pool, measured here, and a render farm simulated from measured costs.

    python -m benchmarks.sweep                 # both parts; writes benchmarks/results/sweep*.json + PNG
    python -m benchmarks.sweep --part measured # (a) only: real Ray actors on this machine
    python -m benchmarks.sweep --part simulated

(a) **Measured**: a 24-job sweep (3 LoRAs x 2 strengths x 4 seeds) of ``builtin:shapes`` (32x32,
20 steps) on a local Ray cluster: 1 actor against 2 actors of one thread each (throughput), and
affinity routing against round-robin (LoRA loads + hot-swaps, and time), in two sweep orders: the
LoRA varying slowest (as the issue writes the grid) and fastest. Each pool first runs one warm-up
job per actor (the pipeline build is not part of the sweep's time).

(b) **Simulated**: 64 GPUs, 500 LoRAs of one shape, 10,000 jobs with Zipf(s) LoRA popularity,
arriving as a Poisson stream at a fixed share of the farm's capacity. The engine's costs per LoRA
operation are the measured ones (benchmarks/results/lora_ops_cuda.json when it exists, else the
CPU table lora_ops_cpu.json); the router is ``scaleout.router.Router`` itself, and each engine
replays the reconciler's policy (parked adapters, hot-swap into the oldest parked slot, a file
overwritten by a swap is loaded when it comes back). Compared: this router with per-actor queues
(``affinity``, as ``run --ray`` uses it), the same rule over one FIFO queue (``serve-ray``, as
``serve --ray`` places: the holder if idle or done within the affinity wait, else an idle actor),
round-robin (the same engines), and Ray Serve's model multiplexing over the same engine holding 3
LoRAs, routed as Ray Serve 2.60's router does (benchmarks/serve_sim.py). benchmarks/farm.py
checks this simulator against a measured run of the router, round-robin and a real Serve deployment.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import itertools
import json
import os
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
LORAS = ["shapes/palette.safetensors", "shapes/outline.safetensors", "shapes/texture.safetensors"]
MODELS = Path(__file__).resolve().parent.parent / "examples" / "models"


# --- (a) measured ----------------------------------------------------------------------------------


def _sweep_prompts(lora_slowest: bool) -> list[dict[str, Any]]:
    from loragraph.cli import sweep
    from loragraph.graph import apply_overrides

    base = {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:shapes", "dtype": "float32", "device": "cpu"}},
        "2": {"class_type": "LoadLoRA",
              "inputs": {"pipeline": ["1", 0], "lora_name": LORAS[0], "strength": 1.0, "adapter_name": ""}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0], "prompt": "a red circle on a white background", "negative_prompt": "",
            "seed": 1,
            "steps": 20, "cfg": 7.0, "width": 32, "height": 32, "scheduler": "default", "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "bench"}},
    }
    axes = {"lora": "2.lora_name=" + ",".join(LORAS), "strength": "2.strength=0.5,1", "seed": "3.seed=1-4"}
    order = ["lora", "strength", "seed"] if lora_slowest else ["seed", "strength", "lora"]
    runs = sweep.grid(sweep.parse_sweeps([axes[k] for k in order]))
    return [apply_overrides(base, run.overrides) for run in runs]


def _warmup_prompt() -> dict[str, Any]:
    prompt = _sweep_prompts(True)[0]
    prompt["3"]["inputs"]["pipeline"] = ["1", 0]  # the base alone: builds the pipeline, loads no LoRA
    del prompt["2"]
    return prompt


def run_pool(prompts: list[dict[str, Any]], actors: int, policy: str) -> dict[str, Any]:
    """Run the prompts on a fresh pool; the time counts from the first submit to the last result."""
    import threading

    from loragraph import host
    from loragraph.scaleout.needs import job_needs
    from loragraph.scaleout.pool import Pool
    from loragraph.scaleout.router import Job

    host.configure(models_dir=MODELS)
    done = threading.Semaphore(0)
    failures: list[str] = []

    def on_done(job: Job, outcome: Any) -> None:
        if outcome.result is None or not outcome.result["result"].ok:
            failures.append(str(outcome.error or outcome.result["result"].error))
        done.release()

    pool = Pool(str(MODELS), actors=actors, threads=1, policy=policy, on_done=on_done).start()
    try:
        warm = _warmup_prompt()
        for i, name in enumerate(pool.actors):  # one warm-up job on each actor
            with pool.cond:
                pool.router.add(Job(-1 - i, job_needs(warm), {"prompt": warm}), among=[name])
                pool.cond.notify_all()
        for _ in pool.actors:
            done.acquire()
        base = {i.name: (i.loads, i.swaps, i.busy_s) for i in pool.actors.values()}
        t0 = time.perf_counter()
        for i, prompt in enumerate(prompts):
            pool.submit(Job(i, job_needs(prompt), {"prompt": prompt}))
        for _ in prompts:
            done.acquire()
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown()
    per_actor = {i.name: {"jobs": i.jobs - 1, "loads": i.loads - base[i.name][0],
                          "swaps": i.swaps - base[i.name][1],
                          "busy_s": i.busy_s - base[i.name][2]} for i in pool.actors.values()}
    return {"actors": actors, "policy": policy, "jobs": len(prompts), "wall_s": wall,
            "jobs_per_s": len(prompts) / wall, "loads": sum(a["loads"] for a in per_actor.values()),
            "swaps": sum(a["swaps"] for a in per_actor.values()), "per_actor": per_actor,
            "failures": failures}


def measured() -> dict[str, Any]:
    import ray

    load_before = _load()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, namespace="loragraph-bench")
    rows = []
    try:
        for lora_slowest in (True, False):
            prompts = _sweep_prompts(lora_slowest)
            order = "LoRA slowest" if lora_slowest else "LoRA fastest"
            setups = [(1, "affinity"), (2, "affinity"), (2, "round-robin")] if lora_slowest else \
                [(2, "affinity"), (2, "round-robin")]
            for actors, policy in setups:
                row = {"order": order, **run_pool(prompts, actors, policy)}
                print(f"  {order}, {actors} actor(s), {policy}: {row['wall_s']:.1f} s, "
                      f"{row['loads']} loads + {row['swaps']} swaps", flush=True)
                rows.append(row)
    finally:
        ray.shutdown()
    return {"machine": _machine(), "load_before": load_before, "rows": rows}


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _machine() -> str:
    import torch

    return (f"{os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread per actor, builtin:shapes 32x32, "
            "20 steps")


# --- (b) simulated ---------------------------------------------------------------------------------


@dataclass
class Costs:
    """Seconds per operation (from a lora_ops table) and per job (steps x step)."""

    attach_cold: float
    attach: float
    reattach_parked: float
    swap_first: float
    swap_again: float
    reload_swapped: float
    set_weights: float
    job: float
    source: str
    parked_max: int = 20  # LORAGRAPH_PARKED_BYTES (1 GiB) / an SD1.5 rank-32 LoRA (~50 MB): ~20
    gap: float = 0.0  # an actor's time between two jobs (result back, next job in); measured by farm.py
    # measured whole-job seconds by kind ("plain", "load", "swap"): a simulated job draws its time from
    # its kind's list instead of job + switch cost (benchmarks/farm.py, from one router's own run)
    samples: dict[str, list[float]] | None = None


def load_costs(steps: int, step_ms: float | None) -> Costs:
    gpu = RESULTS / "lora_ops_cuda.json"
    table = gpu if gpu.is_file() else RESULTS / "lora_ops_cpu.json"
    rows = {r["operation"]: r["loragraph_ms"] / 1e3 for r in json.loads(table.read_text())["rows"]}

    def row(prefix: str) -> float:
        return next(v for k, v in rows.items() if k.startswith(prefix))

    sampled = [v for k, v in rows.items() if "per step" in k and "1 LoRA" in k and "unfused" in k]
    if step_ms is None:
        step_ms = sampled[0] * 1e3 if sampled else 25.0
    note = "measured" if sampled else "assumed (no GPU table yet)"
    return Costs(attach_cold=row("load LoRA, cold"), attach=row("attach LoRA, warm (file read once"),
                 reattach_parked=row("attach LoRA again"),
                 swap_first=row("switch LoRA A -> B (B never attached, its"),
                 swap_again=row("switch LoRA A -> B (B never attached; its file swapped"),
                 reload_swapped=row("switch back B -> A"), set_weights=row("change weights, unfused"),
                 job=steps * step_ms / 1e3,
                 source=f"{table.name}; step {step_ms:.1f} ms {note}, {steps} steps")


class EngineModel:
    """The reconciler's policy for one LoRA at a time: what a switch costs and what stays held."""

    def __init__(self, costs: Costs) -> None:
        self.c = costs
        self.active: int | None = None
        self.parked: OrderedDict[int, None] = OrderedDict()  # oldest first
        self.swapped_out: set[int] = set()
        self.swapped_ever: set[int] = set()
        self.read: set[int] = set()
        self.loads = self.swaps = 0

    def held(self) -> set[int]:
        return set(self.parked) | ({self.active} if self.active is not None else set())

    def switch(self, lora: int) -> float:
        c = self.c
        if lora == self.active:
            return c.set_weights
        if self.active is not None:
            self.parked[self.active] = None
        self.active = lora
        if lora in self.parked:
            del self.parked[lora]
            return c.reattach_parked
        if lora not in self.swapped_out and self.parked:
            slot, _ = self.parked.popitem(last=False)
            self.swapped_out.add(slot)
            cost = c.swap_again if lora in self.swapped_ever else c.swap_first
            self.swapped_ever.add(lora)
            self.swaps += 1
            return cost
        self.swapped_out.discard(lora)
        self.loads += 1
        cost = c.attach if lora in self.read else c.attach_cold
        self.read.add(lora)
        while len(self.parked) > c.parked_max:
            self.parked.popitem(last=False)  # deleted: over the parking budget
        return cost


def job_timer(costs: Costs, rng: random.Random) -> Any:
    """(engine, LoRA) -> (busy, compute) seconds of one job: the engine's switch priced from the lora_ops
    table plus the job, or, with measured ``samples``, a draw from the measured jobs of that kind."""

    def took(engine: EngineModel, lora: int) -> tuple[float, float]:
        loads, swaps = engine.loads, engine.swaps
        switch = engine.switch(lora)
        if not costs.samples:
            return switch + costs.job + costs.gap, costs.job + costs.gap
        kind = "load" if engine.loads > loads else "swap" if engine.swaps > swaps else "plain"
        drawn = rng.choice(costs.samples.get(kind) or costs.samples["plain"])
        return drawn + costs.gap, costs.job + costs.gap

    return took


@dataclass
class SimResult:
    policy: str
    gpus: int
    jobs: int
    loads: int
    swaps: int
    makespan: float
    busy: float
    compute: float
    latencies: list[float] = field(repr=False)

    def row(self) -> dict[str, Any]:
        lat = sorted(self.latencies)
        return {"policy": self.policy, "gpus": self.gpus, "jobs": self.jobs,
                "loads_per_job": (self.loads + self.swaps) / self.jobs, "attaches": self.loads,
                "swaps": self.swaps,
                "busy_share": self.busy / (self.gpus * self.makespan),
                "switch_share": (self.busy - self.compute) / (self.gpus * self.makespan),
                "p50_s": lat[len(lat) // 2], "p95_s": lat[int(len(lat) * 0.95)],
                "jobs_per_s": self.jobs / self.makespan}


def zipf_trace(jobs: int, loras: int, s: float, rate: float | None, seed: int) -> list[tuple[float, int]]:
    """(arrival time, LoRA) per job: Zipf(s) popularity, Poisson arrivals (``rate`` None: all at 0)."""
    rng = random.Random(seed)
    weights = [1.0 / (k ** s) for k in range(1, loras + 1)]
    cum = list(itertools.accumulate(weights))
    t, trace = 0.0, []
    for _ in range(jobs):
        if rate:
            t += rng.expovariate(rate)
        lora = bisect.bisect_left(cum, rng.random() * cum[-1])
        trace.append((t, lora))
    return trace


def simulate(policy: str, gpus: int, trace: list[tuple[float, int]], costs: Costs,
             seed: int = 0) -> SimResult:
    """Discrete events: arrivals and completions; an idle GPU takes its next job at once. ``ray-serve``
    runs benchmarks/serve_sim.py's model of Serve's router instead of a loragraph router."""
    from loragraph.scaleout.needs import Needs
    from loragraph.scaleout.router import STEAL_MIN_WAITING, Job, Router
    from loragraph.scaleout.serve import DEFAULT_AFFINITY_WAIT_S

    from .serve_sim import MODELS_PER_REPLICA, ServeSim

    rng = random.Random(seed)
    took = job_timer(costs, rng)
    names = [f"g{i}" for i in range(gpus)]
    if policy == "ray-serve":  # the engine holds as many LoRAs as Serve's LRU lists: 1 active, 2 parked
        held = replace(costs, parked_max=MODELS_PER_REPLICA - 1)
        sim = ServeSim(names, {n: EngineModel(held) for n in names},
                       lambda name, engine, lora: took(engine, lora), seed)
        end = sim.run(trace)
        return SimResult(policy, gpus, len(trace), sum(r.engine.loads for r in sim.replicas.values()),
                         sum(r.engine.swaps for r in sim.replicas.values()), end, sim.busy, sim.compute,
                         sim.latencies)
    engines = {n: EngineModel(costs) for n in names}
    central = policy == "serve-ray"  # serve --ray: a FIFO queue, placed by scaleout/serve.py's rule
    steal_min_waiting = 2 if policy == "affinity-steal2" else STEAL_MIN_WAITING
    router = Router(names, "round-robin" if policy == "round-robin" else "affinity",
                    steal_min_waiting=steal_min_waiting)
    fifo: list[Job] = []  # serve-ray: the server's queue
    running: dict[str, Job | None] = dict.fromkeys(names)
    ends: dict[str, float] = dict.fromkeys(names, 0.0)  # when the running job ends
    events: list[tuple[float, int, str, Any]] = []
    order = 0
    for i, (t, lora) in enumerate(trace):
        heapq.heappush(events,
                       (t, order, "arrive", Job(i, Needs(frozenset({"base"}), frozenset({str(lora)})))))
        order += 1
    arrival = {i: t for i, (t, _) in enumerate(trace)}
    latencies, busy, compute, now = [], 0.0, 0.0, 0.0

    def serve_ray_place(needs: Needs) -> str | None:
        """scaleout/serve.py's PoolWorker._place, on simulated time: the best actor if idle, or if it
        holds the LoRAs and its work ends within the bound; else the best idle actor; else wait."""
        best = router.best(needs)
        if best.load == 0:
            return best.name
        wait = max(0.0, ends[best.name] - now) + len(best.queue) * (costs.job + costs.gap)
        if router.holds(best, needs) and wait <= DEFAULT_AFFINITY_WAIT_S:
            return best.name
        idle = [a.name for a in router.alive() if a.load == 0]
        return router.best(needs, among=idle).name if idle else None

    def start_idle() -> None:
        nonlocal order, busy, compute
        while central and fifo:
            target = serve_ray_place(fifo[0].needs)
            if target is None:
                break
            router.add(fifo.pop(0), among=[target])
        for n in names:
            if running[n] is not None:
                continue
            job = router.next_job(n)
            if job is None:
                continue
            running[n] = job
            busy_s, compute_s = took(engines[n], int(next(iter(job.needs.adapters))))
            busy += busy_s
            compute += compute_s
            ends[n] = now + busy_s
            heapq.heappush(events, (now + busy_s, order, "done", (n, job)))
            order += 1

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            if central:
                fifo.append(data)
            else:
                router.add(data)
        else:
            n, job = data
            running[n] = None
            latencies.append(now - arrival[job.id])
            router.finished(n, job, {"base"}, {str(x) for x in engines[n].held()})
        start_idle()
    return SimResult(policy, gpus, len(trace), sum(e.loads for e in engines.values()),
                     sum(e.swaps for e in engines.values()), now, busy, compute, latencies)


POLICIES = ("affinity", "serve-ray", "round-robin", "ray-serve")


def simulated(gpus: int, loras: int, jobs: int, s: float, utilisation: float, steps: int,
              step_ms: float | None, seed: int) -> dict[str, Any]:
    costs = load_costs(steps, step_ms)
    rate = utilisation * gpus / costs.job  # jobs per second at this share of pure sampling capacity
    trace = zipf_trace(jobs, loras, s, rate, seed)
    table = [simulate(p, gpus, trace, costs, seed).row() for p in POLICIES]
    scaling = []
    for n in (4, 8, 16, 32, 64):  # throughput against GPUs: the same jobs, all queued at once
        batch = zipf_trace(jobs, loras, s, None, seed)
        for p in POLICIES:
            scaling.append(simulate(p, n, batch, costs, seed).row())
    return {"costs": costs.__dict__, "gpus": gpus, "loras": loras, "jobs": jobs, "zipf_s": s,
            "utilisation": utilisation, "table": table, "scaling": scaling}


def plot(sim: dict[str, Any], path: Path) -> Path:
    rows = sim["scaling"]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
        for p in POLICIES:
            xs = [r["gpus"] for r in rows if r["policy"] == p]
            axes[0].plot(xs, [r["jobs_per_s"] for r in rows if r["policy"] == p], marker="o", label=p)
            axes[1].plot(xs, [r["switch_share"] * 100 for r in rows if r["policy"] == p], marker="o", label=p)
        axes[0].set(xlabel="GPUs", ylabel="jobs / s", title="throughput (all jobs queued)")
        axes[1].set(xlabel="GPUs", ylabel="% of GPU time switching LoRAs", title="time lost to switches")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        return path
    except ImportError:
        return _plot_pillow(rows, path)


def _plot_pillow(rows: list[dict[str, Any]], path: Path) -> Path:
    """Throughput against GPUs, one line per policy, drawn with pillow (no matplotlib here)."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = sorted({r["gpus"] for r in rows})
    top = max(r["jobs_per_s"] for r in rows) * 1.1

    def at(g: int, v: float) -> tuple[float, float]:
        return m + (w - 2 * m) * g / xs[-1], h - m - (h - 2 * m) * v / top

    d.line([(m, h - m), (w - m, h - m)], fill="black")
    d.line([(m, m), (m, h - m)], fill="black")
    for g in xs:
        x, _ = at(g, 0)
        d.text((x - 6, h - m + 6), str(g), fill="black")
    for k in range(5):
        v = top / 1.1 * k / 4
        _, y = at(0, v)
        d.text((8, y - 6), f"{v:.0f}", fill="black")
        d.line([(m - 4, y), (m, y)], fill="black")
    d.text((w // 2 - 60, h - 20), "GPUs (all jobs queued at once)", fill="black")
    d.text((m, 10), "simulated throughput, jobs/s", fill="black")
    colours = {"affinity": (31, 119, 180), "serve-ray": (148, 103, 189), "round-robin": (214, 39, 40),
               "ray-serve": (44, 160, 44)}
    for k, p in enumerate(POLICIES):
        pts = [at(r["gpus"], r["jobs_per_s"]) for r in rows if r["policy"] == p]
        d.line(pts, fill=colours[p], width=3)
        d.text((w - m - 120, m + 16 * k), p, fill=colours[p])
    img.save(path)
    return path


# --- report ----------------------------------------------------------------------------------------


def markdown_measured(res: dict[str, Any]) -> str:
    lines = ["| sweep order | actors | routing | time s | jobs/s | LoRA loads + swaps "
             "| per actor: jobs (loads+swaps) |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        per = ", ".join(f"{a['jobs']} ({a['loads'] + a['swaps']})" for a in r["per_actor"].values())
        lines.append(f"| {r['order']} | {r['actors']} | {r['policy']} | {r['wall_s']:.1f} | "
                     f"{r['jobs_per_s']:.2f} | "
                     f"{r['loads']} + {r['swaps']} | {per} |")
    return "\n".join(lines)


def markdown_simulated(sim: dict[str, Any]) -> str:
    lines = ["| router | LoRA loads per job | GPU busy share | of it switching | p50 latency s "
             "| p95 latency s |",
             "|---|---|---|---|---|---|"]
    for r in sim["table"]:
        lines.append(f"| {r['policy']} | {r['loads_per_job']:.3f} | {100 * r['busy_share']:.1f}% | "
                     f"{100 * r['switch_share']:.1f}% | {r['p50_s']:.2f} | {r['p95_s']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("both", "measured", "simulated"), default="both")
    parser.add_argument("--gpus", type=int, default=64)
    parser.add_argument("--loras", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of LoRA popularity")
    parser.add_argument("--utilisation", type=float, default=0.8,
                        help="arrival rate as a share of the farm's pure sampling capacity")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-ms", type=float, default=None,
                        help="ms per denoising step (default: the GPU table's, else 25 ms, an assumption)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    RESULTS.mkdir(exist_ok=True)
    if args.part in ("both", "measured"):
        print(f"(a) measured on this machine, load {_load()}", flush=True)
        res = measured()
        res["load_after"] = _load()
        (RESULTS / "sweep_measured.json").write_text(json.dumps(res, indent=1))
        print(markdown_measured(res))
        one = next(r for r in res["rows"] if r["actors"] == 1)
        two = next(r for r in res["rows"]
                   if r["actors"] == 2 and r["order"] == one["order"] and r["policy"] == "affinity")
        print(f"2 actors / 1 actor: {two['jobs_per_s'] / one['jobs_per_s']:.2f}x throughput "
              f"(load {res['load_before']} before, {res['load_after']} after)")
    if args.part in ("both", "simulated"):
        t0 = time.perf_counter()
        sim = simulated(args.gpus, args.loras, args.jobs, args.zipf, args.utilisation, args.steps,
                        args.step_ms, args.seed)
        (RESULTS / "sweep_simulated.json").write_text(json.dumps(sim, indent=1))
        png = plot(sim, RESULTS / "sweep_scaling.png")
        print(f"(b) simulated: {args.gpus} GPUs, {args.loras} LoRAs, {args.jobs} jobs, Zipf s={args.zipf}, "
              f"{100 * args.utilisation:.0f}% offered load; costs from {sim['costs']['source']} "
              f"({time.perf_counter() - t0:.0f} s)")
        print(markdown_simulated(sim))
        print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
