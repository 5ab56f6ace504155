"""The prompt queue and the history of finished prompts, as ComfyUI's ``execution.PromptQueue`` keeps them.

Queue items have ComfyUI's shape ``(number, prompt_id, prompt, extra_data, outputs_to_execute)``:
``GET /queue`` lists them as is and clients index into them (``item[1]`` is the prompt id). The
lowest ``number`` runs first (``front`` queues with a negative number); equal numbers run in the
order they came, which ComfyUI leaves to chance.

One worker thread takes items with ``get`` and hands back the result with ``task_done``; the
HTTP handlers, on the event loop thread, put, list, delete and read history. Every method takes
the one lock, and ``on_change`` is called (inside it) whenever the number of remaining tasks may
have changed, so the server can broadcast ComfyUI's ``status`` message.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

# ComfyUI keeps 10000. Each entry holds the whole prompt plus extra_data, which from the frontend
# carries the editor's workflow (often 100 KB or more), so 1000 bounds memory to tens of MB.
DEFAULT_HISTORY_SIZE = 1000

# extra_data keys ComfyUI strips before keeping a prompt in history (API keys for paid nodes).
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")

QueueItem = tuple[Any, str, dict[str, Any], dict[str, Any], list[str]]


class PromptQueue:
    """Pending prompts (a heap by number), the ones running, and a bounded history."""

    def __init__(self, on_change: Callable[[], None] | None = None,
                 history_size: int = DEFAULT_HISTORY_SIZE) -> None:
        self._on_change = on_change
        self._history_size = max(1, history_size)
        self._mutex = threading.RLock()
        self._not_empty = threading.Condition(self._mutex)
        self._heap: list[tuple[float, int, QueueItem]] = []
        self._arrival = itertools.count()
        self._running: dict[int, QueueItem] = {}
        self._task_counter = 0
        self._history: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._flags: dict[str, Any] = {}
        self._closed = False

    # -- the worker's side ---------------------------------------------------------------------

    def put(self, item: QueueItem) -> None:
        """Queue one prompt."""
        with self._mutex:
            heapq.heappush(self._heap, (float(item[0]), next(self._arrival), item))
            self._changed()
            self._not_empty.notify()

    def get(self, timeout: float | None = None) -> tuple[QueueItem, int] | None:
        """The next prompt and its task id, moved to "running".

        None on timeout, after ``close``, or when a flag was set (so the worker acts on it now).
        """
        with self._not_empty:
            while not self._heap and not self._closed and not self._flags:
                if not self._not_empty.wait(timeout=timeout) and timeout is not None:
                    break
            if self._closed or not self._heap:
                return None
            _, _, item = heapq.heappop(self._heap)
            task_id = self._task_counter
            self._task_counter += 1
            self._running[task_id] = item
            self._changed()
            return item, task_id

    def task_done(self, task_id: int, history_result: dict[str, Any], status: dict[str, Any] | None) -> None:
        """Move a running prompt into history with its ``outputs``/``meta`` and ``status``."""
        with self._mutex:
            number, prompt_id, prompt, extra_data, outputs = self._running.pop(task_id)
            extra_data = {k: v for k, v in extra_data.items() if k not in SENSITIVE_EXTRA_DATA_KEYS}
            entry: dict[str, Any] = {
                "prompt": (number, prompt_id, prompt, extra_data, outputs),
                "outputs": {},
                "status": status,
            }
            entry.update(history_result)
            self._history.pop(prompt_id, None)
            self._history[prompt_id] = entry
            while len(self._history) > self._history_size:
                self._history.popitem(last=False)
            self._changed()

    def close(self) -> None:
        """Wake the worker and make every later ``get`` return None (server shutdown)."""
        with self._mutex:
            self._closed = True
            self._not_empty.notify_all()

    # -- what the HTTP handlers see ------------------------------------------------------------

    def current_queue(self) -> tuple[list[QueueItem], list[QueueItem]]:
        """``(running, pending)``; pending in the order it will run (a sorted list is a valid heap)."""
        with self._mutex:
            return list(self._running.values()), [entry[2] for entry in sorted(self._heap)]

    def running_prompt_ids(self) -> list[str]:
        with self._mutex:
            return [item[1] for item in self._running.values()]

    def tasks_remaining(self) -> int:
        """Pending plus running, ComfyUI's ``queue_remaining``."""
        with self._mutex:
            return len(self._heap) + len(self._running)

    def wipe_queue(self) -> int:
        """Drop every pending prompt (the running one is left to ``/interrupt``); returns how many."""
        with self._mutex:
            dropped = len(self._heap)
            self._heap = []
            self._changed()
            return dropped

    def delete(self, prompt_ids: Iterable[str]) -> int:
        """Drop the pending prompts with these ids; returns how many were dropped."""
        wanted = {str(p) for p in prompt_ids}
        with self._mutex:
            kept = [entry for entry in self._heap if entry[2][1] not in wanted]
            dropped = len(self._heap) - len(kept)
            if dropped:
                heapq.heapify(kept)
                self._heap = kept
                self._changed()
            return dropped

    def history(self, prompt_id: str | None = None, max_items: int | None = None,
                offset: int = -1) -> dict[str, dict[str, Any]]:
        """ComfyUI's ``get_history``: one prompt, or a window (``offset``, ``max_items``), oldest first."""
        with self._mutex:
            if prompt_id is not None:
                entry = self._history.get(prompt_id)
                return {prompt_id: entry} if entry is not None else {}
            if offset < 0 and max_items is not None:
                offset = len(self._history) - max_items
            out: dict[str, dict[str, Any]] = {}
            for i, (key, entry) in enumerate(self._history.items()):
                if i < offset:
                    continue
                out[key] = entry
                if max_items is not None and len(out) >= max_items:
                    break
            return out

    def wipe_history(self) -> None:
        with self._mutex:
            self._history.clear()

    def delete_history(self, prompt_ids: Iterable[str]) -> None:
        with self._mutex:
            for prompt_id in prompt_ids:
                self._history.pop(str(prompt_id), None)

    # -- flags (POST /free) --------------------------------------------------------------------

    def set_flag(self, name: str, value: Any) -> None:
        """Ask the worker to do something between prompts (``unload_models``, ``free_memory``)."""
        with self._mutex:
            self._flags[name] = value
            self._not_empty.notify()

    def take_flags(self) -> dict[str, Any]:
        with self._mutex:
            flags, self._flags = self._flags, {}
            return flags

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:
                logger.exception("queue change callback failed")
