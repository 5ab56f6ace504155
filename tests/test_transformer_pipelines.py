"""Transformer-denoiser pipelines (SD3 shape) through the engine, against raw diffusers, offline.

The pipeline is diffusers' SD3 LoRA-test shape built in code (loragraph.testing.build_tiny_sd3), saved
as a diffusers folder without its T5 encoder and loaded by LoadPipeline like any local model. The
oracle is a fresh copy driven by StableDiffusion3Pipeline's own LoRA API. fp32 on the CPU, 1/255.
"""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff, raw_load
from diffusers.loaders.lora_base import disable_lora_for_text_encoder
from loragraph.base.errors import NodeInputError
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.reconcile import LoraOperationError
from loragraph.nodes import widget_text as wt
from loragraph.testing import build_tiny_sd3, write_lora_file

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

TOL = 1 / 255
SIZE = 32  # the tiny SD3's native size (its VAE does not downsample)
PROMPT = "a red circle on a white background"
MODEL = "tiny-sd3"


@pytest.fixture(scope="module")
def sd3_models(tmp_path_factory):
    """DIR/diffusers/tiny-sd3 (no T5), and LoRAs: a (transformer + both CLIPs, diffusers form),
    b (transformer only, alpha 16 at rank 8), p (a bare PEFT file for the transformer), a2 (a's
    layers, alpha 8)."""
    root = tmp_path_factory.mktemp("sd3-models")
    pipe = build_tiny_sd3()
    pipe.save_pretrained(root / "diffusers" / MODEL)
    loras = root / "loras"
    comps = ("transformer", "text_encoder", "text_encoder_2")
    # scale 1.5: one transformer layer carries the whole effect, so the deltas are made larger.
    write_lora_file(loras / "sd3_a.safetensors", fmt="diffusers", rank=4, seed=31, pipe=pipe,
                    components=comps, scale=1.5)
    write_lora_file(loras / "sd3_b.safetensors", fmt="diffusers", rank=8, alpha=16, seed=32, pipe=pipe,
                    components=("transformer",), scale=1.5)
    write_lora_file(loras / "sd3_p.safetensors", fmt="peft", rank=4, seed=33, pipe=pipe, scale=1.5)
    # a's layers and ranks, other weights and alpha: a switch a -> a2 hot-swaps all three components
    write_lora_file(loras / "sd3_a2.safetensors", fmt="diffusers", rank=4, alpha=8, seed=34, pipe=pipe,
                    components=comps, scale=1.5)
    return root


@pytest.fixture()
def engine(sd3_models, tmp_path):
    from loragraph import host

    host.configure(models_dir=sd3_models, output_dir=tmp_path / "output")
    return Engine()


