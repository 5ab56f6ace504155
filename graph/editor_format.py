"""The ComfyUI editor's saved workflow (``nodes`` / ``links`` / ``widgets_values``) to API format.

The editor saves what it draws: nodes with their widget values in a positional list, links in a
table, plus things that never run (notes, groups, reroutes, primitive nodes, muted and bypassed
nodes). The API ("prompt") format that the executor runs is what the editor *queues*, computed by
its ``graphToPrompt``. This module re-does that computation from the saved file and our node
definitions, following the frontend's rules (ComfyUI_frontend, ``src/utils/executionUtil.ts``
``graphToPrompt`` and litegraph's ``ExecutableNodeDTO.resolveInput`` / ``resolveOutput``):

- A node's widgets are made from its definition, in input order (required, then optional), one per
  INT / FLOAT / STRING / BOOLEAN / combo input that is not ``forceInput``. An INT with
  ``control_after_generate`` (or, when that option is absent, an INT named ``seed`` or
  ``noise_seed``) gets one extra "control after generate" widget right after it, a combo with it two
  (the control and its filter): their values are in ``widgets_values`` but never in the prompt.
  ``widgets_values`` may also be an object keyed by widget name. Workflows saved before frontend
  1.16 hold a dummy value for each ``forceInput`` input; those are dropped first, as the frontend's
  ``migrateWidgetsValues`` does.
- The prompt gets every widget's value, then one entry per input socket whose link resolves to a
  real node output (a widget input fed by a link is thus replaced by the link).
- Muted nodes (mode 2) and bypassed nodes (mode 4) are left out. A link from a bypassed node is
  followed to one of its inputs: the input at the same index as the output if its type fits, else
  the first input of exactly the consumer's type, else the first whose type fits (a ``*`` consumer
  takes the same index, else the first input); none: the input is left out. An input fed by a
  muted node is left out too (and, as in graphToPrompt, any input still pointing at a node that is
  not in the prompt is removed at the end).
- Virtual nodes are not in the prompt: a ``Reroute`` passes its input through; a ``PrimitiveNode``
  writes its value into the widgets it feeds (its ``applyToGraph``); ``Note`` / ``MarkdownNote``
  and groups are ignored.
- Subgraphs (``definitions.subgraphs``, schema 0.4 or 1): each instance's inner nodes are queued
  under ids ``"<instance id>:<inner id>"`` and links are followed in and out through the
  subgraph's input and output nodes.

Two deliberate differences, both where the saved file alone cannot say what the editor would do:
a ``PrimitiveNode`` reaches widgets through ``Reroute`` nodes (older frontends did; the newest
only updates widgets it is linked to directly); and an unconnected subgraph input leaves the inner
node's own widget value (the editor shows the same value on the subgraph node).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import WorkflowError
from .node_defs import NodeClass

logger = logging.getLogger(__name__)

Registry = Mapping[str, NodeClass]

# litegraph's LGraphEventMode values that graphToPrompt treats specially.
MODE_NEVER = 2  # "muted" in the UI
MODE_BYPASS = 4
# The ids litegraph gives a subgraph's own input and output nodes inside its definition.
SUBGRAPH_INPUT_ID = "-10"
SUBGRAPH_OUTPUT_ID = "-20"
# Frontend-only node types (isVirtualNode): drawn in the editor, never queued.
VIRTUAL_NODE_TYPES = frozenset({"Reroute", "PrimitiveNode", "Note", "MarkdownNote"})
# Input types the frontend draws a widget for (the node pack's own types get sockets only).
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
# Names the frontend gives seed widgets a control for even without control_after_generate.
_SEED_NAMES = ("seed", "noise_seed")


@dataclass
class _Link:
    id: int
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int
    type: Any = None


@dataclass
class _Input:
    name: str
    type: Any
    link: int | None


@dataclass
class _Scope:
    """One graph: the workflow itself, or one subgraph definition (shared by all its instances)."""

    key: str
    nodes: dict[str, dict[str, Any]]
    links: dict[int, _Link]
    definition: dict[str, Any] | None = None


@dataclass
class _Node:
    """A node as the frontend's ExecutableNodeDTO sees it: one per node per subgraph instance."""

    exec_id: str
    raw: dict[str, Any]
    scope: _Scope
    path: tuple[str, ...]  # ids of the subgraph instances around it, outermost first
    container: _Node | None  # the subgraph instance node it sits in
    class_type: str
    mode: int
    virtual: bool
    inputs: list[_Input]
    output_types: list[Any]
    subgraph: _Scope | None = None  # set on subgraph instance nodes
    known: bool = False  # its class is in the registry


