"""Quantized denoisers on the families after Flux whose denoiser diffusers reads from a GGUF single
file: Qwen-Image and Wan, each with a 64-wide transformer (so its projections quantize), GGUF Q8_0
and fp8. Unfused: raw diffusers with the same loading, 2/255 at strengths 1.0 and 0.5. FuseLoRA
requantizes only the LoRA's layers; UnfuseLoRA gives back the file's bytes. (The reference fuse is
checked on Flux, tests/test_quantized.py: the same code fuses every family.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import max_diff
from loragraph.loaders import quantized
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine, call_parameters, output_as_image
from loragraph.testing import write_gguf_denoiser, write_lora_file

gguf = pytest.importorskip("gguf")

TOL = 2 / 255
SIZE = 32
PROMPT = "a red circle on a white background"
FRAMES = {"qwenimage": 1, "wan": 5}


def qwenimage_pipeline():
    from diffusers import QwenImageTransformer2DModel
    from loragraph.builtin_models.tiny_qwenimage import build_tiny_qwenimage

    pipe = build_tiny_qwenimage()
    torch.manual_seed(0)
    pipe.transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(16, 8, 8),
    ).eval()
    return pipe


def wan_pipeline():
    from diffusers import WanTransformer3DModel
    from loragraph.builtin_models.tiny_wan import build_tiny_wan

    pipe = build_tiny_wan()
    torch.manual_seed(0)
    pipe.transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=128, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()
    return pipe


BUILDERS = {"qwenimage": qwenimage_pipeline, "wan": wan_pipeline}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quantized-families")
    for family, build in BUILDERS.items():
        pipe = build()
        pipe.save_pretrained(root / "diffusers" / family)
        write_gguf_denoiser(pipe.transformer, root / "diffusion_models" / f"{family}_Q8_0.gguf", "Q8_0")
        write_lora_file(root / "loras" / f"{family}.safetensors", fmt="diffusers", rank=4, seed=7, pipe=pipe,
                        components=("transformer",), scale=1.5)
    return root


@pytest.fixture()
def engine(models, tmp_path):
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, family, handle):
    return engine.sample(handle, PROMPT, "", 1, 2, 3.5, SIZE, SIZE, frames=FRAMES[family])


def render(family, pipe):
    """The raw call with what the engine's Sampler passes (docs/CONTRACT.md, Sampler)."""
    offered = {"prompt": PROMPT, "negative_prompt": "", "num_inference_steps": 2, "guidance_scale": 3.5,
               "true_cfg_scale": 1.0, "width": SIZE, "height": SIZE, "num_frames": FRAMES[family],
               "generator": torch.Generator("cpu").manual_seed(1), "output_type": "np"}
    accepted = call_parameters(type(pipe))
    return output_as_image(pipe(**{k: v for k, v in offered.items() if k in accepted}))


def raw_pipeline(models: Path, family: str, storage: str, weight: float):
    import diffusers
    from diffusers import GGUFQuantizationConfig
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    folder = models / "diffusers" / family
    cls = getattr(diffusers, {"qwenimage": "QwenImagePipeline", "wan": "WanPipeline"}[family])
    kwargs = {}
    if storage.startswith("Q"):
        tcls = getattr(diffusers, {"qwenimage": "QwenImageTransformer2DModel",
                                   "wan": "WanTransformer3DModel"}[family])
        kwargs["transformer"] = tcls.from_single_file(
            str(models / "diffusion_models" / f"{family}_{storage}.gguf"), config=str(folder),
            subfolder="transformer", quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            torch_dtype=torch.float32, local_files_only=True)
    pipe = cls.from_pretrained(str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(models / "loras"), weight_name=f"{family}.safetensors", adapter_name="a")
    pipe.set_adapters(["a"], [weight])
    if storage.startswith("fp8"):
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=getattr(torch, storage.replace("fp8_", "float8_")), compute_dtype=torch.float32,
            skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, "lora_"))
    return pipe


def quantized_weights(model) -> dict[str, torch.Tensor]:
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
            if quantized.layer_storage(p) is not None}


@pytest.mark.parametrize("storage", ["Q8_0", "fp8_e4m3fn"])
@pytest.mark.parametrize("family", ["qwenimage", "wan"])
def test_family_lora_on_a_quantized_denoiser(engine, models, family, storage):
    if storage.startswith("Q"):
        base = engine.load_pipeline(family, "float32", "cpu", denoiser=f"{family}_{storage}.gguf")
    else:
        base = engine.load_pipeline(family, "float32", "cpu", weight_dtype=storage)
    expected = f"GGUF {storage}" if storage.startswith("Q") else storage
    assert engine.info(base)["storage"]["transformer"] == expected
    plain = sample(engine, family, base)
    h = tr.add_adapter(base, engine.lora_spec(base, f"{family}.safetensors", 1.0, "a"))
    for weight in (1.0, 0.5):
        h = tr.set_weights(h, ["a"], [weight])
        ours = sample(engine, family, h)
        assert max_diff(ours, render(family, raw_pipeline(models, family, storage, weight))) <= TOL, weight
        assert max_diff(ours, plain) > 0.01, weight

    live = engine.live(h.source)
    original = quantized_weights(live.pipe.transformer)
    fused_h = tr.fuse(h, True, False, 1.0, False)
    fused = sample(engine, family, fused_h)
    # requantization's cost (docs/CONTRACT.md's table): rounding every LoRA weight to fp8/Q8_0 again
    print(f"{family} {storage}: fused vs unfused max pixel difference {max_diff(fused, ours) * 255:.1f}/255")
    assert max_diff(fused, ours) <= 16 / 255  # that the LoRA layers were fused: `written` below
    now = quantized_weights(live.pipe.transformer)
    written = [n for n, w in now.items() if not torch.equal(w, original[n])]
    assert written and all(n.endswith((".to_q.weight", ".to_k.weight", ".to_v.weight", ".to_out.0.weight"))
                           for n in written)
    assert max_diff(sample(engine, family, tr.unfuse(fused_h, True, False)), ours) <= 1 / 255
    restored = quantized_weights(live.pipe.transformer)
    assert all(torch.equal(original[n], restored[n]) for n in original)
    if storage.startswith("Q"):
        reader = gguf.GGUFReader(str(models / "diffusion_models" / f"{family}_{storage}.gguf"))
        in_file = {t.name: np.array(t.data) for t in reader.tensors}
        assert all(np.array_equal(w.numpy(), in_file[n]) for n, w in restored.items())
