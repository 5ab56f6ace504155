"""Exceptions shared by the executor's parts.

They live in one small module so that workflow loading, ordering, validation and the run loop can
raise and catch the same types without importing each other.
"""

from __future__ import annotations

from ..base.errors import NodeInputError

__all__ = ["CycleError", "ExecutionInterrupted", "GraphError", "NodeInputError", "WorkflowError",
           "full_type_name"]


class GraphError(Exception):
    """Base class for every error the graph package raises on purpose."""


class WorkflowError(GraphError, ValueError):
    """A workflow could not be read or changed (bad JSON, unsupported format, bad ``--set``)."""


class CycleError(GraphError):
    """The links form a cycle, so no node on it can ever get its inputs.

    ``nodes`` lists the node ids on the cycle in link order (first id repeated at the end), so the
    message can show the loop the user has to break.
    """

    def __init__(self, nodes: list[str], class_types: dict[str, str] | None = None) -> None:
        self.nodes = list(nodes)
        names = class_types or {}
        path = " -> ".join(f"{n} ({names[n]})" if n in names else str(n) for n in self.nodes)
        super().__init__(f"Dependency cycle detected: {path}")


class ExecutionInterrupted(InterruptedError):
    """Raised inside a node (by ``check_interrupted`` / ``report_progress``) after an interrupt.

    It derives from ``InterruptedError`` so generic code can catch it; the executor turns it into
    ComfyUI's ``execution_interrupted`` event instead of an ``execution_error``.
    """


def full_type_name(klass: type) -> str:
    """``module.QualName`` of an exception class, bare for builtins (ComfyUI's format)."""
    module = klass.__module__
    if module == "builtins":
        return klass.__qualname__
    return module + "." + klass.__qualname__
