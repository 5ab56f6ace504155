"""Hotswap and weight schedules on the denoisers of every family beyond SD/SDXL/SD3 (Flux included),
against raw diffusers on the same built-in tiny pipeline, image for image (2/255, fp32, CPU).

Hotswap: a second file of the same layers and rank replaces the first in its layers (the engine's
ops say `hotswap`, no new `load_lora_weights`); the oracle is a fresh diffusers load of the second
file. Schedule: diffusers' documented recipe, `set_adapters` in `callback_on_step_end`, as in
test_sampler_families' Wan schedule test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import max_diff
from loragraph.builtin_models.catalog import BUILTINS
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt
from loragraph.testing import WAN_TARGETS, write_lora_file
from test_families_oracle import FAMILIES, write_family_file
from test_sampler_families import family_inputs, raw_call

TOL = 2 / 255
CHANGE = 0.01

TARGETS = {family: targets for family, (targets, _) in FAMILIES.items()} | {
    "tiny-wan": WAN_TARGETS,
    "tiny-wan22": WAN_TARGETS,
    "tiny-qwenimage": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "img_mlp.net.2"),
    "tiny-flux": ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "ff.net.0.proj"),
}
STEPS = 4
PER_STEP = [1.0, 1.0, 0.0, 0.0]  # "0:1, 0.5:0" held: strength 1 for the first half of the steps, then 0


def name(family: str, seed: int) -> str:
    return f"{family.removeprefix('tiny-')}_{seed}.safetensors"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Two diffusers-form files per family (seeds 1 and 2): same layers and rank, different numbers."""
    root = tmp_path_factory.mktemp("family-switch")
    for family, targets in TARGETS.items():
        pipe = BUILTINS[family].builder()
        for seed in (1, 2):
            write_lora_file(root / "loras" / name(family, seed), fmt="diffusers", rank=4, alpha=2, seed=seed,
                            pipe=pipe, components=("transformer",), targets=targets, scale=1.5)
    return root


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory) -> Engine:
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path_factory.mktemp("output"))
    return Engine()


def raw(family: str, models: Path, *files: tuple[str, str]) -> Any:
    """A fresh build with `files` ((file name, adapter name), ...) loaded by diffusers."""
    pipe = BUILTINS[family].builder()
    pipe.set_progress_bar_config(disable=True)
    for file, adapter in files:
        pipe.load_lora_weights(str(models / "loras"), weight_name=file, adapter_name=adapter)
    return pipe


@pytest.mark.parametrize("family", sorted(TARGETS))
def test_a_switch_between_two_files_hot_swaps_and_renders_as_a_fresh_load(engine, models, family):
    inputs, kwargs = family_inputs(family, batch_size=1)
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    first = tr.add_adapter(h0, engine.lora_spec(h0, name(family, 1), 1.0, "a"))
    before = engine.sample(first, **inputs)
    live, _ = engine.realize(first)
    live.ops.clear()
    second = tr.add_adapter(h0, engine.lora_spec(h0, name(family, 2), 0.7, "b"))
    live, warnings = engine.realize(second)
    ops = [op.split(" ")[0] for op in live.ops]
    assert "hotswap" in ops and "load_lora_weights" not in ops, live.ops
    assert warnings == [] and live.pipe.get_list_adapters() == {"transformer": ["b"]}
    got = engine.sample(second, **inputs)

    oracle = raw(family, models, (name(family, 2), "b"))
    oracle.set_adapters(["b"], [0.7])
    assert max_diff(got, raw_call(oracle, **kwargs)) <= TOL
    assert max_diff(got, before) > CHANGE  # the second file's numbers, not the first's


# The Flux-family loaders convert these layouts inside `load_lora_weights` (kohya names and alphas;
# Flux 2's ai-toolkit names), so a first swap must still go through diffusers' conversion.
OTHER_LAYOUT_SWAPS = {
    "tiny-kontext": "kohya-flux", "tiny-chroma": "kohya-flux", "tiny-flux2": "flux2-ai-toolkit",
}


