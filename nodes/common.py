"""What every node shares: the edge type name, the category, and the call into the engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from ..loaders.engine import Engine

PIPELINE = "PIPELINE"
CATEGORY = "loragraph"
# What the adapters' weights are called in the nodes' SETS / OVERRIDES / READS declarations, from
# which the executor finds inputs that a later node always overrides (graph/overrides.py).
ADAPTER_WEIGHTS = "adapter weights"
# What a node's FUNCTION returns: its outputs, or {"ui": ..., "result": outputs} to show text too.
NodeResult: TypeAlias = tuple[Any, ...] | dict[str, Any]


def engine() -> Engine:
    # Imported on first use: importing the pack (ComfyUI does it at start) must stay cheap.
    from ..loaders.engine import get_engine

    return get_engine()


def origin_of(class_type: str, unique_id: Any) -> str:
    return f"{class_type} #{unique_id}" if unique_id is not None else class_type


def check_output_folder(folder: Path, filename_prefix: str) -> None:
    """Before the run: the folder a save node writes into (with the prefix's subfolders) can be written."""
    from ..base import disk
    from ..base.errors import NodeInputError

    norm = os.path.normpath(filename_prefix or "ComfyUI")
    if os.path.isabs(norm) or norm.split(os.sep)[0] == "..":
        raise NodeInputError("filename_prefix", f"{filename_prefix!r} would save outside the output folder")
    problem = disk.writable_folder_problem(folder / os.path.dirname(norm))
    if problem is not None:
        raise NodeInputError("filename_prefix", f"the output folder cannot be written: {problem} "
                                                "(choose another with --output-dir)")


def realize_with_ui(handle: Any) -> NodeResult:
    """Realize the new state now; warnings (e.g. LoRA keys that did not land) show on the node."""
    _, warnings = engine().realize(handle)
    if warnings:
        return {"ui": {"text": warnings}, "result": (handle,)}
    return (handle,)
