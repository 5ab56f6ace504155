"""Reading a node class's definition the way ComfyUI does: an input's entry in ``INPUT_TYPES()``, the
values of its hidden inputs, and the parameters of its ``FUNCTION``.

Validation, the run loop and the output cache all read node definitions; they share these helpers
from here rather than from each other.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

# A node class, ComfyUI's way: a plain class read by the names of its attributes (INPUT_TYPES(),
# RETURN_TYPES, FUNCTION, optional VALIDATE_INPUTS, ...), not a base class, so they are typed Any.
NodeClass = type[Any]


def get_input_info(input_types: Mapping[str, Any], input_name: str) -> tuple[Any, str | None, dict[str, Any]]:
    """``(type, category, options)`` of an input from an ``INPUT_TYPES()`` dict.

    Category is ``"required"``, ``"optional"``, ``"hidden"`` or None when the node does not
    declare the input.
    """
    for category in ("required", "optional", "hidden"):
        section = input_types.get(category) or {}
        if input_name in section:
            info = section[input_name]
            if isinstance(info, (tuple, list)):
                input_type = info[0] if len(info) > 0 else None
                options = info[1] if len(info) > 1 and isinstance(info[1], Mapping) else {}
            else:
                # Hidden inputs are written as bare strings ("PROMPT"); tolerate that anywhere.
                input_type, options = info, {}
            return input_type, category, dict(options)
    return None, None, {}


def hidden_values(
    input_types: Mapping[str, Any],
    node_id: str,
    prompt: Mapping[str, Any] | None,
    extra_data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Values for a node's hidden inputs, the way ComfyUI supplies them.

    PROMPT is the API-format prompt (``{}`` outside a run), EXTRA_PNGINFO is
    ``extra_data["extra_pnginfo"]`` (``{"workflow": <editor json>}`` when known), UNIQUE_ID the
    node id. DYNPROMPT has no equivalent here and is given None.
    """
    hidden = input_types.get("hidden") or {}
    extra = extra_data or {}
    values: dict[str, Any] = {}
    for name, spec in hidden.items():
        kind = spec[0] if isinstance(spec, (tuple, list)) and spec else spec
        if kind == "PROMPT":
            values[name] = prompt if prompt is not None else {}
        elif kind == "EXTRA_PNGINFO":
            values[name] = extra.get("extra_pnginfo")
        elif kind == "UNIQUE_ID":
            values[name] = node_id
        elif kind == "DYNPROMPT":
            values[name] = None
        elif kind == "AUTH_TOKEN_COMFY_ORG":
            values[name] = extra.get("auth_token_comfy_org")
        elif kind == "API_KEY_COMFY_ORG":
            values[name] = extra.get("api_key_comfy_org")
    return values


def function_params(func: Any) -> tuple[list[str], bool]:
    """``(named parameters, accepts **kwargs)`` of a node method (``cls``/``self`` dropped)."""
    try:
        spec = inspect.getfullargspec(func)
    except TypeError:
        return [], True
    args = list(spec.args) + list(spec.kwonlyargs)
    if inspect.ismethod(func) and args:
        args = args[1:]
    return args, spec.varkw is not None
