"""The executor's event bus, speaking ComfyUI's websocket messages.

One stream of ``(event, data)`` pairs feeds every consumer: the server forwards them unchanged to
websocket clients (so ComfyUI's frontend and API clients work), the CLI turns ``progress`` into
tqdm bars, tests record them. Names and payload keys are ComfyUI's (``execution.py``, ``main.py``):

===================== ==========================================================================
execution_start       prompt_id, timestamp
execution_cached      nodes, prompt_id, timestamp
executing             node, display_node, prompt_id  (node None + prompt_id only: prompt finished)
progress              value, max, prompt_id, node
executed              node, display_node, output, prompt_id
execution_error       prompt_id, node_id, node_type, executed, exception_message, exception_type,
                      traceback, current_inputs, current_outputs, timestamp
execution_interrupted prompt_id, node_id, node_type, executed, timestamp
execution_success     prompt_id, timestamp
===================== ==========================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
EXECUTED = "executed"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"
EXECUTION_SUCCESS = "execution_success"

# The events ComfyUI stamps with a millisecond timestamp and keeps in the prompt's history
# ("status messages"); the others are live-only.
STATUS_EVENTS = frozenset(
    {EXECUTION_START, EXECUTION_CACHED, EXECUTION_ERROR, EXECUTION_INTERRUPTED, EXECUTION_SUCCESS}
)

Callback = Callable[[str, dict[str, Any]], None]


def timestamp_ms() -> int:
    """Wall-clock milliseconds, ComfyUI's ``timestamp`` field."""
    return int(time.time() * 1000)


class EventBus:
    """Fan-out of executor events to subscribers.

    A subscriber that raises is logged and skipped: a closed websocket or a broken progress bar
    must not fail the user's workflow. Subscribing and emitting may happen from different threads
    (the server subscribes while a worker thread runs prompts).
    """

    def __init__(self) -> None:
        self._subscribers: tuple[Callback, ...] = ()
        self._lock = threading.Lock()

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Register ``callback(event, data)``; returns a function that unsubscribes it."""
        with self._lock:
            self._subscribers = (*self._subscribers, callback)
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Callback) -> None:
        """Remove ``callback`` (no error if it was not subscribed)."""
        with self._lock:
            subs = list(self._subscribers)
            if callback in subs:
                subs.remove(callback)
            self._subscribers = tuple(subs)

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Deliver one event to every subscriber, in subscription order."""
        for callback in self._subscribers:
            try:
                callback(event, data)
            except Exception:
                logger.exception("event subscriber %r failed on %s", callback, event)

    @property
    def has_subscribers(self) -> bool:
        """Whether anyone listens (lets the executor skip building payloads nobody reads)."""
        return bool(self._subscribers)
