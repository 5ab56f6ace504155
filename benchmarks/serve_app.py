"""The anchor a user would deploy instead of ``serve --ray``: Ray Serve multiplexing over the same engine.

Not shipped (it lives in benchmarks/): ``benchmarks.farm`` deploys it next to the router and round-robin.
Each replica is one ``EngineActor`` (the engine ``run --ray`` uses, one job at a time). Serve routes by
``multiplexed_model_id`` (the LoRA file): to a replica that lists the model in its LRU of
``max_num_models_per_replica=3`` and has room under ``max_ongoing_requests``, else by the power of two
choices. ``get_model`` loads nothing itself: the engine holds the LoRAs, its parking sized by the caller
to the same three (one active, two parked), so what Serve believes a replica holds is what it holds, and
a LoRA load is the engine's own (counted in its op log, as for the other two routers).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ray import serve

MODELS_PER_REPLICA = 3


@serve.deployment(max_ongoing_requests=5)  # Serve's default, written out: the simulator models it
class FarmEngine:
    def __init__(self, models_dir: str, parked_bytes: int) -> None:
        os.environ["LORAGRAPH_PARKED_BYTES"] = str(parked_bytes)  # read when the engine starts
        from loragraph.scaleout.actor import EngineActor

        self.engine = EngineActor(models_dir, threads=1)
        self.lock = asyncio.Lock()  # one job at a time on the engine, as a pool actor runs them
        self.lru_misses = 0  # get_model calls: requests whose model was not in Serve's LRU

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> str:
        self.lru_misses += 1
        return model_id

    async def __call__(self, job_id: int, prompt: dict[str, Any]) -> dict[str, Any]:
        arrived, misses = time.time(), self.lru_misses
        await self.get_model(serve.get_multiplexed_model_id())
        lru_miss = self.lru_misses > misses
        async with self.lock:
            started = time.time()
            out = await asyncio.to_thread(self._run, job_id, prompt)
        return {**out, "arrived": arrived, "started": started, "lru_miss": lru_miss}

    def _run(self, job_id: int, prompt: dict[str, Any]) -> dict[str, Any]:
        for kind, value in self.engine.run(job_id, prompt):
            if kind == "result":
                return {"job_id": job_id, "ok": value["result"].ok, "loads": value["loads"],
                        "swaps": value["swaps"], "busy_s": value["busy_s"], "done": time.time(),
                        "pid": os.getpid()}
        raise RuntimeError("the engine returned no result")

    def __del__(self) -> None:  # Serve calls it when it stops the replica
        self.engine.close()


def deploy(models_dir: str, replicas: int, parked_bytes: int) -> Any:
    """Start Serve without its HTTP proxy (the benchmark calls the handle) and the app; its handle."""
    serve.start(proxy_location="Disabled")
    app = FarmEngine.options(num_replicas=replicas, ray_actor_options={"num_cpus": 1}).bind(
        models_dir, parked_bytes)
    return serve.run(app, name="loragraph-farm", route_prefix=None)
