"""LoRA operations at real model size, loragraph side by side with the same raw diffusers calls.

    python -m benchmarks.lora_ops [--rank 32] [--repeats 5] [--threads 1] [--json out.json] [--sampling]
    python -m benchmarks.lora_ops --device cuda --dtype float16     # the GPU variant (adds --sampling)
    python -m benchmarks.lora_ops --only schedule                   # ScheduleAdapterWeights' rows alone
    python -m benchmarks.lora_ops --only fused                      # fuse and a fused weight change
    bash benchmarks/gpu.sh fetch; bash benchmarks/gpu.sh run        # the same on a lent device machine

An SD1.5-size UNet and CLIP-L-size text encoder with random weights are built in code (no
download). LoRAs of the given rank target every attention projection of the UNet plus the text
encoder, written in kohya and diffusers format. Each row runs loragraph's engine and the raw
diffusers calls alternately (so machine noise hits both), on two identical pipelines, and reports
the median. Not a test: it prints a markdown table and writes JSON (after every row, with
`"complete": false` until the run ends).

`--sampling` (on by default with `--device cuda`) adds the sampling rows: ms per denoising step at
SD1.5's 512x512 working size (64x64 latents; the bench's small VAE downsamples 2x, so the images are
128x128) with 1, 3 and 5 LoRAs, unfused and fused, through the engine's Sampler path and raw
`pipe(...)`, with CFG (two UNet passes a step), as it/s in the note.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

# --------------------------------------------------------------------------------------------- setup


def build_sd15(device: str, dtype: torch.dtype):
    """A StableDiffusionPipeline with SD1.5's UNet and a CLIP-L text encoder, random weights."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from loragraph.builtin_models.tiny_parts import ddim_scheduler, tiny_vae
    from loragraph.builtin_models.tokenizers import make_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # diffusers' defaults = SD1.5
    te = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       vocab_size=514, bos_token_id=512, eos_token_id=513, pad_token_id=513,
                       max_position_embeddings=77, projection_dim=768)
    )
    pipe = StableDiffusionPipeline(
        unet=unet, scheduler=ddim_scheduler(), vae=tiny_vae(), text_encoder=te, tokenizer=make_tokenizer(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def write_loras(pipe, folder: Path, rank: int, count: int) -> dict[str, Path]:
    from loragraph.testing import write_lora_file

    out = {}
    for i in range(count):
        for fmt in ("diffusers", "kohya"):
            path = folder / f"r{rank}_{fmt}_{i}.safetensors"
            if not path.exists():
                write_lora_file(path, "sd", fmt, rank=rank, alpha=rank / 2, seed=100 + i, pipe=pipe)
            out[f"{fmt}_{i}"] = path
    for i in range(2):  # UNet-only, same layers and rank: a switch between them hot-swaps
        path = folder / f"r{rank}_unet_{i}.safetensors"
        if not path.exists():
            write_lora_file(path, "sd", "diffusers", rank=rank, alpha=rank / 2, seed=300 + i, pipe=pipe,
                            components=("unet",))
        out[f"unet_{i}"] = path
    return out


_ATTN = ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")


def write_lycoris(pipe, folder: Path, rank: int) -> dict[str, Path]:
    """LoHa, LoKr and DoRA files (kohya/LyCORIS keys) on the same layers as the LoRAs, with the LoRA's
    parameter count: LoHa at rank/2 (two pairs of factors), LoKr with a 2x2 w1 and a rank-2r w2 of
    half the layer's size ((out/2 + in/2) * 2r = (out + in) * r), DoRA at the LoRA's rank plus its
    magnitude (the layer's row norms, as LyCORIS initialises it, perturbed)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(7)
    out = {}
    for algo in ("loha", "lokr", "dora"):
        path = folder / f"r{rank}_{algo}.safetensors"
        out[algo] = path
        if path.exists():
            continue
        tensors = {}
        for comp, prefix in (("unet", "lora_unet_"), ("text_encoder", "lora_te_")):
            for name, mod in getattr(pipe, comp).named_modules():
                if not (isinstance(mod, torch.nn.Linear) and name.endswith(_ATTN)):
                    continue
                bare_te = comp == "text_encoder" and not name.startswith("text_model")
                te_root = "text_model_" if bare_te else ""
                key = prefix + te_root + name.replace(".", "_")
                o, i = mod.out_features, mod.in_features

                def rnd(*shape):
                    return torch.randn(*shape, generator=gen) * 0.05

                if algo == "loha":
                    r = rank // 2
                    tensors.update({f"{key}.hada_w1_a": rnd(o, r), f"{key}.hada_w1_b": rnd(r, i),
                                    f"{key}.hada_w2_a": rnd(o, r), f"{key}.hada_w2_b": rnd(r, i)})
                elif algo == "lokr":
                    r = 2 * rank
                    tensors.update({f"{key}.lokr_w1": rnd(2, 2), f"{key}.lokr_w2_a": rnd(o // 2, r),
                                    f"{key}.lokr_w2_b": rnd(r, i // 2)})
                else:
                    r = rank
                    norms = mod.weight.detach().float().norm(dim=1, keepdim=True)
                    tensors.update({f"{key}.lora_down.weight": rnd(r, i), f"{key}.lora_up.weight": rnd(o, r),
                                    f"{key}.dora_scale": norms * (1 + rnd(o, 1))})
                tensors[f"{key}.alpha"] = torch.tensor(float(r))
        save_file(tensors, str(path))
    return out


def base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's own parameters and buffers, by the names a fresh build gives them.

    After an unload the engine keeps adapters parked: every adapter layer (peft's LoRA, LoHa, LoKr,
    DoRA's magnitude, loragraph's NormDelta for norm diffs; nested when adapters of several types
    share a layer) stays wrapped around the layer it adapts. Each peft tuner layer is looked through
    to the layer it wraps (`get_base_layer()`), so no adapter tensor is taken for a base weight
    whatever its name, and a wrapper's `base_layer.` is not part of a weight's name.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    out: dict[str, torch.Tensor] = {}

    def walk(module: torch.nn.Module, prefix: str) -> None:
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()  # the innermost wrapped layer, past nested wrappers
        for name, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            out[prefix + name] = tensor
        for name, child in module.named_children():
            walk(child, f"{prefix}{name}.")

    walk(model, "")
    return out


def base_weight_mismatches(expected: torch.nn.Module, got: torch.nn.Module) -> list[str]:
    """Names of the base weights (`base_weights`) that are not bit-identical, or exist on one side only."""
    a, b = base_weights(expected), base_weights(got)
    return sorted(a.keys() ^ b.keys()) + [k for k in a if k in b and not torch.equal(a[k], b[k])]


class PeakRSS:
    """Peak resident memory above the start, sampled every millisecond in a thread."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process()
        self.peak = 0

    def __enter__(self):
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self.stop = False

        def sample():
            while not self.stop:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.001)

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mib(self) -> float:
        return (self.peak - self.start) / 2**20


def sync(device: str):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, float]:
    """(milliseconds, peak MiB) of one call."""
    gc.collect()
    sync(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        fn()
        sync(device)
        ms = (time.perf_counter() - t0) * 1e3
    peak = mem.mib if device != "cuda" else (torch.cuda.max_memory_allocated() - base) / 2**20
    return ms, peak


# ---------------------------------------------------------------------------------------------- rows


class Bench:
    def __init__(self, args):
        from loragraph import host
        from loragraph.loaders.engine import Engine

        self.args = args
        self.device = args.device
        self.dtype = {"float32": torch.float32, "float16": torch.float16,
                      "bfloat16": torch.bfloat16}[args.dtype]
        self.root = Path(args.work or tempfile.mkdtemp(prefix="loragraph-bench-"))
        (self.root / "loras").mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self.raw = build_sd15(self.device, self.dtype)
        self.files = write_loras(self.raw, self.root / "loras", args.rank, 5)
        host.configure(models_dir=self.root, output_dir=self.root / "out")
        self.engine = Engine()
        # our pipeline: the same weights, registered with the engine as a live pipeline
        from loragraph.loaders.live import LivePipeline
        from loragraph.loaders.state import PipelineHandle, PipelineSource

        ours = build_sd15(self.device, self.dtype)
        source = PipelineSource("bench:sd15", "builtin", "sd15", args.dtype, self.device, "bench",
                                ("unet", "text_encoder"))
        from loragraph.loaders.engine import _cache_key

        self.engine.pipelines.put(_cache_key(source), LivePipeline(ours), 0)
        self.base = PipelineHandle(source)
        self.live = self.engine.live(source)
        print(f"setup {time.perf_counter() - t0:.1f} s; work dir {self.root}", flush=True)
        self.rows: list[dict] = []
        self.copy_floor = self.addmm_floor = self.inject_floor = self.exact = None  # set as the run goes
        self.touched = self._touched_weights()

    @classmethod
    def without_sd15(cls, args) -> Bench:
        """A Bench for rows that bring their own pipelines (--only families): no SD1.5 build."""
        from loragraph import host
        from loragraph.loaders.engine import Engine

        self = cls.__new__(cls)
        self.args, self.device = args, args.device
        self.root = Path(args.work or tempfile.mkdtemp(prefix="loragraph-bench-"))
        (self.root / "loras").mkdir(parents=True, exist_ok=True)
        host.configure(models_dir=self.root, output_dir=self.root / "out")
        self.engine = Engine()
        self.rows = []
        self.copy_floor = self.addmm_floor = self.inject_floor = self.exact = None
        return self

    # --- helpers --------------------------------------------------------------------------------

    def _touched_weights(self) -> list[torch.Tensor]:
        from loragraph.loaders.coverage import coverage
        from loragraph.loaders.store import read_lora

        lf = read_lora(self.files["diffusers_0"])
        cov = coverage(self.raw, lf)
        assert not cov.unmatched
        out = []
        for comp in ("unet", "text_encoder"):
            model = getattr(self.raw, comp)
            for name, mod in model.named_modules():
                if isinstance(mod, torch.nn.Linear) and name.endswith(
                    ("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj", "out_proj")
                ):
                    out.append(mod.weight)
        return out

    def spec(self, key: str, name: str, handle=None):
        handle = handle or self.base
        return self.engine.lora_spec(handle, str(self.files[key].relative_to(self.root / "loras")), 1.0, name)

    def raw_load(self, key: str, name: str):
        p = self.files[key]
        self.raw.load_lora_weights(str(p.parent), weight_name=p.name, adapter_name=name)

    def raw_only(self, key: str, name: str):
        """Setup: the raw pipeline with only file `key` loaded as `name`."""
        return lambda: (self.raw_reset(), self.raw_load(key, name))

    def raw_switch(self, old: str, key: str, name: str):
        """diffusers' switch: delete adapter `old`, load file `key` as `name`."""
        return lambda: (self.raw.delete_adapters([old]), self.raw_load(key, name))

    def raw_reset(self):
        self.raw.unfuse_lora(components=["unet", "text_encoder"]) if self.raw.num_fused_loras else None
        self.raw.unload_lora_weights()

    def ours_reset(self):
        self.engine.realize(self.base)

    def unpark(self):
        """Back to the base pipeline with no parked adapter either: the next attach is a first one."""
        budget, self.live.parked_bytes = self.live.parked_bytes, 0
        try:
            self.engine.realize(self.base)
            self.live.state = None  # force a reset, which drops parked adapters
            self.engine.realize(self.base)
        finally:
            self.live.parked_bytes = budget

    def _add(self, row: dict) -> None:
        self.rows.append(row)
        print(_fmt_row(row), flush=True)
        self.save(complete=False)  # a run cut off (a device lease's time limit) keeps its rows

    def save(self, complete: bool) -> None:
        if not self.args.json:
            return
        out = Path(self.args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "machine": machine(self.args), "rank": self.args.rank, "repeats": self.args.repeats,
            "date": time.strftime("%Y-%m-%d"), "complete": complete,
            "copy_floor_ms": self.copy_floor, "addmm_floor_ms": self.addmm_floor,
            "peft_inject_floor_ms": self.inject_floor, "exact_after_all_rows": self.exact, "rows": self.rows,
        }, indent=2))

    def row(self, name: str, ours_setup, ours_op, raw_setup, raw_op, note: str = "",
            floor: float | None = None, per: int = 1, note_fn=None):
        """Alternate: setup (untimed) then the op, ours then diffusers, `repeats` times; medians.

        `per` divides the times (ms per step of a sampling call); `note_fn(row)` writes the note.
        """
        o_ms, o_mem, r_ms, r_mem = [], [], [], []
        for _ in range(self.args.repeats):
            ours_setup()
            ms, mem = timed(ours_op, self.device)
            o_ms.append(ms)
            o_mem.append(mem)
            if raw_op is not None:
                raw_setup()
                ms, mem = timed(raw_op, self.device)
                r_ms.append(ms)
                r_mem.append(mem)
        row = {
            "operation": name,
            "loragraph_ms": statistics.median(o_ms) / per,
            "diffusers_ms": statistics.median(r_ms) / per if r_ms else None,
            "loragraph_peak_mib": max(o_mem),
            "diffusers_peak_mib": max(r_mem) if r_mem else None,
            "floor_ms": floor,
            "note": note,
        }
        row["ratio_to_diffusers"] = row["loragraph_ms"] / row["diffusers_ms"] if row["diffusers_ms"] else None
        row["ratio_to_floor"] = row["loragraph_ms"] / floor if floor else None
        if note_fn is not None:
            row["note"] = note_fn(row)
        self._add(row)
        return row

    # --- floors ---------------------------------------------------------------------------------

    def floors(self):
        backups = [w.detach().clone() for w in self.touched]
        lora = [(torch.randn(w.shape[0], self.args.rank, dtype=w.dtype, device=w.device),
                 torch.randn(self.args.rank, w.shape[1], dtype=w.dtype, device=w.device))
                for w in self.touched]

        def copy_all():
            for w, b in zip(self.touched, backups, strict=True):
                w.data.copy_(b)

        def addmm_all():
            for w, (b, a) in zip(self.touched, lora, strict=True):
                w.data.addmm_(b, a, alpha=1e-3)

        self.copy_floor = statistics.median(timed(copy_all, self.device)[0] for _ in range(3))
        self.addmm_floor = statistics.median(timed(addmm_all, self.device)[0] for _ in range(3))
        copy_all()
        self.inject_floor = self._inject_floor()
        n = sum(w.numel() for w in self.touched)
        print(f"floors: copy touched weights {self.copy_floor:.1f} ms, addmm_ {self.addmm_floor:.1f} ms "
              f"({n / 1e6:.1f} M touched elements); peft building the layers {self.inject_floor:.1f} ms",
              flush=True)

    def _inject_floor(self) -> float:
        """peft's `inject_adapter_in_model` alone: building empty LoRA layers on the touched modules of
        the UNet and the text encoder (no weights loaded), as any peft-based first attach must."""
        from diffusers.utils.peft_utils import recurse_remove_peft_layers
        from peft import LoraConfig, inject_adapter_in_model

        targets = {}
        for comp in ("unet", "text_encoder"):
            model = getattr(self.raw, comp)
            targets[comp] = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                             and n.endswith(("to_q", "to_k", "to_v", "to_out.0", "q_proj", "k_proj", "v_proj",
                                             "out_proj"))]

        def inject():
            for comp, names in targets.items():
                config = LoraConfig(r=self.args.rank, lora_alpha=self.args.rank, target_modules=names)
                inject_adapter_in_model(config, getattr(self.raw, comp), adapter_name="floor",
                                        low_cpu_mem_usage=True)

        def remove():
            for comp in targets:
                model = getattr(self.raw, comp)
                recurse_remove_peft_layers(model)
                if hasattr(model, "peft_config"):
                    del model.peft_config

        times = []
        for _ in range(3):
            times.append(timed(inject, self.device)[0])
            remove()
        return statistics.median(times)

    # --- the rows -------------------------------------------------------------------------------

    def run(self):
        from loragraph.loaders import store
        from loragraph.loaders import transitions as tr
        from loragraph.nodes import widget_text as wt

        self.floors()
        a = tr.add_adapter(self.base, self.spec("diffusers_0", "a"))

        def cold():
            store.clear_lora_cache()
            self.unpark()

        self.row("load LoRA, cold (file never read)", cold, lambda: self.engine.realize(a),
                 self.raw_reset, lambda: self.raw_load("diffusers_0", "a"))
        self.row("attach LoRA, warm (file read once, never on this pipeline)", self.unpark,
                 lambda: self.engine.realize(a), self.raw_reset, lambda: self.raw_load("diffusers_0", "a"),
                 note="a first attach: peft injects the layers; floor: peft building the layers alone",
                 floor=self.inject_floor)
        self.row("attach LoRA again (parked by an earlier state)", self.ours_reset,
                 lambda: self.engine.realize(a),
                 self.raw_reset, lambda: self.raw_load("diffusers_0", "a"), floor=self.copy_floor,
                 note="the adapter stayed loaded, inactive: one set_adapters")
        k = tr.add_adapter(self.base, self.spec("kohya_0", "k"))
        self.row("attach LoRA, warm (kohya format, first attach)", self.unpark,
                 lambda: self.engine.realize(k),
                 self.raw_reset, lambda: self.raw_load("kohya_0", "k"), floor=self.inject_floor)

        # weights, unfused
        w1, w2 = wt.set_weights(a, "a", "0.6"), wt.set_weights(a, "a", "0.9")
        flip = {"i": 0}

        def ours_weights():
            flip["i"] += 1
            self.engine.realize(w1 if flip["i"] % 2 else w2)

        def raw_setup_a():
            if "a" not in self.raw.get_list_adapters().get("unet", []):
                self.raw_reset()
                self.raw_load("diffusers_0", "a")
            if self.raw.num_fused_loras:
                self.raw.unfuse_lora(components=["unet", "text_encoder"])

        self.engine.realize(a)
        self.row("change weights, unfused", lambda: None, ours_weights,
                 raw_setup_a, lambda: self.raw.set_adapters(["a"], [0.6 + 0.3 * (flip["i"] % 2)]))

        # fuse / unfuse
        fused = wt.fuse(w1, True, True, 1.0, False, "")
        self.row("fuse", lambda: self.engine.realize(w1), lambda: self.engine.realize(fused),
                 raw_setup_a, lambda: self.raw.fuse_lora(components=["unet", "text_encoder"]),
                 floor=self.addmm_floor)

        def raw_fused():
            raw_setup_a()
            self.raw.fuse_lora(components=["unet", "text_encoder"])

        self.row("unfuse", lambda: self.engine.realize(fused), lambda: self.engine.realize(w1),
                 raw_fused, lambda: self.raw.unfuse_lora(components=["unet", "text_encoder"]),
                 note="ours bit-exact; diffusers subtracts", floor=self.copy_floor)
        drift = self.diffusers_drift()
        self.rows[-1]["note"] += f" ({drift:.1%} of touched elements differ after diffusers' unfuse)"

        fused2 = wt.fuse(w2, True, True, 1.0, False, "")

        def raw_refuse():
            self.raw.unfuse_lora(components=["unet", "text_encoder"])
            self.raw.set_adapters(["a"], [0.9])
            self.raw.fuse_lora(components=["unet", "text_encoder"])

        self.row("change weights, fused", lambda: self.engine.realize(fused),
                 lambda: self.engine.realize(fused2),
                 raw_fused, raw_refuse, note="diffusers: unfuse + set_adapters + fuse")

        # switch A -> B
        b = tr.add_adapter(wt.delete(a, "a"), self.spec("diffusers_1", "b"))
        raw_only_a, raw_switch = self.raw_only("diffusers_0", "a"), self.raw_switch("a", "diffusers_1", "b")

        def only_a():
            self.unpark()
            self.engine.realize(a)

        def only_a_first_swap():
            only_a()
            self.live.swap_inputs.clear()  # B's file never swapped on this pipeline either

        self.row("switch LoRA A -> B (B never attached, its file never swapped)", only_a_first_swap,
                 lambda: self.engine.realize(b), raw_only_a, raw_switch,
                 note="ours: hotswap into A's UNet and text-encoder layers through diffusers' loader; "
                      "diffusers: delete_adapters + load_lora_weights")
        self.row("switch LoRA A -> B (B never attached; its file swapped before)", only_a,
                 lambda: self.engine.realize(b), raw_only_a, raw_switch,
                 note="ours: peft's hotswap with the inputs diffusers built for that file the first time")

        def a_swapped_out():
            only_a()
            self.engine.realize(b)  # B takes A's layers

        self.row("switch back B -> A (A was overwritten by that hotswap)", a_swapped_out,
                 lambda: self.engine.realize(a), self.raw_only("diffusers_1", "b"),
                 self.raw_switch("b", "diffusers_0", "a"),
                 note="ours: A is loaded, not swapped, so both stay attached")
        self.row("switch LoRA B -> A -> B (both attached before)", lambda: self.engine.realize(a),
                 lambda: self.engine.realize(b), raw_only_a, raw_switch, note="A and B stay parked")

        # switch A -> B between UNet-only LoRAs of the same layers and rank: diffusers' hotswap
        ua = tr.add_adapter(self.base, self.spec("unet_0", "ua"))
        ub = tr.add_adapter(self.base, self.spec("unet_1", "ub"))

        def only_ua():
            self.unpark()
            self.engine.realize(ua)
            self.live.swap_inputs.clear()  # every repeat is the file's first swap

        self.row("switch LoRA A -> B, UNet-only, same layers (B never attached, its file never swapped)",
                 only_ua, lambda: self.engine.realize(ub), self.raw_only("unet_0", "ua"),
                 self.raw_switch("ua", "unet_1", "ub"),
                 note="ours: hotswap into A's layers; diffusers: delete_adapters + load_lora_weights")
        self.ours_reset()

        # stack of 5
        stack = self.base
        for i in range(5):
            stack = tr.add_adapter(stack, self.spec(f"diffusers_{i}", f"s{i}", stack))

        def raw_stack():
            for i in range(5):
                self.raw_load(f"diffusers_{i}", f"s{i}")
            self.raw.set_adapters([f"s{i}" for i in range(5)], [1.0] * 5)

        self.row("stack of 5 LoRAs (first attach + activate)", self.unpark,
                 lambda: self.engine.realize(stack),
                 self.raw_reset, raw_stack, floor=5 * self.inject_floor)

        self.engine.realize(stack)
        self.row("realize() with nothing to do", lambda: None, lambda: self.engine.realize(stack),
                 lambda: None, None)
        self.raw_reset()
        self.ours_reset()
        self.executor_row()
        self.lycoris_rows()
        self.schedule_rows()
        if self.args.sampling:
            self.sampling_rows()
        self.check_exact()

    def fused_rows(self):
        """The fused rows alone (``--only fused``): fuse, then a weight change on the fused adapter
        (restore + set_adapters + fuse), each against diffusers' own calls."""
        from loragraph.loaders import transitions as tr
        from loragraph.nodes import widget_text as wt

        self.floors()
        a = tr.add_adapter(self.base, self.spec("diffusers_0", "a"))
        w1, w2 = wt.set_weights(a, "a", "0.6"), wt.set_weights(a, "a", "0.9")
        fused, fused2 = (wt.fuse(w, True, True, 1.0, False, "") for w in (w1, w2))

        def raw_fused():
            if "a" not in self.raw.get_list_adapters().get("unet", []):
                self.raw_reset()
                self.raw_load("diffusers_0", "a")
            if self.raw.num_fused_loras:
                self.raw.unfuse_lora(components=["unet", "text_encoder"])
            self.raw.set_adapters(["a"], [0.6])
            self.raw.fuse_lora(components=["unet", "text_encoder"])

        def raw_refuse():
            self.raw.unfuse_lora(components=["unet", "text_encoder"])
            self.raw.set_adapters(["a"], [0.9])
            self.raw.fuse_lora(components=["unet", "text_encoder"])

        self.row("fuse", lambda: self.engine.realize(w1), lambda: self.engine.realize(fused),
                 lambda: None, None, floor=self.addmm_floor)
        self.row("change weights, fused", lambda: self.engine.realize(fused),
                 lambda: self.engine.realize(fused2), raw_fused, raw_refuse,
                 note="diffusers: unfuse + set_adapters + fuse", floor=self.copy_floor + self.addmm_floor)
        self.engine.realize(self.base)

    def lycoris_rows(self):
        """Attaching a LoHa/LoKr against a plain LoRA of the same parameter count on the same
        layers (loragraph alone: diffusers cannot load these), and a weight change on each."""
        from loragraph.loaders import transitions as tr
        from loragraph.nodes import widget_text as wt

        files = write_lycoris(self.raw, self.root / "loras", self.args.rank)
        lora = tr.add_adapter(self.base, self.spec("kohya_0", "k"))
        self.engine.realize(lora)  # warm-up: the first attach of a run also pays one-time costs
        base = self.row("attach LoRA (kohya, baseline for LoHa/LoKr)", self.unpark,
                        lambda: self.engine.realize(lora), lambda: None, None)
        for algo, path in files.items():
            h = tr.add_adapter(self.base, self.engine.lora_spec(self.base, path.name, 1.0, algo))
            label = ("attach dora (the LoRA's rank and layers, + magnitude)" if algo == "dora"
                     else f"attach {algo} (same parameters and layers as the LoRA)")
            self.row(label, self.unpark, lambda h=h: self.engine.realize(h), lambda: None, None,
                     note_fn=lambda r, a=algo, h=h:
                     f"{r['loragraph_ms'] / base['loragraph_ms']:.2f}x the LoRA's "
                     f"attach; {self.adapter_mib(h, a):.1f} MiB of adapter tensors "
                     f"(the LoRA: {self.adapter_mib(lora, 'k'):.1f})")
            w = [wt.set_weights(h, algo, "0.6"), wt.set_weights(h, algo, "0.9")]
            flip = {"i": 0}

            def weights(w=w, flip=flip):
                flip["i"] += 1
                self.engine.realize(w[flip["i"] % 2])

            self.row(f"weight change, {algo}, unfused", lambda h=h: self.engine.realize(h), weights,
                     lambda: None, None, note="set_adapters' per-layer scales (target: <= 10 ms)")
        self.ours_reset()

    def adapter_mib(self, handle, name: str) -> float:
        """MiB of the peft tensors that hold adapter `name` (DoRA: its full delta)."""
        live, _ = self.engine.realize(handle)
        total = 0
        for comp in ("unet", "text_encoder"):
            for pname, p in getattr(live.pipe, comp).named_parameters():
                if f".{name}." in pname or pname.endswith(f".{name}"):
                    total += p.numel() * p.element_size()
        return total / 2**20

    def schedule_rows(self):
        """ScheduleAdapterWeights: what scheduling 1 and 3 adapters adds to each Sampler step.

        Per step the engine sets each scheduled adapter's denoiser scales (`StepWeights.apply`:
        peft's set_scale on its cached tuner layers); diffusers' documented recipe calls
        `set_adapters` with every adapter's weights in `callback_on_step_end`. Per sampling call the
        engine also builds the schedule (reads the static scales) and restores them after. With
        `--sampling` (the GPU variant), also the whole Sampler on one step at SD1.5's 64x64 latents,
        scheduled vs the same adapters unscheduled (alternated; a difference of two whole calls).
        """
        from loragraph.loaders import transitions as tr
        from loragraph.loaders import weight_schedule
        from loragraph.nodes import widget_text as wt

        stack = self.base
        for i in range(3):
            stack = tr.add_adapter(stack, self.spec(f"diffusers_{i}", f"s{i}", stack))
        self.raw_reset()
        for i in range(3):
            self.raw_load(f"diffusers_{i}", f"s{i}")
        names = [f"s{i}" for i in range(3)]
        size = 64 * self.raw.vae_scale_factor
        for count in (1, 3):
            handle = stack
            for i in range(count):
                handle = wt.schedule_weights(handle, f"s{i}", "0:1, 1:0")
            live, _ = self.engine.realize(handle)
            weights = weight_schedule.StepWeights(live, handle.state, ("unet",))
            step = [0]

            def apply(w=weights, step=step):
                step[0] = (step[0] + 1) % 20
                w.apply(step[0], 20)

            def raw_step(c=count, step=step):
                step[0] = (step[0] + 1) % 20
                s = 1 - step[0] / 20
                self.raw.set_adapters(names, [{"unet": s, "text_encoder": 1.0}] * c + [1.0] * (3 - c))

            plural = "s" * (count != 1)
            self.row(f"schedule: per-step scales, {count} scheduled adapter{plural} (of 3 loaded)",
                     lambda: None, apply, lambda: None, raw_step,
                     note="ours: set_scale on the cached layers; "
                          "diffusers: set_adapters in callback_on_step_end")
            weights.restore()

            def setup_restore(h=handle, lv=live):
                weight_schedule.StepWeights(lv, h.state, ("unet",)).restore()

            self.row(f"schedule: setup + restore per sampling call, {count} scheduled", lambda: None,
                     setup_restore, lambda: None, None, note="once per Sampler call, not per step")

            if not self.args.sampling:  # one SD1.5 step with CFG takes ~50 s on one busy CPU thread
                continue

            def call(h):
                return lambda: self.engine.sample(h, "a red circle", "", 0, 1, 7.0, size, size)

            call(handle)()  # warm-up
            plain, sched = [], []
            for _ in range(self.args.repeats):
                plain.append(timed(call(stack), self.device)[0])
                sched.append(timed(call(handle), self.device)[0])
            overhead = statistics.median(s - p for s, p in zip(sched, plain, strict=True))
            self._add({
                "operation": f"Sampler, 1 step at 64x64 latents, {count} scheduled vs unscheduled",
                "loragraph_ms": statistics.median(sched), "diffusers_ms": None, "loragraph_peak_mib": None,
                "diffusers_peak_mib": None, "floor_ms": None, "ratio_to_diffusers": None,
                "ratio_to_floor": None,
                "note": f"unscheduled {statistics.median(plain):.1f} ms; overhead {overhead:+.1f} ms "
                        f"({overhead / count:+.1f} ms per scheduled adapter; target <= 2)",
            })
        self.raw_reset()
        self.ours_reset()

    def sampling_rows(self):
        """ms per denoising step with 1, 3, 5 LoRAs, unfused and fused: ours (engine.sample) vs raw pipe()."""
        from loragraph.loaders import transitions as tr
        from loragraph.nodes import widget_text as wt

        steps = self.args.sample_steps
        size = 64 * self.raw.vae_scale_factor  # 64x64 latents, as SD1.5 at 512x512
        prompt = "a red circle on a white background"

        def raw_call():
            self.raw(prompt, negative_prompt="", num_inference_steps=steps, guidance_scale=7.0, width=size,
                     height=size, generator=torch.Generator("cpu").manual_seed(0), output_type="np")

        self.raw_reset()
        self.ours_reset()
        for count in (0, 1, 3, 5):
            stack = self.base
            for i in range(count):
                stack = tr.add_adapter(stack, self.spec(f"diffusers_{i}", f"s{i}", stack))
            for fused in (False, True) if count else (False,):
                handle = wt.fuse(stack, True, True, 1.0, False, "") if fused else stack
                self.engine.realize(handle)
                self.raw_reset()
                for i in range(count):
                    self.raw_load(f"diffusers_{i}", f"s{i}")
                if count:
                    self.raw.set_adapters([f"s{i}" for i in range(count)], [1.0] * count)
                if fused:
                    self.raw.fuse_lora(components=["unet", "text_encoder"])

                def ours_call(h=handle):
                    self.engine.sample(h, prompt, "", 0, steps, 7.0, size, size)

                ours_call()  # warm-up (cuDNN autotune, allocator)
                raw_call()
                self.row(f"sampling, {count} LoRA{'s' * (count != 1)}, {'fused' if fused else 'unfused'} "
                         f"(ms per step, {size}x{size} px = 64x64 latents, {steps} steps)",
                         lambda: None, ours_call, lambda: None, raw_call, per=steps,
                         note_fn=lambda r: (f"{1e3 / r['loragraph_ms']:.2f} it/s ours, "
                                            f"{1e3 / r['diffusers_ms']:.2f} it/s diffusers; "
                                            "peak MiB: whole call"))
        self.raw_reset()
        self.ours_reset()

    def diffusers_drift(self) -> float:
        self.raw_reset()
        before = [w.detach().clone() for w in self.touched]
        self.raw_load("diffusers_0", "a")
        self.raw.fuse_lora(components=["unet", "text_encoder"])
        self.raw.unfuse_lora(components=["unet", "text_encoder"])
        self.raw.unload_lora_weights()
        after = self._touched_after_unload()
        differ = sum((x != y).sum().item() for x, y in zip(before, after, strict=True))
        total = sum(x.numel() for x in before)
        for w, b in zip(self._touched_after_unload(), before, strict=True):
            w.data.copy_(b)  # put the raw pipeline back for the next rows
        return differ / total

    def _touched_after_unload(self):
        self.touched = []
        self.touched = self._touched_weights()
        return self.touched

    def check_exact(self):
        """The engine's pipeline must be bit-identical to a fresh build after everything above."""
        from loragraph.loaders import transitions as tr

        self.engine.realize(tr.unload(self.base))
        fresh = build_sd15(self.device, self.dtype)
        differ = [f"{c}.{name}" for c in ("unet", "text_encoder")
                  for name in base_weight_mismatches(getattr(fresh, c), getattr(self.live.pipe, c))]
        self.exact = not differ
        print(f"engine pipeline bit-identical to a fresh build after all rows: {self.exact}", flush=True)
        if differ:
            print(f"FAILED: {len(differ)} base weights differ from a fresh build after unload: "
                  f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}", flush=True)

    def executor_row(self):
        """Executor overhead per node on a 200-node graph (LoRA nodes on the tiny built-in pipeline)."""
        from loragraph.graph import Executor
        from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

        prompt = {"0": {"class_type": "LoadPipeline",
                        "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "cpu"}}}
        prev = "0"
        for i in range(1, 199):
            prompt[str(i)] = {"class_type": "UnfuseLoRA",
                              "inputs": {"pipeline": [prev, 0], "unfuse_unet": True,
                                         "unfuse_text_encoder": bool(i % 2)}}
            prev = str(i)
        prompt["199"] = {"class_type": "LoRAInfo", "inputs": {"pipeline": [prev, 0]}}
        ex = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
        ex.execute(prompt)  # builds the tiny pipeline once
        ex.cache = type(ex.cache)(ex.cache.max_prompts) if hasattr(ex.cache, "max_prompts") else ex.cache
        res = ex.execute({k: dict(v, inputs=dict(v["inputs"])) for k, v in prompt.items()}, prompt_id="bench")
        per_node = res.overhead_per_node_s() * 1e3 if hasattr(res, "overhead_per_node_s") else float("nan")
        row = {"operation": "executor overhead per node (200-node graph)", "loragraph_ms": per_node,
               "diffusers_ms": None, "loragraph_peak_mib": None, "diffusers_peak_mib": None, "floor_ms": None,
               "ratio_to_diffusers": None, "ratio_to_floor": None,
               "note": f"{len(res.executed)} executed, {len(res.cached)} cached"}
        self._add(row)


def _f(x, fmt="{:.1f}"):
    return "—" if x is None else fmt.format(x)


def _fmt_row(r) -> str:
    return (f"| {r['operation']} | {_f(r['loragraph_ms'])} | {_f(r['diffusers_ms'])} | "
            f"{_f(r['ratio_to_diffusers'], '{:.2f}x')} | {_f(r['floor_ms'])} | "
            f"{_f(r['ratio_to_floor'], '{:.2f}x')} | "
            f"{_f(r['loragraph_peak_mib'], '{:.0f}')} | {_f(r['diffusers_peak_mib'], '{:.0f}')} | "
            f"{r['note']} |")


HEADER = ("| operation | loragraph ms | diffusers ms | ratio | floor ms | ratio to floor | "
          "loragraph peak MiB | diffusers peak MiB | note |\n|---|---|---|---|---|---|---|---|---|")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the issue's reference setting)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--work", default=None, help="folder for the generated LoRA files (kept between runs)")
    p.add_argument("--json", default=None,
                   help="default benchmarks/results/lora_ops.json (--only families: lora_ops_families.json)")
    p.add_argument("--sampling", action=argparse.BooleanOptionalAction, default=None,
                   help="add the sampling rows (default: on with --device cuda; slow on a CPU)")
    p.add_argument("--sample-steps", type=int, default=20, help="steps per sampling call (default 20)")
    p.add_argument("--only", choices=["schedule", "lycoris", "fused", "families"], default=None,
                   help="run only these rows (lycoris: the LoHa/LoKr/DoRA rows; fused: fuse and a weight "
                        "change on a fused adapter; families: benchmarks/lora_ops_families.py, without "
                        "the SD1.5 pipeline)")
    p.add_argument("--families", default=None, help="with --only families: a comma-separated subset")
    p.add_argument("--family-size", choices=["depth", "width"], default="depth",
                   help="with --only families: real block count, narrow (default) or the earlier "
                        "fewer, wider blocks")
    args = p.parse_args(argv)
    if args.json is None:
        stem = "lora_ops_families" if args.only == "families" else "lora_ops"
        args.json = f"benchmarks/results/{stem}.json"
    if args.sampling is None:
        args.sampling = args.device == "cuda"
    torch.set_num_threads(args.threads)
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.only == "families":
        from .lora_ops_families import family_rows

        bench = Bench.without_sd15(args)
        print(HEADER, flush=True)
        bench.exact = family_rows(bench, args.families.split(",") if args.families else None,
                                  args.family_size)
    else:
        bench = Bench(args)
        print(HEADER, flush=True)
        if args.only == "schedule":
            bench.schedule_rows()
        elif args.only == "lycoris":
            bench.lycoris_rows()
        elif args.only == "fused":
            bench.fused_rows()
        else:
            bench.run()
    print("\n" + HEADER)
    for r in bench.rows:
        print(_fmt_row(r))
    print(f"\n{machine(args)}; rank {args.rank}; median of {args.repeats}; {time.strftime('%Y-%m-%d')}")
    bench.save(complete=True)
    if bench.exact is False:  # None: an --only run, which does not reach the check
        print("FAILED: the engine's pipeline is not bit-identical to a fresh build after all rows",
              flush=True)
        return 1
    return 0


def machine(args) -> str:
    import diffusers
    import peft

    where = f"{args.device} {args.dtype}"
    if args.device == "cuda":
        where = f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}) {args.dtype}"
    return (f"{os.cpu_count()} CPUs, {args.threads} torch thread(s), {where}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}, peft {peft.__version__}")


if __name__ == "__main__":
    raise SystemExit(main())
