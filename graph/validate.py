"""Validation of a prompt before anything runs, with ComfyUI's error shapes.

ComfyUI's frontend and API clients switch on the error ``type`` strings and read ``details`` /
``extra_info``, so this follows ComfyUI's ``execution.validate_prompt`` / ``validate_inputs``
closely: the same types, messages, value coercion (``int("5")`` is fine, and the prompt is updated
with the coerced value) and the same return value ``(ok, error, good_outputs, node_errors)``.

Two differences, both about inputs ComfyUI would crash on: a link to a node id that does not exist
(or to an output index the node does not have) is a ``bad_linked_input`` error with its own message
instead of an ``exception_during_*`` with a KeyError, and the recursion over linked nodes runs on
an explicit stack so a long chain of nodes cannot hit Python's recursion limit.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from ..base.suggest import did_you_mean
from .errors import full_type_name
from .input_checks import custom_validation_errors, preflight, unknown_input_errors
from .node_defs import NodeClass, function_params, get_input_info, hidden_values
from .workflow import node_sort_key

logger = logging.getLogger(__name__)

Prompt = dict[str, dict[str, Any]]
Registry = Mapping[str, NodeClass]
# (valid, errors, node_id), ComfyUI's per-node validation result.
NodeResult = tuple[bool, list[dict[str, Any]], str]
ValidationResult = tuple[bool, "dict[str, Any] | None", list[str], dict[str, dict[str, Any]]]


def validate_node_input(received_type: Any, input_type: Any, strict: bool = False) -> bool:
    """Whether an output of ``received_type`` may feed an input of ``input_type``.

    ComfyUI's rule: equal types match; comma-separated unions match when they overlap (``strict``:
    when the received set is contained in the input set). ``"*"`` on either side matches anything,
    as ComfyUI's frontend allows for wildcard sockets.
    """
    # Deliberately `not !=`: custom types that override __ne__ (ComfyUI's AnyType) must match.
    if not received_type != input_type:  # noqa: SIM202
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    if received_type == "*" or input_type == "*":
        return True
    received = {t.strip() for t in received_type.split(",")}
    accepted = {t.strip() for t in input_type.split(",")}
    if strict:
        return received.issubset(accepted)
    return bool(received & accepted)


class _Validator:
    """One validation pass over one prompt; holds ComfyUI's ``validated`` memo."""

    def __init__(self, prompt: Prompt, registry: Registry, input_types: dict[str, dict[str, Any]]) -> None:
        self.prompt = prompt
        self.registry = registry
        self.input_types = input_types
        self.validated: dict[str, NodeResult] = {}
        # What each node's PREFLIGHT returned (input_checks.py): stand-ins for its outputs, or None.
        self.stand_ins: dict[str, Any] = {}

    def class_inputs(self, class_type: str) -> dict[str, Any]:
        # One INPUT_TYPES() call per class per pass: combos listing files stay live for each run
        # without re-listing a folder once per node.
        if class_type not in self.input_types:
            self.input_types[class_type] = self.registry[class_type].INPUT_TYPES()
        return self.input_types[class_type]

    def run(self, unique_id: str) -> NodeResult:
        """Validate ``unique_id`` and its linked ancestors; raises what the node itself raised.

        The per-node generators yield the id of a linked node and get back its result (or the
        exception its validation raised, thrown in at the ``yield``), which mirrors ComfyUI's
        ``await validate_inputs(...)`` recursion without using the Python stack.
        """
        if unique_id in self.validated:
            return self.validated[unique_id]
        stack: list[tuple[str, Generator[str, NodeResult, NodeResult]]] = [
            (unique_id, self._validate_inputs(unique_id))
        ]
        on_stack = {unique_id}
        send: Any = None
        throw: BaseException | None = None
        while True:
            node_id, gen = stack[-1]
            try:
                if throw is not None:
                    exc, throw = throw, None
                    request = gen.throw(exc)
                else:
                    request = gen.send(send)
            except StopIteration as stop:
                stack.pop()
                on_stack.discard(node_id)
                if not stack:
                    return stop.value
                send = stop.value
                continue
            except Exception as ex:
                stack.pop()
                on_stack.discard(node_id)
                if not stack:
                    raise
                throw = ex
                continue
            if request in self.validated:
                send = self.validated[request]
                continue
            if request in on_stack:
                send = self._mark_cycle([n for n, _ in stack], request)
                continue
            stack.append((request, self._validate_inputs(request)))
            on_stack.add(request)
            send = None

    def _mark_cycle(self, visiting: list[str], unique_id: str) -> NodeResult:
        cycle_path_nodes = [*visiting[visiting.index(unique_id):], unique_id]
        cycle_nodes = list(dict.fromkeys(cycle_path_nodes))
        cycle_path = " -> ".join(f"{n} ({self.prompt[n]['class_type']})" for n in cycle_path_nodes)
        for node_id in cycle_nodes:
            self.validated[node_id] = (
                False,
                [
                    {
                        "type": "dependency_cycle",
                        "message": "Dependency cycle detected",
                        "details": cycle_path,
                        "extra_info": {"node_id": node_id, "cycle_nodes": cycle_nodes},
                    }
                ],
                node_id,
            )
        return self.validated[unique_id]

    def _validate_inputs(self, unique_id: str) -> Generator[str, NodeResult, NodeResult]:
        prompt = self.prompt
        inputs = prompt[unique_id]["inputs"]
        class_type = prompt[unique_id]["class_type"]
        obj_class = self.registry[class_type]
        class_inputs = self.class_inputs(class_type)

        errors: list[dict[str, Any]] = unknown_input_errors(inputs, class_inputs, class_type)
        valid = True

        validate_function = getattr(obj_class, "VALIDATE_INPUTS", None)
        validate_function_inputs: list[str] = []
        validate_has_kwargs = False
        if validate_function is not None:
            validate_function_inputs, validate_has_kwargs = function_params(validate_function)
        received_types: dict[str, Any] = {}

        declared = [*(class_inputs.get("required") or {}), *(class_inputs.get("optional") or {})]
        for x in dict.fromkeys(declared):
            input_type, input_category, extra_info = get_input_info(class_inputs, x)
            if x not in inputs:
                if input_category == "required":
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": f"{x}",
                            "extra_info": {"input_name": x},
                        }
                    )
                continue

            val = inputs[x]
            info = (input_type, extra_info)
            if isinstance(val, list):
                link_error = self._check_link(x, val, info)
                if link_error is not None:
                    errors.append(link_error)
                    continue
                o_id = val[0]
                received_type = self.registry[prompt[o_id]["class_type"]].RETURN_TYPES[val[1]]
                received_types[x] = received_type
                if "input_types" not in validate_function_inputs and not validate_node_input(
                    received_type, input_type
                ):
                    errors.append(
                        {
                            "type": "return_type_mismatch",
                            "message": "Return type mismatch between linked nodes",
                            "details": f"{x}, received_type({received_type}) "
                                       f"mismatch input_type({input_type})",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_type": received_type,
                                "linked_node": val,
                            },
                        }
                    )
                    continue
                try:
                    r = yield o_id
                    if r[0] is False:
                        valid = False
                        continue
                except Exception as ex:  # a linked node's broken INPUT_TYPES is a validation error
                    valid = False
                    self.validated[o_id] = (
                        False,
                        [
                            {
                                "type": "exception_during_inner_validation",
                                "message": "Exception when validating inner node",
                                "details": str(ex),
                                "extra_info": {
                                    "input_name": x,
                                    "input_config": info,
                                    "exception_message": str(ex),
                                    "exception_type": full_type_name(type(ex)),
                                    "traceback": traceback.format_tb(ex.__traceback__),
                                    "linked_node": val,
                                },
                            }
                        ],
                        o_id,
                    )
                    continue
            else:
                try:
                    # ComfyUI's escape for list-valued widgets: {"__value__": [...]} is a value,
                    # a bare 2-list would be read as a link.
                    if isinstance(val, dict) and "__value__" in val:
                        val = val["__value__"]
                        inputs[x] = val
                    if input_type == "INT":
                        val = int(val)
                        inputs[x] = val
                    if input_type == "FLOAT":
                        val = float(val)
                        inputs[x] = val
                        if not math.isfinite(val):  # NaN passes every min/max comparison
                            errors.append(
                                {
                                    "type": "value_not_finite",
                                    "message": f"Value {val} is not a finite number",
                                    "details": f"{x}",
                                    "extra_info": {"input_name": x, "input_config": info,
                                                   "received_value": str(val)},
                                }
                            )
                            continue
                    if input_type == "STRING":
                        val = str(val)
                        inputs[x] = val
                    if input_type == "BOOLEAN":
                        val = bool(val)
                        inputs[x] = val
                except Exception as ex:  # whatever int()/float() raise means "wrong type"
                    errors.append(
                        {
                            "type": "invalid_input_type",
                            "message": f"Failed to convert an input value to a {input_type} value",
                            "details": f"{x}, {val}, {ex}",
                            "extra_info": {
                                "input_name": x,
                                "input_config": info,
                                "received_value": val,
                                "exception_message": str(ex),
                            },
                        }
                    )
                    continue

                if x not in validate_function_inputs and not validate_has_kwargs:
                    if "min" in extra_info and val < extra_info["min"]:
                        errors.append(
                            {
                                "type": "value_smaller_than_min",
                                "message": "Value {} smaller than min of {}".format(val, extra_info["min"]),
                                "details": f"{x}",
                                "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                            }
                        )
                        continue
                    if "max" in extra_info and val > extra_info["max"]:
                        errors.append(
                            {
                                "type": "value_bigger_than_max",
                                "message": "Value {} bigger than max of {}".format(val, extra_info["max"]),
                                "details": f"{x}",
                                "extra_info": {"input_name": x, "input_config": info, "received_value": val},
                            }
                        )
                        continue
                    if isinstance(input_type, (list, tuple)):
                        combo_options = list(input_type)
                        if val not in combo_options:
                            input_config: Any = info
                            # Like ComfyUI: don't echo huge lists (scanned model folders).
                            if len(combo_options) > 20:
                                list_info = f"(list of length {len(combo_options)})"
                                input_config = None
                            else:
                                list_info = str(combo_options)
                            hint = did_you_mean(val, combo_options)
                            describe = getattr(obj_class, "DESCRIBE_CHOICES", None)
                            if describe is not None and (where := describe(x)):
                                hint += f" ({where})"
                            errors.append(
                                {
                                    "type": "value_not_in_list",
                                    "message": "Value not in list",
                                    "details": f"{x}: {val!r} not in {list_info}{hint}",
                                    "extra_info": {
                                        "input_name": x,
                                        "input_config": input_config,
                                        "received_value": val,
                                    },
                                }
                            )
                            continue

        if validate_function is not None and (len(validate_function_inputs) > 0 or validate_has_kwargs):
            errors.extend(
                self._custom_validation(
                    unique_id, obj_class, class_inputs, inputs, validate_function_inputs,
                    validate_has_kwargs, received_types,
                )
            )

        if valid is True and not errors:
            linked = {}
            for name, value in inputs.items():
                if isinstance(value, list) and len(value) == 2:
                    upstream = self.stand_ins.get(value[0])
                    slot = value[1]
                    fits = isinstance(upstream, tuple) and isinstance(slot, int) and 0 <= slot < len(upstream)
                    linked[name] = upstream[slot] if fits else None  # type: ignore[index]
            stand_in, problems = preflight(obj_class, class_inputs, inputs, linked, unique_id)
            self.stand_ins[unique_id] = stand_in
            errors.extend(problems)

        ret = self.validated.get(unique_id, (True, [], unique_id))
        # A cycle found below us may already have put an error on this node; join it.
        ret = (
            ret[0] and valid is True and not errors,
            ret[1] + [e for e in errors if e not in ret[1]],
            unique_id,
        )
        self.validated[unique_id] = ret
        return ret

    def _check_link(self, x: str, val: list[Any], info: tuple[Any, dict[str, Any]]) -> dict[str, Any] | None:
        def bad(message: str, details: str) -> dict[str, Any]:
            return {
                "type": "bad_linked_input",
                "message": message,
                "details": details,
                "extra_info": {"input_name": x, "input_config": info, "received_value": val},
            }

        if len(val) != 2:
            return bad("Bad linked input, must be a length-2 list of [node_id, slot_index]", f"{x}")
        o_id, slot = val
        if not isinstance(o_id, str) or o_id not in self.prompt:
            return bad("Bad linked input, the linked node does not exist", f"{x}: no node with id {o_id!r}")
        if not isinstance(slot, int) or isinstance(slot, bool):
            return bad("Bad linked input, must be a length-2 list of [node_id, slot_index]", f"{x}")
        return_types = self.registry[self.prompt[o_id]["class_type"]].RETURN_TYPES
        if not 0 <= slot < len(return_types):
            return bad(
                "Bad linked input, the linked node has no such output",
                f"{x}: node {o_id} ({self.prompt[o_id]['class_type']}) has {len(return_types)} "
                f"output(s), link asks for index {slot}",
            )
        return None

    def _custom_validation(
        self,
        unique_id: str,
        obj_class: NodeClass,
        class_inputs: Mapping[str, Any],
        inputs: Mapping[str, Any],
        validate_function_inputs: list[str],
        validate_has_kwargs: bool,
        received_types: dict[str, Any],
    ) -> list[dict[str, Any]]:
        # ComfyUI calls VALIDATE_INPUTS with the constants, None for linked inputs (their values
        # do not exist yet) and the hidden inputs, filtered to the parameters it names.
        input_data: dict[str, Any] = {}
        for name, value in inputs.items():
            _, category, _ = get_input_info(class_inputs, name)
            if isinstance(value, list):
                input_data[name] = None
            elif category is not None:
                input_data[name] = value
        input_data.update(hidden_values(class_inputs, unique_id, None, None))
        input_filtered = {
            k: v for k, v in input_data.items() if k in validate_function_inputs or validate_has_kwargs
        }
        if "input_types" in validate_function_inputs:
            input_filtered["input_types"] = received_types

        r = obj_class.VALIDATE_INPUTS(**input_filtered)
        return custom_validation_errors(r, input_filtered)


def validate_prompt(
    prompt: Prompt,
    registry: Registry,
    partial_execution_list: Iterable[str] | None = None,
    *,
    input_types: dict[str, dict[str, Any]] | None = None,
) -> ValidationResult:
    """Validate an API-format prompt; return ``(ok, error, good_outputs, node_errors)``.

    Same contract as ComfyUI's ``validate_prompt``: ``ok`` is False with a top-level ``error``
    when a node type is unknown, there is no output node, or no output survives validation;
    otherwise ``ok`` is True and ``node_errors`` still lists problems of outputs that were dropped.
    Coerced values (``"5"`` -> 5 for an INT) are written back into ``prompt`` as ComfyUI does, so
    pass a copy (``workflow.normalize_prompt``) if the caller's dict must stay untouched.
    ``input_types``, when given, is filled with each class's ``INPUT_TYPES()`` result so the
    executor can reuse it for the run instead of calling it again.
    """
    cache = input_types if input_types is not None else {}
    wanted = set(partial_execution_list) if partial_execution_list is not None else None
    outputs: list[str] = []
    for x in prompt:
        node = prompt[x]
        if "class_type" not in node:
            node_title = (node.get("_meta") or {}).get("title")
            error = {
                "type": "missing_node_type",
                "message": f"Node '{node_title or f'ID #{x}'}' has no class_type. The workflow may be "
                "corrupted or a custom node is missing.",
                "details": f"Node ID '#{x}'",
                "extra_info": {"node_id": x, "class_type": None, "node_title": node_title},
            }
            return (False, error, [], {})
        class_type = node["class_type"]
        class_ = registry.get(class_type) if isinstance(class_type, str) else None
        if class_ is None:
            node_title = (node.get("_meta") or {}).get("title", class_type)
            error = {
                "type": "missing_node_type",
                "message": f"Node '{node_title}' not found. The custom node may not be installed.",
                "details": f"Node ID '#{x}'",
                "extra_info": {"node_id": x, "class_type": class_type, "node_title": node_title},
            }
            return (False, error, [], {})
        if getattr(class_, "OUTPUT_NODE", False) is True and (wanted is None or x in wanted):
            outputs.append(x)

    if not outputs:
        error = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                 "extra_info": {}}
        return (False, error, [], {})

    validator = _Validator(prompt, registry, cache)
    good_outputs: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, dict[str, Any]] = {}
    for o in sorted(outputs, key=node_sort_key):
        try:
            valid, reasons, _ = validator.run(o)
        except Exception as ex:  # ComfyUI reports any exception as exception_during_validation
            valid = False
            reasons = [
                {
                    "type": "exception_during_validation",
                    "message": "Exception when validating node",
                    "details": str(ex),
                    "extra_info": {
                        "exception_type": full_type_name(type(ex)),
                        "traceback": traceback.format_tb(ex.__traceback__),
                    },
                }
            ]
            validator.validated[o] = (False, reasons, o)

        if valid is True:
            good_outputs.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (node_valid, node_reasons, _) in validator.validated.items():
            # Nodes downstream of a broken node are invalid too but carry no errors of their own;
            # only report the nodes that do (ComfyUI's rule).
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)

    for line in format_node_errors(node_errors, prompt):
        logger.debug("validation: %s", line)

    if not good_outputs:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, reasons in failed for e in reasons)
        error = {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": details,
            "extra_info": {},
        }
        return (False, error, good_outputs, node_errors)
    return (True, None, good_outputs, node_errors)


