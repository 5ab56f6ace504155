"""LoRAStack and PromptLoRAs (docs/CONTRACT.md, "LoRAStack and PromptLoRAs").

Oracles: the chain of LoadLoRA + SetAdapterWeights the stack stands for (same handle state, same
image bit for bit), and raw diffusers loading the same files under the same names (1/255).
"""

from __future__ import annotations

import pytest
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_load, raw_pipeline, render
from loragraph.base.errors import NodeInputError
from loragraph.loaders.engine import get_engine
from loragraph.nodes.lora import LoadLoRA, SetAdapterWeights
from loragraph.nodes.stack import LoRAStack, PromptLoRAs
from loragraph.nodes.stack_text import strip_tags

TOL = 1 / 255


def result(out):
    return out["result"] if isinstance(out, dict) else out


def sample(handle):
    return get_engine().sample(handle, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)


@pytest.fixture()
def base(configured):
    return get_engine().load_pipeline("builtin:tiny-sd")


STACK = """sd_a.safetensors:0.7:0.3
# sd_c.safetensors:0.5   (off: changes nothing)

sd_b.safetensors:0.9
  sub/sd_d.safetensors
sd_a.safetensors:-0.4
"""


def chain(base):
    h = base
    for name, strength in (("sd_a.safetensors", 0.7), ("sd_b.safetensors", 0.9),
                           ("sub/sd_d.safetensors", 1.0), ("sd_a.safetensors", -0.4)):
        (h,) = result(LoadLoRA().run(h, name, strength, ""))
    (h,) = result(SetAdapterWeights().run(h, "sd_a, sd_b, sd_d, sd_a_2", "0.7, 0.9, 1.0, -0.4",
                                          "0.3, 0.9, 1.0, -0.4"))
    return h


def test_stack_is_the_chain_bit_for_bit_and_raw_diffusers(base, configured):
    stacked, words = result(LoRAStack().run(base, STACK))
    chained = chain(base)
    assert stacked.state == chained.state
    assert [a.name for a in stacked.state.adapters] == ["sd_a", "sd_b", "sd_d", "sd_a_2"]  # unique in order
    image = sample(stacked)
    assert max_diff(image, sample(chained)) == 0
    assert max_diff(image, sample(base)) > 0.01, "the LoRAs must visibly change the image"
    assert words == ""  # none of these files has trigger words

    raw = raw_pipeline()
    for name, adapter in (("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"),
                          ("sub/sd_d.safetensors", "sd_d"), ("sd_a.safetensors", "sd_a_2")):
        raw_load(raw, configured, name, adapter)
    raw.set_adapters(["sd_a", "sd_b", "sd_d", "sd_a_2"],
                     [{"unet": 0.7, "text_encoder": 0.3}, {"unet": 0.9, "text_encoder": 0.9},
                      {"unet": 1.0, "text_encoder": 1.0}, {"unet": -0.4, "text_encoder": -0.4}])
    assert max_diff(image, render(raw)) <= TOL


def test_disabled_lines_change_nothing(base):
    with_off, _ = result(LoRAStack().run(base, "sd_a.safetensors:0.6\n#sd_b.safetensors:1\n# junk :: x"))
    without, _ = result(LoRAStack().run(base, "sd_a.safetensors:0.6"))
    assert with_off.state == without.state
    assert max_diff(sample(with_off), sample(without)) == 0
    all_off, words = result(LoRAStack().run(base, "#sd_a.safetensors\n\n   \n# sd_b.safetensors:0.5"))
    assert all_off is base and words == ""


def test_stack_keeps_upstream_adapters_loaded_but_names_only_its_own(base):
    (h,) = result(LoadLoRA().run(base, "sd_b.safetensors", 1.0, ""))
    stacked, _ = result(LoRAStack().run(h, "sd_b.safetensors:0.5"))  # the same stem again: sd_b_2
    assert [a.name for a in stacked.state.adapters] == ["sd_b", "sd_b_2"]
    assert stacked.state.active.names == ("sd_b_2",)  # SetAdapterWeights naming the stack's adapters


