"""Flux through the engine: a tiny FluxPipeline built offline, saved as a diffusers folder and
loaded by LoadPipeline; LoRA files in diffusers form against raw diffusers; per-block weights by
double/single block index against files with those blocks' LoRA layers zeroed. 1/255, fp32, CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import max_diff
from loragraph.builtin_models.tiny_flux import build_tiny_flux
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.nodes import widget_text as wt
from loragraph.testing import write_lora_file

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too

TOL = 1 / 255
SIZE = 32
PROMPT = "a red circle on a white background"


@pytest.fixture(scope="module")
def flux_models(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("flux-models")
    pipe = build_tiny_flux()
    pipe.save_pretrained(root / "diffusers" / "tiny-flux")
    loras = root / "loras"
    write_lora_file(loras / "flux_a.safetensors", fmt="diffusers", rank=4, seed=41, pipe=pipe,
                    components=("transformer",), scale=1.5)
    sd = load_file(str(loras / "flux_a.safetensors"))
    for name, zero in (("flux_a_no_double1", "transformer.transformer_blocks.1."),
                       ("flux_a_no_single0", "transformer.single_transformer_blocks.0.")):
        save_file({k: (torch.zeros_like(v) if k.startswith(zero) and "lora_B" in k else v)
                   for k, v in sd.items()},
                  str(loras / f"{name}.safetensors"), metadata={"format": "pt"})
    return root


@pytest.fixture()
def engine(flux_models, tmp_path):
    from loragraph import host

    host.configure(models_dir=flux_models, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, handle, seed=1):
    return engine.sample(handle, PROMPT, "", seed, 2, 3.5, SIZE, SIZE)


def load(engine, handle, name, strength=1.0, adapter=""):
    return tr.add_adapter(handle, engine.lora_spec(handle, f"{name}.safetensors", strength, adapter))


def test_flux_lora_matches_diffusers(engine, flux_models):
    h0 = engine.load_pipeline("tiny-flux")
    assert type(engine.live(h0.source).pipe).__name__ == "FluxPipeline"
    base = sample(engine, h0)
    h = load(engine, h0, "flux_a", 0.8, "a")
    ours = sample(engine, h)
    from diffusers import FluxPipeline

    raw = FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux"))
    raw.set_progress_bar_config(disable=True)
    raw.load_lora_weights(str(flux_models / "loras"), weight_name="flux_a.safetensors", adapter_name="a")
    raw.set_adapters(["a"], [0.8])
    assert max_diff(ours, sample_raw(raw)) <= TOL
    assert max_diff(ours, base) > 0.01


def sample_raw(pipe, seed=1):
    return torch.from_numpy(pipe(PROMPT, negative_prompt="", num_inference_steps=2, guidance_scale=3.5,
                                 width=SIZE, height=SIZE, num_images_per_prompt=1,
                                 generator=torch.Generator("cpu").manual_seed(seed),
                                 output_type="np").images).float()


def test_builtin_tiny_flux_is_the_saved_folder(engine):
    """`builtin:tiny-flux` is the same pipeline as its saved diffusers folder: same components, same image."""
    hb = engine.load_pipeline("builtin:tiny-flux")
    hf = engine.load_pipeline("tiny-flux")
    assert hb.source.components == hf.source.components == ("transformer", "text_encoder")
    assert type(engine.live(hb.source).pipe).__name__ == "FluxPipeline"
    assert torch.equal(sample(engine, hb), sample(engine, hf))


def test_flux_block_weights_by_index(engine):
    """Block weight 0 on double block 1 (or single block 0) equals the file with those layers zeroed."""
    h0 = engine.load_pipeline("tiny-flux")
    h = load(engine, h0, "flux_a", 1.0, "a")
    for blocks, oracle in (('{"double": {"1": 0.0}}', "flux_a_no_double1"),
                           ('{"single_transformer_blocks": [0.0, 1.0]}', "flux_a_no_single0")):
        want = sample(engine, load(engine, h0, oracle, 1.0, "o"))
        got = sample(engine, wt.set_weights(h, "a", "1.0", "", blocks))
        assert max_diff(got, want) <= TOL, blocks
        assert max_diff(got, sample(engine, h)) > 1e-3, "the block must matter"


def _kohya_flux(path, seed: int):
    """A kohya-ss Flux LoRA (BFL module names: fused qkv, single-block linear1/linear2), alpha != rank."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    dims = {"img_attn_qkv": (32, 96), "img_attn_proj": (32, 32), "txt_attn_qkv": (32, 96),
            "txt_attn_proj": (32, 32), "linear1": (32, 224), "linear2": (160, 32)}
    out = {}
    for kind, n in (("double_blocks", 2), ("single_blocks", 2)):
        for i in range(n):
            # no single-block linear1: diffusers' converter splits it at full Flux's sizes (3072, 12288)
            for part in (("img_attn_qkv", "img_attn_proj", "txt_attn_qkv", "txt_attn_proj")
                         if kind == "double_blocks" else ("linear2",)):
                name = f"lora_unet_{kind}_{i}_{part}"
                d_in, d_out = dims[part]
                out[f"{name}.lora_down.weight"] = torch.randn(4, d_in, generator=g) / d_in**0.5
                out[f"{name}.lora_up.weight"] = torch.randn(d_out, 4, generator=g) * 0.75
                out[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(out, str(path))
    return path


def test_kohya_flux_lora_through_diffusers_converter(engine, flux_models):
    """kohya's Flux names (lora_unet_double_blocks_…, lora_unet_single_blocks_…) load through
    diffusers' own converter, as raw diffusers loads them; block weights apply to them too."""
    from diffusers import FluxPipeline

    _kohya_flux(flux_models / "loras" / "flux_kohya.safetensors", 51)
    h0 = engine.load_pipeline("tiny-flux")
    h = load(engine, h0, "flux_kohya", 0.7, "k")
    raw = FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux"))
    raw.set_progress_bar_config(disable=True)
    raw.load_lora_weights(str(flux_models / "loras"), weight_name="flux_kohya.safetensors", adapter_name="k")
    raw.set_adapters(["k"], [0.7])
    ours = sample(engine, h)
    assert max_diff(ours, sample_raw(raw)) <= TOL
    assert max_diff(ours, sample(engine, h0)) > 0.01
    assert engine.info(h)["warnings"] == []


def _lycoris_on_flux(pipe, seed: int, algo: str = "lokr"):
    """A LyCORIS network on the Flux transformer (its blocks in diffusers' layout), weights from `seed`."""
    import lycoris.kohya as lk
    from lycoris.kohya import create_network

    lk.PRESET["loragraph-flux"] = {
        "enable_conv": False, "unet_target_module": ["FluxTransformerBlock", "FluxSingleTransformerBlock"],
        "unet_target_name": [], "text_encoder_target_module": [], "text_encoder_target_name": [],
    }
    torch.manual_seed(seed)
    net = create_network(1.0, 4, 2, pipe.vae, None, pipe.transformer, algo=algo, preset="loragraph-flux",
                         warn_on_unmatched=False, factor=4)
    net.apply_to(None, pipe.transformer, False, True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return net


def test_lycoris_lokr_on_flux_matches_producer(engine, flux_models):
    """LyCORIS LoKr on the Flux transformer: its network rebuilt from the file is the oracle."""
    from diffusers import FluxPipeline
    from lycoris.kohya import create_network_from_weights

    path = flux_models / "loras" / "flux_lokr.safetensors"
    net = _lycoris_on_flux(FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux")), 61)
    net.save_weights(str(path), torch.float32, {})
    for strength in (1.0, 0.5):
        raw = FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux"))
        raw.set_progress_bar_config(disable=True)
        rebuilt, _ = create_network_from_weights(strength, str(path), raw.vae, None, raw.transformer)
        rebuilt.apply_to(None, raw.transformer, False, True)
        want = sample_raw(raw)
        h0 = engine.load_pipeline("tiny-flux")
        h = load(engine, h0, "flux_lokr", strength, "x")
        assert engine.info(h)["adapters"]["x"]["algorithm"] == "lokr"
        assert max_diff(sample(engine, h), want) <= 2 / 255, strength
        assert max_diff(want, sample(engine, h0)) > 0.01


def _xlabs_flux(path, seed: int):
    """An XLabs Flux LoRA: `double_blocks.{i}.processor.{qkv,proj}_lora{1,2}.{down,up}.weight`."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(2):
        for part, d_out in (("qkv_lora1", 96), ("proj_lora1", 32), ("qkv_lora2", 96), ("proj_lora2", 32)):
            key = f"double_blocks.{i}.processor.{part}"
            out[f"{key}.down.weight"] = torch.randn(4, 32, generator=g) / 32**0.5
            out[f"{key}.up.weight"] = torch.randn(d_out, 4, generator=g) * 0.75
    save_file(out, str(path))
    return path


def _onetrainer_flux(path, seed: int):
    """A OneTrainer Flux LoRA: kohya-style keys over diffusers' module names (lora_transformer_…)."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    out = {}
    for kind, n in (("transformer_blocks", 2), ("single_transformer_blocks", 2)):
        for i in range(n):
            for part in ("attn_to_q", "attn_to_k", "attn_to_v"):
                name = f"lora_transformer_{kind}_{i}_{part}"
                out[f"{name}.lora_down.weight"] = torch.randn(4, 32, generator=g) / 32**0.5
                out[f"{name}.lora_up.weight"] = torch.randn(32, 4, generator=g) * 0.75
                out[f"{name}.alpha"] = torch.tensor(2.0)
    save_file(out, str(path))
    return path


@pytest.mark.parametrize("form", ["xlabs", "onetrainer"])
def test_xlabs_and_onetrainer_flux_loras_through_diffusers(engine, flux_models, form):
    from diffusers import FluxPipeline

    name = f"flux_{form}"
    (_xlabs_flux if form == "xlabs" else _onetrainer_flux)(flux_models / "loras" / f"{name}.safetensors", 71)
    h0 = engine.load_pipeline("tiny-flux")
    h = load(engine, h0, name, 0.7, "f")
    raw = FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux"))
    raw.set_progress_bar_config(disable=True)
    raw.load_lora_weights(str(flux_models / "loras"), weight_name=f"{name}.safetensors", adapter_name="f")
    raw.set_adapters(["f"], [0.7])
    ours = sample(engine, h)
    assert max_diff(ours, sample_raw(raw)) <= TOL
    assert max_diff(ours, sample(engine, h0)) > 0.01


def test_kohya_flux_final_layer_and_linear1_land(engine, flux_models):
    """diffusers' kohya Flux converter drops the final-layer modules without a word (it names them
    without the `transformer.` prefix, so no layer takes them, and ignores their alpha) and splits
    single-block linear1 at full Flux's sizes only. A file with final-layer modules is loaded per
    module instead (loaders/formats/flux_names.py), everything landing. Oracle: kohya's rule on the
    weights, W0 + alpha / rank * up @ down, split as BFL fuses the layers (q, k, v rows; linear1's
    q, k, v, MLP rows), the final modulation's halves swapped (BFL: shift, scale; diffusers: scale,
    shift). Raw diffusers is checked to still leave the final layer alone (so this route stays needed)."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(81)
    # BFL module -> [(diffusers layer, rows)], in: the tiny Flux (dim 32, MLP 4 * 32 = 128, patch out 4)
    parts = {
        "final_layer_linear": ([("proj_out", None)], 32),
        "final_layer_adaLN_modulation_1": ([("norm_out.linear", "swap")], 32),
        "double_blocks_0_img_attn_qkv": ([(f"transformer_blocks.0.attn.to_{x}", (32 * i, 32 * i + 32))
                                          for i, x in enumerate("qkv")], 32),
        "single_blocks_1_linear1": ([(f"single_transformer_blocks.1.attn.to_{x}", (32 * i, 32 * i + 32))
                                     for i, x in enumerate("qkv")]
                                    + [("single_transformer_blocks.1.proj_mlp", (96, 224))], 32),
        "single_blocks_1_linear2": ([("single_transformer_blocks.1.proj_out", None)], 160),
    }
    raw = FluxPipeline.from_pretrained(str(flux_models / "diffusers" / "tiny-flux"))
    sd, want = {}, {}
    for part, (targets, d_in) in parts.items():
        layers = [raw.transformer.get_submodule(path) for path, _ in targets]
        d_out = sum(layer.out_features for layer in layers)
        down = torch.randn(4, d_in, generator=g) / d_in**0.5
        up = torch.randn(d_out, 4, generator=g) * 0.5
        sd.update({f"lora_unet_{part}.lora_down.weight": down, f"lora_unet_{part}.lora_up.weight": up,
                   f"lora_unet_{part}.alpha": torch.tensor(2.0)})
        delta = 2.0 / 4 * up @ down
        for (path, rows), layer in zip(targets, layers, strict=True):
            if rows == "swap":
                piece = torch.cat(list(reversed(delta.chunk(2, dim=0))), dim=0)
            else:
                piece = delta if rows is None else delta[rows[0]:rows[1]]
            want[path] = layer.weight.detach() + piece
    save_file(sd, str(flux_models / "loras" / "flux_kohya_final.safetensors"))

    h0 = engine.load_pipeline("tiny-flux")
    h = load(engine, h0, "flux_kohya_final", 1.0, "k")
    assert engine.info(h)["adapters"]["k"]["algorithm"] == "lora"
    live, warnings = engine.realize(wt.fuse(h, True, True, 1.0, False, ""))
    assert warnings == []
    for path, w in want.items():
        got = live.pipe.transformer.get_submodule(path).get_base_layer().weight
        assert torch.allclose(got, w, atol=1e-6), path
    proj_out = raw.transformer.proj_out.weight.detach().clone()
    sd.pop("lora_unet_single_blocks_1_linear1.lora_down.weight")  # diffusers' converter splits it at 3072
    sd.pop("lora_unet_single_blocks_1_linear1.lora_up.weight")
    sd.pop("lora_unet_single_blocks_1_linear1.alpha")
    save_file(sd, str(flux_models / "loras" / "flux_kohya_final_raw.safetensors"))
    raw.load_lora_weights(str(flux_models / "loras"), weight_name="flux_kohya_final_raw.safetensors",
                          adapter_name="k")
    raw.fuse_lora(lora_scale=1.0)
    assert torch.equal(raw.transformer.proj_out.weight, proj_out)  # diffusers took nothing for it
