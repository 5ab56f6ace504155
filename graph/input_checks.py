"""Checks of a node's inputs that ComfyUI's own validation does not make, in its error shapes.

- **Unknown input names.** ComfyUI drops an input its node does not declare, so a typo
  (``strenght``) silently runs with the default. Here an input that is not among the class's
  ``INPUT_TYPES()`` (required, optional or hidden) is an ``unknown_input`` error with the closest
  declared name. ComfyUI's editor sends only declared widgets and sockets (a widget whose
  ``options.serialize`` is false, such as "control after generate", is never queued), so no real
  client is refused.
- **Custom validation attributed to one input.** ComfyUI repeats a ``VALIDATE_INPUTS`` message on
  every input the method takes; here it is reported once, on the input its text starts with.
- **Preflight.** A node class may define a classmethod ``PREFLIGHT(**inputs)``: the checks that need
  the values flowing on links but no weights (which adapters an upstream node loads, which model
  family a pipeline is). It gets the node's constant inputs and, for each linked input, what the
  upstream node's ``PREFLIGHT`` returned at that output index (None when that node has none, or
  could not say). It returns stand-ins for its own outputs (or None), and raises an exception with
  an ``input_name`` attribute for a bad input. Any other exception means "cannot tell before the
  run": the run checks again, so a preflight can never make a valid workflow invalid.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ..base.suggest import did_you_mean
from .node_defs import NodeClass, function_params, get_input_info

logger = logging.getLogger(__name__)

# Inputs that are widgets unless linked: a linked one without a stand-in has no value before the run.
_WIDGET_TYPES = frozenset({"STRING", "INT", "FLOAT", "BOOLEAN"})


def declared_inputs(class_inputs: Mapping[str, Any]) -> list[str]:
    return [name for section in ("required", "optional", "hidden")
            for name in (class_inputs.get(section) or {})]


def unknown_input_errors(inputs: Mapping[str, Any], class_inputs: Mapping[str, Any],
                         class_type: str) -> list[dict[str, Any]]:
    """One ``unknown_input`` error per input name the class does not declare."""
    declared = declared_inputs(class_inputs)
    visible = [n for n in declared if n not in (class_inputs.get("hidden") or {})]
    errors = []
    for name in inputs:
        if name in declared:
            continue
        errors.append({
            "type": "unknown_input",
            "message": "Unknown input",
            "details": f"{class_type} has no input {name!r}{did_you_mean(name, visible)} "
                       f"(its inputs: {', '.join(visible) or 'none'})",
            "extra_info": {"input_name": name, "received_value": inputs[name]},
        })
    return errors


def custom_validation_errors(result: Any, names: Iterable[str]) -> list[dict[str, Any]]:
    """``VALIDATE_INPUTS``' return value as errors: none for True, else one error, on the input
    whose name its message starts with (``"width must be ..."``, ``"weights: ..."``), or on the only
    input the method takes (then in ComfyUI's ``"value - message"`` form)."""
    if result is True:
        return []
    names = list(names)
    message = "" if result is False else str(result)
    about = next((n for n in sorted(names, key=len, reverse=True)
                  if message.startswith((f"{n}:", f"{n} "))), None)
    if about is not None:
        details = message
    elif len(names) == 1:
        about = names[0]
        details = f"{about} - {message}" if message else about
    else:
        details = message
    return [{
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": details,
        "extra_info": {"input_name": about} if about is not None else {},
    }]


def preflight(obj_class: NodeClass, class_inputs: Mapping[str, Any], inputs: Mapping[str, Any],
              linked: Mapping[str, Any], node_id: str) -> tuple[Any, list[dict[str, Any]]]:
    """Run the class's ``PREFLIGHT``: ``(stand-in outputs or None, errors)`` (see the module docstring).

    ``linked`` maps each linked input to the upstream stand-in value (or None).
    """
    check = getattr(obj_class, "PREFLIGHT", None)
    if check is None:
        return None, []
    params, takes_kwargs = function_params(check)
    kwargs: dict[str, Any] = {}
    for name, value in inputs.items():
        input_type, category, _ = get_input_info(class_inputs, name)
        if name in linked and linked[name] is None and (isinstance(input_type, (list, tuple))
                                                         or input_type in _WIDGET_TYPES):
            return None, []  # a widget value computed by another node: known only when the run gets there
        if category in ("required", "optional") and (takes_kwargs or name in params):
            kwargs[name] = linked.get(name) if name in linked else value
    if "unique_id" in params:
        kwargs["unique_id"] = node_id
    try:
        return check(**kwargs), []
    except Exception as ex:
        input_name = getattr(ex, "input_name", None)
        if not isinstance(input_name, str):
            logger.debug("preflight of node %s could not tell: %s", node_id, ex, exc_info=True)
            return None, []
        message = getattr(ex, "bare_message", None) or str(ex).removeprefix(f"{input_name}: ")
        return None, [{
            "type": "custom_validation_failed",
            "message": "Custom validation failed for node",
            "details": message,
            "extra_info": {"input_name": input_name},
        }]
