"""What node code can ask of the run it is part of: report progress, honour an interrupt.

Nodes must not need the executor object (inside ComfyUI there is none of ours), so the executor
publishes the node being run in a ``contextvars`` variable and these module functions read it.
Outside a run they do nothing, which keeps node code callable from plain unit tests.

``report_progress`` is also an interruption point: a sampler that reports every step can be
cancelled between steps, which is the only place a long diffusers call can stop cleanly.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ExecutionInterrupted
from .events import PROGRESS, EventBus

# progress_hook_factory(prompt_id, node_id, class_type) -> hook or None; hook(value, max) is called
# on every report of that node, and hook.close() (if it exists) when the node ends. The CLI uses
# it for one tqdm bar per node without subscribing to every event.
ProgressHook = Callable[[float, float], Any]
ProgressHookFactory = Callable[[str, str, str], "ProgressHook | None"]

__all__ = [
    "ExecutionInterrupted",
    "NodeContext",
    "ProgressHook",
    "ProgressHookFactory",
    "check_interrupted",
    "current_node",
    "report_progress",
]


@dataclass
class NodeContext:
    """The node currently executing, as seen from inside its FUNCTION."""

    prompt_id: str
    node_id: str
    display_node: str
    class_type: str
    bus: EventBus
    interrupt_flag: threading.Event
    hook_factory: ProgressHookFactory | None = None
    _hook: ProgressHook | None = field(default=None, repr=False)
    _hook_made: bool = field(default=False, repr=False)

    def progress(self, value: float, total: float) -> None:
        """Check for an interrupt, then emit ComfyUI's ``progress`` event and call the hook."""
        if self.interrupt_flag.is_set():
            raise ExecutionInterrupted(f"Interrupted while running node {self.node_id} ({self.class_type})")
        self.bus.emit(PROGRESS,
                      {"value": value, "max": total, "prompt_id": self.prompt_id, "node": self.node_id})
        if not self._hook_made:
            self._hook_made = True
            if self.hook_factory is not None:
                self._hook = self.hook_factory(self.prompt_id, self.node_id, self.class_type)
        if self._hook is not None:
            self._hook(value, total)

    def close(self) -> None:
        """Close this node's progress hook, if one was made."""
        close = getattr(self._hook, "close", None)
        self._hook = None
        if callable(close):
            close()


_current: contextvars.ContextVar[NodeContext | None] = contextvars.ContextVar("loragraph_current_node",
                                                                              default=None)


def current_node() -> NodeContext | None:
    """The running node's context, or None outside an executor run."""
    return _current.get()


def check_interrupted() -> None:
    """Raise ``ExecutionInterrupted`` if the run was interrupted; no-op outside a run."""
    ctx = _current.get()
    if ctx is not None and ctx.interrupt_flag.is_set():
        raise ExecutionInterrupted(f"Interrupted while running node {ctx.node_id} ({ctx.class_type})")


def report_progress(value: float, total: float) -> None:
    """Report ``value`` of ``total`` for the running node, and stop here if interrupted.

    Emits ``progress {"value", "max", "prompt_id", "node"}`` on the executor's bus. Call it
    between sampler steps; outside a run it does nothing.
    """
    ctx = _current.get()
    if ctx is not None:
        ctx.progress(value, total)


@contextlib.contextmanager
def running(ctx: NodeContext) -> Iterator[NodeContext]:
    """Make ``ctx`` the current node for the duration of the block (executor use)."""
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
        ctx.close()
