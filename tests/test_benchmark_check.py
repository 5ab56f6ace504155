"""benchmarks/lora_ops.py's exactness check: base weights compared through every adapter wrapper.

After an unload the engine keeps adapters parked in their peft layers. The check compares the
pipeline with a fresh build; it must neither take a parked adapter's tensors for base weights (a
false alarm on every run) nor miss a base weight that changed.
"""

from __future__ import annotations

import pytest
import torch
from loragraph.benchmarks.lora_ops import base_weight_mismatches, base_weights, write_lycoris
from loragraph.builtin_models.tiny_sd import build_tiny_sd
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt
from safetensors.torch import save_file

# a parameter table of each adapter layer the engine parks: peft's LoRA, LoHa and LoKr (LyCORIS DoRA
# files too: their full deltas are LoKr tables), and loragraph's NormDelta (norm diffs)
ADAPTER_TABLES = ("lora_A", "hada_w1_a", "lokr_w1", "lora_norm_weight")


def norm_path(text_encoder: torch.nn.Module) -> str:
    """The first encoder layer's first LayerNorm, under `text_model.` or not (transformers 4 or 5)."""
    return next(n for n, _ in text_encoder.named_modules() if n.endswith("encoder.layers.0.layer_norm1"))


@pytest.fixture(scope="module")
def parked(tmp_path_factory):
    """(a fresh tiny-sd, the engine's tiny-sd after a LoRA, LyCORIS LoHa, LoKr and DoRA files and norm
    diffs were attached, fused and unloaded: all of them parked)."""
    from loragraph import host
    from loragraph.testing import write_lora_file

    root = tmp_path_factory.mktemp("bench_check")
    loras = root / "loras"
    loras.mkdir()
    fresh = build_tiny_sd()
    files = {algo: path.name for algo, path in write_lycoris(fresh, loras, 4).items()}
    write_lora_file(loras / "lora.safetensors", "sd", "diffusers", rank=4, seed=5)
    files["lora"] = "lora.safetensors"
    layer_norm = fresh.text_encoder.get_submodule(norm_path(fresh.text_encoder))
    gen = torch.Generator().manual_seed(3)
    save_file({"lora_te_text_model_encoder_layers_0_layer_norm1.w_norm": torch.randn(layer_norm.weight.shape,
                                                                                    generator=gen),
               "lora_te_text_model_encoder_layers_0_layer_norm1.b_norm": torch.randn(layer_norm.bias.shape,
                                                                                    generator=gen)},
              str(loras / "norm.safetensors"))
    files["norm"] = "norm.safetensors"
    host.configure(models_dir=root, output_dir=root / "out")
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd", "float32", "cpu")
    stack = base
    for name, file in files.items():
        stack = tr.add_adapter(stack, engine.lora_spec(stack, file, 0.7, name))
    engine.realize(wt.fuse(stack, True, True, 1.0, False, ""))
    live, _ = engine.realize(tr.unload(base))
    return fresh, live.pipe


def test_parked_adapters_of_every_type_are_there(parked):
    """Else the other tests would pass without looking through anything."""
    _, ours = parked
    names = [k for c in ("unet", "text_encoder") for k in getattr(ours, c).state_dict()]
    for table in ADAPTER_TABLES:
        assert any(f".{table}." in k for k in names), table


@pytest.mark.parametrize("component", ["unet", "text_encoder"])
def test_parked_adapters_are_not_base_weights(parked, component):
    fresh, ours = parked
    got = base_weights(getattr(ours, component))
    assert got.keys() == getattr(fresh, component).state_dict().keys() | set(
        dict(getattr(fresh, component).named_buffers()))
    assert not any(table in k for k in got for table in ADAPTER_TABLES)
    assert base_weight_mismatches(getattr(fresh, component), getattr(ours, component)) == []


@pytest.mark.parametrize(("component", "layer"), [
    ("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),  # under LoRA, LoHa, LoKr, DoRA
    ("text_encoder", None),  # the LayerNorm under the norm diffs
])
def test_a_changed_base_weight_is_found(parked, component, layer):
    fresh, ours = parked
    layer = layer or norm_path(fresh.text_encoder)
    weight = getattr(ours, component).get_submodule(layer).get_base_layer().weight
    before = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.view(-1)[0] += 1e-3
        changed = base_weight_mismatches(getattr(fresh, component), getattr(ours, component))
        assert changed == [f"{layer}.weight"]
    finally:
        with torch.no_grad():
            weight.copy_(before)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute")  # two adapter types, on purpose
def test_peft_dora_magnitude_is_not_a_base_weight():
    """peft's own DoRA (a diffusers/peft file with `lora_magnitude_vector`), nested in a LoHa layer."""
    from peft import LoHaConfig, LoraConfig, inject_adapter_in_model

    torch.manual_seed(0)
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    ours = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    ours.load_state_dict(fresh.state_dict())
    inject_adapter_in_model(LoHaConfig(r=2, target_modules=["0"]), ours, adapter_name="h")
    inject_adapter_in_model(LoraConfig(r=2, use_dora=True, target_modules=["0", "2"]), ours, adapter_name="d")
    assert any(".lora_magnitude_vector." in k for k in ours.state_dict())
    assert base_weights(ours).keys() == fresh.state_dict().keys()
    assert base_weight_mismatches(fresh, ours) == []
    with torch.no_grad():
        ours[0].get_base_layer().bias[0] += 1e-3
    assert base_weight_mismatches(fresh, ours) == ["0.bias"]