def render(pipe, seed=1):
    out = pipe(PROMPT, negative_prompt="", num_inference_steps=3, guidance_scale=5.0, width=SIZE, height=SIZE,
               num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return torch.from_numpy(out.images).float()


def sample(engine, handle, seed=1):
    return engine.sample(handle, PROMPT, "", seed, 3, 5.0, SIZE, SIZE)


def load(engine, handle, name, strength=1.0, adapter=""):
    return tr.add_adapter(handle, engine.lora_spec(handle, name, strength, adapter))


def weights(model) -> dict[str, torch.Tensor]:
    """The base weights by their own names (peft keeps them under `.base_layer` while it wraps a layer)."""
    return {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}


def test_the_folder_loads_without_its_t5_and_lists_its_lora_components(engine):
    h = engine.load_pipeline(MODEL)
    pipe = engine.live(h.source).pipe
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and pipe.text_encoder_3 is None
    assert h.source.components == ("transformer", "text_encoder", "text_encoder_2")
    assert h.source.denoiser == "transformer"
    assert max_diff(sample(engine, h), render(build_tiny_sd3())) <= TOL


@pytest.mark.parametrize("name", ["sd3_a.safetensors", "sd3_b.safetensors", "sd3_p.safetensors"])
def test_load_lora_matches_diffusers(engine, sd3_models, name):
    h0 = engine.load_pipeline(MODEL)
    base = sample(engine, h0)
    h = load(engine, h0, name, 0.8, "x")
    raw = build_tiny_sd3()
    raw_load(raw, sd3_models, name, "x")
    raw.set_adapters(["x"], [0.8])
    ours = sample(engine, h)
    assert max_diff(ours, render(raw)) <= TOL
    assert max_diff(ours, base) > 0.01, "the LoRA must visibly change the image"


def test_weights_fuse_unfuse_match_diffusers_and_unfuse_is_bit_exact(engine, sd3_models):
    h0 = engine.load_pipeline(MODEL)
    live = engine.live(h0.source).pipe
    before = {c: weights(getattr(live, c)) for c in ("transformer", "text_encoder", "text_encoder_2")}
    raw = build_tiny_sd3()
    h1 = load(engine, load(engine, h0, "sd3_a.safetensors", 0.7), "sd3_b.safetensors", 1.0)
    raw_load(raw, sd3_models, "sd3_a.safetensors", "sd3_a")
    raw_load(raw, sd3_models, "sd3_b.safetensors", "sd3_b")
    raw.set_adapters(["sd3_a", "sd3_b"], [0.7, 1.0])
    assert max_diff(sample(engine, h1), render(raw)) <= TOL

    h2 = wt.set_weights(h1, "sd3_a, sd3_b", "0.5, 0.9", "0.25", "")
    raw.set_adapters(["sd3_a", "sd3_b"], [{"transformer": 0.5, "text_encoder": 0.25, "text_encoder_2": 0.25},
                                          {"transformer": 0.9, "text_encoder": 0.25, "text_encoder_2": 0.25}])
    unfused = sample(engine, h2)
    assert max_diff(unfused, render(raw)) <= TOL

    h3 = wt.fuse(h2, True, True, 0.6, False, "")
    raw.fuse_lora(components=["transformer", "text_encoder", "text_encoder_2"], lora_scale=0.6,
                  adapter_names=["sd3_a", "sd3_b"])
    assert max_diff(sample(engine, h3), render(raw)) <= TOL

    h4 = tr.unfuse(h3, True, True)
    assert max_diff(sample(engine, h4), unfused) <= TOL
    sample(engine, h0)  # back to no LoRA at all: every base weight is the original, bit for bit
    for component, original in before.items():
        now = weights(getattr(live, component))
        assert now.keys() == original.keys()
        assert all(torch.equal(now[k], original[k]) for k in original), component


def test_a_switch_between_same_shaped_loras_hot_swaps_the_transformer_and_both_text_encoders(
        engine, sd3_models):
    from peft.utils import get_peft_model_state_dict

    h0 = engine.load_pipeline(MODEL)
    live = engine.live(h0.source)
    sample(engine, load(engine, h0, "sd3_a.safetensors", 0.9, "x"))
    live.ops.clear()
    image = sample(engine, load(engine, h0, "sd3_a2.safetensors", 0.9, "y"))
    assert "hotswap" in live.ops and "load_lora_weights" not in live.ops
    raw = build_tiny_sd3()
    raw_load(raw, sd3_models, "sd3_a2.safetensors", "y")
    raw.set_adapters(["y"], [0.9])
    assert max_diff(image, render(raw)) <= TOL
    for comp in ("transformer", "text_encoder", "text_encoder_2"):
        ours, theirs = (get_peft_model_state_dict(getattr(p, comp), adapter_name="y")
                        for p in (live.pipe, raw))
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), comp
        assert (getattr(live.pipe, comp).peft_config["y"].lora_alpha
                == getattr(raw, comp).peft_config["y"].lora_alpha)


def test_text_encoder_switch_matches_diffusers(engine, sd3_models):
    h0 = engine.load_pipeline(MODEL)
    h = tr.toggle_text_encoder(load(engine, h0, "sd3_a.safetensors"), False, "text_encoder_2")
    raw = build_tiny_sd3()
    raw_load(raw, sd3_models, "sd3_a.safetensors", "sd3_a")
    disable_lora_for_text_encoder(raw.text_encoder_2)
    assert max_diff(sample(engine, h), render(raw)) <= TOL


