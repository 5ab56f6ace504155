"""The prompt worker: one thread that drains the queue through one Executor (ComfyUI's ``prompt_worker``).

One executor for the server's life means its output cache carries over from prompt to prompt, so
re-queueing a workflow with one weight changed runs only the nodes downstream of that weight; the
engine (live pipelines, parsed LoRA files) is process-wide and carries over too.

Events go where ComfyUI sends them: to the websocket of the ``client_id`` that queued the prompt;
with no client id only ``progress`` and ``execution_interrupted`` are sent, to everyone. The final
``executing {"node": None}`` is sent after the prompt is in history (as ComfyUI's ``main.py``
does), because clients fetch ``/history/{prompt_id}`` as soon as they see it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import Any

from ..graph import ExecutionResult, Executor
from ..graph.events import EXECUTING, EXECUTION_ERROR, EXECUTION_INTERRUPTED, PROGRESS, timestamp_ms
from .queue import PromptQueue, QueueItem
from .sockets import SocketHub

logger = logging.getLogger(__name__)

# ComfyUI sends these even when the prompt has no client id (to every client).
_SENT_WITHOUT_CLIENT = frozenset({PROGRESS, EXECUTION_INTERRUPTED})


class PromptWorker:
    """Runs queued prompts one at a time on a daemon thread and records them in history."""

    def __init__(self, queue: PromptQueue, executor: Executor, hub: SocketHub) -> None:
        self.queue = queue
        self.executor = executor
        self.hub = hub
        self.client_id: str | None = None
        self.prompt_id: str | None = None
        self.last_node_id: str | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        executor.bus.subscribe(self._forward)

    def start(self) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="loragraph-prompt-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking prompts, interrupt the running one, and wait for the thread."""
        self._stopping.set()
        self.queue.close()
        self.executor.interrupt()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("prompt worker still busy after %.0f s; leaving it behind", timeout)
            self._thread = None

    def interrupt(self, prompt_id: str | None = None) -> bool:
        """ComfyUI's ``/interrupt``: the running prompt, or only if it is ``prompt_id``."""
        if prompt_id and prompt_id not in self.queue.running_prompt_ids():
            logger.info("Prompt %s is not currently running, skipping interrupt", prompt_id)
            return False
        logger.info("Interrupting %s", f"prompt {prompt_id}" if prompt_id else "the running prompt")
        self.executor.interrupt()
        return True

    # -- the thread ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stopping.is_set():
            got = self.queue.get(timeout=1.0)
            if got is not None:
                item, task_id = got
                self._run_one(item, task_id)
            self._apply_flags(self.queue.take_flags())

    def _run_one(self, item: QueueItem, task_id: int) -> None:
        _number, prompt_id, prompt, extra_data, outputs = item
        self.client_id = extra_data.get("client_id") or None
        self.prompt_id = prompt_id
        started = time.perf_counter()
        result: ExecutionResult | None = None
        try:
            result = self.executor.execute(prompt, prompt_id, extra_data, execute_outputs=outputs,
                                           allow_partial=True)
            history_result, status = self._history_entry(result, prompt)
        except Exception as ex:  # a bug in the executor must not kill the server's only worker
            logger.exception("prompt %s crashed the executor", prompt_id)
            message = self.error_message(prompt_id, None, None, f"{type(ex).__name__}: {ex}")
            history_result = {"outputs": {}, "meta": {}}
            status = {"status_str": "error", "completed": False, "messages": [(EXECUTION_ERROR, message)]}
        finally:
            self.last_node_id = None
        self.queue.task_done(task_id, history_result, status)
        if self.client_id is not None:
            self.hub.send_sync(EXECUTING, {"node": None, "prompt_id": prompt_id}, self.client_id)
        self._log_result(prompt_id, result, status, time.perf_counter() - started)
        self.prompt_id = None

    @staticmethod
    def _log_result(prompt_id: str, result: ExecutionResult | None, status: dict[str, Any],
                    took: float) -> None:
        """One console line per prompt: done, interrupted or failed, with its time (ComfyUI's
        "Prompt executed in ... seconds")."""
        if result is not None and result.ok:
            logger.info("prompt %s done in %.2f s (%d node%s run, %d cached)", prompt_id, took,
                        len(result.executed), "s" * (len(result.executed) != 1), len(result.cached))
        elif result is not None and result.interrupted:
            logger.info("prompt %s interrupted after %.2f s", prompt_id, took)
        else:
            lines = result.error_lines() if result is not None else [
                m[1].get("exception_message", "") for m in status.get("messages", [])
                if m[0] == EXECUTION_ERROR]
            logger.info("prompt %s failed in %.2f s: %s", prompt_id, took, "; ".join(lines))

    def _history_entry(self, result: ExecutionResult, prompt: dict[str, Any]) -> tuple[dict, dict]:
        messages = list(result.messages)
        if result.status == "invalid":
            # Validated when queued, invalid when run (a LoRA file deleted in between): report it
            # as an execution error so clients waiting on the websocket hear about it.
            node_id = next(iter(result.node_errors), None)
            node_type = prompt.get(node_id, {}).get("class_type") if node_id else None
            message = self.error_message(result.prompt_id, node_id, node_type,
                                          "\n".join(result.error_lines()))
            messages.append((EXECUTION_ERROR, message))
            if self.client_id is not None:
                self.hub.send_sync(EXECUTION_ERROR, message, self.client_id)
        meta = {
            node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None,
                      "real_node_id": node_id}
            for node_id in result.outputs
        }
        status = {"status_str": "success" if result.ok else "error", "completed": result.ok,
                  "messages": messages}
        return {"outputs": result.outputs, "meta": meta}, status

    @staticmethod
    def error_message(prompt_id: str, node_id: str | None, node_type: str | None,
                       text: str) -> dict[str, Any]:
        return {"prompt_id": prompt_id, "node_id": node_id, "node_type": node_type, "executed": [],
                "exception_message": text, "exception_type": "loragraph.server.PromptFailed",
                "traceback": [], "current_inputs": {}, "current_outputs": [], "timestamp": timestamp_ms()}

    def _forward(self, event: str, data: dict[str, Any]) -> None:
        """Executor bus subscriber (runs on the worker thread): pass events to the websockets."""
        if event == EXECUTING:
            if data.get("node") is None:
                return  # sent by _run_one once the prompt is in history
            self.last_node_id = data["node"]
        if self.client_id is not None:
            self.hub.send_sync(event, data, self.client_id)
        elif event in _SENT_WITHOUT_CLIENT:
            self.hub.send_sync(event, data, None)

    def _apply_flags(self, flags: dict[str, Any]) -> None:
        """``POST /free``: drop cached outputs (free_memory) and the live pipelines (unload_models)."""
        free_memory = bool(flags.get("free_memory", False))
        unload = bool(flags.get("unload_models", free_memory))
        if not (free_memory or unload):
            return
        if free_memory:
            self.executor.clear_cache()
        if unload:
            from ..loaders.engine import get_engine

            get_engine().unload_all()
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            logger.debug("could not empty the CUDA cache", exc_info=True)
        logger.info("freed memory (free_memory=%s, unload_models=%s)", free_memory, unload)
