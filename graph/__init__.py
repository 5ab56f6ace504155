"""The workflow executor: load, validate, order, cache, run, and emit ComfyUI's events.

It runs ComfyUI-style node classes from a registry ``{class_type: class}`` and knows nothing
about LoRA or diffusers. Typical use::

    from loragraph.graph import Executor, load_workflow, apply_overrides

    executor = Executor(NODE_CLASS_MAPPINGS)
    executor.bus.subscribe(lambda event, data: ...)
    prompt = apply_overrides(load_workflow("wf.json"), ["3.seed=5"], NODE_CLASS_MAPPINGS)
    result = executor.execute(prompt)

Node code reports progress and honours interrupts through ``report_progress`` /
``check_interrupted`` without needing the executor object.
"""

from .cache import DEFAULT_CACHE_PROMPTS, CacheEntry, OutputCache, node_signatures
from .errors import CycleError, ExecutionInterrupted, GraphError, NodeInputError, WorkflowError
from .events import EventBus
from .executor import ExecutionResult, Executor
from .interrupt import NodeContext, check_interrupted, current_node, report_progress
from .order import ancestors, execution_order, output_nodes, topological_order
from .validate import format_node_errors, format_validation_error, validate_node_input, validate_prompt
from .workflow import (
    apply_overrides,
    is_link,
    load_workflow,
    normalize_prompt,
    parse_override_value,
    to_api_format,
)

__all__ = [
    "DEFAULT_CACHE_PROMPTS",
    "CacheEntry",
    "CycleError",
    "EventBus",
    "ExecutionInterrupted",
    "ExecutionResult",
    "Executor",
    "GraphError",
    "NodeContext",
    "NodeInputError",
    "OutputCache",
    "WorkflowError",
    "ancestors",
    "apply_overrides",
    "check_interrupted",
    "current_node",
    "execution_order",
    "format_node_errors",
    "format_validation_error",
    "is_link",
    "load_workflow",
    "node_signatures",
    "normalize_prompt",
    "output_nodes",
    "parse_override_value",
    "report_progress",
    "to_api_format",
    "topological_order",
    "validate_node_input",
    "validate_prompt",
]