def test_branches_stay_independent(engine):
    h0 = engine.load_pipeline(MODEL)
    a = load(engine, h0, "sd3_a.safetensors", 0.9)
    b_fused = wt.fuse(load(engine, h0, "sd3_b.safetensors", 0.8), True, False, 1.0, False, "")
    first = sample(engine, a)
    sample(engine, b_fused)
    assert torch.equal(sample(engine, a), first)


def test_a_noise_prediction_scheduler_is_refused_by_name_and_changes_nothing(engine):
    h = load(engine, engine.load_pipeline(MODEL), "sd3_a.safetensors")
    before = sample(engine, h)
    with pytest.raises(NodeInputError) as err:
        engine.sample(h, PROMPT, "", 1, 3, 5.0, SIZE, SIZE, scheduler="euler")
    assert err.value.input_name == "scheduler" and "flow matching" in str(err.value)
    assert type(engine.live(h.source).pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert torch.equal(sample(engine, h), before)


def test_a_unet_lora_on_a_transformer_pipeline_is_refused_and_leaves_nothing(engine, sd3_models, tmp_path):
    write_lora_file(sd3_models / "loras" / "for_sd.safetensors", "sd", "diffusers", rank=4, seed=5,
                    components=("unet",))
    h0 = engine.load_pipeline(MODEL)
    with pytest.raises(LoraOperationError) as err:
        sample(engine, load(engine, h0, "for_sd.safetensors"))
    assert err.value.input_name == "lora_name"
    assert "none of its 48 LoRA modules land" in str(err.value) and "has no unet" in str(err.value)
    assert engine.live(h0.source).pipe.get_list_adapters() in ({}, {"transformer": [], "text_encoder": [],
                                                                    "text_encoder_2": []})


def test_save_lora_round_trips_through_diffusers(engine, sd3_models, tmp_path):
    h = load(engine, engine.load_pipeline(MODEL), "sd3_a.safetensors", 1.0, "a")
    out = engine.save_lora(h, "a", tmp_path / "saved.safetensors", fmt="diffusers")
    raw = build_tiny_sd3()
    raw.load_lora_weights(str(out.parent), weight_name=out.name, adapter_name="saved")
    assert max_diff(render(raw), sample(engine, h)) <= TOL


# --- per-block weights on a transformer denoiser (diffusers offers them on UNets only) --------------


def test_transformer_block_weights_by_index(engine, sd3_models):
    """`{"transformer_blocks": {"0": w}}` scales block 0's LoRA layers: the tiny SD3 has one block,
    holding every transformer LoRA layer of sd3_a, so block weight w equals transformer weight w in
    diffusers' own per-component set_adapters; a block not listed keeps 1.0; bad forms name the input."""
    h0 = engine.load_pipeline(MODEL)
    h1 = load(engine, h0, "sd3_a.safetensors", 1.0, "a")
    raw = build_tiny_sd3()
    raw_load(raw, sd3_models, "sd3_a.safetensors", "a")
    for blocks, w in (('{"transformer_blocks": {"0": 0.3}}', 0.3), ('{"double": [0.0]}', 0.0),
                      ('{"transformer": {"single_transformer_blocks": {"0": 0.0}}}', 1.0)):
        h = wt.set_weights(h1, "a", "0.8", "0.6", blocks)
        raw.set_adapters(["a"], [{"transformer": w, "text_encoder": 0.6, "text_encoder_2": 0.6}])
        assert max_diff(sample(engine, h), render(raw)) <= TOL, blocks
    assert engine.info(h)["adapters"]["a"]["weights"]["transformer"] == {
        "single_transformer_blocks": {"0": 0.0}}
    with pytest.raises(NodeInputError, match="block_weights: transformer: unknown block kind 'down'"):
        wt.set_weights(h1, "a", "1", "", '{"transformer": {"down": 1.0}}')
    with pytest.raises(NodeInputError, match="block_weights: transformer: double: expected block index"):
        wt.set_weights(h1, "a", "1", "", '{"double": {"x": 1.0}}')
