"""Each engine operation gives the image the same raw diffusers calls give (CONTRACT: Semantics).

The oracle is a fresh tiny pipeline driven by diffusers' own API; the engine runs the same steps
through PIPELINE handles and the reconciler. Tolerance: 1/255 of a pixel, fp32 on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_load, raw_pipeline, render
from diffusers.loaders.lora_base import disable_lora_for_text_encoder
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

TOL = 1 / 255


@pytest.fixture()
def engine(configured):
    return Engine()


def sample(engine, handle, seed=1):
    return engine.sample(handle, PROMPT, "", seed, STEPS, 7.0, SIZE, SIZE)


def load(engine, handle, name, strength=1.0, adapter=""):
    return tr.add_adapter(handle, engine.lora_spec(handle, name, strength, adapter))


@pytest.mark.parametrize("name", ["sd_a.safetensors", "sd_b.safetensors", "sd_c.safetensors",
                                  "sd_old.safetensors"])
def test_load_lora_matches_diffusers_for_every_format(engine, configured, name):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    base = sample(engine, h0)
    h = load(engine, h0, name, 0.8, "x")
    raw = raw_pipeline()
    raw_load(raw, configured, name, "x")
    raw.set_adapters(["x"], [0.8])
    ours = sample(engine, h)
    assert max_diff(ours, render(raw)) <= TOL
    assert max_diff(ours, base) > 0.01, "the LoRA must visibly change the image"


def test_load_two_then_weights_then_fuse_then_unfuse(engine, configured):
    raw = raw_pipeline()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h1 = load(engine, load(engine, h0, "sd_a.safetensors", 0.7), "sd_b.safetensors", 1.0)
    raw_load(raw, configured, "sd_a.safetensors", "sd_a")
    raw_load(raw, configured, "sd_b.safetensors", "sd_b")
    raw.set_adapters(["sd_a", "sd_b"], [0.7, 1.0])  # LoadLoRA: every loaded adapter active at its strength
    assert max_diff(sample(engine, h1), render(raw)) <= TOL

    h2 = wt.set_weights(h1, "sd_a, sd_b", "0.5, 0.9", "0.25", "")
    raw.set_adapters(["sd_a", "sd_b"], [{"unet": 0.5, "text_encoder": 0.25},
                                        {"unet": 0.9, "text_encoder": 0.25}])
    unfused = sample(engine, h2)
    assert max_diff(unfused, render(raw)) <= TOL

    h3 = wt.fuse(h2, True, True, 0.6, False, "")
    raw.fuse_lora(components=["unet", "text_encoder"], lora_scale=0.6, adapter_names=["sd_a", "sd_b"])
    assert max_diff(sample(engine, h3), render(raw)) <= TOL

    h4 = tr.unfuse(h3, True, True)
    assert max_diff(sample(engine, h4), unfused) <= TOL  # diffusers' own unfuse would drift after lora_scale


def test_set_adapters_subset_makes_others_inactive(engine, configured):
    raw = raw_pipeline()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = wt.set_weights(load(engine, load(engine, h0, "sd_a.safetensors"), "sd_b.safetensors"), "sd_b", "0.6")
    raw_load(raw, configured, "sd_a.safetensors", "sd_a")
    raw_load(raw, configured, "sd_b.safetensors", "sd_b")
    raw.set_adapters(["sd_b"], [0.6])
    assert max_diff(sample(engine, h), render(raw)) <= TOL


def test_block_weights(engine, configured):
    raw = raw_pipeline()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    blocks = '{"unet": {"down": 0.2, "mid": 1.0, "up": {"block_0": 0.5, "block_1": 0.0}}}'
    h = wt.set_weights(load(engine, h0, "sd_a.safetensors"), "sd_a", "0.9", "", blocks)
    raw_load(raw, configured, "sd_a.safetensors", "sd_a")
    raw.set_adapters(["sd_a"], [{"unet": {"down": 0.2, "mid": 1.0, "up": {"block_0": 0.5, "block_1": 0.0}},
                                 "text_encoder": 0.9}])
    assert max_diff(sample(engine, h), render(raw)) <= TOL


def test_fuse_subset_of_adapters_and_only_unet(engine, configured):
    raw = raw_pipeline()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, load(engine, h0, "sd_a.safetensors"), "sd_c.safetensors", 0.5)
    h = wt.fuse(h, True, False, 1.0, True, "sd_c")
    raw_load(raw, configured, "sd_a.safetensors", "sd_a")
    raw_load(raw, configured, "sd_c.safetensors", "sd_c")
    raw.set_adapters(["sd_a", "sd_c"], [1.0, 0.5])
    raw.fuse_lora(components=["unet"], safe_fusing=True, adapter_names=["sd_c"])
    assert max_diff(sample(engine, h), render(raw)) <= TOL


def test_text_encoder_toggle(engine, configured):
    raw = raw_pipeline()
    h0 = engine.load_pipeline("builtin:tiny-sd")
    on = load(engine, h0, "sd_a.safetensors")
    off = tr.toggle_text_encoder(on, False, "all")
    raw_load(raw, configured, "sd_a.safetensors", "sd_a")
    raw.set_adapters(["sd_a"], [1.0])
    ref_on = render(raw)
    disable_lora_for_text_encoder(raw.text_encoder)
    assert max_diff(sample(engine, off), render(raw)) <= TOL
    assert max_diff(sample(engine, tr.toggle_text_encoder(off, True, "all")), ref_on) <= TOL


def test_delete_and_unload(engine, configured):
    raw = raw_pipeline()
    base = render(raw)
    h0 = engine.load_pipeline("builtin:tiny-sd")
    both = load(engine, load(engine, h0, "sd_a.safetensors"), "sd_b.safetensors", 0.5)
    fused = wt.fuse(both, True, True, 1.0, False, "")
    only_b = wt.delete(fused, "sd_a")
    raw_load(raw, configured, "sd_b.safetensors", "sd_b")
    raw.set_adapters(["sd_b"], [0.5])
    raw.fuse_lora(components=["unet", "text_encoder"], adapter_names=["sd_b"])
    assert max_diff(sample(engine, only_b), render(raw)) <= TOL
    assert max_diff(sample(engine, tr.unload(only_b)), base) <= TOL


def test_set_lora_device_cpu_roundtrip(engine, configured):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = load(engine, h0, "sd_a.safetensors")
    moved = wt.set_device(h, "", "cpu")
    assert moved.state == h.state  # cpu is the pipeline's own device here: nothing to move
    assert max_diff(sample(engine, moved), sample(engine, h)) == 0


def test_sdxl_two_text_encoders(engine, configured):
    raw = raw_pipeline("sdxl")
    h0 = engine.load_pipeline("builtin:tiny-sdxl")
    h = load(engine, load(engine, h0, "xl_a.safetensors", 0.8), "xl_k.safetensors", 0.5)
    h = tr.toggle_text_encoder(h, False, "text_encoder_2")
    raw_load(raw, configured, "xl_a.safetensors", "xl_a")
    raw_load(raw, configured, "xl_k.safetensors", "xl_k")
    raw.set_adapters(["xl_a", "xl_k"], [0.8, 0.5])
    disable_lora_for_text_encoder(raw.text_encoder_2)
    assert max_diff(sample(engine, h), render(raw)) <= TOL
    fused = wt.fuse(h, True, True, 1.0, False, "")
    assert fused.state.fused[0].components == ("unet", "text_encoder")  # a switched-off encoder is not fused
    raw.fuse_lora(components=["unet", "text_encoder"], adapter_names=["xl_a", "xl_k"])
    assert max_diff(sample(engine, fused), render(raw)) <= TOL


def test_info_reports_state(engine, configured):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    h = wt.set_weights(load(engine, load(engine, h0, "sd_a.safetensors", 0.7), "sd_c.safetensors"), "sd_a",
                       "0.3")
    h = wt.fuse(h, True, False, 1.0, False, "")
    info = engine.info(h)
    assert info["active_adapters"] == ["sd_a"]
    assert info["adapters"]["sd_a"]["strength"] == 0.7
    assert info["adapters"]["sd_a"]["weights"] == {"unet": 0.3, "text_encoder": 0.3}
    assert info["adapters"]["sd_a"]["fused"] == ["unet"]
    assert info["adapters"]["sd_c"]["components"] == ["unet"]
    assert info["adapters"]["sd_c"]["rank"] == {"unet": 8}
    assert info["adapters"]["sd_c"]["active"] is False
    assert info["list_adapters"] == {"unet": ["sd_a", "sd_c"], "text_encoder": ["sd_a"]}
    assert info["text_encoder_lora"] == {"text_encoder": True}


def test_save_lora_roundtrip_kohya_and_diffusers(engine, configured, tmp_path):
    h0 = engine.load_pipeline("builtin:tiny-sd")
    # the weight must not be baked in
    h = wt.set_weights(load(engine, h0, "sd_b.safetensors", 0.9), "", "0.4")
    h = wt.fuse(h, True, True, 1.0, False, "")
    ref = raw_pipeline()
    raw_load(ref, configured, "sd_b.safetensors", "orig")
    for fmt in ("kohya", "diffusers"):
        out = engine.save_lora(h, "sd_b", tmp_path / f"saved_{fmt}.safetensors", fmt)
        raw = raw_pipeline()
        raw.load_lora_weights(str(out.parent), weight_name=out.name, adapter_name="saved")
        for comp in ("unet", "text_encoder"):
            a = getattr(ref, comp).state_dict()
            b = getattr(raw, comp).state_dict()
            for k in a:
                if ".orig." in k:
                    kk = k.replace(".orig.", ".saved.")
                    assert torch.allclose(a[k] * 1.0, b[kk], atol=1e-6), (fmt, k)
            for name, mod in getattr(raw, comp).named_modules():
                if hasattr(mod, "scaling") and "saved" in mod.scaling:
                    orig = getattr(ref, comp).get_submodule(name).scaling["orig"]
                    assert mod.scaling["saved"] == pytest.approx(orig), (fmt, name)  # true alpha kept
