"""Node definitions in the shape of ComfyUI's ``GET /object_info``.

ComfyUI's frontend (and API clients such as workflow converters) build their node menus, widgets
and sockets from this JSON, so it follows ComfyUI's ``server.py`` ``node_info`` key for key. It is
shared by ``loragraph nodes`` and the headless server's ``/object_info`` routes.

``INPUT_TYPES()`` is called afresh for every node, so combo lists (LoRA files, models) reflect the
folders as they are now.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

# What ComfyUI sets as RELATIVE_PYTHON_MODULE for a custom node pack cloned as custom_nodes/loragraph.
PACK_PYTHON_MODULE = "custom_nodes.loragraph"
# ComfyUI's own nodes (our headless SaveImage / PreviewImage stand in for them) report "nodes".
CORE_PYTHON_MODULE = "nodes"
# ComfyUI's display names for the core nodes the headless registry adds.
CORE_DISPLAY_NAMES = {"SaveImage": "Save Image", "PreviewImage": "Preview Image"}


def node_info(
    class_type: str,
    node_class: type,
    display_name: str | None = None,
    python_module: str = PACK_PYTHON_MODULE,
) -> dict[str, Any]:
    """One node's ``/object_info`` entry, as ComfyUI's ``server.py`` builds it for V1 nodes."""
    input_types = node_class.INPUT_TYPES()
    return_types = tuple(getattr(node_class, "RETURN_TYPES", ()))
    info: dict[str, Any] = {
        "input": input_types,
        "input_order": {section: list(inputs) for section, inputs in input_types.items()},
        "is_input_list": getattr(node_class, "INPUT_IS_LIST", False),
        "output": return_types,
        "output_is_list": getattr(node_class, "OUTPUT_IS_LIST", [False] * len(return_types)),
        "output_name": getattr(node_class, "RETURN_NAMES", return_types),
        "name": class_type,
        "display_name": display_name or class_type,
        "description": getattr(node_class, "DESCRIPTION", ""),
        "python_module": getattr(node_class, "RELATIVE_PYTHON_MODULE", python_module),
        "category": getattr(node_class, "CATEGORY", "sd"),
        "output_node": getattr(node_class, "OUTPUT_NODE", False) is True,
        "has_intermediate_output": getattr(node_class, "HAS_INTERMEDIATE_OUTPUT", False) is True,
    }
    if hasattr(node_class, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = node_class.OUTPUT_TOOLTIPS
    for flag, key in (("DEPRECATED", "deprecated"), ("EXPERIMENTAL", "experimental"),
                      ("DEV_ONLY", "dev_only")):
        if getattr(node_class, flag, False):
            info[key] = True
    info["search_aliases"] = list(getattr(node_class, "SEARCH_ALIASES", []))
    return info


def object_info(
    registry: Mapping[str, type] | None = None,
    display_names: Mapping[str, str] | None = None,
    only: Iterable[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """``{class_type: node_info}`` for a registry (default: the headless one, SaveImage included).

    A node whose ``INPUT_TYPES`` raises is logged and left out, as ComfyUI does, so one broken
    node cannot take the whole menu down. ``only`` restricts the answer (``/object_info/{node}``).
    """
    from . import HEADLESS_NODE_CLASS_MAPPINGS, NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

    registry = HEADLESS_NODE_CLASS_MAPPINGS if registry is None else registry
    names = {**CORE_DISPLAY_NAMES, **NODE_DISPLAY_NAME_MAPPINGS, **(display_names or {})}
    pack_classes = set(NODE_CLASS_MAPPINGS.values())
    wanted = set(only) if only is not None else None
    out: dict[str, dict[str, Any]] = {}
    for class_type, node_class in registry.items():
        if wanted is not None and class_type not in wanted:
            continue
        module = PACK_PYTHON_MODULE if node_class in pack_classes else CORE_PYTHON_MODULE
        try:
            out[class_type] = node_info(class_type, node_class, names.get(class_type), module)
        except Exception:  # ComfyUI's rule: a broken node is logged and skipped
            logger.exception("could not describe node %s", class_type)
    return out
