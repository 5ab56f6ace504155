"""The built-in tiny pipelines of the other model families (Wan, Qwen-Image, ...): offline, deterministic,
a render in seconds on a CPU, and a catalog that says, before building, which components take LoRAs.

Each pipeline is called with the arguments its own `__call__` takes among a fixed set (prompt, steps,
size, frames, ...), so one test covers image and video families, with and without true CFG.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from loragraph.builtin_models.catalog import BUILTIN_MODELS, BUILTINS
from loragraph.loaders.pipelines import BUILTIN_COMPONENTS
from PIL import Image

# Every built-in but the first four (SD1, SDXL, Flux, the demo model), which their own tests cover.
FIRST_BUILTINS = ("tiny-sd", "tiny-sdxl", "tiny-flux", "shapes")
FAMILIES = [name for name in BUILTINS if name not in FIRST_BUILTINS]
PROMPT = "a red circle on a white background"
# Families called with an input image: Kontext edits one. (Klein takes optional reference images too,
# of 64 px or more; it is rendered from the prompt alone, as text-to-image.)
EDITS_AN_IMAGE = {"tiny-kontext"}

_built: dict[str, object] = {}


def built(name: str):
    """One build per family for the module (the determinism test builds its own second one)."""
    if name not in _built:
        _built[name] = BUILTIN_MODELS[name][0]()
    return _built[name]


def call_arguments(pipe, name: str, steps: int = 2) -> dict:
    """The render arguments `pipe.__call__` accepts, at the builtin's native size and frame count."""
    entry = BUILTINS[name]
    wanted = {
        "prompt": PROMPT,
        "negative_prompt": "blurry",
        "num_inference_steps": steps,
        "guidance_scale": 4.0,
        "true_cfg_scale": 4.0,
        "width": entry.native_size,
        "height": entry.native_size,
        "num_frames": entry.frames,
        "num_images_per_prompt": 1,
        "num_videos_per_prompt": 1,
        "image": Image.new("RGB", (entry.native_size, entry.native_size), (200, 40, 40)),
        "generator": torch.Generator("cpu").manual_seed(0),
        "output_type": "np",
    }
    if name not in EDITS_AN_IMAGE:
        del wanted["image"]
    accepted = inspect.signature(type(pipe).__call__).parameters
    return {k: v for k, v in wanted.items() if k in accepted}


def expected_shape(name: str) -> tuple[int, ...]:
    entry = BUILTINS[name]
    size = entry.native_size
    return (1, size, size, 3) if entry.frames is None else (1, entry.frames, size, size, 3)


@pytest.mark.parametrize("name", FAMILIES)
def test_building_twice_gives_the_same_bits(name):
    first = {c: m.state_dict() for c, m in built(name).components.items() if isinstance(m, torch.nn.Module)}
    second_pipe = BUILTIN_MODELS[name][0]()
    second = {c: m.state_dict() for c, m in second_pipe.components.items() if isinstance(m, torch.nn.Module)}
    assert first.keys() == second.keys() and first
    for component, state in first.items():
        assert state.keys() == second[component].keys(), component
        for key, tensor in state.items():
            assert torch.equal(tensor, second[component][key]), f"{component}.{key}"


@pytest.mark.parametrize("name", FAMILIES)
def test_renders_a_finite_picture_at_its_native_size(name):
    pipe = built(name)
    assert type(pipe).__name__ == BUILTINS[name].pipeline_class
    out = pipe(**call_arguments(pipe, name))[0]
    assert isinstance(out, np.ndarray)
    assert out.shape == expected_shape(name)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("name", FAMILIES)
def test_catalog_components_are_the_mixins_that_the_pipeline_has(name):
    pipe = built(name)
    mixin = type(pipe)._lora_loadable_modules
    assert BUILTIN_COMPONENTS[name] == tuple(c for c in mixin if getattr(pipe, c, None) is not None)


def test_every_family_is_offered_by_load_pipeline():
    from loragraph.nodes.pipeline import model_choices

    assert set(FAMILIES) >= {"tiny-wan", "tiny-wan22", "tiny-qwenimage", "tiny-zimage", "tiny-chroma",
                             "tiny-kontext", "tiny-ltx"}
    assert {f"builtin:{name}" for name in FAMILIES} <= set(model_choices())


def test_the_first_builtins_keep_their_components():
    assert BUILTIN_COMPONENTS["tiny-sd"] == ("unet", "text_encoder")
    assert BUILTIN_COMPONENTS["tiny-sdxl"] == ("unet", "text_encoder", "text_encoder_2")
    assert BUILTIN_COMPONENTS["tiny-flux"] == ("transformer", "text_encoder")
    assert BUILTIN_COMPONENTS["shapes"] == ("unet", "text_encoder")
    assert BUILTIN_MODELS["tiny-sd"][1] == 64 and BUILTIN_MODELS["shapes"][1] == 32


def test_wan22_has_two_different_experts_and_samples_with_both():
    pipe = built("tiny-wan22")
    assert pipe.config.boundary_ratio is not None
    high, low = pipe.transformer, pipe.transformer_2
    assert any(not torch.equal(a, b) for a, b in zip(high.state_dict().values(), low.state_dict().values(),
                                                       strict=True))
    calls = {"transformer": 0, "transformer_2": 0}
    hooks = [getattr(pipe, c).register_forward_hook(lambda *_, c=c: calls.__setitem__(c, calls[c] + 1))
             for c in calls]
    try:
        out = pipe(**call_arguments(pipe, "tiny-wan22", steps=4))[0]
    finally:
        for hook in hooks:
            hook.remove()
    assert np.isfinite(out).all()
    assert calls["transformer"] > 0 and calls["transformer_2"] > 0, calls


def test_qwenimage_drop_index_cuts_exactly_the_system_prompt():
    """Qwen-Image drops its template's first tokens (a count made on Qwen's vocabulary): the built-in
    tokenizer's whole-word tokens give the same count, so what the transformer sees starts at the prompt."""
    pipe = built("tiny-qwenimage")
    system = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(system).input_ids) == pipe.prompt_template_encode_start_idx


def test_hunyuanvideo_crop_start_cuts_exactly_the_system_prompt():
    """HunyuanVideo crops its template's first tokens (95, counted on Llama 3's vocabulary) off the
    encoder's output: the built-in tokenizer's whole-word tokens give the same count."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    pipe = built("tiny-hunyuanvideo")
    system = DEFAULT_PROMPT_TEMPLATE["template"].split("{}")[0]
    assert len(pipe.tokenizer(system).input_ids) == DEFAULT_PROMPT_TEMPLATE["crop_start"]
