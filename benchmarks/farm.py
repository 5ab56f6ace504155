"""The farm case, measured: 30 LoRAs, Zipf(1) popularity, 120 jobs, engines that cannot park them all.

    pip install -e ".[bench]"            # Ray Serve, for the anchor deployment
    python -m benchmarks.farm --out benchmarks/results/farm_measured_run6.json   # one measured run
    python -m benchmarks.farm --resimulate   # the simulator check again on every saved run

Three routers run the same 120 jobs (all queued at once) on 2 engines of one thread each, on a local
Ray cluster of this machine, in one run:

- ``router``: ``run --ray``'s pool (``scaleout.router``, per-actor queues, affinity);
- ``round-robin``: the same pool, job i to actor i mod 2;
- ``ray-serve``: a real Ray Serve deployment, ``@serve.multiplexed(max_num_models_per_replica=3)``
  over the same engine (``benchmarks/serve_app.py``), the anchor a user would deploy instead.

Each engine may park 2 LoRAs besides the active one (``LORAGRAPH_PARKED_BYTES`` = 2.5 files): it holds
3 of the 30, as a Serve replica's LRU does. The model is ``builtin:shapes`` (32x32) and the 30 LoRA files
are its texture LoRA scaled 30 ways (same layers and ranks: a switch may be a hot-swap). Serve's
router asks each replica its queue length with a 0.1 s deadline by default; on this shared machine
that deadline was missed often (its routing then falls back), so the run gives it 1 s. Reported
per router: LoRA loads (+ hot-swaps) per job, throughput, p50/p95 latency (from the common start).
Each Serve request also records when it reached its replica and whether its model was in Serve's LRU.

Then the simulator (``benchmarks/sweep.py``, Serve's router in ``benchmarks/serve_sim.py``) runs exactly
this configuration, each router with its own job times measured in this run (drawn by kind: no switch,
a LoRA load, a hot-swap) and its own gap between an actor's jobs, as a mean over 20 seeds; its loads
per job and throughput are checked against the measured ones (±15%). The job times pin the throughput
largely; loads per job comes from the routing alone, the independent check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .sweep import LORAS, MODELS, RESULTS, Costs, _load, simulate, zipf_trace

N_LORAS, N_JOBS, ZIPF_S, ACTORS, STEPS = 30, 120, 1.0, 2, 12
HELD = 3  # LoRAs an engine holds: 1 active + 2 parked, as Serve's LRU of 3
TOLERANCE = 0.15  # the simulator must land within this of the measured loads/job and throughput


def make_loras(root: Path) -> list[str]:
    """30 LoRA files of one shape: the demo's texture LoRA, its B (up) weights scaled by 0.5..1.47.

    One source file: any switch between two of them may be a hot-swap, as the simulator assumes.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = MODELS / "loras" / LORAS[2]
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    names = []
    (root / "loras" / "farm").mkdir(parents=True, exist_ok=True)
    for i in range(N_LORAS):
        scale = 0.5 + i / N_LORAS
        scaled = {k: (v * scale if ".lora_B." in k else v).contiguous() for k, v in tensors.items()}
        name = f"farm/lora_{i:02d}.safetensors"
        save_file(scaled, str(root / "loras" / name), metadata=meta)
        names.append(name)
    return names


def prompt(lora: str, seed: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadPipeline", "inputs": {"model": "builtin:shapes", "dtype": "float32",
                                                        "device": "cpu"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": lora, "strength": 1.0,
                                                   "adapter_name": ""}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0], "prompt": "a red circle on a white background", "negative_prompt": "",
            "seed": seed, "steps": STEPS, "cfg": 7.0, "width": 32, "height": 32, "scheduler": "default",
            "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "farm"}},
    }


def _warm_prompt() -> dict[str, Any]:
    p = prompt(LORAS[0], 0)
    p["3"]["inputs"]["pipeline"] = ["1", 0]  # the base alone: builds the pipeline, loads no LoRA
    del p["2"]
    return p


