"""Tests of the graph executor with small node classes defined here (ints, strings, counters)."""

from __future__ import annotations

import json
import math
from typing import ClassVar

import pytest
from loragraph.graph import (
    CycleError,
    ExecutionInterrupted,
    Executor,
    NodeInputError,
    WorkflowError,
    apply_overrides,
    check_interrupted,
    execution_order,
    format_node_errors,
    load_workflow,
    report_progress,
    to_api_format,
    topological_order,
    validate_prompt,
)

CALLS: dict[str, int] = {}


def _count(name: str) -> None:
    CALLS[name] = CALLS.get(name, 0) + 1


@pytest.fixture(autouse=True)
def _reset_calls():
    CALLS.clear()
    FileLike.version = "v1"
    Mode.options = ["fast", "slow"]
    yield


class Int:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -10, "max": 1000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value):
        _count("Int")
        return (value,)


class Add:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT",), "b": ("INT",)}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, a, b):
        _count("Add")
        return (a + b,)


class ToText:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}, "optional": {"prefix": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, value, prefix=""):
        _count("ToText")
        return (f"{prefix}{value}",)


class Concat:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("STRING", {"multiline": True}), "b": ("STRING",)}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, a, b):
        _count("Concat")
        return (a + b,)


class Show:
    """Output node; also records its hidden inputs."""

    seen: ClassVar[dict] = {}

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"text": ("STRING",)},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO", "unique_id": "UNIQUE_ID"},
        }

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True

    def run(self, text, prompt=None, extra_pnginfo=None, unique_id=None):
        _count("Show")
        Show.seen = {"prompt": prompt, "extra_pnginfo": extra_pnginfo, "unique_id": unique_id}
        return {"ui": {"text": [text]}}


class Mode:
    """Combo whose allowed values are computed live on every INPUT_TYPES() call."""

    options: ClassVar[list[str]] = ["fast", "slow"]

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"mode": (list(cls.options),), "flag": ("BOOLEAN", {"default": False}),
                             "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0})}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, mode, flag, scale):
        _count("Mode")
        return (f"{mode}:{flag}:{scale}",)


class FileLike:
    """Stands in for a file-loading node: IS_CHANGED returns the 'file content hash'."""

    version = "v1"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING",)}}

    @classmethod
    def IS_CHANGED(cls, name, **kwargs):
        return f"{name}:{cls.version}"

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, name):
        _count("FileLike")
        return (f"{name}@{FileLike.version}",)


class Volatile:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING",)}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"

    def run(self, name):
        _count("Volatile")
        return (name,)


