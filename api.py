"""``loragraph.run_workflow``: the Python API, ``loragraph run`` as one function call.

It does what the command does for one workflow (read it, apply ``--set`` items, validate before
anything loads, run) and returns the outputs instead of printing them. One executor per process
is kept between calls, so, as between the files of one ``loragraph run``, loaded pipelines, parsed
LoRA files and cached node outputs carry over and a second call re-runs only what changed.

It sits beside the layers (pyproject's import contract), importing only graph/, nodes/ and host, so
the package's root can offer it without importing the command line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

_lock = threading.Lock()
_executor: Any = None


class WorkflowFailed(RuntimeError):
    """The workflow was invalid (nothing ran) or a node failed; ``lines`` name each node and input,
    ``result`` is the executor's ``ExecutionResult``."""

    def __init__(self, lines: list[str], result: Any) -> None:
        super().__init__("\n".join(lines) or result.status)
        self.lines = lines
        self.result = result


def run_workflow(
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    models_dir: str | os.PathLike[str] = "models",
    output_dir: str | os.PathLike[str] = "output",
    set: Iterable[str] | Mapping[str, Any] = (),  # the CLI's --set, by its name
) -> dict[str, dict[str, Any]]:
    """Run one workflow and return its outputs: ``{node_id: what the node shows}``, e.g.
    ``{"7": {"images": [{"filename": "quickstart_00001_.png", "subfolder": "", "type": "output"}]}}``.

    ``workflow``: a file (API or editor JSON, or a PNG written by SaveImage), or the workflow as a
    dict. ``set``: ``--set`` items (``["6.seed=7"]``) or a mapping ``{"6.seed": 7}``. Raises
    ``WorkflowFailed`` when the workflow is invalid or a node fails.
    """
    global _executor
    from . import host
    from .graph import Executor, apply_overrides, load_workflow_document
    from .nodes import HEADLESS_NODE_CLASS_MAPPINGS

    registry = HEADLESS_NODE_CLASS_MAPPINGS
    items = [f"{k}={_as_text(v)}" for k, v in set.items()] if isinstance(set, Mapping) else list(set)
    with _lock:
        host.configure(models_dir=models_dir, output_dir=output_dir)
        loaded = load_workflow_document(workflow, registry)
        prompt = apply_overrides(loaded.prompt, items, registry)
        if _executor is None:
            _executor = Executor(registry)
        result = _executor.execute(prompt, extra_data=loaded.extra_data())
    if not result.ok:
        raise WorkflowFailed(result.error_lines(), result)
    return result.outputs


def _as_text(value: Any) -> str:
    """A value as ``--set`` text that parses back to it (strings stay strings)."""
    import json

    from .graph import parse_override_value

    if isinstance(value, str) and parse_override_value(value) == value:
        return value
    return json.dumps(value)
