"""LyCORIS files (LoKr, LoHa) on quantized denoisers: fp8 storage works as on a plain base, GGUF is
refused naming the file and why, before anything loads.

Oracles, on the 64-wide tiny Flux of test_quantized.py with files made by the LyCORIS library itself:
- fp8, unfused: the producer's own network (LyCORIS rebuilt from the saved file) on a raw diffusers
  pipeline with the same layerwise casting, 2/255;
- fp8, fused: a raw pipeline whose adapted layers hold (fp8 weight + LyCORIS's own diff weight),
  clamped and cast back to fp8, 1/255; UnfuseLoRA gives back every fp8 weight's bytes.
The adapters' values must reach peft intact: made in the compute dtype, never in the storage's
(fp8 weights are viewed as bytes while an adapter loads).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import max_diff
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.live import LoraOperationError
from loragraph.testing import write_gguf_denoiser, write_lora_file
from test_quantized import FILES, PROMPT, SIZE, flux64_transformer, quantized_weights, raw_pipeline, render

pytest.importorskip("gguf")
pytest.importorskip("lycoris")

TOL = 2 / 255
FP8 = "fp8_e4m3fn"
BLOCKS = ["FluxTransformerBlock", "FluxSingleTransformerBlock"]  # every Linear inside them
NOISE = 0.3  # spread added to LyCORIS's init, so each algorithm visibly changes the tiny image
ALGOS = ("lokr", "loha")


def _preset() -> str:
    import lycoris.kohya as lk

    lk.PRESET["loragraph-flux"] = {
        "enable_conv": False, "unet_target_module": BLOCKS, "unet_target_name": [],
        "text_encoder_target_module": [], "text_encoder_target_name": [],
    }
    return "loragraph-flux"


def write_lycoris(path: Path, vae, algo: str, seed: int) -> None:
    from lycoris.kohya import create_network

    transformer = flux64_transformer()
    torch.manual_seed(seed)
    net = create_network(1.0, 4, 2, vae, None, transformer, algo=algo, preset=_preset(),
                         warn_on_unmatched=False, factor=4)
    net.apply_to(None, transformer, False, True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * NOISE)
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})


def producer(models: Path, algo: str, multiplier: float):
    """(raw fp32 pipeline with LyCORIS's network from the file applied, the network)."""
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    pipe = raw_pipeline(models, "float32")
    _preset()
    LycorisNetworkKohya.apply_preset({"unet_target_module": BLOCKS, "unet_target_name": [],
                                      "text_encoder_target_module": [], "text_encoder_target_name": []})
    net, _ = create_network_from_weights(multiplier, str(models / "loras" / f"flux_{algo}.safetensors"),
                                         pipe.vae, None, pipe.transformer)
    return pipe, net


def producer_deltas(models: Path, algo: str, multiplier: float) -> dict[str, torch.Tensor]:
    """{layer path: weight delta} as the producer's own forward applies it: its network's output on
    the identity minus the layer's own (LyCORIS's get_diff_weight scales LoKr/LoHa once more than its
    forward does, so the forward is the reference)."""
    pipe, net = producer(models, algo, multiplier)
    paths = {id(m): n for n, m in pipe.transformer.named_modules()}
    net.apply_to(None, pipe.transformer, False, True)
    out = {}
    with torch.no_grad():
        for module in net.unet_loras:
            layer = module.org_module[0]
            eye = torch.eye(layer.in_features)
            out[paths[id(layer)]] = (module.forward(eye) - module.org_forward(eye)).T
    return out


def fp8_casting(pipe) -> None:
    pipe.transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    from loragraph.builtin_models.tiny_flux import build_tiny_flux

    root = tmp_path_factory.mktemp("quantized-lycoris")
    pipe = build_tiny_flux()
    pipe.transformer = flux64_transformer()
    pipe.save_pretrained(root / "diffusers" / "flux64")
    write_gguf_denoiser(pipe.transformer, root / "diffusion_models" / FILES["Q8_0"], "Q8_0")
    (root / "loras").mkdir()
    for i, algo in enumerate(ALGOS):
        write_lycoris(root / "loras" / f"flux_{algo}.safetensors", pipe.vae, algo, 80 + i)
    write_lora_file(root / "loras" / "flux_a.safetensors", fmt="diffusers", rank=4, seed=41, pipe=pipe,
                    components=("transformer",), scale=1.5)
    return root


@pytest.fixture()
def engine(models, tmp_path):
    from loragraph import host

    host.configure(models_dir=models, output_dir=tmp_path / "output")
    return Engine()


def sample(engine, handle):
    return engine.sample(handle, PROMPT, "", 1, 2, 3.5, SIZE, SIZE)


def with_lycoris(engine, handle, algo: str, strength: float = 1.0):
    return tr.add_adapter(handle, engine.lora_spec(handle, f"flux_{algo}.safetensors", strength, algo))


@pytest.mark.parametrize("algo", ALGOS)
def test_a_lycoris_file_on_fp8_storage_renders_as_its_producer(engine, models, algo):
    base = engine.load_pipeline("flux64", "float32", "cpu", weight_dtype=FP8)
    plain = sample(engine, base)
    h = with_lycoris(engine, base, algo)
    for weight in (1.0, 0.5):
        h = tr.set_weights(h, [algo], [weight])
        ours = sample(engine, h)
        pipe, net = producer(models, algo, weight)
        net.apply_to(None, pipe.transformer, False, True)
        fp8_casting(pipe)
        assert max_diff(ours, render(pipe)) <= TOL, weight
        assert max_diff(ours, plain) > 0.02, weight  # the file changes the image
    live = engine.live(h.source)
    made = [p for n, p in live.pipe.transformer.named_parameters() if ("lokr_" in n or "hada_" in n)]
    assert made and all(p.dtype == torch.float32 for p in made)  # the compute dtype, never fp8/bytes
    assert max_diff(sample(engine, tr.unload(h)), plain) == 0


@pytest.mark.parametrize("algo", ALGOS)
def test_fusing_a_lycoris_file_into_fp8_requantizes_and_unfuse_restores_the_bytes(engine, models, algo):
    base = engine.load_pipeline("flux64", "float32", "cpu", weight_dtype=FP8)
    h = tr.set_weights(with_lycoris(engine, base, algo), [algo], [0.8])
    unfused = sample(engine, h)
    live = engine.live(h.source)
    original = quantized_weights(live.pipe.transformer)
    fused_h = tr.fuse(h, True, False, 1.0, False)
    fused = sample(engine, fused_h)

    reference = raw_pipeline(models, "float32")
    fp8_casting(reference)
    big = torch.finfo(torch.float8_e4m3fn).max
    touched = 0
    for path, diff in producer_deltas(models, algo, 0.8).items():
        layer = reference.transformer.get_submodule(path)
        if layer.weight.dtype == torch.float8_e4m3fn:
            layer.weight.data = (layer.weight.float() + diff).clamp(-big, big).to(torch.float8_e4m3fn)
            touched += 1
        else:  # a layer casting skips (diffusers' pattern: norms, embeddings) stays in fp32
            layer.weight.data = layer.weight + diff
    assert touched
    assert max_diff(fused, render(reference)) <= 1 / 255
    assert max_diff(fused, unfused) > 0  # fusing wrote the fp8 weights
    assert max_diff(sample(engine, tr.unfuse(fused_h, True, False)), unfused) <= 1 / 255
    restored = quantized_weights(live.pipe.transformer)
    assert all(torch.equal(original[n], restored[n]) for n in original)


@pytest.mark.parametrize("algo", ALGOS)
def test_a_lycoris_file_on_a_gguf_denoiser_is_refused_naming_the_file_and_why(engine, models, algo):
    base = engine.load_pipeline("flux64", "float32", "cpu", denoiser=FILES["Q8_0"])
    plain = sample(engine, base)
    with pytest.raises(LoraOperationError) as e:
        sample(engine, with_lycoris(engine, base, algo))
    assert e.value.input_name == "lora_name"
    message = str(e.value)
    assert f"flux_{algo}.safetensors" in message and "GGUF" in message and algo in message
    assert "fp8" in message  # says what works instead
    # nothing half-done: no adapter on the pipeline, and a plain LoRA still loads on it
    assert max_diff(sample(engine, base), plain) == 0
    live = engine.live(base.source)
    assert not live.pipe.get_list_adapters() or not any(live.pipe.get_list_adapters().values())
    h = tr.add_adapter(base, engine.lora_spec(base, "flux_a.safetensors", 1.0, "a"))
    assert max_diff(sample(engine, h), plain) > 0.02
