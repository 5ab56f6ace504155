"""LoRAs on quantized denoisers (GGUF files, fp8 storage), on a 64-wide tiny Flux.

Oracles: raw diffusers on the same quantized pipeline for unfused LoRAs (2/255, strengths 1.0 and
0.5); for FuseLoRA, a reference fuse written here (gguf-py's numpy dequantize, the file's delta,
gguf-py's quantize; fp8: a clamped cast) applied to a raw pipeline; for UnfuseLoRA, every quantized
weight's bytes against the file's. The GGUF files are written here with gguf-py, in diffusers' key
layout (diffusers' Flux converter cannot read a tiny model in the original layout: it assumes the
full model's width). 64 wide, so that the projections are quantized at all (<= 1024 elements stay F32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import max_diff
from loragraph.base.errors import NodeInputError
from loragraph.loaders import quantized
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.live import LoraOperationError
from loragraph.testing import write_gguf_denoiser, write_lora_file

gguf = pytest.importorskip("gguf")

TOL = 2 / 255  # the project's bar for unfused LoRAs against raw diffusers (docs/CONTRACT.md)
SIZE = 32
PROMPT = "a red circle on a white background"
FFN = "ff.net.2"  # the double blocks' FFN output: 256 wide, so it can hold K-quant blocks
FILES = {"Q8_0": "flux64_Q8_0.gguf", "Q4_0": "flux64_Q4_0.gguf", "Q4_K": "sub/flux64_Q4_K.gguf",
         "TQ2_0": "flux64_TQ2_0.gguf", "narrow": "flux32_Q8_0.gguf"}


def flux64_transformer(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=32,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[8, 8, 16],
    ).eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from loragraph.builtin_models.tiny_flux import build_tiny_flux

    root = tmp_path_factory.mktemp("quantized-models")
    pipe = build_tiny_flux()
    narrow = pipe.transformer
    pipe.transformer = flux64_transformer()
    pipe.save_pretrained(root / "diffusers" / "flux64")
    import shutil

    bare = root / "diffusers" / "flux64-bare"  # as shipped for GGUF use: no denoiser weights
    shutil.copytree(root / "diffusers" / "flux64", bare)
    for weights in (bare / "transformer").glob("*.safetensors"):
        weights.unlink()
    dm = root / "diffusion_models"
    for qtype in ("Q8_0", "Q4_0"):
        write_gguf_denoiser(pipe.transformer, dm / FILES[qtype], qtype)
    for qtype in ("Q4_K", "TQ2_0"):  # 256-element blocks: on the 256-wide FFN outputs only
        write_gguf_denoiser(pipe.transformer, dm / FILES[qtype], "Q8_0", per_tensor={f"{FFN}.weight": qtype})
    write_gguf_denoiser(narrow, dm / FILES["narrow"], "Q8_0")
    from safetensors.torch import save_file

    (root / "unet").mkdir()
    save_file(pipe.transformer.state_dict(), str(root / "unet" / "flux64.safetensors"))
    loras = root / "loras"
    write_lora_file(loras / "flux_a.safetensors", fmt="diffusers", rank=4, seed=41, pipe=pipe,
                    components=("transformer",), scale=1.5)
    write_lora_file(loras / "flux_b.safetensors", fmt="diffusers", rank=4, seed=42, pipe=pipe,
                    components=("transformer",), scale=1.5)
    write_lora_file(loras / "flux_ff.safetensors", fmt="diffusers", rank=4, seed=43, pipe=pipe,
                    components=("transformer",), targets=("to_q", FFN), scale=1.5)
    return root


@pytest.fixture()
def engine(models, tmp_path):
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, handle):
    return engine.sample(handle, PROMPT, "", 1, 2, 3.5, SIZE, SIZE)


def render(pipe):
    return torch.from_numpy(pipe(PROMPT, negative_prompt="", num_inference_steps=2, guidance_scale=3.5,
                                 width=SIZE, height=SIZE, num_images_per_prompt=1,
                                 generator=torch.Generator("cpu").manual_seed(1),
                                 output_type="np").images).float()


def with_lora(engine, handle, name="flux_a", strength=1.0, adapter="a"):
    return tr.add_adapter(handle, engine.lora_spec(handle, f"{name}.safetensors", strength, adapter))


def load(engine, storage: str):
    """LoadPipeline of flux64 with `storage`: a GGUF type of FILES, fp8_*, or float32."""
    if storage in FILES:
        return engine.load_pipeline("flux64", "float32", "cpu", denoiser=FILES[storage])
    if storage.startswith("fp8"):
        return engine.load_pipeline("flux64", "float32", "cpu", weight_dtype=storage)
    return engine.load_pipeline("flux64", "float32", "cpu")


def raw_pipeline(models: Path, storage: str, lora: str | None = None, weight: float = 1.0):
    """Raw diffusers with the same loading: from_single_file + GGUFQuantizationConfig, or the LoRA
    loaded first and then layerwise casting with the adapters left in the compute dtype."""
    from diffusers import FluxPipeline, FluxTransformer2DModel, GGUFQuantizationConfig
    from diffusers.hooks.layerwise_casting import DEFAULT_SKIP_MODULES_PATTERN

    folder = models / "diffusers" / "flux64"
    kwargs = {}
    if storage in FILES:
        kwargs["transformer"] = FluxTransformer2DModel.from_single_file(
            str(models / "diffusion_models" / FILES[storage]), config=str(folder), subfolder="transformer",
            quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
            torch_dtype=torch.float32, local_files_only=True)
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    if lora:
        pipe.load_lora_weights(str(models / "loras"), weight_name=f"{lora}.safetensors", adapter_name="a")
        pipe.set_adapters(["a"], [weight])
    if storage.startswith("fp8"):
        pipe.transformer.enable_layerwise_casting(
            storage_dtype=getattr(torch, storage.replace("fp8_", "float8_")), compute_dtype=torch.float32,
            skip_modules_pattern=(*DEFAULT_SKIP_MODULES_PATTERN, "lora_"))
    return pipe


# --- unfused: raw diffusers on the same quantized pipeline --------------------------------------------


@pytest.mark.parametrize("storage", ["Q8_0", "Q4_0", "fp8_e4m3fn", "fp8_e5m2"])
def test_unfused_lora_matches_raw_diffusers(engine, models, storage):
    base = load(engine, storage)
    assert engine.info(base)["storage"] == {"transformer": quantized_name(storage)}
    plain = sample(engine, base)
    h = with_lora(engine, base)
    for weight in (1.0, 0.5):
        h = tr.set_weights(h, ["a"], [weight])
        ours = sample(engine, h)
        assert max_diff(ours, render(raw_pipeline(models, storage, "flux_a", weight))) <= TOL, weight
        assert max_diff(ours, plain) > 0.02, weight  # the LoRA changes the image
    live = engine.live(h.source)
    adapter = [p for n, p in live.pipe.transformer.named_parameters() if ".lora_A.a." in n]
    assert adapter and all(p.dtype == torch.float32 for p in adapter)  # never fp8
    assert max_diff(sample(engine, tr.delete(h, ["a"])), plain) == 0
    assert max_diff(sample(engine, tr.unload(h)), plain) == 0


def quantized_name(storage: str) -> str:
    return f"GGUF {storage}" if storage in FILES else storage


@pytest.mark.parametrize("storage", ["Q8_0", "fp8_e4m3fn"])
def test_hotswap_and_schedules_on_a_quantized_denoiser(engine, models, storage):
    """A switch between two same-shaped LoRAs (peft's hotswap) gives raw diffusers' image of the
    second; a constant schedule gives SetAdapterWeights' image at that strength."""
    base = load(engine, storage)
    first = with_lora(engine, base, "flux_a", 1.0, "a")
    sample(engine, first)
    live = engine.live(base.source)
    live.ops.clear()
    second = tr.set_weights(with_lora(engine, base, "flux_b", 1.0, "b"), ["b"], [0.5])
    switched = sample(engine, second)
    assert any(op.startswith("hotswap") for op in live.ops), live.ops
    raw = raw_pipeline(models, storage, "flux_b", 0.5)
    assert max_diff(switched, render(raw)) <= TOL
    scheduled = tr.schedule_weights(with_lora(engine, base, "flux_b", 1.0, "b"), "b", [(0.0, 0.5)])
    assert max_diff(sample(engine, scheduled), switched) <= 1 / 255


def test_validate_refuses_an_unlisted_denoiser_or_weight_dtype(models, tmp_path, capsys):
    import json

    from loragraph.cli import main

    wf = {"1": {"class_type": "LoadPipeline", "inputs": {
              "model": "flux64", "dtype": "float32", "device": "cpu", "denoiser": "nope.gguf",
              "weight_dtype": "fp9"}},
          "2": {"class_type": "LoRAInfo", "inputs": {"pipeline": ["1", 0]}}}
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    assert main(["validate", str(path), "--models-dir", str(models)]) == 2
    out = capsys.readouterr()
    shown = out.out + out.err
    assert "'denoiser'" in shown and "'weight_dtype'" in shown
    wf["1"]["inputs"].update(denoiser=FILES["Q8_0"], weight_dtype="default")
    path.write_text(json.dumps(wf))
    assert main(["validate", str(path), "--models-dir", str(models)]) == 0


# --- fused: a reference fuse written here; unfused: the file's bytes --------------------------------


def file_tensors(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """{key: (GGML type, raw bytes or values)} as gguf-py reads the file."""
    return {t.name: (int(t.tensor_type), np.array(t.data)) for t in gguf.GGUFReader(str(path)).tensors}


def lora_delta(models: Path, name: str, module: str, weight: float) -> torch.Tensor:
    """weight x B @ A of one module, from the file (written with alpha = rank)."""
    from safetensors.torch import load_file

    sd = load_file(str(models / "loras" / f"{name}.safetensors"))
    a, b = sd[f"transformer.{module}.lora_A.weight"], sd[f"transformer.{module}.lora_B.weight"]
    return weight * (b.double() @ a.double()).float()


def lora_modules(models: Path, name: str) -> list[str]:
    from safetensors.torch import load_file

    keys = load_file(str(models / "loras" / f"{name}.safetensors"))
    return sorted({k[len("transformer."):].rsplit(".lora_A", 1)[0] for k in keys if ".lora_A." in k})


def reference_fused(models: Path, storage: str, name: str, weight: float):
    """A raw pipeline (no LoRA) whose LoRA layers hold the reference requantized weights."""
    pipe = raw_pipeline(models, storage)
    for module in lora_modules(models, name):
        layer = pipe.transformer.get_submodule(module)
        d = lora_delta(models, name, module, weight)
        if storage in FILES:
            qtype = gguf.GGMLQuantizationType[storage]
            raw = layer.weight.detach().cpu().numpy()
            values = gguf.quants.dequantize(raw, qtype) + d.numpy()
            layer.weight.data = torch.from_numpy(gguf.quants.quantize(values.astype(np.float32), qtype))
        else:
            fp8 = getattr(torch, storage.replace("fp8_", "float8_"))
            big = torch.finfo(fp8).max
            layer.weight.data = (layer.weight.float() + d).clamp(-big, big).to(fp8)
    return pipe


def quantized_weights(model) -> dict[str, torch.Tensor]:
    """{module path without peft's `.base_layer`: weight} of every quantized weight."""
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()
            if quantized.layer_storage(p) is not None}


@pytest.mark.parametrize("storage", ["Q8_0", "Q4_0", "fp8_e4m3fn", "fp8_e5m2"])
def test_fuse_requantizes_and_unfuse_restores_the_bytes(engine, models, storage):
    base = load(engine, storage)
    h = tr.set_weights(with_lora(engine, base), ["a"], [0.8])
    unfused = sample(engine, h)
    live = engine.live(h.source)
    original = quantized_weights(live.pipe.transformer)
    fused_h = tr.fuse(h, True, False, 1.0, False)
    fused = sample(engine, fused_h)
    assert max_diff(fused, render(reference_fused(models, storage, "flux_a", 0.8))) <= 1 / 255
    requantized = quantized_weights(live.pipe.transformer)
    changed = [n for n in original if not torch.equal(original[n], requantized[n])]
    lora_weights = {f"{m}.weight" for m in lora_modules(models, "flux_a")}
    assert changed and set(changed) <= lora_weights  # only the LoRA's layers were written
    print(f"{storage}: fused vs unfused max pixel difference {max_diff(fused, unfused) * 255:.1f}/255")
    assert max_diff(sample(engine, tr.unfuse(fused_h, True, False)), unfused) <= 1 / 255
    restored = quantized_weights(live.pipe.transformer)
    assert all(torch.equal(original[n], restored[n]) for n in original)
    if storage in FILES:  # and they are the file's own bytes
        in_file = file_tensors(models / "diffusion_models" / FILES[storage])
        for n, w in restored.items():
            qtype, raw = in_file[n]
            assert qtype == w.quant_type and np.array_equal(w.cpu().numpy(), raw), n


def test_fuse_refuses_a_type_that_cannot_be_written_back(engine, models):
    """Q4_K (gguf-py has no K-quant quantizer): FuseLoRA names the type; nothing is fused, the
    unfused LoRA keeps working, every weight keeps the file's bytes."""
    base = load(engine, "Q4_K")
    assert engine.info(base)["storage"] == {"transformer": "GGUF Q8_0"}  # the most common type
    h = with_lora(engine, base, "flux_ff")
    unfused = sample(engine, h)
    assert max_diff(unfused, sample(engine, base)) > 0.01
    live = engine.live(h.source)
    original = quantized_weights(live.pipe.transformer)
    refused = r"FuseLoRA #7: fuse_unet: .*GGUF Q4_K cannot be written back"
    with pytest.raises(LoraOperationError, match=refused):
        engine.realize(tr.fuse(h, True, False, 1.0, False, origin="FuseLoRA #7"))
    after = quantized_weights(live.pipe.transformer)
    assert all(torch.equal(original[n], after[n]) for n in original)
    assert max_diff(sample(engine, h), unfused) == 0
    # a LoRA that touches no Q4_K layer fuses
    h2 = with_lora(engine, base, "flux_a")
    assert max_diff(sample(engine, tr.fuse(h2, True, False, 1.0, False)), sample(engine, h2)) <= 2 / 255


# --- LoadPipeline's inputs -----------------------------------------------------------------------------


def test_loadpipeline_lists_denoiser_files_and_loads_a_safetensors_one(engine, models):
    from loragraph.nodes.pipeline import LoadPipeline

    optional = LoadPipeline.INPUT_TYPES()["optional"]
    assert optional["denoiser"][0] == ["(from model)", "flux32_Q8_0.gguf", "flux64.safetensors",
                                       "flux64_Q4_0.gguf", "flux64_Q8_0.gguf", "flux64_TQ2_0.gguf",
                                       "sub/flux64_Q4_K.gguf"]
    assert optional["weight_dtype"][0] == ["default", "fp8_e4m3fn", "fp8_e5m2"]
    assert optional["weight_dtype"][0] == list(quantized.WEIGHT_DTYPES)
    (h,) = LoadPipeline().run("flux64", "float32", "cpu", denoiser="flux64.safetensors")
    assert h.source.denoiser_file.endswith("unet/flux64.safetensors")
    assert engine.info(h)["storage"] == {"transformer": "float32"}
    same = sample(engine, engine.load_pipeline("flux64", "float32", "cpu"))
    assert max_diff(sample(engine, h), same) == 0  # the same weights, read from the single file


def test_a_denoiser_file_replaces_the_folders_own_which_is_never_read(engine):
    full = engine.load_pipeline("flux64", "float32", "cpu", denoiser=FILES["Q8_0"])
    bare = engine.load_pipeline("flux64-bare", "float32", "cpu", denoiser=FILES["Q8_0"])
    assert engine.info(bare)["storage"] == {"transformer": "GGUF Q8_0"}
    assert max_diff(sample(engine, bare), sample(engine, full)) == 0


@pytest.mark.parametrize(("kwargs", "input_name", "message"), [
    ({"denoiser": FILES["narrow"]}, "denoiser", "do not fit the model's FluxTransformer2DModel"),
    ({"denoiser": FILES["TQ2_0"]}, "denoiser", "quant type TQ2_0 cannot be read"),
    ({"denoiser": "missing.gguf"}, "denoiser", "is not in the diffusion_models folder"),
    ({"denoiser": "../flux64.gguf"}, "denoiser", "without '..'"),
    ({"denoiser": FILES["Q8_0"], "weight_dtype": "fp8_e4m3fn"}, "weight_dtype", "GGUF-quantized already"),
    ({"weight_dtype": "fp4"}, "weight_dtype", "unknown weight_dtype 'fp4'"),
])
def test_bad_loadpipeline_inputs_name_the_input(engine, kwargs, input_name, message):
    with pytest.raises(NodeInputError, match=message) as caught:
        engine.load_pipeline("flux64", "float32", "cpu", **kwargs)
    assert caught.value.input_name == input_name


def test_fp8_on_a_device_or_torch_without_it_is_refused(monkeypatch):
    assert "not available on mps" in quantized.fp8_unavailable("fp8_e4m3fn", "mps")
    assert quantized.fp8_unavailable("fp8_e5m2", "cpu") is None
    monkeypatch.delattr(torch, "float8_e5m2")  # a torch release from before fp8
    with pytest.raises(NodeInputError, match=r"needs torch\.float8_e5m2") as caught:
        quantized.check_weight_dtype("fp8_e5m2", "cpu", None)
    assert caught.value.input_name == "weight_dtype"


def test_a_missing_gguf_package_names_the_extra(engine, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if not installed: `import gguf` fails
    with pytest.raises(NodeInputError, match=r"needs the gguf package: pip install 'loragraph\[gguf\]'"):
        engine.load_pipeline("flux64", "float32", "cpu", denoiser=FILES["Q8_0"])
