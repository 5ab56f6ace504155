"""The executor: validate, order, run with the cache, emit ComfyUI's events.

It runs ComfyUI-style node classes (``INPUT_TYPES`` / ``RETURN_TYPES`` / ``FUNCTION`` /
``OUTPUT_NODE`` / ``IS_CHANGED`` / ``VALIDATE_INPUTS``) from a registry ``{class_type: class}``
and knows nothing about what the nodes do. One prompt runs at a time per Executor; the output
cache and node instances live on the Executor, so running the same or a similar workflow again
re-runs only the nodes whose signature changed.

Deliberately not supported (ComfyUI features no node of this pack uses): lazy inputs, node
expansion, ``INPUT_IS_LIST`` / ``OUTPUT_IS_LIST`` batching and async node functions.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .cache import DEFAULT_CACHE_PROMPTS, CacheEntry, OutputCache, node_signatures
from .errors import CycleError, ExecutionInterrupted, WorkflowError, full_type_name
from .events import (
    EXECUTED,
    EXECUTING,
    EXECUTION_CACHED,
    EXECUTION_ERROR,
    EXECUTION_INTERRUPTED,
    EXECUTION_START,
    EXECUTION_SUCCESS,
    STATUS_EVENTS,
    EventBus,
    timestamp_ms,
)
from .interrupt import NodeContext, ProgressHookFactory, running
from .node_defs import NodeClass, function_params, get_input_info, hidden_values
from .order import ancestors, topological_order
from .validate import format_validation_error, validate_prompt
from .workflow import is_link, normalize_prompt

logger = logging.getLogger(__name__)

_OOM_TIPS = (
    "This error means you ran out of memory on your GPU.\n\nTIPS: If the workflow worked before you "
    "might have accidentally set the batch_size to a large number."
)


@dataclass
class ExecutionResult:
    """What one ``execute()`` call did.

    ``status`` is ``"success"``, ``"error"`` (a node raised, or the run was interrupted:
    ``interrupted`` is then True) or ``"invalid"`` (validation failed, nothing ran).
    ``error`` is the ``execution_error`` / ``execution_interrupted`` payload, or for ``invalid``
    ComfyUI's top-level validation error with the per-node details in ``node_errors``.
    ``outputs`` maps node id to what the node shows (its ``ui`` dict), for executed and cached nodes.
    ``cached`` is ComfyUI's ``execution_cached`` list (cache hits at the start), ``visited`` the run
    order (executed nodes plus cached nodes that were served), ``executed`` what actually ran;
    ``considered`` counts the nodes the run had to look at (all ancestors of the outputs).
    ``timings`` is seconds spent inside each executed node's FUNCTION; ``overhead_s`` is all the
    rest of ``wall_s`` (validation, ordering, signatures, events, bookkeeping).
    """

    prompt_id: str
    status: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    node_errors: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    visited: list[str] = field(default_factory=list)
    considered: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    overhead_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The input a failed node named (its exception's ``input_name``): the message then starts with it.
    error_input: str | None = None

    @property
    def ok(self) -> bool:
        """True when every node ran (or came from the cache) without error."""
        return self.status == "success"

    def overhead_per_node_s(self) -> float:
        """Executor overhead per node considered (the benchmark's ≤ 1 ms per node figure)."""
        return self.overhead_s / max(1, self.considered)

    def error_lines(self, verbose: bool = False) -> list[str]:
        """Human-readable lines describing the failure (empty on success).

        An error on a named input reads as validation errors do, the message starting with the
        input's name; other exceptions keep their class's short name. ``verbose`` adds the full
        class path (``package.module.Class``) to both.
        """
        if self.status == "invalid":
            return format_validation_error(self.error, self.node_errors)
        if self.error is None:
            return []
        node = f"node {self.error.get('node_id')} ({self.error.get('node_type')})"
        if self.interrupted:
            return [f"{node}: interrupted"]
        message = str(self.error.get("exception_message")).strip()
        kind = str(self.error.get("exception_type") or "")
        if verbose:
            return [f"{node}: {message} [{kind}]" if self.error_input else f"{node}: {kind}: {message}"]
        if self.error_input:
            return [f"{node}: {message}"]
        return [f"{node}: {kind.rpartition('.')[2]}: {message}"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (``loragraph run --json`` adds the file name)."""
        data: dict[str, Any] = {"status": self.status, "outputs": self.outputs, "error": self.error}
        if self.node_errors:
            data["node_errors"] = self.node_errors
        data.update(
            prompt_id=self.prompt_id,
            executed=self.executed,
            cached=self.cached,
            timings=self.timings,
            wall_s=self.wall_s,
            overhead_s=self.overhead_s,
        )
        return data


def format_value(x: Any) -> Any:
    """ComfyUI's rendering of an input value in ``current_inputs``: scalars as is, else str()."""
    if x is None or isinstance(x, (int, float, bool, str)):
        return x
    return str(x)


class _NodeFailed(Exception):
    """Internal: carries a node failure's payload from the node loop to ``execute``."""

    def __init__(self, event: str, payload: dict[str, Any], input_name: str | None = None) -> None:
        super().__init__(event)
        self.event = event
        self.payload = payload
        self.input_name = input_name


class Executor:
    """Runs API-format prompts against a node registry, with a cache that outlives each run.

    ``progress_hook_factory(prompt_id, node_id, class_type)`` may return a callable
    ``hook(value, max)`` that gets every progress report of that node (and ``hook.close()`` when
    the node ends); events go to ``self.bus`` regardless.
    """

    def __init__(
        self,
        registry: Mapping[str, NodeClass],
        progress_hook_factory: ProgressHookFactory | None = None,
        *,
        cache_prompts: int = DEFAULT_CACHE_PROMPTS,
    ) -> None:
        self.registry = registry
        self.progress_hook_factory = progress_hook_factory
        self.bus = EventBus()
        self.cache = OutputCache(cache_prompts)
        self._interrupt = threading.Event()
        self._run_lock = threading.Lock()
        self._objects: dict[tuple[str, str], Any] = {}
        self._params: dict[NodeClass, tuple[list[str], bool]] = {}

    def interrupt(self) -> None:
        """Ask the running prompt to stop at the next node boundary or progress report.

        Safe to call from another thread. A flag left over from before a prompt starts is cleared
        when it starts (ComfyUI does the same), so a stale interrupt cannot kill the next prompt.
        """
        self._interrupt.set()

    def clear_cache(self) -> None:
        """Forget cached outputs and node instances; the next run executes every node."""
        self.cache.clear()
        self._objects.clear()

    def execute(
        self,
        prompt: Mapping[str, Any],
        prompt_id: str | None = None,
        extra_data: Mapping[str, Any] | None = None,
        *,
        execute_outputs: Iterable[str] | None = None,
        allow_partial: bool = False,
    ) -> ExecutionResult:
        """Validate and run ``prompt`` (API format); never raises for workflow or node errors.

        ``extra_data`` is ComfyUI's: ``{"extra_pnginfo": {"workflow": <editor json>}}`` feeds the
        EXTRA_PNGINFO hidden input. ``execute_outputs`` limits the run to those output nodes.
        Any validation error makes the prompt ``invalid`` and nothing runs, unless
        ``allow_partial`` asks for ComfyUI's server behaviour: run the outputs that validated.
        """
        with self._run_lock:
            return self._execute(prompt, prompt_id or str(uuid.uuid4()), dict(extra_data or {}),
                                 execute_outputs, allow_partial)

    # -- one run -------------------------------------------------------------------------------

    def _execute(
        self,
        raw_prompt: Mapping[str, Any],
        prompt_id: str,
        extra_data: dict[str, Any],
        execute_outputs: Iterable[str] | None,
        allow_partial: bool,
    ) -> ExecutionResult:
        t_start = time.perf_counter()
        self._interrupt.clear()
        result = ExecutionResult(prompt_id=prompt_id, status="invalid")

        input_types: dict[str, dict[str, Any]] = {}
        prompt: dict[str, dict[str, Any]] = {}
        try:
            prompt = normalize_prompt(raw_prompt)
            ok, error, good_outputs, node_errors = validate_prompt(
                prompt, self.registry, execute_outputs, input_types=input_types
            )
        except WorkflowError as ex:
            ok, error, good_outputs, node_errors = (
                False, {"type": "invalid_prompt", "message": str(ex), "details": "", "extra_info": {}},
                [], {})
        t_validated = time.perf_counter()
        result.phases_s["validate"] = t_validated - t_start
        if ok and node_errors and not allow_partial:
            ok = False
            error = {
                "type": "prompt_outputs_failed_validation",
                "message": "Prompt outputs failed validation",
                "details": "\n".join(
                    f"{e['message']}: {e['details']}"
                    for entry in node_errors.values() for e in entry["errors"]
                ),
                "extra_info": {},
            }
        result.node_errors = node_errors
        if not ok:
            result.error = error
            for line in format_validation_error(error, node_errors, prompt):
                logger.error("invalid workflow: %s", line)
            return self._finish(result, t_start)

        self._emit(result, EXECUTION_START, {"prompt_id": prompt_id})
        signatures: dict[str, str | None] = {}
        try:
            try:
                needed = topological_order(prompt, ancestors(prompt, good_outputs))
            except CycleError as ex:  # validation reports cycles first; this is a safety net
                raise _NodeFailed(EXECUTION_ERROR, self._error_payload(
                    prompt_id, prompt, ex.nodes[0], ex, None, [], [])) from ex
            result.considered = len(needed)
            signatures = node_signatures(prompt, needed, self.registry, input_types.__getitem__)
            hits = {n: e for n in needed if (e := self.cache.get(signatures[n])) is not None}
            result.cached = [n for n in prompt if n in hits]
            self._emit(result, EXECUTION_CACHED, {"nodes": list(result.cached), "prompt_id": prompt_id})
            reachable = ancestors(prompt, good_outputs, stop=hits.__contains__)
            run_order = [n for n in needed if n in reachable]
            result.visited = run_order
            result.phases_s["plan"] = time.perf_counter() - t_validated

            values: dict[str, tuple[Any, ...]] = {}
            for node_id in run_order:
                entry = hits.get(node_id) or self.cache.get(signatures[node_id])
                if entry is not None:
                    self._serve_cached(result, prompt_id, node_id, entry, values)
                    continue
                entry = self._run_node(result, prompt, prompt_id, node_id, input_types, extra_data, values)
                self.cache.set(signatures[node_id], entry)
            self._emit(result, EXECUTION_SUCCESS, {"prompt_id": prompt_id})
            result.status = "success"
        except _NodeFailed as failed:
            result.status = "error"
            result.interrupted = failed.event == EXECUTION_INTERRUPTED
            result.error_input = failed.input_name
            result.error = self._emit(result, failed.event, failed.payload)
        finally:
            self.bus.emit(EXECUTING, {"node": None, "prompt_id": prompt_id})
            self.cache.end_prompt(signatures.values())
            self._forget_objects(prompt)
        return self._finish(result, t_start)

    def _serve_cached(self, result: ExecutionResult, prompt_id: str, node_id: str, entry: CacheEntry,
                      values: dict[str, tuple[Any, ...]]) -> None:
        values[node_id] = entry.outputs
        if entry.ui is not None:
            result.outputs[node_id] = entry.ui
        self.bus.emit(EXECUTED, {"node": node_id, "display_node": node_id, "output": entry.ui,
                                 "prompt_id": prompt_id})

    def _run_node(
        self,
        result: ExecutionResult,
        prompt: dict[str, dict[str, Any]],
        prompt_id: str,
        node_id: str,
        input_types: dict[str, dict[str, Any]],
        extra_data: dict[str, Any],
        values: dict[str, tuple[Any, ...]],
    ) -> CacheEntry:
        node = prompt[node_id]
        class_type = node["class_type"]
        class_def = self.registry[class_type]
        if self._interrupt.is_set():
            raise _NodeFailed(EXECUTION_INTERRUPTED,
                              self._interrupted_payload(prompt_id, node_id, class_type, result))
        self.bus.emit(EXECUTING, {"node": node_id, "display_node": node_id, "prompt_id": prompt_id})

        kwargs: dict[str, Any] | None = None
        try:
            kwargs = self._node_inputs(node_id, node, class_def, input_types[class_type], prompt, extra_data,
                                       values)
            obj = self._objects.get((node_id, class_type))
            if obj is None:
                obj = self._objects[(node_id, class_type)] = class_def()
            func = getattr(obj, class_def.FUNCTION)
            ctx = NodeContext(prompt_id, node_id, node_id, class_type, self.bus, self._interrupt,
                              self.progress_hook_factory)
            with running(ctx):
                started = time.perf_counter()
                try:
                    raw = func(**kwargs)
                finally:
                    result.timings[node_id] = time.perf_counter() - started
            outputs, ui = _split_result(raw, class_def)
        except ExecutionInterrupted:
            logger.info("Processing interrupted at node %s (%s)", node_id, class_type)
            raise _NodeFailed(EXECUTION_INTERRUPTED,
                              self._interrupted_payload(prompt_id, node_id, class_type, result)) from None
        except Exception as ex:
            logger.error("node %s (%s) failed: %s: %s", node_id, class_type, full_type_name(type(ex)), ex)
            logger.debug("node %s traceback", node_id, exc_info=True)
            hidden = set(input_types[class_type].get("hidden") or {})
            shown = {k: v for k, v in (kwargs or {}).items() if k not in hidden}
            input_name = getattr(ex, "input_name", None)
            raise _NodeFailed(EXECUTION_ERROR, self._error_payload(
                prompt_id, prompt, node_id, ex, shown, result.executed, list(values)),
                input_name if isinstance(input_name, str) else None) from None

        values[node_id] = outputs
        result.executed.append(node_id)
        if ui:
            result.outputs[node_id] = ui
            self.bus.emit(EXECUTED,
                          {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id})
        return CacheEntry(outputs, ui or None)

    def _node_inputs(
        self,
        node_id: str,
        node: dict[str, Any],
        class_def: NodeClass,
        input_types: dict[str, Any],
        prompt: dict[str, dict[str, Any]],
        extra_data: dict[str, Any],
        values: dict[str, tuple[Any, ...]],
    ) -> dict[str, Any]:
        params = self._params.get(class_def)
        if params is None:
            params = self._params[class_def] = function_params(getattr(class_def, class_def.FUNCTION))
        _, takes_kwargs = params
        kwargs: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            _, category, _ = get_input_info(input_types, name)
            if category is None and not takes_kwargs:
                continue  # undeclared input: ComfyUI ignores it too
            if is_link(value):
                src, index = value[0], int(value[1])
                produced = values.get(src)
                if produced is None or index >= len(produced):
                    raise RuntimeError(f"input '{name}': node {src} produced no output {index}")
                kwargs[name] = produced[index]
            else:
                kwargs[name] = value
        kwargs.update(hidden_values(input_types, node_id, prompt, extra_data))
        return kwargs

    # -- payloads and bookkeeping --------------------------------------------------------------

    def _emit(self, result: ExecutionResult, event: str, data: dict[str, Any]) -> dict[str, Any]:
        if event in STATUS_EVENTS:
            data = {**data, "timestamp": timestamp_ms()}
            result.messages.append((event, data))
        self.bus.emit(event, data)
        return data

    @staticmethod
    def _interrupted_payload(prompt_id: str, node_id: str, class_type: str,
                             result: ExecutionResult) -> dict[str, Any]:
        return {"prompt_id": prompt_id, "node_id": node_id, "node_type": class_type,
                "executed": list(result.executed)}

    @staticmethod
    def _error_payload(
        prompt_id: str,
        prompt: dict[str, dict[str, Any]],
        node_id: str,
        ex: BaseException,
        inputs: dict[str, Any] | None,
        executed: list[str],
        current_outputs: list[str],
    ) -> dict[str, Any]:
        message = str(ex)
        input_name = getattr(ex, "input_name", None)
        if input_name and f"'{input_name}'" not in message and f"{input_name}:" not in message:
            message = f"input '{input_name}': {message}"
        if type(ex).__name__ == "OutOfMemoryError":
            message = f"{message}\n{_OOM_TIPS}"
        return {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": prompt[node_id]["class_type"],
            "executed": list(executed),
            "exception_message": message,
            "exception_type": full_type_name(type(ex)),
            "traceback": traceback.format_tb(ex.__traceback__),
            "current_inputs": {k: [format_value(v)] for k, v in (inputs or {}).items()},
            "current_outputs": list(current_outputs),
        }

    def _forget_objects(self, prompt: Mapping[str, Any]) -> None:
        # Node instances of nodes no longer in the workflow go, like ComfyUI's objects cache.
        for key in [k for k in self._objects if k[0] not in prompt]:
            del self._objects[key]

    @staticmethod
    def _finish(result: ExecutionResult, t_start: float) -> ExecutionResult:
        result.wall_s = time.perf_counter() - t_start
        result.overhead_s = max(0.0, result.wall_s - sum(result.timings.values()))
        logger.info("Prompt %s %s in %.3f s (%d executed, %d cached)", result.prompt_id, result.status,
                    result.wall_s, len(result.executed), len(result.cached))
        return result


def _split_result(raw: Any, class_def: NodeClass) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split a node's return value into ``(outputs, ui)``; wrong shapes are errors of that node."""
    ui: dict[str, Any] = {}
    expected = len(getattr(class_def, "RETURN_TYPES", ()))
    if isinstance(raw, dict):
        if "expand" in raw:
            raise TypeError(f"{class_def.__name__} returned a node expansion, "
                            "which this executor does not support")
        ui = raw.get("ui") or {}
        if not isinstance(ui, dict):
            raise TypeError(f"{class_def.__name__} returned 'ui' of type {type(ui).__name__}, "
                            "expected a dict")
        if "result" not in raw:
            return (), ui  # a UI-only return (output nodes); consumers would see no outputs
        raw = raw["result"]
    if raw is None and expected == 0:
        return (), ui
    if not isinstance(raw, (tuple, list)):
        raise TypeError(
            f"{class_def.__name__}.{class_def.FUNCTION} returned {type(raw).__name__}, expected a tuple of "
            f"{expected} output(s) {tuple(getattr(class_def, 'RETURN_TYPES', ()))}"
        )
    if len(raw) != expected:
        raise TypeError(
            f"{class_def.__name__}.{class_def.FUNCTION} returned {len(raw)} value(s), RETURN_TYPES declares "
            f"{expected} {tuple(getattr(class_def, 'RETURN_TYPES', ()))}"
        )
    return tuple(raw), ui