class Steps:
    """Reports progress per step, like a sampler."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "steps": ("INT", {"default": 5, "min": 1})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, steps):
        _count("Steps")
        for i in range(steps):
            report_progress(i + 1, steps)
        return (value,)


class Fail:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",), "lora_name": ("STRING", {"default": "x"})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value, lora_name):
        raise NodeInputError("lora_name", f"cannot read {lora_name}")


class Even:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT",)}}

    @classmethod
    def VALIDATE_INPUTS(cls, value):
        return True if value % 2 == 0 else "must be even"

    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    def run(self, value):
        return (value,)


class BrokenTypes:
    @classmethod
    def INPUT_TYPES(cls):
        raise RuntimeError("folder unreadable")

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True


REGISTRY = {c.__name__: c for c in (Int, Add, ToText, Concat, Show, Mode, FileLike, Volatile, Steps, Fail,
                                     Even, BrokenTypes)}


def chain_prompt(value=2) -> dict:
    """1:Int -> 3:Add(1,2) <- 2:Int ; 3 -> 4:ToText -> 5:Show ; 6:Int is unused."""
    return {
        "1": {"class_type": "Int", "inputs": {"value": value}},
        "2": {"class_type": "Int", "inputs": {"value": 3}},
        "3": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["2", 0]}},
        "4": {"class_type": "ToText", "inputs": {"value": ["3", 0], "prefix": "="}},
        "5": {"class_type": "Show", "inputs": {"text": ["4", 0]}},
        "6": {"class_type": "Int", "inputs": {"value": 7}},
    }


def recorder(executor):
    events = []
    executor.bus.subscribe(lambda e, d: events.append((e, d)))
    return events


# --- running -----------------------------------------------------------------------------------


def test_runs_in_topological_order_and_only_ancestors_of_outputs():
    ex = Executor(REGISTRY)
    events = recorder(ex)
    r = ex.execute(chain_prompt(), prompt_id="p1", extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    assert r.status == "success", r.error
    assert r.executed == ["1", "2", "3", "4", "5"]  # "6" is not an ancestor of an output
    assert r.outputs == {"5": {"text": ["=5"]}}
    assert Show.seen["unique_id"] == "5"
    assert Show.seen["extra_pnginfo"] == {"workflow": {"w": 1}}
    assert Show.seen["prompt"]["5"]["class_type"] == "Show"
    names = [e for e, _ in events]
    assert names[0] == "execution_start" and names[1] == "execution_cached"
    assert names[-2:] == ["execution_success", "executing"]
    assert [d["node"] for e, d in events if e == "executing"] == ["1", "2", "3", "4", "5", None]
    executed = [d for e, d in events if e == "executed"]
    assert executed == [{"node": "5", "display_node": "5", "output": {"text": ["=5"]}, "prompt_id": "p1"}]
    start = dict(events[0][1])
    assert set(start) == {"prompt_id", "timestamp"} and start["prompt_id"] == "p1"
    assert set(events[1][1]) == {"nodes", "prompt_id", "timestamp"}
    assert set(dict(events)["execution_success"]) == {"prompt_id", "timestamp"}
    assert set(r.timings) == set(r.executed)
    assert json.loads(json.dumps(r.to_dict()))["status"] == "success"


def test_rerun_with_nothing_changed_executes_nothing():
    ex = Executor(REGISTRY)
    ex.execute(chain_prompt())
    CALLS.clear()
    events = recorder(ex)
    r = ex.execute(chain_prompt(), prompt_id="p2")
    assert r.status == "success"
    assert r.executed == [] and CALLS == {}
    cached = dict(events)["execution_cached"]
    assert cached["nodes"] == ["1", "2", "3", "4", "5"]
    assert r.outputs == {"5": {"text": ["=5"]}}  # the cached UI still reaches the result
    # Only the output node is visited (served from cache); its ancestors are not even touched.
    assert [d["node"] for e, d in events if e == "executed"] == ["5"]


def test_changing_one_constant_reruns_only_downstream():
    ex = Executor(REGISTRY)
    ex.execute(chain_prompt(2))
    CALLS.clear()
    r = ex.execute(chain_prompt(4))
    assert r.executed == ["1", "3", "4", "5"]
    assert r.cached == ["2"]
    assert r.outputs["5"] == {"text": ["=7"]}
    # And back: the earlier prompt's outputs are still cached.
    r = ex.execute(chain_prompt(2))
    assert r.executed == []


def test_is_changed_change_reruns_and_nan_never_caches():
    ex = Executor(REGISTRY)
    prompt = {
        "1": {"class_type": "FileLike", "inputs": {"name": "a.safetensors"}},
        "2": {"class_type": "Concat", "inputs": {"a": ["1", 0], "b": "!"}},
        "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}},
    }
    assert ex.execute(prompt).executed == ["1", "2", "3"]
    assert ex.execute(prompt).executed == []
    FileLike.version = "v2"  # the file's content changed on disk
    r = ex.execute(prompt)
    assert r.executed == ["1", "2", "3"] and r.outputs["3"] == {"text": ["a.safetensors@v2!"]}

    volatile = {
        "1": {"class_type": "Volatile", "inputs": {"name": "n"}},
        "2": {"class_type": "Show", "inputs": {"text": ["1", 0]}},
    }
    assert ex.execute(volatile).executed == ["1", "2"]
    assert ex.execute(volatile).executed == ["1", "2"]


def test_cache_is_bounded_by_recent_prompts():
    ex = Executor(REGISTRY, cache_prompts=2)
    for v in (1, 2, 3):
        ex.execute(chain_prompt(v))
    assert ex.execute(chain_prompt(3)).executed == []
    assert ex.execute(chain_prompt(1)).executed == ["1", "3", "4", "5"]  # evicted


def test_interrupt_between_progress_steps():
    ex = Executor(REGISTRY)
    events = recorder(ex)
    hook_calls = []

    class Hook:
        def __call__(self, value, total):
            hook_calls.append((value, total))

        def close(self):
            hook_calls.append("closed")

    ex.progress_hook_factory = lambda pid, nid, ct: Hook()

    def on_event(event, data):
        if event == "progress" and data["value"] == 2:
            ex.interrupt()

    ex.bus.subscribe(on_event)
    prompt = {
        "1": {"class_type": "Int", "inputs": {"value": 1}},
        "2": {"class_type": "Steps", "inputs": {"value": ["1", 0], "steps": 5}},
        "3": {"class_type": "ToText", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Show", "inputs": {"text": ["3", 0]}},
    }
    r = ex.execute(prompt, prompt_id="pi")
    assert r.status == "error" and r.interrupted
    progress = [d for e, d in events if e == "progress"]
    assert progress == [{"value": 1, "max": 5, "prompt_id": "pi", "node": "2"},
                        {"value": 2, "max": 5, "prompt_id": "pi", "node": "2"}]
    assert hook_calls == [(1, 5), (2, 5), "closed"]
    payload = dict(events)["execution_interrupted"]
    assert set(payload) == {"prompt_id", "node_id", "node_type", "executed", "timestamp"}
    assert (payload["node_id"], payload["node_type"], payload["executed"]) == ("2", "Steps", ["1"])
    assert r.error == payload
    assert "execution_success" not in dict(events)
    assert events[-1] == ("executing", {"node": None, "prompt_id": "pi"})
    # A stale interrupt does not kill the next prompt; the finished node "1" comes from cache.
    ex.interrupt()
    r = ex.execute(prompt)
    assert r.status == "error"  # the subscriber interrupts at step 2 again
    ex.bus.unsubscribe(on_event)
    r = ex.execute(prompt)
    assert r.status == "success" and r.executed == ["2", "3", "4"]


def test_progress_and_interrupt_are_noops_outside_a_run():
    report_progress(1, 2)
    check_interrupted()
    assert issubclass(ExecutionInterrupted, InterruptedError)


def test_node_error_payload_and_outputs_already_made_stay():
    ex = Executor(REGISTRY)
    events = recorder(ex)
    prompt = {
        "1": {"class_type": "Int", "inputs": {"value": 4}},
        "2": {"class_type": "ToText", "inputs": {"value": ["1", 0]}},
        "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}},
        "4": {"class_type": "Fail", "inputs": {"value": ["1", 0], "lora_name": "missing.safetensors"}},
        "5": {"class_type": "ToText", "inputs": {"value": ["4", 0]}},
        "6": {"class_type": "Show", "inputs": {"text": ["5", 0]}},
    }
    r = ex.execute(prompt, prompt_id="pe")
    assert r.status == "error" and not r.interrupted
    assert r.executed == ["1", "2", "3"] and r.outputs == {"3": {"text": ["4"]}}
    payload = dict(events)["execution_error"]
    assert set(payload) == {"prompt_id", "node_id", "node_type", "executed", "exception_message",
                            "exception_type", "traceback", "current_inputs", "current_outputs", "timestamp"}
    assert payload["node_id"] == "4" and payload["node_type"] == "Fail"
    assert payload["exception_type"] == "loragraph.base.errors.NodeInputError"
    assert ("lora_name" in payload["exception_message"]
            and "missing.safetensors" in payload["exception_message"])
    assert payload["current_inputs"] == {"value": [4], "lora_name": ["missing.safetensors"]}
    assert payload["executed"] == ["1", "2", "3"]
    assert set(payload["current_outputs"]) == {"1", "2", "3"}
    assert isinstance(payload["traceback"], list) and payload["traceback"]
    assert json.dumps(payload)  # JSON-ready for the websocket
    assert r.error == payload
    assert "node 4 (Fail)" in r.error_lines()[0]
    # Outputs made before the failure are cached: fixing the graph resumes from them.
    del prompt["4"], prompt["5"], prompt["6"]
    assert ex.execute(prompt).executed == []


def test_a_200_node_graph_runs_and_reruns_from_cache():
    """A long chain runs in order and an unchanged re-run executes nothing. (Its overhead per node
    is measured by benchmarks/, not asserted here: timings are not unit tests.)"""
    n = 200
    prompt = {"1": {"class_type": "Int", "inputs": {"value": 1}}}
    for i in range(2, n):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": ["1", 0]}}
    prompt[str(n)] = {"class_type": "ToText", "inputs": {"value": [str(n - 1), 0]}}
    prompt[str(n + 1)] = {"class_type": "Show", "inputs": {"text": [str(n), 0]}}
    ex = Executor(REGISTRY)
    ex.bus.subscribe(lambda e, d: None)
    r = ex.execute(prompt)
    assert r.status == "success" and len(r.executed) == n + 1
    assert r.outputs[str(n + 1)] == {"text": [str(n - 1)]}
    assert r.overhead_s <= r.wall_s
    again = ex.execute(prompt)
    assert again.executed == [] and len(again.cached) == n + 1


# --- ordering ----------------------------------------------------------------------------------


def test_topological_order_is_deterministic_by_numeric_id():
    prompt = {
        "10": {"class_type": "Int", "inputs": {"value": 1}},
        "9": {"class_type": "Int", "inputs": {"value": 1}},
        "2": {"class_type": "Add", "inputs": {"a": ["10", 0], "b": ["9", 0]}},
        "x": {"class_type": "Show", "inputs": {"text": ["2", 0]}},
    }
    assert topological_order(prompt, prompt) == ["9", "10", "2", "x"]
    assert execution_order(prompt, ["x"], is_cached=lambda n: n == "2") == ["2", "x"]


def test_order_cycle_error_names_the_nodes():
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["3", 0], "b": ["3", 0]}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
        "3": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["2", 0]}},
    }
    with pytest.raises(CycleError) as info:
        topological_order(prompt, prompt)
    assert info.value.nodes == ["1", "2", "3", "1"]
    assert "1 (Add) -> 2 (Add) -> 3 (Add) -> 1 (Add)" in str(info.value)


# --- validation --------------------------------------------------------------------------------

ERROR_KEYS = {"type", "message", "details", "extra_info"}


def invalid(prompt, registry=REGISTRY):
    ok, error, good, node_errors = validate_prompt(json.loads(json.dumps(prompt)), registry)
    return ok, error, good, node_errors


def only_error(node_errors, node_id):
    entry = node_errors[node_id]
    assert set(entry) == {"errors", "dependent_outputs", "class_type"}
    assert len(entry["errors"]) == 1, entry["errors"]
    err = entry["errors"][0]
    assert set(err) == ERROR_KEYS
    return err


def test_valid_prompt_coerces_values_like_comfyui():
    prompt = chain_prompt()
    prompt["1"]["inputs"]["value"] = "5"
    prompt["7"] = {"class_type": "Mode", "inputs": {"mode": "fast", "flag": 1, "scale": "0.5"}}
    prompt["8"] = {"class_type": "Show", "inputs": {"text": ["7", 0]}}
    ok, error, good, node_errors = validate_prompt(prompt, REGISTRY)
    assert (ok, error, sorted(good), node_errors) == (True, None, ["5", "8"], {})
    assert prompt["1"]["inputs"]["value"] == 5
    assert prompt["7"]["inputs"]["flag"] is True and prompt["7"]["inputs"]["scale"] == 0.5


def test_unknown_class_type_is_missing_node_type():
    prompt = {"1": {"class_type": "Nope", "inputs": {}, "_meta": {"title": "My node"}}}
    ok, error, good, node_errors = invalid(prompt)
    assert not ok and good == [] and node_errors == {}
    assert error == {
        "type": "missing_node_type",
        "message": "Node 'My node' not found. The custom node may not be installed.",
        "details": "Node ID '#1'",
        "extra_info": {"node_id": "1", "class_type": "Nope", "node_title": "My node"},
    }
    ok, error, _, _ = invalid({"1": {"inputs": {}}})
    assert error["type"] == "missing_node_type" and error["extra_info"]["class_type"] is None


def test_prompt_no_outputs():
    ok, error, good, node_errors = invalid({"1": {"class_type": "Int", "inputs": {"value": 1}}})
    assert (ok, good, node_errors) == (False, [], {})
    assert error == {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "",
                     "extra_info": {}}


def test_required_input_missing():
    prompt = chain_prompt()
    del prompt["3"]["inputs"]["b"]
    ok, error, _, node_errors = invalid(prompt)
    assert not ok and error["type"] == "prompt_outputs_failed_validation" and set(error) == ERROR_KEYS
    err = only_error(node_errors, "3")
    assert err == {"type": "required_input_missing", "message": "Required input is missing", "details": "b",
                   "extra_info": {"input_name": "b"}}
    assert node_errors["3"]["dependent_outputs"] == ["5"] and node_errors["3"]["class_type"] == "Add"
    # Downstream nodes are invalid too but carry no errors of their own.
    assert set(node_errors) == {"3"}


def test_bad_linked_input_and_dangling_link():
    prompt = chain_prompt()
    prompt["3"]["inputs"]["a"] = ["1", 0, 1]
    err = only_error(invalid(prompt)[3], "3")
    assert err["type"] == "bad_linked_input"
    assert err["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert set(err["extra_info"]) == {"input_name", "input_config", "received_value"}
    assert err["extra_info"]["input_name"] == "a"

    prompt = chain_prompt()
    prompt["3"]["inputs"]["a"] = ["99", 0]
    err = only_error(invalid(prompt)[3], "3")
    assert err["type"] == "bad_linked_input" and "99" in err["details"] and "does not exist" in err["message"]

    prompt = chain_prompt()
    prompt["3"]["inputs"]["a"] = ["1", 3]
    err = only_error(invalid(prompt)[3], "3")
    assert err["type"] == "bad_linked_input" and "no such output" in err["message"]


def test_return_type_mismatch():
    prompt = chain_prompt()
    prompt["5"]["inputs"]["text"] = ["3", 0]  # INT into STRING
    err = only_error(invalid(prompt)[3], "5")
    assert err["type"] == "return_type_mismatch"
    assert err["message"] == "Return type mismatch between linked nodes"
    assert err["details"] == "text, received_type(INT) mismatch input_type(STRING)"
    assert set(err["extra_info"]) == {"input_name", "input_config", "received_type", "linked_node"}
    assert err["extra_info"]["linked_node"] == ["3", 0]


def test_invalid_input_type_and_min_max():
    prompt = chain_prompt()
    prompt["1"]["inputs"]["value"] = "five"
    err = only_error(invalid(prompt)[3], "1")
    assert err["type"] == "invalid_input_type"
    assert err["message"] == "Failed to convert an input value to a INT value"
    assert set(err["extra_info"]) == {"input_name", "input_config", "received_value", "exception_message"}

    prompt["1"]["inputs"]["value"] = 1001
    err = only_error(invalid(prompt)[3], "1")
    assert err["type"] == "value_bigger_than_max" and err["message"] == "Value 1001 bigger than max of 1000"
    assert err["details"] == "value"
    assert err["extra_info"] == {"input_name": "value",
                                 "input_config": ("INT", {"default": 0, "min": -10, "max": 1000}),
                                 "received_value": 1001}

    prompt["1"]["inputs"]["value"] = -11
    err = only_error(invalid(prompt)[3], "1")
    assert err["type"] == "value_smaller_than_min" and err["message"] == "Value -11 smaller than min of -10"


def test_value_not_in_list_uses_the_live_combo():
    prompt = {"1": {"class_type": "Mode", "inputs": {"mode": "turbo", "flag": False, "scale": 1.0}},
              "2": {"class_type": "Show", "inputs": {"text": ["1", 0]}}}
    err = only_error(invalid(prompt)[3], "1")
    assert err["type"] == "value_not_in_list" and err["message"] == "Value not in list"
    assert err["details"] == "mode: 'turbo' not in ['fast', 'slow']"
    assert set(err["extra_info"]) == {"input_name", "input_config", "received_value"}
    Mode.options = ["fast", "slow", "turbo"]  # e.g. a file appeared in the loras folder
    assert invalid(prompt)[0] is True
    Mode.options = [f"m{i}" for i in range(30)]
    err = only_error(invalid(prompt)[3], "1")
    assert (err["details"] == "mode: 'turbo' not in (list of length 30)"
            and err["extra_info"]["input_config"] is None)


def test_custom_validation_failed():
    prompt = {"1": {"class_type": "Even", "inputs": {"value": 3}},
              "2": {"class_type": "ToText", "inputs": {"value": ["1", 0]}},
              "3": {"class_type": "Show", "inputs": {"text": ["2", 0]}}}
    err = only_error(invalid(prompt)[3], "1")
    assert err == {"type": "custom_validation_failed", "message": "Custom validation failed for node",
                   "details": "value - must be even", "extra_info": {"input_name": "value"}}
    prompt["1"]["inputs"]["value"] = 4
    assert invalid(prompt)[0] is True


def test_exception_during_validation():
    ok, _, _, node_errors = invalid({"1": {"class_type": "BrokenTypes", "inputs": {}}})
    assert not ok
    err = only_error(node_errors, "1")
    assert err["type"] == "exception_during_validation" and err["message"] == "Exception when validating node"
    assert err["details"] == "folder unreadable"
    assert set(err["extra_info"]) == {"exception_type", "traceback"}
    assert err["extra_info"]["exception_type"] == "RuntimeError"


def test_exception_during_inner_validation():
    class BrokenInner:
        @classmethod
        def INPUT_TYPES(cls):
            raise OSError("loras folder unreadable")

        RETURN_TYPES = ("STRING",)
        FUNCTION = "run"

    registry = {**REGISTRY, "BrokenInner": BrokenInner}
    prompt = {"1": {"class_type": "BrokenInner", "inputs": {}},
              "2": {"class_type": "Show", "inputs": {"text": ["1", 0]}}}
    ok, _, _, node_errors = invalid(prompt, registry)
    assert not ok and set(node_errors) == {"1"}
    err = only_error(node_errors, "1")
    assert err["type"] == "exception_during_inner_validation"
    assert (err["message"] == "Exception when validating inner node"
            and err["details"] == "loras folder unreadable")
    assert set(err["extra_info"]) == {"input_name", "input_config", "exception_message", "exception_type",
                                      "traceback", "linked_node"}
    assert err["extra_info"]["exception_type"] == "OSError" and err["extra_info"]["linked_node"] == ["1", 0]


def test_dependency_cycle_names_the_nodes():
    prompt = {
        "1": {"class_type": "Add", "inputs": {"a": ["2", 0], "b": ["2", 0]}},
        "2": {"class_type": "Add", "inputs": {"a": ["1", 0], "b": ["1", 0]}},
        "3": {"class_type": "ToText", "inputs": {"value": ["2", 0]}},
        "4": {"class_type": "Show", "inputs": {"text": ["3", 0]}},
    }
    ok, _, _, node_errors = invalid(prompt)
    assert not ok and set(node_errors) == {"1", "2"}
    err = only_error(node_errors, "1")
    assert err["type"] == "dependency_cycle" and err["message"] == "Dependency cycle detected"
    assert err["details"] == "2 (Add) -> 1 (Add) -> 2 (Add)"
    assert err["extra_info"] == {"node_id": "1", "cycle_nodes": ["2", "1"]}


def test_long_chain_does_not_hit_the_recursion_limit():
    prompt = {"1": {"class_type": "Int", "inputs": {"value": 0}}}
    for i in range(2, 3000):
        prompt[str(i)] = {"class_type": "Add", "inputs": {"a": [str(i - 1), 0], "b": ["1", 0]}}
    prompt["t"] = {"class_type": "ToText", "inputs": {"value": ["2999", 0]}}
    prompt["s"] = {"class_type": "Show", "inputs": {"text": ["t", 0]}}
    assert validate_prompt(prompt, REGISTRY)[0] is True


def test_invalid_prompt_runs_nothing_and_formats_lines():
    ex = Executor(REGISTRY)
    events = recorder(ex)
    prompt = chain_prompt()
    prompt["1"]["inputs"]["value"] = 5000
    prompt["4"]["_meta"] = {"title": "As text"}
    r = ex.execute(prompt)
    assert r.status == "invalid" and r.executed == [] and CALLS == {} and events == []
    assert r.error["type"] == "prompt_outputs_failed_validation"
    assert r.error_lines() == ["node 1 (Int), input 'value': Value 5000 bigger than max of 1000: value"]
    assert format_node_errors(r.node_errors) == r.error_lines()
    assert prompt["1"]["inputs"]["value"] == 5000  # the caller's dict is not modified


def test_partial_validation_runs_good_outputs_only_when_allowed():
    prompt = chain_prompt()
    prompt["8"] = {"class_type": "Even", "inputs": {"value": 3}}
    prompt["9"] = {"class_type": "ToText", "inputs": {"value": ["8", 0]}}
    prompt["10"] = {"class_type": "Show", "inputs": {"text": ["9", 0]}}
    ex = Executor(REGISTRY)
    assert ex.execute(prompt).status == "invalid"
    r = ex.execute(prompt, allow_partial=True)
    assert r.status == "success" and r.executed == ["1", "2", "3", "4", "5"] and "8" in r.node_errors


# --- workflow files and overrides --------------------------------------------------------------


def test_load_workflow_from_dict_text_and_file(tmp_path):
    data = {"1": {"class_type": "Int", "inputs": {"value": 1}, "_meta": {"title": "n"}},
            "2": {"class_type": "ToText", "inputs": {"value": [1, 0]}},
            "version": 3, "notes": "skipped"}
    loaded = load_workflow(data)
    assert set(loaded) == {"1", "2"} and loaded["2"]["inputs"]["value"] == ["1", 0]
    assert load_workflow(json.dumps(data)) == loaded
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(data))
    assert load_workflow(path) == loaded and load_workflow(str(path)) == loaded
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": ')
    with pytest.raises(WorkflowError, match="invalid JSON"):
        load_workflow(bad)
    with pytest.raises(WorkflowError, match="no such workflow file"):
        load_workflow(tmp_path / "missing.json")


def test_editor_format_is_refused_clearly():
    with pytest.raises(WorkflowError, match="editor-format"):
        to_api_format({"nodes": [], "links": [], "version": 0.4}, REGISTRY)


def test_apply_overrides():
    prompt = chain_prompt()
    out = apply_overrides(prompt, ["1.value=5", "4.prefix=a cat", "2.value=\"7\"", "4.value=[\"2\", 0]"],
                          REGISTRY)
    assert out["1"]["inputs"]["value"] == 5
    assert out["4"]["inputs"]["prefix"] == "a cat"
    assert out["2"]["inputs"]["value"] == "7"
    assert out["4"]["inputs"]["value"] == ["2", 0]
    assert prompt["1"]["inputs"]["value"] == 2  # input untouched
    with pytest.raises(WorkflowError, match="no node with id '12'"):
        apply_overrides(prompt, ["12.seed=5"])
    with pytest.raises(WorkflowError, match=r"NODE_ID\.INPUT=VALUE"):
        apply_overrides(prompt, ["1.value"])
    with pytest.raises(WorkflowError, match=r"NODE_ID\.INPUT=VALUE"):
        apply_overrides(prompt, ["1=5"])
    with pytest.raises(WorkflowError, match="has no input 'seed'"):
        apply_overrides(prompt, ["1.seed=5"], REGISTRY)
    assert math.isclose(apply_overrides(prompt, ["1.value=2.5"])["1"]["inputs"]["value"], 2.5)
