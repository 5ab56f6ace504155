"""LoRA operations on the families beyond SD/SDXL/SD3/Flux, loragraph side by side with raw diffusers.

    python -m benchmarks.lora_ops --only families [--rank 16] [--repeats 5] [--families tiny-wan,tiny-ltx]
        [--family-size depth|width]

No real checkpoint of these families fits this machine, so each row's denoiser is the built-in tiny
model's transformer rebuilt in code with random weights; the rest of the pipeline stays tiny, as none of
it takes a LoRA. `--family-size depth` (the default, the reported figures: `REAL_DEPTH`) gives each
family its published checkpoint's block count at a narrow width; `--family-size width` is the earlier
`SCALE`: 2-12 blocks, wider. Per family: a first attach, a switch A -> B (B never attached: ours
hot-swaps into A's layers; diffusers: `delete_adapters` + `load_lora_weights`) and an unfuse (ours: the
saved base tensors copied back, exact; diffusers: subtracts the delta). The LoRAs are diffusers-form
files of the given rank on the attention projections and one feed-forward layer (the oracle tests'
targets). Rows alternate ours and diffusers on two identical pipelines and report medians; the targets
are the SD ones (docs/performance.md): switch <= 0.25x, unfuse <= 0.15x of diffusers' time.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

# Targets on the ratio to diffusers (ours / theirs), as at SD1.5 size (docs/performance.md).
RATIO_TARGETS = {"switch": 0.25, "unfuse": 0.15}

# family -> transformer config overrides: heads up at the tiny model's head size (its rope axes sum to
# the head size, so the head size stays), layers up; about 25-60 M parameters each.
SCALE: dict[str, dict[str, Any]] = {
    "tiny-wan": {"num_attention_heads": 40, "ffn_dim": 1920, "num_layers": 6},
    "tiny-qwenimage": {"num_attention_heads": 32, "num_layers": 6},
    "tiny-zimage": {"dim": 512, "n_heads": 32, "n_kv_heads": 32, "n_layers": 6},
    "tiny-chroma": {"num_attention_heads": 32, "num_layers": 2, "num_single_layers": 4},
    "tiny-kontext": {"num_attention_heads": 32, "num_layers": 2, "num_single_layers": 4},
    "tiny-ltx": {"num_attention_heads": 64, "num_layers": 8},
    "tiny-flux2": {"num_attention_heads": 32, "num_layers": 2, "num_single_layers": 4},
    "tiny-lumina2": {"hidden_size": 512, "num_attention_heads": 64, "num_kv_heads": 64, "num_layers": 8},
    "tiny-sana": {"num_attention_heads": 128, "num_cross_attention_heads": 128, "cross_attention_dim": 512,
                  "num_layers": 12},
    "tiny-cogview4": {"num_attention_heads": 128, "num_layers": 8},
    "tiny-hunyuanvideo": {"num_attention_heads": 48, "num_layers": 2, "num_single_layers": 4},
}
# family -> transformer config overrides at the real checkpoint's block count (diffusers' configs and
# the model cards): the per-layer costs of attach, hotswap and unfuse scale with the number of adapted
# layers, so the depth is the real one; the width (heads at the tiny model's head size, its rope axes
# summing to it) is 192-256, so each transformer is 23-80 M parameters (90-320 MB in fp32) and
# three copies of it (ours, diffusers', the exactness check's fresh build) fit this shared CPU machine.
REAL_DEPTH: dict[str, dict[str, Any]] = {
    # Wan 2.1 T2V 1.3B: 30 blocks (14B: 40)
    "tiny-wan": {"num_attention_heads": 20, "ffn_dim": 1024, "num_layers": 30},
    # Qwen-Image (20B): 60 dual-stream blocks
    "tiny-qwenimage": {"num_attention_heads": 12, "num_layers": 60},
    # Z-Image (Turbo, 6B): 30 layers, 2 noise and 2 context refiner layers
    "tiny-zimage": {"dim": 256, "n_heads": 16, "n_kv_heads": 16, "n_layers": 30, "n_refiner_layers": 2},
    # Chroma (Flux.1-schnell based): 19 double + 38 single blocks
    "tiny-chroma": {"num_attention_heads": 12, "num_layers": 19, "num_single_layers": 38},
    # FLUX.1 Kontext [dev]: 19 double + 38 single blocks
    "tiny-kontext": {"num_attention_heads": 12, "num_layers": 19, "num_single_layers": 38},
    # LTX-Video (2B): 28 blocks
    "tiny-ltx": {"num_attention_heads": 32, "num_layers": 28},
    # FLUX.2 [klein] 4B: 5 double + 20 single blocks
    "tiny-flux2": {"num_attention_heads": 16, "num_layers": 5, "num_single_layers": 20},
    # Lumina-Image 2.0: 26 layers, 2 refiner layers
    "tiny-lumina2": {"hidden_size": 256, "num_attention_heads": 32, "num_kv_heads": 32, "num_layers": 26,
                     "num_refiner_layers": 2},
    # Sana 600M: 28 blocks (1.6B: 20)
    "tiny-sana": {"num_attention_heads": 64, "num_cross_attention_heads": 64, "cross_attention_dim": 256,
                  "num_layers": 28},
    # CogView4-6B: 28 blocks
    "tiny-cogview4": {"num_attention_heads": 64, "num_layers": 28},
    # HunyuanVideo (13B): 20 dual-stream + 40 single-stream blocks
    "tiny-hunyuanvideo": {"num_attention_heads": 20, "num_layers": 20, "num_single_layers": 40},
}
SIZES = {"depth": REAL_DEPTH, "width": SCALE}
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# the LoRA's target modules per family: the attention projections and one feed-forward layer
TARGETS_OF: dict[str, tuple[str, ...]] = {
    "tiny-wan": (*ATTENTION, "ffn.net.0.proj"),
    "tiny-qwenimage": (*ATTENTION, "img_mlp.net.2"),
    "tiny-zimage": (*ATTENTION, "feed_forward.w1"),
    "tiny-chroma": (*ATTENTION, "ff.net.0.proj"),
    "tiny-kontext": (*ATTENTION, "ff.net.0.proj"),
    "tiny-ltx": (*ATTENTION, "ff.net.0.proj"),
    "tiny-flux2": (*ATTENTION, "to_qkv_mlp_proj"),
    "tiny-lumina2": (*ATTENTION, "feed_forward.linear_1"),
    "tiny-sana": ATTENTION,
    "tiny-cogview4": (*ATTENTION, "ff.net.0.proj"),
    "tiny-hunyuanvideo": (*ATTENTION, "ff.net.0.proj"),
}


def build_scaled(family: str, size: str = "depth") -> Any:
    """The built-in tiny pipeline of `family` with its transformer rebuilt at SIZES[size]'s size, seeded."""
    from loragraph.builtin_models.catalog import BUILTINS

    pipe = BUILTINS[family].builder()
    small = pipe.transformer
    config = {k: v for k, v in small.config.items() if not k.startswith("_")} | SIZES[size][family]
    torch.manual_seed(0)
    pipe.register_modules(transformer=type(small).from_config(config))
    pipe.set_progress_bar_config(disable=True)
    return pipe


