"""Reading workflows into ComfyUI's API ("prompt") format, and ``--set`` overrides.

Everything downstream (validation, ordering, caching, running) works on one shape only:
``{"<id>": {"class_type": str, "inputs": {name: value | ["<other id>", output_index]}}}``.
This module is the single door into that shape: API-format JSON, the editor's saved JSON
(converted by ``editor.editor_to_api``) and PNGs written by SaveImage (``png``) all come in here.
``load_workflow_document`` also returns the editor JSON when there is one, so that the run can
hand it to SaveImage (``extra_data={"extra_pnginfo": {"workflow": ...}}``) and the images it
writes open in the editor again, as ComfyUI's do.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple, Union

from ..base import limits
from ..base.suggest import did_you_mean
from .errors import WorkflowError
from .node_defs import NodeClass

logger = logging.getLogger(__name__)

Prompt = dict[str, dict[str, Any]]
Registry = Mapping[str, NodeClass]
WorkflowSource = Union[Mapping[str, Any], str, "os.PathLike[str]"]


def is_link(value: Any) -> bool:
    """True for an input value that points at another node's output (ComfyUI's ``is_link``).

    A link is a 2-list ``[node_id: str, output_index: int|float]``; any other list is a plain value
    only when wrapped as ``{"__value__": [...]}`` (ComfyUI's convention for list widgets).
    """
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def _is_node_dict(value: Any) -> bool:
    return isinstance(value, Mapping) and ("class_type" in value or "inputs" in value)


def is_editor_format(data: Mapping[str, Any]) -> bool:
    """True for the editor's saved JSON (schema 0.4 or 1): a ``nodes`` list.

    API-format documents map node ids to node objects, so a ``nodes`` key holding a list never
    occurs in one; schema 1 files may even leave ``links`` out when nothing is connected.
    """
    return isinstance(data.get("nodes"), list)


class LoadedWorkflow(NamedTuple):
    """A workflow ready to run: the API-format ``prompt`` and, when known, the editor's JSON.

    ``workflow`` is the editor-format document the prompt came from (an editor file, or the
    ``workflow`` chunk of a PNG), else None. Pass ``extra_data()`` to ``Executor.execute`` so that
    SaveImage embeds it in the PNGs it writes.
    """

    prompt: dict[str, dict[str, Any]]
    workflow: dict[str, Any] | None = None

    def extra_data(self) -> dict[str, Any]:
        """ComfyUI's ``extra_data`` for this workflow: ``{"extra_pnginfo": {"workflow": ...}}`` or ``{}``."""
        return {"extra_pnginfo": {"workflow": self.workflow}} if self.workflow is not None else {}


def normalize_prompt(prompt: Mapping[str, Any]) -> Prompt:
    """Return a fresh API-format prompt with string ids and a dict of inputs on every node.

    Copies node and input dicts (never the values themselves) so that validation may coerce
    values in place, as ComfyUI does, without touching the caller's dict. Links written with an
    integer node id (``[4, 0]``, as some tools emit) get a string id, because JSON object keys -
    the node ids - are always strings. Keys whose value is not a node dict (``"_meta"``, notes,
    version stamps) are skipped.
    """
    out: Prompt = {}
    for key, node in prompt.items():
        if not _is_node_dict(node):
            continue
        node_copy = dict(node)
        raw_inputs = node.get("inputs") or {}
        if not isinstance(raw_inputs, Mapping):
            raise WorkflowError(f"Node {key}: 'inputs' must be an object, got {type(raw_inputs).__name__}")
        inputs: dict[str, Any] = {}
        for name, value in raw_inputs.items():
            if (
                isinstance(value, list)
                and len(value) == 2
                and isinstance(value[0], int)
                and not isinstance(value[0], bool)
                and isinstance(value[1], int)
            ):
                value = [str(value[0]), value[1]]
            inputs[str(name)] = value
        node_copy["inputs"] = inputs
        out[str(key)] = node_copy
    return out


def to_api_format(
    data: Mapping[str, Any], registry: Registry | None = None, *,
    display_names: Mapping[str, str] | None = None
) -> Prompt:
    """Convert a parsed workflow document (API or editor format) to API format.

    The editor's saved format (``nodes`` / ``links`` / ``widgets_values``) is converted with the
    node definitions from ``registry`` as the editor itself would queue it (see ``editor_format.py``);
    ``display_names`` only fills the ``_meta.title`` of nodes that have no title of their own.
    """
    if not isinstance(data, Mapping):
        raise WorkflowError(f"A workflow must be a JSON object, got {type(data).__name__}")
    if is_editor_format(data):
        if registry is None:
            raise WorkflowError(
                "This is an editor-format workflow (it has 'nodes' and 'links'): converting it needs the "
                "node definitions (pass the node registry), or export it from ComfyUI with 'Export (API)'."
            )
        from .editor_format import editor_to_api

        prompt = normalize_prompt(editor_to_api(data, registry, display_names=display_names))
        if not prompt:
            raise WorkflowError(
                "This editor-format workflow has no node that would run (every node is muted, bypassed, "
                "a note, a reroute or a primitive)."
            )
        return prompt
    prompt = normalize_prompt(data)
    if not prompt:
        raise WorkflowError(
            "No nodes found: expected API format {\"<id>\": {\"class_type\": ..., \"inputs\": {...}}}"
        )
    return prompt


def _parse_json_text(text: str, origin: str) -> Any:
    try:
        return limits.loads(text)
    except json.JSONDecodeError as ex:
        raise WorkflowError(f"{origin}: invalid JSON at line {ex.lineno}, column {ex.colno}: "
                            f"{ex.msg}") from ex
    except limits.JSONLimitError as ex:
        raise WorkflowError(f"{origin}: invalid JSON: {ex}") from ex


def load_workflow(source: WorkflowSource, registry: Registry | None = None) -> Prompt:
    """Load a workflow from a dict, JSON text, a JSON file or a PNG and return it in API format.

    A string that starts with ``{`` (after whitespace) is taken as JSON text, any other string or
    path-like as a file name, so the CLI and the Python API can pass what they have. Editor-format
    documents and PNGs holding only a ``workflow`` chunk need ``registry`` to be converted.
    """
    return load_workflow_document(source, registry).prompt


def load_workflow_document(source: WorkflowSource, registry: Registry | None = None) -> LoadedWorkflow:
    """Like ``load_workflow``, but also return the editor JSON the prompt came from, if any.

    For a PNG (written by SaveImage here or in ComfyUI) the ``prompt`` chunk is run when present,
    else the ``workflow`` chunk is converted; the ``workflow`` chunk is returned either way so a
    re-run embeds it again. Use ``result.extra_data()`` as ``Executor.execute``'s ``extra_data``.
    """
    if isinstance(source, Mapping):
        return _document(source, registry, "workflow")
    if isinstance(source, str) and source.lstrip().startswith("{"):
        return _document(_parse_json_text(source, "workflow text"), registry, "workflow text")
    path = Path(source)
    if path.suffix.lower() == ".png":
        return _load_png(path, registry)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as ex:
        raise WorkflowError(f"{path}: no such workflow file") from ex
    except OSError as ex:
        raise WorkflowError(f"{path}: cannot read workflow file: {ex}") from ex
    from .png import PNG_SIGNATURE

    if raw.startswith(PNG_SIGNATURE):  # a PNG under another name
        return _load_png(path, registry)
    try:
        text = raw.decode("utf-8-sig")  # tolerate the BOM some Windows editors write
    except UnicodeDecodeError as ex:
        raise WorkflowError(f"{path}: cannot read workflow file: not UTF-8 JSON ({ex})") from ex
    return _document(_parse_json_text(text, str(path)), registry, str(path))


def _document(data: Any, registry: Registry | None, origin: str) -> LoadedWorkflow:
    try:
        prompt = to_api_format(data, registry)
    except WorkflowError as ex:
        if origin in ("workflow", "workflow text"):
            raise
        raise WorkflowError(f"{origin}: {ex}") from ex
    workflow = dict(data) if isinstance(data, Mapping) and is_editor_format(data) else None
    return LoadedWorkflow(prompt, workflow)


def _load_png(path: Path, registry: Registry | None) -> LoadedWorkflow:
    from .png import png_workflow_chunks

    prompt, workflow = png_workflow_chunks(path)
    if workflow is not None and not is_editor_format(workflow):
        logger.warning("%s: its 'workflow' chunk is not an editor-format workflow; not carried over", path)
        workflow = None
    try:
        if prompt is not None:
            return LoadedWorkflow(to_api_format(prompt), workflow)
        if workflow is None:
            raise WorkflowError("its 'workflow' chunk holds no editor-format workflow ('nodes' list)")
        return LoadedWorkflow(to_api_format(workflow, registry), workflow)
    except WorkflowError as ex:
        chunk = "prompt" if prompt is not None else "workflow"
        raise WorkflowError(f"{path} ({chunk!r} chunk): {ex}") from ex


def parse_override_value(text: str) -> Any:
    """Parse the VALUE of ``--set ID.INPUT=VALUE``: JSON when it parses, else the raw string.

    So ``seed=5`` is the int 5, ``enabled=false`` is False, ``prompt=a cat`` is ``"a cat"`` and
    ``prompt="5"`` is the string ``"5"``.
    """
    try:
        return limits.loads(text)
    except ValueError:  # JSONLimitError too: "NaN" stays a string, which a FLOAT input then refuses
        return text


def apply_overrides(prompt: Mapping[str, Any], overrides: Iterable[str],
                    registry: Registry | None = None) -> Prompt:
    """Return a copy of ``prompt`` with ``NODE_ID.INPUT=VALUE`` assignments applied.

    The node id is everything before the first dot (ComfyUI ids never contain dots; input names of
    dynamic inputs may). An unknown node id is an error naming the ids that exist; with a
    ``registry`` an input name the node class does not declare is an error too, because a typo
    would otherwise be silently ignored and the run would use the old value.
    """
    result = normalize_prompt(prompt)
    for item in overrides:
        target, sep, raw_value = item.partition("=")
        if not sep:
            raise WorkflowError(f"--set {item!r}: expected NODE_ID.INPUT=VALUE")
        node_id, dot, input_name = target.strip().partition(".")
        if not dot or not node_id or not input_name:
            raise WorkflowError(f"--set {item!r}: expected NODE_ID.INPUT=VALUE (e.g. 12.seed=5)")
        if node_id not in result:
            known = ", ".join(sorted(result, key=node_sort_key))
            raise WorkflowError(f"--set {item!r}: no node with id {node_id!r} (nodes: {known})")
        node = result[node_id]
        if registry is not None:
            class_def = registry.get(str(node.get("class_type")))
            if class_def is not None:
                declared = _declared_inputs(class_def)
                if input_name not in declared:
                    raise WorkflowError(
                        f"--set {item!r}: node {node_id} ({node.get('class_type')}) has no input "
                        f"{input_name!r}{did_you_mean(input_name, declared)} "
                        f"(inputs: {', '.join(declared) or 'none'})"
                    )
        value = parse_override_value(raw_value)
        logger.debug("override %s.%s = %r", node_id, input_name, value)
        node["inputs"][input_name] = value
    return result


def _declared_inputs(class_def: NodeClass) -> list[str]:
    spec = class_def.INPUT_TYPES()
    return [*spec.get("required", {}), *spec.get("optional", {})]


def node_sort_key(node_id: str) -> tuple[int, int, str]:
    """Sort key putting numeric ids in numeric order ("2" before "10"), then other ids by text.

    Used wherever the executor needs a deterministic order among nodes (run order, messages).
    """
    return (0, int(node_id), "") if node_id.isascii() and node_id.isdigit() else (1, 0, node_id)
