"""Block-weight vectors (docs/CONTRACT.md, "Block-weight vectors").

Oracles: (1) ComfyUI-Inspire-Pack's LoRA Block Weight in real ComfyUI: tests/fixtures/lbw_inspire.json
holds its patched-weight deltas (sum and L2 norm per module) for the same files and vectors, made by
tools/lbw_crosscheck.py, and loragraph's fused deltas must match them; (2) raw diffusers with the
per-block dict that means the same thing draws the same image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.loaders import transitions
from loragraph.loaders.engine import get_engine
from loragraph.nodes import widget_text as wt

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import block_shapes
import lbw_crosscheck

FIXTURE = Path(__file__).parent / "fixtures" / "lbw_inspire.json"
TOL = 1 / 255
SD15_VECTOR = "0.5,1,0.2,0.3,0.4,0.6,0.7,0.9,1.1,1.2,1.3,0.1,0.2,0.3,-1,0,1"


@pytest.fixture(scope="module")
def layout_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout-models")
    block_shapes.write_models(root)
    return root


@pytest.fixture()
def models(layout_models, tmp_path):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=layout_models, output_dir=tmp_path / "out")
    yield layout_models
    host.configure(models_dir=before[0], output_dir=before[1])


def loaded(kind, strength=1.0):
    engine = get_engine()
    h0 = engine.load_pipeline(f"{kind}-layout")
    return h0, transitions.add_adapter(h0, engine.lora_spec(h0, f"lbw_{kind}.safetensors", strength, "lbw"))


@pytest.mark.parametrize("case", json.loads(FIXTURE.read_text())["cases"],
                         ids=lambda c: f"{c['layout']}-{c['vector'][:12]}")
def test_patched_weights_equal_inspire_in_comfyui(models, case):
    ours = lbw_crosscheck.loragraph_deltas(f"{case['layout']}-layout", f"lbw_{case['layout']}.safetensors",
                                           case["vector"], case["strength"], case["text_encoder_strength"])
    theirs = case["deltas"]
    assert sorted(ours) == sorted(theirs)  # the same modules patched (and a value 0 mutes the same ones)
    assert any(k.startswith("text_encoder") for k in ours) and any(k.startswith("unet.") for k in ours)
    for name, (total, norm) in theirs.items():
        got_total, got_norm = lbw_crosscheck.stats(ours[name])
        assert got_norm == pytest.approx(norm, rel=1e-5), name
        assert got_total == pytest.approx(total, rel=1e-4, abs=1e-5 * norm), name


def test_vector_equals_the_diffusers_block_dict(models):
    from diffusers import StableDiffusionPipeline

    _, h = loaded("sd15")
    h = wt.set_weights(h, "lbw", "0.8", "0.6", SD15_VECTOR)
    engine = get_engine()
    ours = engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
    plain = engine.sample(wt.set_weights(loaded("sd15")[1], "lbw", "0.8", "0.6"), PROMPT, "", 1, STEPS, 7.0,
                          SIZE, SIZE)

    raw = StableDiffusionPipeline.from_pretrained(models / "diffusers" / "sd15-layout")
    raw.set_progress_bar_config(disable=True)
    raw.load_lora_weights(str(models / "loras"), weight_name="lbw_sd15.safetensors", adapter_name="lbw")
    w = 0.8
    raw.set_adapters(["lbw"], [{
        "unet": {"down": {"block_0": [1 * w, 0.2 * w], "block_1": [0.3 * w, 0.4 * w],
                          "block_2": [0.6 * w, 0.7 * w]},
                 "mid": 0.9 * w,
                 "up": {"block_1": [1.1 * w, 1.2 * w, 1.3 * w], "block_2": [0.1 * w, 0.2 * w, 0.3 * w],
                        "block_3": [-1 * w, 0 * w, 1 * w]}},
        "text_encoder": 0.6 * 0.5,
    }])
    out = raw(PROMPT, negative_prompt="", num_inference_steps=STEPS, guidance_scale=7.0, width=SIZE,
              height=SIZE, num_images_per_prompt=1, generator=torch.Generator("cpu").manual_seed(1),
              output_type="np")
    assert max_diff(ours, torch.from_numpy(out.images).float()) <= TOL
    assert max_diff(ours, plain) > 0.01, "the vector must change the image"


def test_presets_forms_and_errors(models):
    _, h = loaded("sd15")
    midd = "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0"
    explicit = wt.set_weights(h, "lbw", "0.7", "", midd)
    assert wt.set_weights(h, "lbw", "0.7", "", "MIDD").state == explicit.state
    assert wt.set_weights(h, "lbw", "0.7", "", " SD-MIDD ").state == explicit.state  # Inspire's name
    assert wt.set_weights(h, "", "0.7", "", json.dumps({"lbw": "MIDD"})).state == explicit.state
    assert wt.set_weights(h, "lbw", "0.7", "", "OUTALL").state != explicit.state

    for text, says in [("1,1,1,1,1,1,1,1,R,R,R,R,R,R,R,R,R", "value 9 is 'R'"),
                       ("A,1,1,1,1,1,1,1,1,1,1,1,A,A,A,A,A", "letters R, U, A and B"),
                       ("1,0,1", "3 values, but this UNet takes 17"),
                       ("MIDDLE", "neither a vector nor a preset"),
                       ("1,0,0,0,0,1,0,0,0,0,0,0", "12 values, but this UNet takes 17"),  # an SDXL vector
                       ("1,0,x,0,1,1,1,1,1,1,1,1,0,0,0,0,0", "value 3 ('x') is not a number")]:
        with pytest.raises(NodeInputError) as e:
            wt.set_weights(h, "lbw", "1.0", "", text)
        assert e.value.input_name == "block_weights" and says in str(e.value), str(e.value)

    _, xl = loaded("sdxl")
    assert wt.set_weights(xl, "lbw", "1", "", "OUTALL").state == wt.set_weights(
        xl, "lbw", "1", "", "1,0,0,0,0,0,1,1,1,1,1,1").state
    with pytest.raises(NodeInputError, match="INS"):  # an SD 1.x preset that SDXL does not have
        wt.set_weights(xl, "lbw", "1", "", "INS")


def test_tiny_layout_and_a_file_beyond_attention_blocks(models):
    # the built-in tiny SD has 2 + 1 + 3 attention blocks: 7 values; a LoRA on a ResNet conv is refused
    from loragraph.testing import write_lora_file

    write_lora_file(models / "loras" / "attn.safetensors", "sd", "diffusers", rank=2, seed=2)
    write_lora_file(models / "loras" / "resnet.safetensors", "sd", "diffusers", rank=2, seed=3,
                    targets=("to_q", "conv1"), components=("unet",))
    engine = get_engine()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    attn = transitions.add_adapter(h0, engine.lora_spec(h0, "attn.safetensors", 1.0, "a"))
    h = wt.set_weights(attn, "a", "0.5", "", "1,0,0,1,1,1,0")
    assert h.state.active.weight("a") is not None
    with pytest.raises(NodeInputError, match="17 values, but this UNet takes 7"):
        wt.set_weights(attn, "a", "1", "", "ALL")
    resnet = transitions.add_adapter(h0, engine.lora_spec(h0, "resnet.safetensors", 1.0, "r"))
    with pytest.raises(NodeInputError, match="outside the UNet's attention blocks"):
        wt.set_weights(resnet, "r", "1", "", "1,1,1,1,1,1,1")
