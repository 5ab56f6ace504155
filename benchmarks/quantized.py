"""LoRAs on quantized denoisers at mid size: weight memory and time per denoising step, for bf16,
fp8 (layerwise casting) and GGUF Q8_0 / Q4_0, with 0 and 3 LoRAs, unfused and fused.

    python -m benchmarks.quantized [--width 768] [--double 4] [--single 8] [--tokens 256] [--repeats 3]
                                   [--rank 16] [--threads N] [--json out.json]

A Flux-architecture transformer scaled up from the built-in tiny one (random weights, built in code:
no download; 768 wide, 4 double and 8 single blocks = about 150M parameters, ~300 MB in bf16) is
saved as a diffusers folder and as GGUF single files (gguf-py's quantizers), and loaded through the
engine (LoadPipeline's `denoiser` / `weight_dtype`). A step is one transformer forward at `--tokens`
image tokens (Flux's 2x2 latent patches: 256 tokens = a 512x512 image... of a 16-channel VAE, not
this one; the count is what matters) in bf16 compute, the median of `--repeats`.

Columns, per storage:
- `MB 0` / `MB 3`: the transformer's weight bytes (parameters and buffers) with 0 and 3 LoRAs;
- `base`, `unfused`, `fused`: ms per step with no LoRA, 3 LoRAs unfused (peft's low-rank path) and
  the 3 fused (requantized into the layer's own format); `fuse`: ms the FuseLoRA took;
- `on-the-fly`: ms per step of a reference written here and not shipped: every LoRA layer
  dequantizes its weight, adds the 3 deltas and runs the dense matmul on every forward, as
  ComfyUI-GGUF patches GGUF layers;
- `x raw`: ratios against raw diffusers in the same run: the bf16 pipeline with the 3 LoRAs loaded
  by `load_lora_weights` and not fused, timed alternately with the engine's rows.
The raw step is timed after every row's step, so the spread of those timings (max/min) is printed as
the run's noise floor, flagged NOISY above 1.2. Not a test: it prints a markdown table (and JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

STORAGES = ("bf16", "fp8_e4m3fn", "Q8_0", "Q4_0")
LORAS = ("l1", "l2", "l3")


def build_models(root: Path, width: int, double: int, single: int, rank: int) -> None:
    """The mid-size Flux folder, its GGUF files and 3 LoRAs on every attention projection."""
    from diffusers import FluxTransformer2DModel
    from loragraph.builtin_models.tiny_flux import build_tiny_flux
    from loragraph.testing import write_gguf_denoiser, write_lora_file

    pipe = build_tiny_flux()
    torch.manual_seed(0)
    head = 64
    pipe.transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=double, num_single_layers=single, attention_head_dim=head,
        num_attention_heads=width // head, joint_attention_dim=32, pooled_projection_dim=32,
        axes_dims_rope=[16, 24, 24],
    ).eval()
    for i, name in enumerate(LORAS):
        write_lora_file(root / "loras" / f"{name}.safetensors", fmt="diffusers", rank=rank, seed=10 + i,
                        pipe=pipe, components=("transformer",), scale=0.5)
    pipe.to(torch.bfloat16).save_pretrained(root / "diffusers" / "mid-flux")
    for qtype in ("Q8_0", "Q4_0"):
        write_gguf_denoiser(pipe.transformer, root / "diffusion_models" / f"mid_{qtype}.gguf", qtype)


def step_inputs(model, tokens: int) -> dict:
    side = int(tokens ** 0.5)
    g = torch.Generator().manual_seed(0)
    grid = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    ids = torch.stack(grid, -1).reshape(-1, 2)
    dtype = torch.bfloat16
    return {
        "hidden_states": torch.randn(1, side * side, model.config.in_channels, generator=g).to(dtype),
        "encoder_hidden_states": torch.randn(1, 16, model.config.joint_attention_dim, generator=g).to(dtype),
        "pooled_projections": torch.randn(1, model.config.pooled_projection_dim, generator=g).to(dtype),
        "timestep": torch.tensor([0.5], dtype=dtype),
        "img_ids": torch.cat([torch.zeros(side * side, 1), ids.float()], 1),
        "txt_ids": torch.zeros(16, 3),
        "return_dict": False,
    }


def time_step(model, inputs: dict) -> float:
    with torch.inference_mode():
        t0 = time.perf_counter()
        model(**inputs)
        return (time.perf_counter() - t0) * 1000


def weight_mb(model) -> float:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def on_the_fly(model):
    """The reference not shipped: each LoRA layer dequantizes, patches and multiplies per forward."""
    import torch.nn.functional as F
    from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor
    from peft.tuners.lora import Linear

    patched = []
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        base = module.get_base_layer()

        def forward(x, *args, module=module, base=base, **kwargs):
            weight = dequantize_gguf_tensor(base.weight).to(x.dtype)  # a plain tensor passes through
            for a in module.active_adapters:
                if a in module.lora_A:
                    up, down = module.lora_B[a].weight, module.lora_A[a].weight
                    weight = weight + (up @ down).to(x.dtype) * module.scaling[a]
            bias = None if base.bias is None else base.bias.to(x.dtype)
            return F.linear(x, weight, bias)

        module.forward = forward
        patched.append(module)
    return patched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--double", type=int, default=4)
    parser.add_argument("--single", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import FluxPipeline
    from loragraph import host
    from loragraph.loaders import transitions as tr
    from loragraph.loaders.engine import Engine

    rows = []
    with tempfile.TemporaryDirectory(prefix="loragraph-bench-quantized-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        build_models(root, args.width, args.double, args.single, args.rank)
        print(f"built the models in {time.perf_counter() - t0:.0f} s", flush=True)
        host.configure(models_dir=root, output_dir=root / "output")

        raw = FluxPipeline.from_pretrained(str(root / "diffusers" / "mid-flux"), dtype=torch.bfloat16)
        for name in LORAS:
            raw.load_lora_weights(str(root / "loras"), weight_name=f"{name}.safetensors", adapter_name=name)
        raw.set_adapters(list(LORAS), [1.0] * len(LORAS))
        inputs = step_inputs(raw.transformer, args.tokens)
        raw_ms: list[float] = []

        def timed(model) -> float:
            ours = []
            for _ in range(args.repeats):  # alternately with raw diffusers: machine noise hits both
                ours.append(time_step(model, inputs))
                raw_ms.append(time_step(raw.transformer, inputs))
            return statistics.median(ours)

        for storage in STORAGES:
            engine = Engine()
            kwargs = {}
            if storage.startswith("fp8"):
                kwargs["weight_dtype"] = storage
            elif storage.startswith("Q"):
                kwargs["denoiser"] = f"mid_{storage}.gguf"
            base = engine.load_pipeline("mid-flux", "bfloat16", "cpu", **kwargs)
            model = engine.live(base.source).pipe.transformer
            row = {"storage": storage, "mb0": weight_mb(model), "base": timed(model)}
            h = base
            for name in LORAS:
                h = tr.add_adapter(h, engine.lora_spec(h, f"{name}.safetensors", 1.0, name))
            engine.realize(h)
            row["mb3"], row["unfused"] = weight_mb(model), timed(model)
            patched = on_the_fly(model)
            row["on_the_fly"] = timed(model)
            for module in patched:
                del module.forward  # back to peft's own
            t0 = time.perf_counter()
            engine.realize(tr.fuse(h, True, False, 1.0, False))
            row["fuse"] = (time.perf_counter() - t0) * 1000
            row["fused"] = timed(model)
            rows.append(row)
            print(f"{storage}: done", flush=True)
            del engine, model
    raw_step = statistics.median(raw_ms)
    # The same raw step timed again and again: its spread is this run's noise floor for every ratio.
    spread = max(raw_ms) / min(raw_ms)
    noisy = "  NOISY: ratios below this spread are not differences" if spread > 1.2 else ""
    print(f"\nraw diffusers step spread (max/min over {len(raw_ms)} timings): {spread:.2f}{noisy}")
    print(f"\nmid-size Flux transformer, {args.width} wide, {args.double}+{args.single} blocks, "
          f"{args.tokens} image tokens, bf16 compute, CPU ({torch.get_num_threads()} threads), "
          f"3 LoRAs of rank {args.rank}; raw diffusers bf16 + 3 unfused LoRAs: {raw_step:.0f} ms/step\n")
    print("| storage | MB 0 | MB 3 | base ms | unfused ms | fused ms | fuse ms | on-the-fly ms "
          "| unfused x raw | fused x raw | on-the-fly / unfused |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['storage']} | {r['mb0']:.1f} | {r['mb3']:.1f} | {r['base']:.0f} | {r['unfused']:.0f} "
              f"| {r['fused']:.0f} | {r['fuse']:.0f} | {r['on_the_fly']:.0f} | {r['unfused'] / raw_step:.2f} "
              f"| {r['fused'] / raw_step:.2f} | {r['on_the_fly'] / r['unfused']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "raw_unfused_ms": raw_step,
                                         "raw_spread": spread, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