class FamilyBench:
    """The rows of one family on two identical scaled pipelines: raw diffusers and the engine's."""

    def __init__(self, bench: Any, family: str) -> None:
        from loragraph.loaders.engine import _cache_key
        from loragraph.loaders.live import LivePipeline
        from loragraph.loaders.state import PipelineHandle, PipelineSource
        from loragraph.testing import write_lora_file

        self.bench, self.family = bench, family
        self.size = getattr(bench.args, "family_size", "depth")
        self.raw = build_scaled(family, self.size)
        self.layers = len(TARGETS_OF[family])  # replaced below by the adapted-layer count
        self.params = sum(p.numel() for p in self.raw.transformer.parameters())
        folder = bench.root / "loras" / "families"
        self.files: dict[str, Path] = {}
        for i in range(2):
            path = folder / f"{family}_{self.size}_r{bench.args.rank}_{i}.safetensors"
            if not path.exists():
                write_lora_file(path, fmt="diffusers", rank=bench.args.rank, alpha=bench.args.rank / 2,
                                seed=100 + i, pipe=self.raw, components=("transformer",),
                                targets=TARGETS_OF[family])
            self.files[f"lora_{i}"] = path
        source = PipelineSource(f"bench:{family}", "builtin", family, "float32", "cpu", "bench",
                                ("transformer",))
        bench.engine.pipelines.put(_cache_key(source), LivePipeline(build_scaled(family, self.size)), 0)
        self.base = PipelineHandle(source)
        self.live = bench.engine.live(source)

    def spec(self, key: str, name: str, handle: Any = None) -> Any:
        handle = handle or self.base
        rel = self.files[key].relative_to(self.bench.root / "loras")
        return self.bench.engine.lora_spec(handle, str(rel), 1.0, name)

    def raw_load(self, key: str, name: str) -> None:
        p = self.files[key]
        self.raw.load_lora_weights(str(p.parent), weight_name=p.name, adapter_name=name)

    def raw_reset(self) -> None:
        if self.raw.num_fused_loras:
            self.raw.unfuse_lora(components=["transformer"])
        self.raw.unload_lora_weights()

    def unpark(self) -> None:
        """Back to the base pipeline with no parked adapter: the next attach is a first one."""
        engine = self.bench.engine
        budget, self.live.parked_bytes = self.live.parked_bytes, 0
        try:
            engine.realize(self.base)
            self.live.state = None  # force a reset, which drops parked adapters
            engine.realize(self.base)
        finally:
            self.live.parked_bytes = budget

    def rows(self) -> None:
        from loragraph.loaders import transitions as tr

        engine = self.bench.engine
        a = tr.add_adapter(self.base, self.spec("lora_0", "a"))
        b = tr.add_adapter(tr.delete(a, ["a"]), self.spec("lora_1", "b"))
        engine.realize(a)  # warm-up: reads both files once, pays one-time costs
        self.layers = sum(1 for m in self.live.pipe.transformer.modules() if hasattr(m, "lora_A"))
        engine.realize(b)
        label = f"{self.family} ({self.params / 1e6:.0f} M, {self.layers} LoRA layers)"

        self.bench.row(f"{label}: attach LoRA, warm (first attach)", self.unpark, lambda: engine.realize(a),
                       self.raw_reset, lambda: self.raw_load("lora_0", "a"))

        def only_a() -> None:
            self.unpark()  # keeps the inputs of files swapped before
            engine.realize(a)

        def raw_only_a() -> None:
            self.raw_reset()
            self.raw_load("lora_0", "a")

        def raw_switch() -> None:
            self.raw.delete_adapters(["a"])
            self.raw_load("lora_1", "b")

        def only_a_first_swap() -> None:
            only_a()
            self.live.swap_inputs.clear()  # B's file never swapped on this pipeline either

        self.bench.row(f"{label}: switch LoRA A -> B (B never attached, its file never swapped)",
                       only_a_first_swap, lambda: engine.realize(b), raw_only_a, raw_switch,
                       note_fn=self.flag("switch", "hotswap through diffusers' loader"))
        self.bench.row(f"{label}: switch LoRA A -> B (B never attached; its file swapped before)", only_a,
                       lambda: engine.realize(b), raw_only_a, raw_switch,
                       note_fn=self.flag("switch", "peft's hotswap, diffusers' inputs kept"))

        fused = tr.fuse(a, True, True, 1.0, False)

        def raw_fused() -> None:
            raw_only_a()
            self.raw.fuse_lora(components=["transformer"])

        self.bench.row(f"{label}: unfuse", lambda: engine.realize(fused), lambda: engine.realize(a),
                       raw_fused, lambda: self.raw.unfuse_lora(components=["transformer"]),
                       note_fn=self.flag("unfuse", "the saved base tensors copied back, exact"))
        self.raw_reset()
        engine.realize(tr.unload(self.base))
        self.check_exact()
        engine.pipelines.clear()  # the next family's pair of pipelines replaces this one's

    def flag(self, op: str, how: str = "") -> Any:
        """The row's note: the target on its ratio to diffusers, met or MISSED (and how ours does it)."""
        target = RATIO_TARGETS[op]

        def note(row: dict) -> str:
            ratio = row["ratio_to_diffusers"]
            verdict = "ok" if ratio is not None and ratio <= target else "MISSED"
            return f"target <= {target}x: {verdict}" + (f"; ours: {how}" if how else "")

        return note

    def check_exact(self) -> None:
        """After the rows, the engine's transformer must be bit-identical to a fresh scaled build."""
        fresh = build_scaled(self.family, self.size).transformer.state_dict()
        # peft keeps a wrapped layer's weight under `.base_layer` while a parked adapter holds it
        ours = {k.replace(".base_layer", ""): v for k, v in self.live.pipe.transformer.state_dict().items()
                if "lora_" not in k}
        differ = [k for k in fresh if k not in ours or not torch.equal(fresh[k], ours[k])]
        self.exact = not differ
        if differ:
            print(f"FAILED: {self.family}: {len(differ)} base weights differ from a fresh build "
                  f"({', '.join(differ[:3])})", flush=True)


def family_rows(bench: Any, families: list[str] | None = None, size: str = "depth") -> bool:
    """Run every family's rows on `bench` (lora_ops.Bench.without_sd15: root, engine, args, row()); True
    when every engine pipeline ended bit-identical to a fresh build."""
    exact = True
    bench.args.family_size = size
    for family in families or list(SIZES[size]):
        t0 = time.perf_counter()
        fb = FamilyBench(bench, family)
        fb.rows()
        exact &= fb.exact
        print(f"{family}: {time.perf_counter() - t0:.0f} s", flush=True)
        del fb
    return exact