# Error types whose details are a whole sentence: the line shows it without the generic message.
_SELF_EXPLAINING = frozenset({"custom_validation_failed", "unknown_input"})


def format_node_errors(node_errors: Mapping[str, Mapping[str, Any]],
                       prompt: Mapping[str, Any] | None = None) -> list[str]:
    """One human-readable line per validation error, naming node id, class_type and input.

    E.g. ``node 12 (LoadLoRA), input 'lora_name': Value not in list: lora_name: 'x' not in [...]``.
    ``prompt`` is only used for the node title (``_meta.title``) when it differs from the class.
    """
    lines = []
    for node_id in sorted(node_errors, key=node_sort_key):
        entry = node_errors[node_id]
        class_type = entry.get("class_type")
        node = (prompt or {}).get(node_id) or {}
        title = (node.get("_meta") or {}).get("title")
        label = f"node {node_id} ({class_type})"
        if title and title != class_type:
            label = f"node {node_id} ({class_type} '{title}')"
        for err in entry.get("errors", []):
            input_name = (err.get("extra_info") or {}).get("input_name")
            where = f"{label}, input '{input_name}'" if input_name else label
            details = err.get("details")
            message = f"{err.get('message')}: {details}" if details else str(err.get("message"))
            if details and err.get("type") in _SELF_EXPLAINING:
                # the line names the input already: "input 'weights': expected numbers ..."
                message = str(details).removeprefix(f"{input_name}:").strip() if input_name else str(details)
            lines.append(f"{where}: {message}")
    return lines


def format_validation_error(error: Mapping[str, Any] | None, node_errors: Mapping[str, Mapping[str, Any]],
                            prompt: Mapping[str, Any] | None = None) -> list[str]:
    """Lines for a whole validation failure: the per-node lines, or the top-level error alone.

    The top-level ``prompt_outputs_failed_validation`` repeats the node errors without naming the
    nodes, so it is left out when there are node errors to show.
    """
    lines = format_node_errors(node_errors, prompt)
    if error is not None and not lines:
        details = error.get("details")
        lines.append(f"{error.get('message')}: {details}" if details else str(error.get("message")))
    return lines
