"""The one error a node raises for a bad input value, shared by the engine, the nodes and the executor.

It lives at the package's root, below every layer: the engine (loaders/) and the nodes raise it, the
executor (graph/) reports it, and none of them has to import another to do so.
"""

from __future__ import annotations


class NodeInputError(ValueError):
    """A bad value for one node input: `NodeInputError(input_name, message)`.

    The executor puts `input_name` into the `execution_error` message, so the user learns which
    widget to fix, not only which node failed (any exception with an `input_name` attribute gets the
    same treatment; this is the ready-made one). The message reads "<input_name>: <message>".
    """

    def __init__(self, input_name: str, message: str) -> None:
        super().__init__(f"{input_name}: {message}")
        self.input_name = input_name
        self.bare_message = message
