"""The workflow executor: load, validate, order, cache, run, and emit ComfyUI's events.

It runs ComfyUI-style node classes from a registry ``{class_type: class}`` and knows nothing
about LoRA or diffusers. Typical use, with loragraph's headless registry (its nodes plus SaveImage,
PreviewImage and SaveAnimation) and the folders set first, as the README's "Python" section runs it::

    from loragraph import host
    from loragraph.graph import Executor, apply_overrides, load_workflow_document
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS as NODES

    host.configure(models_dir="examples/models", output_dir="output")
    executor = Executor(NODES)
    executor.bus.subscribe(lambda event, data: ...)
    loaded = load_workflow_document("examples/workflows/quickstart.json", NODES)  # JSON or a PNG
    prompt = apply_overrides(loaded.prompt, ["6.seed=5"], NODES)
    result = executor.execute(prompt, extra_data=loaded.extra_data())  # SaveImage embeds the workflow

Node code reports progress and honours interrupts through ``report_progress`` /
``check_interrupted`` without needing the executor object.
"""

from .cache import DEFAULT_CACHE_PROMPTS, CacheEntry, OutputCache, node_signatures
from .editor_format import editor_to_api
from .errors import CycleError, ExecutionInterrupted, GraphError, NodeInputError, WorkflowError
from .events import EventBus
from .executor import ExecutionResult, Executor
from .interrupt import NodeContext, check_interrupted, current_node, report_progress
from .order import ancestors, execution_order, output_nodes, topological_order
from .overrides import OverriddenInput, overridden_inputs
from .png import png_workflow_chunks, read_png_text
from .validate import format_node_errors, format_validation_error, validate_node_input, validate_prompt
from .workflow import (
    LoadedWorkflow,
    apply_overrides,
    is_editor_format,
    is_link,
    load_workflow,
    load_workflow_document,
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
    "LoadedWorkflow",
    "NodeContext",
    "NodeInputError",
    "OutputCache",
    "OverriddenInput",
    "WorkflowError",
    "ancestors",
    "apply_overrides",
    "check_interrupted",
    "current_node",
    "editor_to_api",
    "execution_order",
    "format_node_errors",
    "format_validation_error",
    "is_editor_format",
    "is_link",
    "load_workflow",
    "load_workflow_document",
    "node_signatures",
    "normalize_prompt",
    "output_nodes",
    "overridden_inputs",
    "parse_override_value",
    "png_workflow_chunks",
    "read_png_text",
    "report_progress",
    "to_api_format",
    "topological_order",
    "validate_node_input",
    "validate_prompt",
]
