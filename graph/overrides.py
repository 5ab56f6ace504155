"""Inputs whose value can change nothing: set again by a later node on every path before anything uses it.

The executor knows nothing of what nodes do, so node classes declare it, in three optional class
attributes naming free-form *properties* of the value that flows along their links:

- ``SETS = {input_name: property}``: this input sets that property;
- ``OVERRIDES = {property: input_name}``: this node sets the property again (through that input),
  replacing whatever earlier nodes set;
- ``READS = (property, ...)``: this node uses the property's current value (so an earlier value
  matters here, whatever comes later).

An input of node U left at its declared default is not reported (nothing was set); otherwise it is
reported when, following U's output links downstream, at least one path
meets a node overriding the property, and no path meets a node that reads it before an override
(a path that ends without reading it is not a use; a node of an unknown class counts as one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .node_defs import NodeClass
from .workflow import is_link


@dataclass(frozen=True)
class OverriddenInput:
    """``node_id``'s input ``input_name`` is always replaced by ``by_node``'s ``by_input``."""

    node_id: str
    class_type: str
    input_name: str
    value: Any
    by_node: str
    by_class_type: str
    by_input: str
    property: str

    def message(self, prompt: Mapping[str, Any] | None = None) -> str:
        return (f"{_label(self.node_id, self.class_type, prompt)}, input '{self.input_name}' "
                f"(= {self.value!r}) changes nothing: {_label(self.by_node, self.by_class_type, prompt)} "
                f"sets the {self.property} again on every path after it; change its "
                f"'{self.by_input}' instead")


def _label(node_id: str, class_type: str, prompt: Mapping[str, Any] | None) -> str:
    title = (((prompt or {}).get(node_id) or {}).get("_meta") or {}).get("title")
    shown = f' "{title}"' if isinstance(title, str) and title and title != class_type else ""
    return f"node {node_id} ({class_type}{shown})"


def _consumers(prompt: Mapping[str, Any]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for node_id, node in prompt.items():
        for value in (node.get("inputs") or {}).values():
            if is_link(value) and str(value[0]) in prompt:
                found.setdefault(str(value[0]), [])
                if node_id not in found[str(value[0])]:
                    found[str(value[0])].append(node_id)
    return found


def overridden_inputs(prompt: Mapping[str, Any], registry: Mapping[str, NodeClass]) -> list[OverriddenInput]:
    """Every input that a later node always overrides, in prompt order (see the module docstring)."""
    consumers = _consumers(prompt)

    def cls(node_id: str) -> NodeClass | None:
        return registry.get(str((prompt.get(node_id) or {}).get("class_type")))

    def first_overrides(start: str, prop: str) -> list[str] | None:
        """The overriding nodes met first on each path from ``start``; None if some path reads ``prop``."""
        met: list[str] = []
        stack, seen = list(consumers.get(start, ())), set()
        while stack:
            node_id = stack.pop()
            if node_id in seen:
                continue
            seen.add(node_id)
            node_cls = cls(node_id)
            if node_cls is None:
                return None  # unknown node: assume it uses everything
            if prop in (getattr(node_cls, "OVERRIDES", None) or {}):
                met.append(node_id)
                continue
            if prop in (getattr(node_cls, "READS", None) or ()):
                return None
            stack.extend(consumers.get(node_id, ()))
        return met

    found = []
    for node_id, node in prompt.items():
        node_cls = cls(node_id)
        sets = getattr(node_cls, "SETS", None) or {}
        for input_name, prop in sets.items():
            if input_name not in (node.get("inputs") or {}):
                continue
            value = node["inputs"][input_name]
            if not is_link(value) and value == _default(node_cls, input_name):
                continue  # left at its default: nothing was set that could be lost
            met = first_overrides(node_id, prop)
            if not met:
                continue
            by = min(met, key=_id_key)
            by_cls = cls(by)
            found.append(OverriddenInput(
                node_id, node["class_type"], input_name, node["inputs"][input_name], by,
                str(prompt[by]["class_type"]), str(getattr(by_cls, "OVERRIDES", {})[prop]), prop))
    return found


def _default(node_cls: NodeClass | None, input_name: str) -> Any:
    try:
        declared = node_cls.INPUT_TYPES()  # type: ignore[union-attr]
    except Exception:  # validation reports a broken class; here it only means "unknown"
        return object()
    for section in ("required", "optional"):
        spec = (declared.get(section) or {}).get(input_name)
        if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping):
            return spec[1].get("default", object())
    return object()


def _id_key(node_id: str) -> tuple[int, str]:
    return (int(node_id), "") if node_id.isdigit() else (1 << 62, node_id)
