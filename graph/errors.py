"""Exceptions shared by the executor's parts.

They live in one small module so that workflow loading, ordering, validation and the run loop can
raise and catch the same types without importing each other.
"""

from __future__ import annotations


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


class NodeInputError(Exception):
    """A node rejects the value of one of its inputs at run time.

    The executor puts ``input_name`` into the ``execution_error`` message, so the user learns which
    widget to fix, not only which node failed. Any exception with an ``input_name`` attribute gets
    the same treatment; this class is just the ready-made one.
    """

    def __init__(self, message: str, input_name: str | None = None) -> None:
        super().__init__(message)
        self.input_name = input_name
