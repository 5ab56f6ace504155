"""The editor's saved format (schema 0.4 and 1) converted to the API prompt the editor would queue.

Each fixture in tests/fixtures/editor/NAME.json sits next to NAME.api.json: the prompt ComfyUI's
frontend queues for it, written by hand from the frontend's rules (graphToPrompt in
src/utils/executionUtil.ts, ExecutableNodeDTO.resolveInput/resolveOutput, PrimitiveNode.applyToGraph,
useIntWidget / addValueControlWidgets, migrateWidgetsValues). The smaller cases below use tiny node
classes so each rule is pinned on its own.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
from loragraph.graph import (
    WorkflowError,
    editor_to_api,
    is_editor_format,
    load_workflow,
    load_workflow_document,
    to_api_format,
    validate_prompt,
)
from loragraph.graph.editor_format import is_valid_connection
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

FIXTURES = Path(__file__).parent / "fixtures" / "editor"
NAMES = sorted(p.name[: -len(".api.json")] for p in FIXTURES.glob("*.api.json"))
# ComfyUI's display names of its own SaveImage / PreviewImage (the editor sends them as _meta.title).
DISPLAY = {**NODE_DISPLAY_NAME_MAPPINGS, "SaveImage": "Save Image", "PreviewImage": "Preview Image"}


def fixture(name: str) -> tuple[dict, dict]:
    return (json.loads((FIXTURES / f"{name}.json").read_text()),
            json.loads((FIXTURES / f"{name}.api.json").read_text()))


def without_meta(prompt: dict) -> dict:
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}


def test_the_fixtures_cover_what_the_editor_saves():
    assert len(NAMES) >= 4
    versions = {json.loads((FIXTURES / f"{n}.json").read_text()).get("version") for n in NAMES}
    assert versions == {0.4, 1}
    types = {node["type"] for n in NAMES for node in fixture(n)[0]["nodes"]}
    assert {"Reroute", "PrimitiveNode", "Note", "MarkdownNote", "LoadLoRA", "Sampler", "SaveImage"} <= types
    modes = {node["mode"] for n in NAMES for node in fixture(n)[0]["nodes"]}
    assert {0, 2, 4} <= modes


@pytest.mark.parametrize("name", NAMES)
def test_fixture_converts_to_what_the_frontend_queues(name):
    workflow, expected = fixture(name)
    original = copy.deepcopy(workflow)
    assert editor_to_api(workflow, HEADLESS_NODE_CLASS_MAPPINGS, display_names=DISPLAY) == expected
    assert workflow == original  # the caller's document is not touched


@pytest.mark.parametrize("name", NAMES)
def test_load_workflow_document_returns_prompt_and_the_editor_json(name):
    workflow, expected = fixture(name)
    doc = load_workflow_document(FIXTURES / f"{name}.json", HEADLESS_NODE_CLASS_MAPPINGS)
    assert without_meta(doc.prompt) == without_meta(expected)
    assert doc.workflow == workflow
    assert doc.extra_data() == {"extra_pnginfo": {"workflow": workflow}}
    assert load_workflow(FIXTURES / f"{name}.json", HEADLESS_NODE_CLASS_MAPPINGS) == doc.prompt
    assert load_workflow(workflow, HEADLESS_NODE_CLASS_MAPPINGS) == doc.prompt


def test_converted_fixtures_validate(configured):
    for name in ("plain_v04", "primitive_reroute_v04", "subgraph_v1"):
        prompt = load_workflow(FIXTURES / f"{name}.json", HEADLESS_NODE_CLASS_MAPPINGS)
        ok, error, outputs, node_errors = validate_prompt(prompt, HEADLESS_NODE_CLASS_MAPPINGS)
        assert ok and not node_errors, (name, error, node_errors)
    # The LoRAInfo fed by a muted LoadLoRA loses its input, as in ComfyUI: that output is invalid,
    # the SaveImage branch is fine.
    prompt = load_workflow(FIXTURES / "schema1_bypass_mute.json", HEADLESS_NODE_CLASS_MAPPINGS)
    ok, _, outputs, node_errors = validate_prompt(prompt, HEADLESS_NODE_CLASS_MAPPINGS)
    assert ok and outputs == ["6"]
    assert node_errors["9"]["errors"][0]["type"] == "required_input_missing"


def test_api_format_and_editor_format_are_told_apart():
    workflow, expected = fixture("plain_v04")
    assert is_editor_format(workflow) and not is_editor_format(expected)
    assert load_workflow_document(expected).workflow is None
    assert load_workflow_document(expected).extra_data() == {}


def test_editor_format_needs_the_registry():
    with pytest.raises(WorkflowError, match="node definitions"):
        to_api_format(fixture("plain_v04")[0])


def test_editor_workflow_with_nothing_to_run_is_refused():
    with pytest.raises(WorkflowError, match="editor-format workflow has no node that would run"):
        to_api_format({"nodes": [], "links": [], "version": 0.4}, HEADLESS_NODE_CLASS_MAPPINGS)


# -- single rules, on tiny node classes -----------------------------------------------------------


class Source:
    RETURN_TYPES = ("THING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 3})}}


class Step:
    """One THING in, one THING out, and a few widgets of every kind."""

    RETURN_TYPES = ("THING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "thing": ("THING",),
                "seed": ("INT", {"default": 1}),  # named seed: a control widget even without the option
                "mode": (["a", "b", "c"], {"control_after_generate": True}),  # combo: control + filter
                "text": ("STRING", {"default": "hi"}),
            },
            "optional": {
                "noise": ("INT", {"default": 0, "control_after_generate": False}),
                "scale": ("FLOAT", {"default": 0.5}),
                "extra": ("STRING", {"forceInput": True}),
            },
        }


class TwoWay:
    """Two outputs of different types, for bypass matching."""

    RETURN_TYPES = ("OTHER", "THING")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("THING",), "b": ("OTHER",)}}


class Sink:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"thing": ("THING",)}, "optional": {"other": ("OTHER",)}}


class Forced:
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"a": ("INT", {"default": 1}), "b": ("STRING", {"forceInput": True}),
                             "c": ("FLOAT", {})}}


REGISTRY = {"Source": Source, "Step": Step, "TwoWay": TwoWay, "Sink": Sink, "Forced": Forced}
STEP_VALUES = [5, "fixed", "b", "randomize", "", "there", 2, 0.25]  # seed, ctrl, mode, ctrl, filter, ...


def n(id, type, inputs=(), widgets=None, mode=0, **extra):
    node = {"id": id, "type": type, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": id, "mode": mode,
            "inputs": [{"name": name, "type": t, "link": link} for name, t, link in inputs],
            "outputs": [], "properties": {}}
    if widgets is not None:
        node["widgets_values"] = widgets
    node.update(extra)
    return node


def convert(nodes, links):
    return editor_to_api({"nodes": nodes, "links": links, "version": 0.4}, REGISTRY)


def test_widget_values_skip_control_widgets_and_forced_inputs():
    out = convert([n(1, "Source", widgets=[9]), n(2, "Step", [("thing", "THING", 1)], widgets=STEP_VALUES)],
                  [[1, 1, 0, 2, 0, "THING"]])
    assert out["2"]["inputs"] == {"seed": 5, "mode": "b", "text": "there", "noise": 2, "scale": 0.25,
                                  "thing": ["1", 0]}
    assert out["1"]["inputs"] == {"value": 9}


def test_pre_1_16_dummy_values_of_force_inputs_are_dropped():
    # Frontends before 1.16 saved a value for a forceInput input too; migrateWidgetsValues drops it
    # when the count matches (widgets + forceInput inputs + one per control_after_generate).
    out = convert([n(1, "Forced", widgets=[1, "dummy", 2.5]), n(2, "Forced", widgets=[1, 2.5])], [])
    assert out["1"]["inputs"] == out["2"]["inputs"] == {"a": 1, "c": 2.5}


def test_widget_values_by_name_and_defaults_for_missing_ones():
    out = convert([n(2, "Step", widgets={"seed": 7, "text": "x"}), n(3, "Step", widgets=[4, "fixed"])], [])
    assert out["2"]["inputs"] == {"seed": 7, "mode": "a", "text": "x", "noise": 0, "scale": 0.5}
    assert out["3"]["inputs"] == {"seed": 4, "mode": "a", "text": "hi", "noise": 0, "scale": 0.5}


def test_list_values_are_wrapped_so_they_do_not_read_as_links():
    out = convert([n(1, "Source", widgets=[["1", 0]])], [])
    assert out["1"]["inputs"]["value"] == {"__value__": ["1", 0]}


def test_a_linked_widget_input_replaces_the_widget_value():
    nodes = [n(1, "Source", widgets=[1]), n(2, "Step", [("thing", "THING", 1), ("extra", "STRING", None),
                                                       ("seed", "INT", 2)], widgets=STEP_VALUES)]
    nodes[1]["inputs"][2]["widget"] = {"name": "seed"}
    out = convert(nodes, [[1, 1, 0, 2, 0, "THING"], [2, 1, 0, 2, 2, "INT"]])
    assert out["2"]["inputs"]["seed"] == ["1", 0]


def test_bypass_prefers_the_same_slot_then_the_exact_type():
    nodes = [n(1, "Source", widgets=[1]), n(2, "Source", widgets=[2]),
             n(3, "TwoWay", [("a", "THING", 1), ("b", "OTHER", None)], mode=4),
             n(4, "Sink", [("thing", "THING", 3), ("other", "OTHER", 4)])]
    links = [[1, 1, 0, 3, 0, "THING"], [3, 3, 1, 4, 0, "THING"], [4, 3, 0, 4, 1, "OTHER"]]
    out = convert(nodes, links)
    # Output 1 (THING): input 1 is OTHER, so the first THING input (a) is passed on.
    # Output 0 (OTHER): input 0 is THING; the OTHER input b is unconnected, so "other" is left out.
    assert out["4"]["inputs"] == {"thing": ["1", 0]}
    assert "3" not in out


def test_chains_of_bypassed_nodes_and_reroutes_are_followed():
    nodes = [n(1, "Source", widgets=[1]), n(2, "Step", [("thing", "THING", 1)], widgets=STEP_VALUES, mode=4),
             n(3, "Reroute", [("", "*", 2)], outputs=[{"name": "", "type": "THING", "links": [3]}]),
             n(4, "Step", [("thing", "THING", 3)], widgets=STEP_VALUES, mode=4),
             n(5, "Sink", [("thing", "THING", 4)])]
    links = [[1, 1, 0, 2, 0, "THING"], [2, 2, 0, 3, 0, "*"], [3, 3, 0, 4, 0, "THING"],
             [4, 4, 0, 5, 0, "THING"]]
    assert convert(nodes, links)["5"]["inputs"] == {"thing": ["1", 0]}


def test_muted_nodes_are_dropped_with_the_links_from_them():
    nodes = [n(1, "Source", widgets=[1], mode=2), n(2, "Sink", [("thing", "THING", 1)])]
    out = convert(nodes, [[1, 1, 0, 2, 0, "THING"]])
    assert out == {"2": {"inputs": {}, "class_type": "Sink", "_meta": {"title": "Sink"}}}


def test_primitive_node_value_reaches_widgets_through_reroutes():
    nodes = [n(1, "Source", [("value", "INT", 2)], widgets=[1]),
             n(7, "PrimitiveNode", widgets=[99, "fixed"]),
             n(8, "Reroute", [("", "*", 1)])]
    nodes[0]["inputs"][0]["widget"] = {"name": "value"}
    out = convert(nodes, [[1, 7, 0, 8, 0, "INT"], [2, 8, 0, 1, 0, "INT"]])
    assert out == {"1": {"inputs": {"value": 99}, "class_type": "Source", "_meta": {"title": "Source"}}}


def test_titles_come_from_the_node_then_the_display_name():
    nodes = [n(1, "Source", widgets=[1], title="Mine"), n(2, "Source", widgets=[1])]
    out = editor_to_api({"nodes": nodes, "links": []}, REGISTRY, display_names={"Source": "The source"})
    assert out["1"]["_meta"] == {"title": "Mine"} and out["2"]["_meta"] == {"title": "The source"}


def test_schema_1_without_links_and_string_slot_indexes():
    nodes = [n(1, "Source", widgets=[1]), n(2, "Sink", [("thing", "THING", 5)])]
    assert editor_to_api({"version": 1, "nodes": nodes[:1]}, REGISTRY)["1"]["inputs"] == {"value": 1}
    links = [{"id": 5, "origin_id": 1, "origin_slot": "0", "target_id": 2, "target_slot": "0",
              "type": "THING"}]
    assert editor_to_api({"version": 1, "nodes": nodes, "links": links}, REGISTRY)["2"]["inputs"] == {
        "thing": ["1", 0]}


def test_unknown_node_types_name_the_node():
    with pytest.raises(WorkflowError, match=r"node 4: unknown node type 'KSampler'"):
        convert([n(4, "KSampler", widgets=[1])], [])
    with pytest.raises(WorkflowError, match="legacy group node"):
        convert([n(5, "workflow>My group")], [])
    # Muted or bypassed unknown nodes are not queued, so they do not matter.
    assert convert([n(4, "KSampler", mode=2), n(1, "Source", widgets=[1])], []).keys() == {"1"}


def test_unknown_type_inside_a_subgraph_names_its_execution_id():
    workflow, _ = fixture("subgraph_v1")
    workflow["definitions"]["subgraphs"][0]["nodes"][1]["type"] = "LoraLoader"
    with pytest.raises(WorkflowError, match=r"node 10:2: unknown node type 'LoraLoader'"):
        editor_to_api(workflow, HEADLESS_NODE_CLASS_MAPPINGS)


def test_a_loop_of_reroutes_is_an_error():
    nodes = [n(1, "Reroute", [("", "*", 2)]), n(2, "Reroute", [("", "*", 1)]),
             n(3, "Sink", [("thing", "THING", 3)])]
    links = [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 2, 0, 3, 0, "THING"]]
    with pytest.raises(WorkflowError, match="circular reference"):
        convert(nodes, links)


def test_a_link_missing_from_the_table_reads_as_unconnected(caplog):
    with caplog.at_level(logging.WARNING, logger="loragraph.graph.editor_format"):
        out = convert([n(2, "Sink", [("thing", "THING", 42)])], [])
    assert out["2"]["inputs"] == {}
    assert "link 42" in caplog.text


def test_malformed_documents_get_clear_errors():
    with pytest.raises(WorkflowError, match=r"nodes\[0\] needs an 'id' and a 'type'"):
        convert([{"type": "Source"}], [])
    with pytest.raises(WorkflowError, match="bad link"):
        convert([n(1, "Source", widgets=[1])], [[1, 2]])


def test_is_valid_connection_follows_litegraph():
    assert is_valid_connection("IMAGE", "IMAGE") and is_valid_connection("*", "PIPELINE")
    assert is_valid_connection("", "X") and is_valid_connection("image", "IMAGE")
    assert is_valid_connection("IMAGE,MASK", "MASK") and not is_valid_connection("IMAGE", "PIPELINE")