@pytest.mark.parametrize(("text", "where", "says"), [
    ("sd_a.safetensors\nsd_aa.safetensors:0.5", "line 2", "closest: sd_a.safetensors"),
    ("\n\nsd_a.safetensors:lots", "line 3", "strength 'lots' is not a number"),
    ("sd_a.safetensors:1:nan", "line 1", "must be a finite number"),
    ("sd_a.safetensors:1:1:1", "line 1", "expected lora_name[:strength[:text_encoder_strength]]"),
    ("../sd_a.safetensors", "line 1", "is not a file of the loras folder"),
    ("bad/not_a_lora.safetensors", "line 1", ""),
])
def test_stack_errors_name_loras_and_the_line(base, text, where, says):
    from loragraph import host

    if text.startswith("bad/"):
        text = next(f for f in host.list_loras() if f.startswith("bad/"))
    before = base.state
    with pytest.raises(NodeInputError) as e:
        LoRAStack().run(base, text)
    assert e.value.input_name == "loras" and where in str(e.value) and says in str(e.value)
    assert base.state == before
    if not text.startswith("bad/"):  # the same check before anything runs
        assert where in LoRAStack.VALIDATE_INPUTS(text)


PROMPT_TAGS = "<lora:sd_a:0.7:0.3>a red circle, <LORA:sd_b:0.9> on white  <lyco:sd_d:1.0>\n<lora:sd_a:-0.4>"


def test_prompt_loras_equal_the_stack_and_strip_the_text(base):
    stacked, _ = result(LoRAStack().run(base, STACK))
    prompted, text, words = result(PromptLoRAs().run(base, PROMPT_TAGS))
    assert prompted.state == stacked.state
    assert max_diff(sample(prompted), sample(stacked)) == 0
    assert text == "a red circle, on white" and words == ""


@pytest.mark.parametrize(("text", "stripped"), [
    ("a <lora:x:1> b", "a b"),
    ("a\t<lora:x:1>  <lyco:y:0.5:1>\nb", "a b"),
    ("<lora:x:1> a, b  ", "a, b  "),
    ("a,<lora:x:1>", "a,"),
    ("no tags  here ", "no tags  here "),
    ("a <lora:x> b", "a b"),
])
def test_strip_tags_exact(text, stripped):
    assert strip_tags(text) == stripped


def test_prompt_loras_names(base, tmp_path):
    from loragraph import host

    (h, text, _) = result(PromptLoRAs().run(base, "x <lora:sub/sd_d:0.5> y"))  # a path without extension
    assert [a.name for a in h.state.adapters] == ["sd_d"] and text == "x y"
    with pytest.raises(NodeInputError) as e:
        PromptLoRAs().run(base, "cat <lora:sd_aa:1>")
    assert e.value.input_name == "text" and "tag 1" in str(e.value)
    assert "closest: sd_a.safetensors" in str(e.value)  # file names
    assert "closest: sd_a.safetensors" in PromptLoRAs.VALIDATE_INPUTS("cat <lora:sd_aa:1>")
    with pytest.raises(NodeInputError, match="weight 'x' is not a number"):
        PromptLoRAs().run(base, "<lora:sd_a:x>")

    # two files with one stem: an error naming both paths
    from loragraph.testing import write_lora_file

    before = host.folder_roots("loras")[0].parent, host.output_dir()
    write_lora_file(tmp_path / "loras" / "one" / "twin.safetensors", "sd", "diffusers", rank=2, seed=5)
    write_lora_file(tmp_path / "loras" / "two" / "twin.safetensors", "sd", "diffusers", rank=2, seed=6)
    host.configure(models_dir=tmp_path, output_dir=tmp_path / "out")
    try:
        with pytest.raises(NodeInputError) as e:
            PromptLoRAs().run(base, "<lora:twin:1>")
        assert e.value.input_name == "text"
        assert "one/twin.safetensors" in str(e.value) and "two/twin.safetensors" in str(e.value)
        (h, _, _) = result(PromptLoRAs().run(base, "<lora:two/twin:1>"))
        assert h.state.adapters[0].path.endswith("two/twin.safetensors")
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])


@pytest.mark.parametrize("name", ["lora_stack", "prompt_loras", "block_weights"])
def test_examples_run(name, tmp_path):
    """examples/workflows/ for these nodes run on examples/models, in 2 steps."""
    from pathlib import Path

    from loragraph import host
    from loragraph.graph import Executor, apply_overrides, load_workflow
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    examples = Path(__file__).resolve().parents[1] / "examples"
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=examples / "models", output_dir=tmp_path)
    try:
        prompt = load_workflow(examples / "workflows" / f"{name}.json")
        samplers = [i for i, n in prompt.items() if n["class_type"] == "Sampler"]
        result = Executor(HEADLESS_NODE_CLASS_MAPPINGS).execute(
            apply_overrides(prompt, [f"{i}.steps=2" for i in samplers]))
        assert result.ok, result.error_lines()
        assert list(tmp_path.rglob("*.png"))
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])