@pytest.mark.parametrize("family", sorted(OTHER_LAYOUT_SWAPS))
def test_a_first_swap_of_an_other_layout_file_is_converted_as_diffusers_does(engine, models, family):
    """A file in the family's other layout, never swapped on this pipeline, swapped into the slot of
    another file of that layout: the engine's fast first swap (Flux's shape checks answered from the slot, one
    state_dict walk) must give a fresh diffusers load of that file, weight for weight and image for image."""
    layout = OTHER_LAYOUT_SWAPS[family]
    other = f"{family.removeprefix('tiny-')}_{layout}_swap.safetensors"
    write_family_file(models / "loras" / other, family, layout, seed=9)
    slot = f"{family.removeprefix('tiny-')}_{layout}_slot.safetensors"  # the same layers and ranks
    write_family_file(models / "loras" / slot, family, layout, seed=3)
    inputs, kwargs = family_inputs(family, batch_size=1)
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    first = tr.add_adapter(h0, engine.lora_spec(h0, slot, 1.0, "a"))
    before = engine.sample(first, **inputs)
    live, _ = engine.realize(first)
    live.swap_inputs.clear()  # never swapped on this pipeline
    live.ops.clear()
    second = tr.add_adapter(h0, engine.lora_spec(h0, other, 1.0, "b"))
    live, _ = engine.realize(second)
    ops = [op.split(" ")[0] for op in live.ops]
    assert "hotswap" in ops and "load_lora_weights" not in ops, live.ops

    oracle = raw(family, models, (other, "b"))
    ours = {k: v for k, v in live.pipe.transformer.state_dict().items() if ".lora_" in k}
    theirs = {k: v for k, v in oracle.transformer.state_dict().items() if ".lora_" in k}
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    layer = next(m for m in live.pipe.transformer.modules() if "b" in getattr(m, "scaling", {}))
    twin = next(m for m in oracle.transformer.modules() if "b" in getattr(m, "scaling", {}))
    assert layer.scaling["b"] == twin.scaling["b"]  # the file's alpha, as diffusers converted it
    got = engine.sample(second, **inputs)
    assert max_diff(got, raw_call(oracle, **kwargs)) <= TOL
    assert max_diff(got, before) > CHANGE


# Wan 2.2's second half of the steps runs on transformer_2, which a file on `transformer` leaves alone:
# its schedule is the test after this one's.
@pytest.mark.parametrize("family", sorted(set(TARGETS) - {"tiny-wan22"}))
def test_a_weight_schedule_is_diffusers_step_callback_recipe(engine, models, family):
    inputs, kwargs = family_inputs(family, batch_size=1, steps=STEPS)
    kwargs["num_inference_steps"] = STEPS
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    loaded = tr.add_adapter(h0, engine.lora_spec(h0, name(family, 1), 1.0, "t"))
    scheduled = wt.schedule_weights(loaded, "t", "0:1, 0.5:0", "hold")
    got = engine.sample(scheduled, **inputs)
    constant = engine.sample(loaded, **inputs)

    oracle = raw(family, models, (name(family, 1), "t"))
    oracle.set_adapters(["t"], [PER_STEP[0]])

    def on_step_end(pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
        if i + 1 < STEPS:
            pipe.set_adapters(["t"], [PER_STEP[i + 1]])
        return {}

    assert max_diff(got, raw_call(oracle, callback_on_step_end=on_step_end, **kwargs)) <= TOL
    assert max_diff(got, constant) > CHANGE  # the schedule did something
    # the static weights are back after the call: an unscheduled render is the constant one again
    assert max_diff(engine.sample(loaded, **inputs), constant) == 0.0


def test_a_schedule_on_the_wan22_low_noise_expert_leaves_the_high_noise_file_constant(engine, models):
    family = "tiny-wan22"
    inputs, kwargs = family_inputs(family, batch_size=1, steps=STEPS)
    kwargs["num_inference_steps"] = STEPS
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    h = tr.add_adapter(h0, engine.lora_spec(h0, name(family, 1), 1.0, "high"))
    h = tr.add_adapter(h, engine.lora_spec(h, name(family, 2), 1.0, "low", target="transformer_2"))
    got = engine.sample(wt.schedule_weights(h, "low", "0:1, 0.5:0", "hold"), **inputs)

    oracle = raw(family, models, (name(family, 1), "high"))
    oracle.load_lora_weights(str(models / "loras"), weight_name=name(family, 2), adapter_name="low",
                             load_into_transformer_2=True)
    oracle.set_adapters(["high", "low"], [1.0, PER_STEP[0]])

    def on_step_end(pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
        if i + 1 < STEPS:
            pipe.set_adapters(["high", "low"], [1.0, PER_STEP[i + 1]])
        return {}

    assert max_diff(got, raw_call(oracle, callback_on_step_end=on_step_end, **kwargs)) <= TOL
    assert max_diff(got, engine.sample(h, **inputs)) > CHANGE
