"""The farm simulator (benchmarks/sweep.py, benchmarks/serve_sim.py) against the measured farm runs.

The measured runs (benchmarks/results/farm_measured*.json: 30 LoRAs, Zipf(1), 120 jobs, 2 engines holding
3 LoRAs; this router, round-robin and a real Ray Serve deployment) are the oracle: the simulator, given
the job times measured in each run, must land within 15% of each run's loads per job and throughput.
"""

from __future__ import annotations

import random
from pathlib import Path

from loragraph.benchmarks import farm
from loragraph.benchmarks.serve_sim import ServeSim
from loragraph.benchmarks.sweep import Costs, EngineModel, job_timer

RUNS = sorted((Path(farm.__file__).parent / "results").glob("farm_measured*.json"))


def test_the_simulator_lands_within_15_percent_of_every_measured_farm_run():
    assert len(RUNS) >= 3, RUNS
    summary = farm.check_runs(RUNS)
    misses = [(run["file"], s["router"], round(s["loads_diff"], 3), round(s["jobs_per_s_diff"], 3))
              for run in summary["runs"] for s in run["simulator"] if not s["within"]]
    assert not misses, misses
    # the routers differ as measured: the affinity router loads least, round-robin most
    for run in summary["runs"]:
        sim = {s["router"]: s["simulated_loads_per_job"] for s in run["simulator"]}
        assert sim["router"] * 2 < sim["ray-serve"] < sim["round-robin"], (run["file"], sim)


def _serve(trace: list[tuple[float, int]], seed: int = 0) -> ServeSim:
    costs = Costs(attach_cold=0.1, attach=0.1, reattach_parked=0.0, swap_first=0.03, swap_again=0.03,
                  reload_swapped=0.03, set_weights=0.0, job=0.3, source="test", parked_max=2)
    took = job_timer(costs, random.Random(seed))
    sim = ServeSim(["g0", "g1"], {n: EngineModel(costs) for n in ("g0", "g1")},
                   lambda name, engine, lora: took(engine, lora), seed)
    sim.run(trace)
    return sim


def test_serve_sends_a_trickle_to_the_replica_listing_its_model_and_refuses_nothing():
    # one request every 2 s, each job 0.3 s: the router has heard every model list by the next request
    trace = [(2.0 * i, model) for i, model in enumerate([1, 2, 1, 2, 1, 2, 1, 2])]
    sim = _serve(trace)
    assert sim.refused == 0
    first = {model: replica for _, model, replica, _ in sim.placed[:2]}
    assert first[1] != first[2]  # the second model fell back to the replica with fewer models
    assert [(model, replica) for _, model, replica, _ in sim.placed[2:]] == [
        (model, first[model]) for _, model in trace[2:]]
    assert max(sim.latencies) < 0.45  # none waited for another: a job, and a LoRA load at most


def test_serve_serves_a_burst_out_of_arrival_order_with_refusals():
    # 60 requests at once over 6 models: replicas take 5 each, the rest is refused and routed again;
    # every request runs once
    trace = [(0.0, i % 6) for i in range(60)]
    sim = _serve(trace)
    assert sim.refused > 0
    assert sorted(r for r, _, _, _ in sim.placed) == list(range(60))
    assert [r for r, _, _, _ in sim.placed] != list(range(60))
    assert len(sim.latencies) == 60