@dataclass(frozen=True)
class _Widget:
    """One widget slot of a node, in the order of ``widgets_values``."""

    name: str
    default: Any
    in_prompt: bool  # False for control_after_generate / control_filter_list


def editor_to_api(
    workflow: Mapping[str, Any], registry: Registry, *, display_names: Mapping[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Return the API-format prompt the ComfyUI editor would queue for ``workflow``.

    ``registry`` maps class types to node classes (their ``INPUT_TYPES()`` / ``RETURN_TYPES`` give
    the widgets and sockets). Each node gets ``_meta.title`` as the editor sends it: the node's own
    title, else ``display_names[class_type]``, else the class type. Raises WorkflowError for a
    malformed file, a node type that is not in ``registry`` (naming the node id and type), or a
    loop of reroutes / bypassed nodes.
    """
    if not isinstance(workflow, Mapping) or not isinstance(workflow.get("nodes"), list):
        raise WorkflowError("An editor-format workflow needs a 'nodes' list")
    return _Converter(workflow, registry, display_names or {}).run()


def _is_combo(type_: Any) -> bool:
    return isinstance(type_, (list, tuple)) or type_ == "COMBO"


def _type_and_options(info: Any) -> tuple[Any, dict[str, Any]]:
    if isinstance(info, (list, tuple)):
        type_ = info[0] if info else None
        options = info[1] if len(info) > 1 and isinstance(info[1], Mapping) else {}
        return type_, dict(options)
    return info, {}


def _is_widget(type_: Any, options: Mapping[str, Any]) -> bool:
    if options.get("forceInput"):
        return False
    return _is_combo(type_) or (isinstance(type_, str) and type_ in WIDGET_TYPES)


def _widget_default(type_: Any, options: Mapping[str, Any]) -> Any:
    """The value a freshly made widget holds (used when ``widgets_values`` is short)."""
    default = options.get("default")
    if _is_combo(type_):
        if default:
            return default
        choices = type_ if isinstance(type_, (list, tuple)) else options.get("options") or []
        return choices[0] if choices else None
    if default is not None:
        return default
    return {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": ""}.get(type_)


def _control_widgets(name: str, type_: Any, options: Mapping[str, Any]) -> int:
    """How many frontend-only widgets follow this one (useIntWidget / useComboWidget)."""
    control = options.get("control_after_generate")
    if type_ == "INT":
        if control is None:
            control = name in _SEED_NAMES
        return 1 if control else 0
    if _is_combo(type_) and control:
        return 2  # control_after_generate and control_filter_list
    return 0


def is_valid_connection(type_a: Any, type_b: Any) -> bool:
    """litegraph's ``LiteGraph.isValidConnection``: wildcards, equal types, comma-separated unions."""
    if type_a in ("", "*"):
        type_a = 0
    if type_b in ("", "*"):
        type_b = 0
    if not type_a or not type_b or type_a == type_b:
        return True
    a, b = str(type_a).lower(), str(type_b).lower()
    if "," not in a and "," not in b:
        return a == b
    return any(is_valid_connection(x, y) for x in a.split(",") for y in b.split(","))


def _slot_index(value: Any, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WorkflowError(f"{what}: slot index {value!r} is not a number") from None


def _parse_links(raw_links: Any, where: str) -> dict[int, _Link]:
    """Links as schema 0.4 arrays ``[id, origin, slot, target, slot, type]`` or schema 1 objects."""
    if raw_links is None:
        return {}
    if isinstance(raw_links, Mapping):  # very old litegraph files keep links in an object by id
        raw_links = list(raw_links.values())
    if not isinstance(raw_links, list):
        raise WorkflowError(f"{where}: 'links' must be a list, got {type(raw_links).__name__}")
    links: dict[int, _Link] = {}
    for item in raw_links:
        if item is None:
            continue
        if isinstance(item, list) and len(item) >= 5:
            link_id, origin, origin_slot, target, target_slot = item[:5]
            link_type = item[5] if len(item) > 5 else None
        elif isinstance(item, Mapping) and {"id", "origin_id", "target_id"} <= set(item):
            link_id, origin, target = item["id"], item["origin_id"], item["target_id"]
            origin_slot, target_slot = item.get("origin_slot", 0), item.get("target_slot", 0)
            link_type = item.get("type")
        else:
            raise WorkflowError(
                f"{where}: bad link {item!r}: expected [id, origin_id, origin_slot, target_id, "
                "target_slot, type] or an object with id / origin_id / target_id"
            )
        what = f"{where}: link {link_id}"
        lid = _slot_index(link_id, what)
        links[lid] = _Link(lid, str(origin), _slot_index(origin_slot, what), str(target),
                           _slot_index(target_slot, what), link_type)
    return links


def _parse_nodes(raw_nodes: Any, where: str) -> dict[str, dict[str, Any]]:
    if not isinstance(raw_nodes, list):
        raise WorkflowError(f"{where}: 'nodes' must be a list")
    nodes: dict[str, dict[str, Any]] = {}
    for index, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping) or "id" not in raw or not isinstance(raw.get("type"), str):
            raise WorkflowError(f"{where}: nodes[{index}] needs an 'id' and a 'type'")
        nodes[str(raw["id"])] = dict(raw)
    # The editor lists nodes in its execution order ("order"); follow it for a readable prompt.
    ordered = sorted(enumerate(nodes.items()), key=lambda e: (_order_of(e[1][1]), e[0]))
    return {nid: raw for _, (nid, raw) in ordered}


def _order_of(raw: Mapping[str, Any]) -> float:
    order = raw.get("order")
    return float(order) if isinstance(order, (int, float)) and not isinstance(order, bool) else 0.0


def _link_id(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _Converter:
    def __init__(self, workflow: Mapping[str, Any], registry: Registry, display_names: Mapping[str, str]):
        self.registry = registry
        self.display_names = display_names
        self.definitions: dict[str, dict[str, Any]] = {}
        self._collect_definitions(workflow, depth=0)
        self.root = _Scope("root", _parse_nodes(workflow.get("nodes"), "workflow"),
                           _parse_links(workflow.get("links"), "workflow"))
        self.scopes: dict[str, _Scope] = {}
        self.nodes: dict[str, _Node] = {}
        self._specs: dict[str, tuple[list[tuple[str, Any, dict[str, Any]]], list[Any]]] = {}
        # (scope key, node id) -> {widget name: value}: PrimitiveNode values pushed into widgets.
        self.primitive_values: dict[tuple[str, str], dict[str, Any]] = {}

    # -- reading the file ----------------------------------------------------------------------

    def _collect_definitions(self, graph: Mapping[str, Any], depth: int) -> None:
        if depth > 32:
            raise WorkflowError("subgraph definitions are nested too deeply")
        definitions = graph.get("definitions")
        subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
        for sub in subgraphs or []:
            if isinstance(sub, Mapping) and isinstance(sub.get("id"), str):
                self.definitions.setdefault(sub["id"], dict(sub))
                self._collect_definitions(sub, depth + 1)

    def _scope_of(self, definition_id: str) -> _Scope:
        scope = self.scopes.get(definition_id)
        if scope is None:
            definition = self.definitions[definition_id]
            where = f"subgraph {definition.get('name') or definition_id}"
            scope = _Scope(definition_id, _parse_nodes(definition.get("nodes") or [], where),
                           _parse_links(definition.get("links"), where), definition)
            self.scopes[definition_id] = scope
        return scope

    def _spec(self, class_type: str) -> tuple[list[tuple[str, Any, dict[str, Any]]], list[Any]]:
        """``([(input name, type, options)] in definition order, RETURN_TYPES)`` of a class."""
        cached = self._specs.get(class_type)
        if cached is None:
            class_def = self.registry[class_type]
            try:
                input_types = class_def.INPUT_TYPES()
            except Exception as ex:  # a bug of the node class itself, reported with its name
                raise WorkflowError(f"{class_type}.INPUT_TYPES() failed: {ex}") from ex
            entries = []
            for section in ("required", "optional"):
                for name, info in (input_types.get(section) or {}).items():
                    type_, options = _type_and_options(info)
                    entries.append((str(name), type_, options))
            cached = (entries, list(getattr(class_def, "RETURN_TYPES", ()) or ()))
            self._specs[class_type] = cached
        return cached

    def _make_node(self, raw: dict[str, Any], scope: _Scope, path: tuple[str, ...],
                   container: _Node | None) -> _Node:
        node_id = str(raw["id"])
        class_type = raw["type"]
        mode = raw.get("mode")
        mode = mode if isinstance(mode, int) and not isinstance(mode, bool) else 0
        saved_inputs = [i for i in raw.get("inputs") or [] if isinstance(i, Mapping)]
        saved_by_name = {str(i.get("name")): i for i in saved_inputs}
        node = _Node(":".join((*path, node_id)), raw, scope, path, container, class_type, mode,
                     class_type in VIRTUAL_NODE_TYPES, [], [])
        if class_type in self.definitions:  # a subgraph instance: its sockets are the subgraph's IO
            definition = self.definitions[class_type]
            node.virtual = True  # SubgraphNode.isVirtualNode: its inner nodes are queued instead
            node.subgraph = self._scope_of(class_type)
            for index, io in enumerate(definition.get("inputs") or []):
                name = str(io.get("name"))
                saved = saved_by_name.get(name) or (saved_inputs[index] if index < len(saved_inputs) else {})
                node.inputs.append(_Input(name, io.get("type"), _link_id(saved.get("link"))))
            node.output_types = [io.get("type") for io in definition.get("outputs") or []]
        elif class_type in self.registry and not node.virtual:
            # The frontend makes the sockets of non-widget inputs first, then one socket per widget
            # (litegraphService #addInputs); saved inputs are matched to them by name.
            node.known = True
            entries, return_types = self._spec(class_type)
            sockets = [(n, t) for n, t, o in entries if not _is_widget(t, o)]
            sockets += [(n, "COMBO" if _is_combo(t) else t) for n, t, o in entries if _is_widget(t, o)]
            node.inputs = [_Input(n, t, _link_id(saved_by_name.get(n, {}).get("link"))) for n, t in sockets]
            node.output_types = return_types
        else:  # virtual or unknown: the saved sockets are all there is
            node.inputs = [_Input(str(i.get("name")), i.get("type"), _link_id(i.get("link")))
                           for i in saved_inputs]
            node.output_types = [o.get("type") for o in raw.get("outputs") or [] if isinstance(o, Mapping)]
        return node

    def _expand(self, scope: _Scope, path: tuple[str, ...], container: _Node | None,
                stack: tuple[str, ...]) -> None:
        for raw in scope.nodes.values():
            node = self._make_node(raw, scope, path, container)
            self.nodes[node.exec_id] = node
            if node.subgraph is not None and node.mode not in (MODE_NEVER, MODE_BYPASS):
                if node.subgraph.key in stack:
                    raise WorkflowError(f"node {node.exec_id}: subgraph {node.class_type} contains itself")
                self._expand(node.subgraph, (*path, str(raw["id"])), node, (*stack, node.subgraph.key))

    # -- PrimitiveNode ------------------------------------------------------------------------

    def _apply_primitives(self, scope: _Scope) -> None:
        """PrimitiveNode.applyToGraph: copy its value into every widget its output feeds."""
        for node_id, raw in scope.nodes.items():
            if raw.get("type") != "PrimitiveNode":
                continue
            values = raw.get("widgets_values")
            if not isinstance(values, list) or not values:
                continue  # not connected to anything when it was saved: no widget, no value
            for target_id, widget_name in self._primitive_targets(scope, node_id, set()):
                self.primitive_values.setdefault((scope.key, target_id), {})[widget_name] = values[0]

    def _primitive_targets(self, scope: _Scope, origin_id: str, seen: set[str]) -> list[tuple[str, str]]:
        seen.add(origin_id)
        found: list[tuple[str, str]] = []
        for link in scope.links.values():
            if link.origin_id != origin_id or link.origin_slot != 0:
                continue
            target = scope.nodes.get(link.target_id)
            if target is None:
                continue
            if target.get("type") == "Reroute":
                if link.target_id not in seen:
                    found += self._primitive_targets(scope, link.target_id, seen)
                continue
            for saved in target.get("inputs") or []:
                if isinstance(saved, Mapping) and _link_id(saved.get("link")) == link.id:
                    widget = saved.get("widget")
                    name = widget.get("name") if isinstance(widget, Mapping) else saved.get("name")
                    if name:
                        found.append((link.target_id, str(name)))
        return found

    # -- widgets ------------------------------------------------------------------------------

    def _widgets(self, node: _Node) -> list[_Widget]:
        widgets: list[_Widget] = []
        for name, type_, options in self._spec(node.class_type)[0]:
            if not _is_widget(type_, options):
                continue
            widgets.append(_Widget(name, _widget_default(type_, options), True))
            for extra in range(_control_widgets(name, type_, options)):
                control = "control_after_generate" if extra == 0 else "control_filter_list"
                widgets.append(_Widget(control, None, False))
        return widgets

    def _forced_input_slots(self, node: _Node) -> list[bool]:
        """migrateWidgetsValues: which saved values belong to forceInput inputs (pre-1.16 files)."""
        slots: list[bool] = []
        for _name, type_, options in self._spec(node.class_type)[0]:
            if _is_widget(type_, options) or options.get("forceInput"):
                slots.append(bool(options.get("forceInput")))
                if options.get("control_after_generate"):
                    slots.append(False)
        return slots

    def _widget_values(self, node: _Node) -> dict[str, Any]:
        widgets = self._widgets(node)
        saved = node.raw.get("widgets_values")
        values: dict[str, Any] = {}
        if isinstance(saved, Mapping):
            for w in widgets:
                if w.in_prompt:
                    values[w.name] = saved.get(w.name, w.default)
        else:
            saved = list(saved) if isinstance(saved, list) else []
            forced = self._forced_input_slots(node)
            if any(forced) and len(forced) == len(saved):
                saved = [v for v, f in zip(saved, forced, strict=True) if not f]
            if len(saved) > len(widgets):
                logger.debug("node %s (%s): %d widget values for %d widgets; extra ones ignored",
                             node.exec_id, node.class_type, len(saved), len(widgets))
            for index, w in enumerate(widgets):
                if w.in_prompt:
                    values[w.name] = saved[index] if index < len(saved) else w.default
        for name, value in self.primitive_values.get((node.scope.key, str(node.raw["id"])), {}).items():
            if name in values:
                values[name] = value
        return values

    # -- following links (ExecutableNodeDTO.resolveInput / resolveOutput) ---------------------

    def _resolve_input(self, node: _Node, slot: int, visited: set[tuple[str, str, int]],
                       type_: Any = None) -> tuple[str, int] | None:
        self._visit(visited, node, "input", slot)
        if slot >= len(node.inputs):
            return None
        socket = node.inputs[slot]
        if socket.link is None:
            return None
        link = node.scope.links.get(socket.link)
        if link is None:
            logger.warning("node %s (%s): input %r refers to link %s, which the workflow does not have; "
                           "treating it as unconnected", node.exec_id, node.class_type, socket.name,
                           socket.link)
            return None
        if link.origin_id == SUBGRAPH_INPUT_ID and node.container is not None:
            # Out of the subgraph: continue from the instance node's matching input.
            return self._resolve_input(node.container, link.origin_slot, visited)
        origin = self.nodes.get(":".join((*node.path, link.origin_id)))
        if origin is None:
            logger.warning("node %s (%s): input %r is linked to node %s, which the workflow does not have",
                           node.exec_id, node.class_type, socket.name, link.origin_id)
            return None
        return self._resolve_output(origin, link.origin_slot, socket.type if type_ is None else type_,
                                    visited)

    def _resolve_output(self, node: _Node, slot: int, type_: Any,
                        visited: set[tuple[str, str, int]]) -> tuple[str, int] | None:
        self._visit(visited, node, "output", slot)
        if node.mode == MODE_NEVER:
            return None  # muted: whatever it fed gets no input (a muted subgraph is not entered)
        if node.mode == MODE_BYPASS:
            index = self._bypass_input(node, slot, type_)
            if index is None:
                logger.debug("bypassed node %s (%s) has no input for output %d of type %s",
                             node.exec_id, node.class_type, slot, type_)
                return None
            return self._resolve_input(node, index, visited)
        if node.subgraph is not None:
            inner_path = (*node.path, str(node.raw["id"]))
            for link in node.subgraph.links.values():
                if link.target_id == SUBGRAPH_OUTPUT_ID and link.target_slot == slot:
                    if link.origin_id == SUBGRAPH_INPUT_ID:  # an input wired straight to an output
                        return self._resolve_input(node, link.origin_slot, visited)
                    inner = self.nodes.get(":".join((*inner_path, link.origin_id)))
                    return None if inner is None else self._resolve_output(inner, link.origin_slot, type_,
                                                                           visited)
            return None
        if node.virtual:
            # Reroutes and other virtual nodes pass input N through to output N.
            return self._resolve_input(node, slot, visited, type_) if slot < len(node.inputs) else None
        return (node.exec_id, slot)

    @staticmethod
    def _bypass_input(node: _Node, slot: int, type_: Any) -> int | None:
        """ExecutableNodeDTO #getBypassSlotIndex: which input a bypassed node's output passes on."""
        inputs = node.inputs
        if not inputs:
            return None
        if type_ in ("*", "") or type_ is None:
            return slot if len(inputs) > slot else 0
        output_type = node.output_types[slot] if slot < len(node.output_types) else None
        if slot < len(inputs):
            opposite = inputs[slot].type
            if is_valid_connection(opposite, output_type) and is_valid_connection(opposite, type_):
                return slot
        for index, socket in enumerate(inputs):
            if socket.type == type_:
                return index
        for index, socket in enumerate(inputs):
            if is_valid_connection(socket.type, output_type) and is_valid_connection(socket.type, type_):
                return index
        return None

    @staticmethod
    def _visit(visited: set[tuple[str, str, int]], node: _Node, side: str, slot: int) -> None:
        key = (node.exec_id, side, slot)
        if key in visited:
            raise WorkflowError(
                f"node {node.exec_id} ({node.class_type}): circular reference while following the links "
                f"through {side} {slot} (a loop of reroutes or bypassed nodes)"
            )
        visited.add(key)

    # -- the prompt ---------------------------------------------------------------------------

    def _unknown_type_error(self, node: _Node) -> WorkflowError:
        class_type = node.class_type
        if class_type.startswith(("workflow>", "workflow/")):
            hint = "it is a legacy group node; ungroup it (or convert it to a subgraph) in the editor"
        else:
            hint = "it is not a node of this pack (install the pack that provides it, or remove the node)"
        return WorkflowError(f"node {node.exec_id}: unknown node type {class_type!r}: {hint}")

    def run(self) -> dict[str, dict[str, Any]]:
        self._expand(self.root, (), None, ())
        for scope in (self.root, *self.scopes.values()):
            self._apply_primitives(scope)

        output: dict[str, dict[str, Any]] = {}
        for node in self.nodes.values():
            if node.virtual or node.mode in (MODE_NEVER, MODE_BYPASS):
                continue
            if not node.known:
                raise self._unknown_type_error(node)
            inputs: dict[str, Any] = {}
            for name, value in self._widget_values(node).items():
                # A list value would read as a link: the frontend wraps it as ComfyUI expects.
                inputs[name] = {"__value__": value} if isinstance(value, list) else value
            for index, socket in enumerate(node.inputs):
                resolved = self._resolve_input(node, index, set())
                if resolved is not None:
                    inputs[socket.name] = [resolved[0], resolved[1]]
            title = node.raw.get("title") or self.display_names.get(node.class_type) or node.class_type
            output[node.exec_id] = {"inputs": inputs, "class_type": node.class_type,
                                    "_meta": {"title": title}}

        # Inputs linked to nodes that are not in the prompt (muted ones) go, as in graphToPrompt.
        for entry in output.values():
            for name, value in list(entry["inputs"].items()):
                if isinstance(value, list) and len(value) == 2 and value[0] not in output:
                    del entry["inputs"][name]
        return output
