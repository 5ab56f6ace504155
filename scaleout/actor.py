"""The Ray actor: one ``Engine`` (the process's) and one ``Executor``, run one job at a time.

Plain Python: ``pool.py`` wraps the class with ``ray.remote``. The engine and executor are the ones
``loragraph run`` uses, untouched; the actor only adds what the driver needs around a run:

- the job's files are written to a private folder, read back and returned: the driver writes them
  under the names one process would have given (``output_commit.py``), so a job retried after its actor
  died never leaves a file behind;
- what it holds after each job (bases, LoRA files by content hash), for the router;
- counts of LoRA loads and hot-swaps (the reconciler's op log), and the time spent busy;
- executor events, streamed to the driver while the job runs (``serve --ray`` forwards them to /ws).
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Reconciler op names (loaders/reconcile.py) that bring a LoRA file's weights onto a pipeline.
LOAD_OPS = ("load_lora_weights",)
SWAP_OPS = ("hotswap",)
_DONE = object()


class EngineActor:
    def __init__(self, models_dir: str | None, threads: int = 1, memory_budget: int | None = None) -> None:
        import torch

        from .. import host

        # The same intra-op thread count as a one-process run: CPU reductions split by thread count,
        # so the bits of a result depend on it.
        torch.set_num_threads(max(1, int(threads)))
        self.work_dir = Path(tempfile.mkdtemp(prefix="loragraph-actor-"))
        # close() removes it when the pool stops the actor; atexit covers a worker that exits on its own
        # (a killed process runs neither: its node's /tmp keeps the folder, empty between jobs).
        atexit.register(self.close)
        host.configure(models_dir=models_dir or "models", output_dir=self.work_dir / "output")
        from ..graph import Executor
        from ..loaders import engine  # noqa: F401 - import torch and diffusers before the first job
        from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS

        self.executor = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
        self._bases: dict[int, tuple[Any, str]] = {}  # id(LivePipeline) -> (the pipeline, its base key)
        self._ops_seen: dict[int, int] = {}
        self.stats = {"jobs": 0, "loads": 0, "swaps": 0, "busy_s": 0.0, "pid": os.getpid()}

    def ready(self) -> dict[str, Any]:
        import ray

        return {"pid": os.getpid(), "node": os.uname().nodename, "work_dir": str(self.work_dir),
                "node_id": ray.get_runtime_context().get_node_id()}

    def close(self) -> None:
        """Remove the private work folder (the pool calls this before it ends the actor)."""
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def interrupt(self) -> None:
        """Stop the running job at its next step (called on a second thread: max_concurrency=2)."""
        self.executor.interrupt()

    def report(self) -> dict[str, Any]:
        return {**self.stats, **self.holdings()}

    def free(self, free_memory: bool = True, unload_models: bool = True) -> None:
        """``POST /free`` on the pool: forget cached outputs and/or live pipelines."""
        from ..loaders.engine import get_engine

        if free_memory:
            self.executor.clear_cache()
        if unload_models:
            get_engine().unload_all()

    # --- a job --------------------------------------------------------------------------------

    def run(self, job_id: int, prompt: Mapping[str, Any], extra_data: Mapping[str, Any] | None = None,
            prompt_id: str | None = None, execute_outputs: list[str] | None = None,
            allow_partial: bool = False) -> Iterator[tuple[str, Any]]:
        """Run one workflow; yields ``("event", (name, data))`` while it runs, then ``("result", dict)``.

        The dict holds the ExecutionResult, the files it wrote (bytes), what the actor holds now and
        this job's loads and swaps.
        """
        events: queue.Queue = queue.Queue()
        box: dict[str, Any] = {}

        def forward(event: str, data: dict[str, Any]) -> None:
            events.put((event, data))

        def work() -> None:
            try:
                run = {"prompt_id": prompt_id, "extra_data": extra_data, "execute_outputs": execute_outputs,
                           "allow_partial": allow_partial}
                result = self.executor.execute(prompt, **run)
                if _files_from_cache(result):
                    # An output node served from this actor's cache names a file the driver already
                    # took (under another name): run it afresh so its files come back with this job.
                    self.executor.clear_cache()
                    result = self.executor.execute(prompt, **run)
                box["result"] = result
            except BaseException as ex:  # carried to the caller's thread
                box["error"] = ex
            finally:
                events.put(_DONE)

        out = self.work_dir / "output"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        self.executor.bus.subscribe(forward)
        started = time.perf_counter()
        thread = threading.Thread(target=work, name=f"loragraph-job-{job_id}", daemon=True)
        thread.start()
        try:
            while (item := events.get()) is not _DONE:
                yield "event", item
        finally:
            thread.join()
            self.executor.bus.unsubscribe(forward)
        if "error" in box:
            raise box["error"]
        result = box["result"]
        loads, swaps = self._count_ops()
        took = time.perf_counter() - started
        self.stats["jobs"] += 1
        self.stats["loads"] += loads
        self.stats["swaps"] += swaps
        self.stats["busy_s"] += took
        if result.ok:
            self._remember_bases(prompt)
        files = self._collect_files(result.outputs)
        shutil.rmtree(out, ignore_errors=True)
        yield "result", {"job_id": job_id, "result": result, "files": files, "loads": loads,
                         "swaps": swaps, "busy_s": took, **self.holdings()}

    # --- bookkeeping --------------------------------------------------------------------------

    def _live_pipelines(self) -> list[Any]:
        from ..loaders.engine import get_engine

        return get_engine().pipelines.values()

    def _count_ops(self) -> tuple[int, int]:
        loads = swaps = 0
        for live in self._live_pipelines():
            seen = self._ops_seen.get(id(live), 0)
            new = live.ops[seen:]
            self._ops_seen[id(live)] = len(live.ops)
            loads += sum(op in LOAD_OPS for op in new)
            swaps += sum(op in SWAP_OPS for op in new)
        return loads, swaps

    def _remember_bases(self, prompt: Mapping[str, Any]) -> None:
        """Which live pipeline each LoadPipeline of a successful job is (all are in the cache now)."""
        from ..loaders.engine import get_engine
        from ..loaders.pipelines import make_source
        from .needs import base_key

        engine = get_engine()
        for node in prompt.values():
            inputs = node.get("inputs") or {}
            if node.get("class_type") != "LoadPipeline" or not isinstance(inputs.get("model"), str):
                continue
            try:
                live = engine.live(make_source(inputs["model"], inputs.get("dtype", "auto"),
                                               inputs.get("device", "auto")))
            except Exception:  # routing is a hint; the job already ran fine
                logger.debug("could not look up the pipeline of %r", inputs["model"], exc_info=True)
                continue
            self._bases[id(live)] = (live,
                                     base_key(inputs["model"], inputs.get("dtype"), inputs.get("device")))

    def holdings(self) -> dict[str, list[str]]:
        """Bases with a live pipeline here, and the LoRA files (sha256) loaded on them, parked included."""
        lives = self._live_pipelines()
        ids = {id(live) for live in lives}
        self._bases = {k: v for k, v in self._bases.items() if k in ids}
        self._ops_seen = {k: v for k, v in self._ops_seen.items() if k in ids}
        adapters: set[str] = set()
        for live in lives:
            specs = list(live.state.adapters if live.state is not None else ()) + list(live.parked.values())
            adapters |= {spec.sha256 for spec in specs}
        return {"bases": sorted({base for _, base in self._bases.values()}), "adapters": sorted(adapters)}

    def _collect_files(self, outputs: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Every file the outputs name, read back: (node, key, index) locate it in the outputs."""
        from .. import host

        folders = {"output": host.output_dir(), "temp": host.temp_dir()}
        files = []
        for node_id, ui in outputs.items():
            for key, sub in (("images", ""), ("loras", "loras")):
                for index, item in enumerate(ui.get(key) or []):
                    if not isinstance(item, Mapping) or "filename" not in item:
                        continue
                    kind = item.get("type", "output")
                    folder = folders.get(kind, host.output_dir())
                    path = folder / sub / (item.get("subfolder") or "") / item["filename"]
                    try:
                        data = path.read_bytes()
                    except OSError:
                        continue  # a cached output of an earlier job: its file was handed over then
                    if kind == "temp":
                        path.unlink(missing_ok=True)
                    files.append({"node_id": node_id, "key": key, "index": index, "kind": kind, "sub": sub,
                                  "subfolder": item.get("subfolder") or "", "filename": item["filename"],
                                  "data": data})
        return files


def _files_from_cache(result: Any) -> bool:
    """True when an output node that did not run this time shows files (images, LoRAs)."""
    ran = set(result.executed)
    return any(node_id not in ran and (ui.get("images") or ui.get("loras"))
               for node_id, ui in result.outputs.items())