def _row(name: str, jobs: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    lat = sorted(j["latency_s"] for j in jobs)
    loads = sum(j["loads"] + j["swaps"] for j in jobs)
    return {"router": name, "jobs": len(jobs), "failed": sum(not j["ok"] for j in jobs),
            "loads": sum(j["loads"] for j in jobs), "swaps": sum(j["swaps"] for j in jobs),
            "loads_per_job": loads / len(jobs), "wall_s": wall, "jobs_per_s": len(jobs) / wall,
            "p50_s": lat[len(lat) // 2], "p95_s": lat[int(len(lat) * 0.95)],
            "busy_s": sum(j["busy_s"] for j in jobs), "per_job": jobs}


def run_pool(models: Path, loras: list[int], names: list[str], policy: str) -> dict[str, Any]:
    from loragraph.scaleout.needs import job_needs
    from loragraph.scaleout.pool import Pool
    from loragraph.scaleout.router import Job

    done = threading.Semaphore(0)
    records: dict[int, dict[str, Any]] = {}

    def on_done(job: Job, outcome: Any) -> None:
        if job.id >= 0:
            r = outcome.result or {}
            records[job.id] = {"job": job.id, "lora": loras[job.id], "actor": outcome.actor,
                               "ok": bool(r) and r["result"].ok, "loads": r.get("loads", 0),
                               "swaps": r.get("swaps", 0), "busy_s": r.get("busy_s", 0.0),
                               "latency_s": time.perf_counter() - t0}
        done.release()

    pool = Pool(str(models), actors=ACTORS, threads=1, policy=policy, on_done=on_done).start()
    try:
        warm = _warm_prompt()
        for i, name in enumerate(pool.actors):
            with pool.cond:
                pool.router.add(Job(-1 - i, job_needs(warm), {"prompt": warm}), among=[name])
                pool.cond.notify_all()
        for _ in pool.actors:
            done.acquire()
        jobs = [Job(i, job_needs(prompt(names[lora], i)), {"prompt": prompt(names[lora], i)})
                for i, lora in enumerate(loras)]
        t0 = time.perf_counter()
        for job in jobs:
            pool.submit(job)
        for _ in jobs:
            done.acquire()
        wall = time.perf_counter() - t0
    finally:
        pool.shutdown()
    return _row(policy if policy == "round-robin" else "router", [records[i] for i in range(len(loras))],
                wall)


def run_serve(models: Path, loras: list[int], names: list[str], parked_bytes: int) -> dict[str, Any]:
    from ray import serve

    from .serve_app import deploy

    handle = deploy(str(models), ACTORS, parked_bytes)
    try:
        warm = [handle.options(multiplexed_model_id=f"warm-{i}").remote(-1 - i, _warm_prompt())
                for i in range(ACTORS)]
        for w in warm:
            w.result(timeout_s=600)
        t0, start = time.perf_counter(), time.time()
        calls = [handle.options(multiplexed_model_id=names[lora]).remote(i, prompt(names[lora], i))
                 for i, lora in enumerate(loras)]
        out = [c.result(timeout_s=1200) for c in calls]
        wall = time.perf_counter() - t0
    finally:
        serve.shutdown()
    jobs = [{"job": r["job_id"], "lora": loras[r["job_id"]], "actor": str(r["pid"]), "ok": r["ok"],
             "loads": r["loads"], "swaps": r["swaps"], "busy_s": r["busy_s"], "latency_s": r["done"] - start,
             "arrived_s": r["arrived"] - start, "started_s": r["started"] - start, "lru_miss": r["lru_miss"]}
            for r in out]
    return _row("ray-serve", jobs, wall)


def measured_costs(rows: list[dict[str, Any]]) -> Costs:
    """The run's switch costs from the two pool runs: a job without a switch, and what a load or a
    hot-swap adds to it (medians), for the report; the simulator draws each router's own job times
    (``samples_of``) and gap (``gap_of``)."""
    jobs = [j for r in rows for j in r["per_job"]]
    plain = statistics.median(j["busy_s"] for j in jobs if j["loads"] == j["swaps"] == 0)
    with_load = [j["busy_s"] for j in jobs if j["loads"] and not j["swaps"]]
    with_swap = [j["busy_s"] for j in jobs if j["swaps"] and not j["loads"]]
    load = max(0.0, statistics.median(with_load) - plain) if with_load else 0.0
    swap = max(0.0, statistics.median(with_swap) - plain) if with_swap else load
    return Costs(attach_cold=load, attach=load, reattach_parked=0.0, swap_first=swap, swap_again=swap,
                 reload_swapped=swap, set_weights=0.0, job=plain, source="measured in this run",
                 parked_max=HELD - 1)


KINDS = {"plain": lambda j: j["loads"] == j["swaps"] == 0, "load": lambda j: j["loads"] and not j["swaps"],
         "swap": lambda j: j["swaps"] and not j["loads"]}
MIN_SAMPLES = 3  # fewer measured jobs of a kind in one router's run: that kind's jobs of the whole run


def samples_of(row: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """This router's measured job times by kind (no switch, a LoRA load, a hot-swap). Each router's own:
    the machine's load moves between the back-to-back runs, and a Serve replica runs the same engine
    slower than a pool actor (its event loop and threads share the actor's one CPU)."""
    out = {}
    for kind, of in KINDS.items():
        own = [j["busy_s"] for j in row["per_job"] if of(j)]
        out[kind] = own if len(own) >= MIN_SAMPLES else [j["busy_s"] for r in rows for j in r["per_job"]
                                                         if of(j)]
    return out


def gap_of(row: dict[str, Any]) -> float:
    """An actor's time between two jobs in this router's run: the wall not spent in jobs, per job
    (result back, next job in; Serve's routing and handle calls for Serve)."""
    return max(0.0, row["wall_s"] * ACTORS - row["busy_s"]) / row["jobs"]


SEEDS = 20  # Serve picks at random, its backoff clocks and the measured job times too: a mean of 20 runs


def check(measured: list[dict[str, Any]], costs: Costs, loras: list[int]) -> list[dict[str, Any]]:
    """Each router simulated with its own measured job times (drawn by kind: no switch, load, hot-swap)
    and gap. These pin the throughput largely; loads per job comes from the routing alone (the
    independent check)."""
    trace = [(0.0, lora) for lora in loras]
    policy = {"router": "affinity", "round-robin": "round-robin", "ray-serve": "ray-serve"}
    rows = []
    for m in measured:
        samples = samples_of(m, measured)
        mine = Costs(**{**costs.__dict__, "gap": gap_of(m), "samples": samples,
                        "job": statistics.median(samples["plain"])})
        sims = [simulate(policy[m["router"]], ACTORS, trace, mine, seed).row() for seed in range(SEEDS)]
        loads = [s["loads_per_job"] for s in sims]
        tput = [s["jobs_per_s"] for s in sims]
        d_loads = statistics.mean(loads) / m["loads_per_job"] - 1 if m["loads_per_job"] else 0.0
        d_tput = statistics.mean(tput) / m["jobs_per_s"] - 1
        rows.append({"router": m["router"], "gap_s": mine.gap, "job_s": mine.job,
                     "measured_loads_per_job": m["loads_per_job"],
                     "simulated_loads_per_job": statistics.mean(loads),
                     "simulated_loads_range": [min(loads), max(loads)], "loads_diff": d_loads,
                     "measured_jobs_per_s": m["jobs_per_s"], "simulated_jobs_per_s": statistics.mean(tput),
                     "simulated_jobs_per_s_range": [min(tput), max(tput)], "jobs_per_s_diff": d_tput,
                     "within": abs(d_loads) <= TOLERANCE and abs(d_tput) <= TOLERANCE})
    return rows


def resimulate(path: Path) -> dict[str, Any]:
    """The simulator check again on a saved run (after a change to the simulator)."""
    res = json.loads(path.read_text())
    costs = Costs(**res["costs"])
    loras = [j["lora"] for j in sorted(res["rows"][0]["per_job"], key=lambda j: j["job"])]
    res["simulator"] = check(res["rows"], costs, loras)
    return res


def check_runs(paths: list[Path]) -> dict[str, Any]:
    """The simulator against each saved run, and each router's measured spread over the runs."""
    runs = [resimulate(p) for p in paths]
    spread = {}
    for router in ("router", "round-robin", "ray-serve"):
        for key in ("loads_per_job", "jobs_per_s"):
            got = [r[key] for run in runs for r in run["rows"] if r["router"] == router]
            if got:
                spread[f"{router} {key}"] = {"mean": statistics.mean(got), "min": min(got), "max": max(got)}
    return {"runs": [{"file": p.name, "load_before": run["load_before"], "load_after": run["load_after"],
                      "simulator": run["simulator"]} for p, run in zip(paths, runs, strict=True)],
            "measured_spread": spread,
            "all_within": all(s["within"] for run in runs for s in run["simulator"])}


def markdown_check(summary: dict[str, Any]) -> str:
    lines = ["| run | router | loads/job measured | simulated (range over seeds) | diff | jobs/s measured | "
             "simulated | diff | within 15% |", "|---|---|---|---|---|---|---|---|---|"]
    for run in summary["runs"]:
        for s in run["simulator"]:
            low, high = s["simulated_loads_range"]
            lines.append(f"| {run['file']} | {s['router']} | {s['measured_loads_per_job']:.3f} | "
                         f"{s['simulated_loads_per_job']:.3f} ({low:.2f}-{high:.2f}) | "
                         f"{100 * s['loads_diff']:+.0f}% | {s['measured_jobs_per_s']:.2f} | "
                         f"{s['simulated_jobs_per_s']:.2f} | {100 * s['jobs_per_s_diff']:+.0f}% | "
                         f"{'yes' if s['within'] else 'NO'} |")
    lines.append("")
    for key, v in summary["measured_spread"].items():
        lines.append(f"measured {key}: mean {v['mean']:.3f}, {v['min']:.3f}-{v['max']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="the Zipf trace's seed")
    parser.add_argument("--skip-serve", action="store_true", help="without Ray Serve (not installed)")
    parser.add_argument("--resimulate", default=None, metavar="JSON", nargs="*",
                        help="only rerun the simulator check on saved runs (default: results/farm_measured"
                        "*.json), into results/farm_simulator_check.json")
    parser.add_argument("--out", default=str(RESULTS / "farm_measured.json"), help="where the run is written")
    args = parser.parse_args(argv)
    if args.resimulate is not None:
        paths = [Path(p) for p in args.resimulate] or sorted(RESULTS.glob("farm_measured*.json"))
        summary = check_runs(paths)
        (RESULTS / "farm_simulator_check.json").write_text(json.dumps(summary, indent=1))
        print(markdown_check(summary))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # read by Serve's router (in this process) when ray.serve is imported: see the module docstring
    os.environ.setdefault("RAY_SERVE_QUEUE_LENGTH_RESPONSE_DEADLINE_S", "1")
    import ray
    from loragraph import host
    from loragraph.loaders import store

    work = Path(tempfile.mkdtemp(prefix="loragraph-farm-"))
    names = make_loras(work)
    assert len({store.file_sha256(work / "loras" / n) for n in names}) == N_LORAS, "30 distinct files"
    file_bytes = (work / "loras" / names[0]).stat().st_size
    parked_bytes = int((HELD - 1 + 0.5) * file_bytes)  # 2 parked files fit, a third does not
    os.environ["LORAGRAPH_PARKED_BYTES"] = str(parked_bytes)  # the pool's actors inherit it
    host.configure(models_dir=work, output_dir=work / "output")
    loras = [lora for _, lora in zipf_trace(N_JOBS, N_LORAS, ZIPF_S, None, args.seed)]
    load_before = _load()
    print(f"farm: {N_JOBS} jobs over {N_LORAS} LoRAs (Zipf {ZIPF_S}: {len(set(loras))} used), "
          f"{ACTORS} actors, {HELD} LoRAs held per engine, builtin:shapes {STEPS} steps 32x32; "
          f"load {load_before}", flush=True)
    ray.init(num_cpus=ACTORS, include_dashboard=False, log_to_driver=False, namespace="loragraph-farm")
    rows = []
    try:
        for policy in ("affinity", "round-robin"):
            rows.append(run_pool(work, loras, names, policy))
            print(f"  {rows[-1]['router']}: {rows[-1]['wall_s']:.1f} s", flush=True)
        if not args.skip_serve:
            rows.append(run_serve(work, loras, names, parked_bytes))
            print(f"  ray-serve: {rows[-1]['wall_s']:.1f} s", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)  # the 30 LoRA files and the images: 40 MB a run
    costs = measured_costs(rows[:2])
    sim = check(rows, costs, loras)
    result = {"machine": f"{os.cpu_count()} CPUs, 1 thread per actor", "load_before": load_before,
              "load_after": _load(), "loras": N_LORAS, "jobs": N_JOBS, "zipf_s": ZIPF_S, "actors": ACTORS,
              "held": HELD, "steps": STEPS, "costs": costs.__dict__, "rows": rows, "simulator": sim}
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result))
    return 0


def markdown(res: dict[str, Any]) -> str:
    rows = res["rows"]
    ref = {r["router"]: r for r in rows}
    lines = ["| router | LoRA loads + swaps per job | jobs/s | p50 s | p95 s | failed |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['router']} | {r['loads_per_job']:.3f} ({r['loads']} + {r['swaps']}) | "
                     f"{r['jobs_per_s']:.2f} | {r['p50_s']:.1f} | {r['p95_s']:.1f} | {r['failed']} |")
    router = ref["router"]
    if "round-robin" in ref:
        rr = ref["round-robin"]
        lines.append(f"\nloads per job, round-robin / router: "
                     f"{rr['loads_per_job'] / router['loads_per_job']:.2f}x "
                     f"(target >= 2x); throughput router / round-robin: "
                     f"{router['jobs_per_s'] / rr['jobs_per_s']:.2f}x")
    if "ray-serve" in ref:
        rs = ref["ray-serve"]
        lines.append(f"throughput router / Ray Serve LRU-3: {router['jobs_per_s'] / rs['jobs_per_s']:.2f}x "
                     f"(target >= 1); loads per job Ray Serve / router: "
                     f"{rs['loads_per_job'] / router['loads_per_job']:.2f}x")
    c = res["costs"]
    own = ", ".join(f"{s['router']} {1e3 * s.get('job_s', c['job']):.0f} + {1e3 * s['gap_s']:.0f}"
                    for s in res["simulator"])
    lines.append(f"\ncosts measured in this run: load +{1e3 * c['attach']:.0f} ms, "
                 f"hot-swap +{1e3 * c['swap_first']:.0f} ms; job without a switch + gap between jobs "
                 f"(ms): {own}; "
                 f"load {res['load_before']} before, {res['load_after']} after")
    lines += ["", "| router | loads/job measured | simulated | diff | jobs/s measured | simulated | diff | "
              "within 15% |", "|---|---|---|---|---|---|---|---|"]
    for s in res["simulator"]:
        lines.append(f"| {s['router']} | {s['measured_loads_per_job']:.3f} | "
                     f"{s['simulated_loads_per_job']:.3f} | "
                     f"{100 * s['loads_diff']:+.0f}% | {s['measured_jobs_per_s']:.2f} | "
                     f"{s['simulated_jobs_per_s']:.2f} | {100 * s['jobs_per_s_diff']:+.0f}% | "
                     f"{'yes' if s['within'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
