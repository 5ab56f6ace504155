"""LyCORIS files on the new families' transformers through the engine: Chroma (Flux-derived) and Wan
(video), made by the LyCORIS library on the tiny transformer in diffusers' module names (as LyCORIS
run on a diffusers model writes them); and a file in Wan's original module names, which do not map
to diffusers' layers, refused with the file and the names that did not match.

Oracle: the producer's own forward pass (as tests/lycoris_oracle.py): LyCORIS's network rebuilt from
the saved file on a fresh pipeline, applied with the multiplier, rendered by the raw pipeline called
as the Sampler calls it (test_sampler_families.family_inputs). 2/255, fp32 on the CPU.
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
from test_sampler_families import family_inputs, raw_call

TOL = 2 / 255
NOISE = 0.3  # spread added to LyCORIS's init: every algorithm visibly changes the tiny images

# family -> the transformer's block classes LyCORIS adapts (every Linear inside them)
BLOCKS = {
    "tiny-chroma": ["ChromaTransformerBlock", "ChromaSingleTransformerBlock"],
    "tiny-kontext": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
    "tiny-wan": ["WanTransformerBlock"],
}
CASES = [(family, algo) for family in BLOCKS for algo in ("lokr", "loha")]


def build(family: str) -> Any:
    pipe = BUILTINS[family].builder()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _preset(family: str) -> str:
    import lycoris.kohya as lk

    lk.PRESET["loragraph-family"] = {
        "enable_conv": False, "unet_target_module": BLOCKS[family], "unet_target_name": [],
        "text_encoder_target_module": [], "text_encoder_target_name": [],
    }
    return "loragraph-family"


def write_lycoris(path: Path, family: str, algo: str, seed: int) -> Path:
    """A LyCORIS network made on the family's tiny transformer, saved as LyCORIS saves it."""
    from lycoris.kohya import create_network

    pipe = build(family)
    torch.manual_seed(seed)
    net = create_network(1.0, 4, 2, pipe.vae, None, pipe.transformer, algo=algo, preset=_preset(family),
                         warn_on_unmatched=False, factor=4)
    net.apply_to(None, pipe.transformer, False, True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * NOISE)
    path.parent.mkdir(parents=True, exist_ok=True)
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return path


def producer_image(family: str, path: Path, multiplier: float) -> torch.Tensor:
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    pipe = build(family)
    _preset(family)
    LycorisNetworkKohya.apply_preset({"unet_target_module": BLOCKS[family], "unet_target_name": [],
                                      "text_encoder_target_module": [], "text_encoder_target_name": []})
    net, _ = create_network_from_weights(multiplier, str(path), pipe.vae, None, pipe.transformer)
    net.apply_to(None, pipe.transformer, False, True)
    return raw_call(pipe, **family_inputs(family, batch_size=1)[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("family-lycoris")
    for i, (family, algo) in enumerate(CASES):
        write_lycoris(root / "loras" / f"{family}_{algo}.safetensors", family, algo, 70 + i)
    return root


@pytest.fixture(scope="module")
def engine(models, tmp_path_factory) -> Engine:
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path_factory.mktemp("output"))
    return Engine()


@pytest.mark.parametrize(("family", "algo"), CASES)
def test_a_lycoris_file_on_a_family_transformer_renders_as_its_producer(engine, models, family, algo):
    inputs, _ = family_inputs(family, batch_size=1)
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    base = engine.sample(h0, **inputs)
    path = models / "loras" / f"{family}_{algo}.safetensors"
    for strength in (1.0, 0.5):
        h = tr.add_adapter(h0, engine.lora_spec(h0, path.name, strength, "ly"))
        info = engine.info(h)["adapters"]["ly"]
        assert info["algorithm"] == algo and info["components"] == ["transformer"]
        got = engine.sample(h, **inputs)
        assert max_diff(got, producer_image(family, path, strength)) <= TOL, strength
        assert max_diff(got, base) > 0.01
    # fused, then unfused: the base bits back
    fused = tr.fuse(h, True, True, 1.0, False)
    assert max_diff(engine.sample(fused, **inputs), got) <= TOL
    assert torch.equal(engine.sample(tr.unfuse(fused, True, True), **inputs), got)
    assert torch.equal(engine.sample(h0, **inputs), base)


def wan_original_names(src: Path, dst: Path) -> Path:
    """The file with its modules under the Wan repository's names, as musubi-tuner writes LyCORIS
    networks trained on the original model (`lora_unet_blocks_0_self_attn_q`); tensors unchanged."""
    from safetensors.torch import load_file, save_file

    renames = {"attn1_to_q": "self_attn_q", "attn1_to_k": "self_attn_k", "attn1_to_v": "self_attn_v",
               "attn1_to_out_0": "self_attn_o", "attn2_to_q": "cross_attn_q", "attn2_to_k": "cross_attn_k",
               "attn2_to_v": "cross_attn_v", "attn2_to_out_0": "cross_attn_o", "ffn_net_0_proj": "ffn_0",
               "ffn_net_2": "ffn_2"}
    tensors = {}
    for key, value in load_file(str(src)).items():
        module, _, suffix = key.partition(".")
        for ours, theirs in renames.items():
            module = module.replace(ours, theirs)
        tensors[f"{module}.{suffix}"] = value
    assert not any("attn1" in k or "ffn_net" in k for k in tensors)
    save_file(tensors, str(dst))
    return dst


def test_a_lycoris_file_in_wans_original_names_lands_on_the_same_layers(engine, models):
    """musubi-tuner's LyCORIS files on Wan name the original model's modules, which diffusers'
    WanTransformer3DModel calls otherwise (`blocks.0.attn1.to_q`); diffusers has no converter for
    LyCORIS keys, so the route maps them itself (loaders/formats/lycoris/wan_names.py)."""
    family = "tiny-wan"
    inputs, _ = family_inputs(family, batch_size=1)
    src = models / "loras" / "tiny-wan_lokr.safetensors"
    path = wan_original_names(src, models / "loras" / "wan_original_lokr.safetensors")
    h0 = engine.load_pipeline(f"builtin:{family}", "float32", "cpu")
    for strength in (1.0, 0.5):
        h = tr.add_adapter(h0, engine.lora_spec(h0, path.name, strength, "ly"))
        assert engine.realize(h)[1] == []  # no warnings: every module landed
        got = engine.sample(h, **inputs)
        assert max_diff(got, producer_image(family, src, strength)) <= TOL, strength
        assert max_diff(got, engine.sample(h0, **inputs)) > 0.01


def test_a_lycoris_file_whose_names_do_not_map_is_refused_naming_the_file_and_the_modules(engine, models):
    """Wan's original names on another family's transformer (LTX) map to no layer: the refusal names
    the file, how many modules did not land and some of their names, and leaves nothing loaded."""
    from loragraph.loaders.live import LoraOperationError

    src = models / "loras" / "tiny-wan_lokr.safetensors"
    path = wan_original_names(src, models / "loras" / "wan_original_lokr_2.safetensors")
    h0 = engine.load_pipeline("builtin:tiny-ltx", "float32", "cpu")
    with pytest.raises(LoraOperationError) as refused:
        engine.realize(tr.add_adapter(h0, engine.lora_spec(h0, path.name, 1.0, "ly")))
    message = str(refused.value)
    assert refused.value.input_name == "lora_name"
    assert "wan_original_lokr_2.safetensors" in message and "none of its 20" in message, message
    assert "no such module" in message and "lora_unet_blocks_0_cross_attn_k" in message, message
    assert engine.info(h0)["adapters"] == {}
