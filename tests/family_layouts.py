"""LoRA files for the tiny family pipelines in each family's own (non-diffusers) layout, as the
trainers people use write them, for the tests in test_families_*.py.

Each layout is a table {file module stem: [diffusers module paths]}: a stem naming one fused layer of
the original model (BFL's `img_attn.qkv`, HunyuanVideo's `img_attn_qkv`, Flux 2's single-block
`linear1`) stands for the diffusers layers whose rows it concatenates, in that order. The file's
lora_A is shared by those layers and its lora_B holds their rows stacked, which is how diffusers'
converters split them (`lora_conversion_utils.py`). Shapes are read off the live transformer, so the
same table fits any size of the model.

Which layouts diffusers 0.42.1 converts per pipeline, and the ones it cannot at the tiny sizes, are in
docs/formats.md ("Model families beyond SD and Flux").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

Table = dict[str, list[str]]

# The kohya / sd-scripts names of a Flux-architecture transformer (BFL's modules, underscores), for
# the double-stream blocks and the single-stream output. No single-block `linear1`: diffusers' kohya
# converter splits it at full Flux's sizes (3072, 12288), which no tiny model has.
_KOHYA_FLUX_DOUBLE = {"img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                      "img_attn_proj": ["attn.to_out.0"],
                      "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                      "txt_attn_proj": ["attn.to_add_out"], "img_mlp_0": ["ff.net.0.proj"],
                      "img_mlp_2": ["ff.net.2"], "txt_mlp_0": ["ff_context.net.0.proj"]}
# HunyuanVideo's original names (finetrainers / the original repository, lora_A/lora_B): double blocks
# only, as diffusers' converter splits a single block's linear1 at HunyuanVideo's full size (3072).
_HUNYUAN_DOUBLE = {"img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
                   "img_attn_proj": ["attn.to_out.0"],
                   "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                   "txt_attn_proj": ["attn.to_add_out"], "img_mlp.fc1": ["ff.net.0.proj"],
                   "img_mlp.fc2": ["ff.net.2"]}
# Flux 2 in BFL's names with ai-toolkit's `diffusion_model.` prefix (lora_A/lora_B).
_FLUX2_DOUBLE = {"img_attn.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"], "img_attn.proj": ["attn.to_out.0"],
                 "txt_attn.qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
                 "txt_attn.proj": ["attn.to_add_out"], "img_mlp.0": ["ff.linear_in"],
                 "img_mlp.2": ["ff.linear_out"]}
_FLUX2_SINGLE = {"linear1": ["attn.to_qkv_mlp_proj"], "linear2": ["attn.to_out"]}
_LTX_BLOCK = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_v",
              "ff.net.0.proj", "ff.net.2")


def kohya_flux_table(transformer: Any) -> Table:
    """`lora_unet_double_blocks_N_img_attn_qkv`, ... and `lora_unet_single_blocks_N_linear2`."""
    table: Table = {}
    for i in range(len(transformer.transformer_blocks)):
        for stem, paths in _KOHYA_FLUX_DOUBLE.items():
            table[f"lora_unet_double_blocks_{i}_{stem}"] = [f"transformer_blocks.{i}.{p}" for p in paths]
    for i in range(len(transformer.single_transformer_blocks)):
        table[f"lora_unet_single_blocks_{i}_linear2"] = [f"single_transformer_blocks.{i}.proj_out"]
    return table


def hunyuan_original_table(transformer: Any) -> Table:
    """`diffusion_model.double_blocks.N.img_attn_qkv`, ..."""
    return {f"diffusion_model.double_blocks.{i}.{stem}": [f"transformer_blocks.{i}.{p}" for p in paths]
            for i in range(len(transformer.transformer_blocks)) for stem, paths in _HUNYUAN_DOUBLE.items()}


def flux2_ai_toolkit_table(transformer: Any) -> Table:
    """`diffusion_model.double_blocks.N.img_attn.qkv`, ..., `diffusion_model.single_blocks.N.linear1`."""
    table = {f"diffusion_model.double_blocks.{i}.{stem}": [f"transformer_blocks.{i}.{p}" for p in paths]
             for i in range(len(transformer.transformer_blocks)) for stem, paths in _FLUX2_DOUBLE.items()}
    singles = range(len(transformer.single_transformer_blocks))
    table |= {f"diffusion_model.single_blocks.{i}.{stem}": [f"single_transformer_blocks.{i}.{p}"
                                                             for p in paths]
              for i in singles for stem, paths in _FLUX2_SINGLE.items()}
    return table


def ltx_original_table(transformer: Any) -> Table:
    """`diffusion_model.transformer_blocks.N.attn1.to_q`, ...: diffusers' names under the original
    checkpoint's prefix, as LTX-Video-Trainer exports them for ComfyUI."""
    return {f"diffusion_model.transformer_blocks.{i}.{p}": [f"transformer_blocks.{i}.{p}"]
            for i in range(len(transformer.transformer_blocks)) for p in _LTX_BLOCK}


def lumina2_original_table(transformer: Any) -> Table:
    """`diffusion_model.layers.N.attention.qkv`, ...: Lumina-Image-2.0's own names, every module
    diffusers' converter pops per block (it raises on a missing one)."""
    block = {"attention.qkv": ["attn.to_q", "attn.to_k", "attn.to_v"], "attention.out": ["attn.to_out.0"],
             "feed_forward.w1": ["feed_forward.linear_1"], "feed_forward.w2": ["feed_forward.linear_2"],
             "feed_forward.w3": ["feed_forward.linear_3"]}
    table: Table = {}
    for stack, modulated in (("noise_refiner", True), ("context_refiner", False), ("layers", True)):
        parts = block | ({"adaLN_modulation.1": ["norm1.linear"]} if modulated else {})
        for i in range(len(getattr(transformer, stack))):
            table |= {f"diffusion_model.{stack}.{i}.{k}": [f"{stack}.{i}.{p}" for p in v]
                      for k, v in parts.items()}
    return table


def write_table_file(path: str | Path, transformer: Any, table: Table, *, kohya: bool, rank: int = 4,
                     alpha: float | None = None, seed: int = 0, scale: float = 1.5) -> Path:
    """A seeded LoRA in the table's names. kohya: `lora_down`/`lora_up` with `.alpha` per module (alpha
    defaults to rank); else `lora_A`/`lora_B` and no alpha. `scale`: the delta's size against the
    layer's own spread (as testing.write_lora_file), so the image changes visibly."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    tensors: dict[str, torch.Tensor] = {}
    for stem, paths in table.items():
        layers = [modules[p] for p in paths]
        d_in, d_out = layers[0].in_features, sum(m.out_features for m in layers)
        down = torch.randn(rank, d_in, generator=generator) / math.sqrt(d_in)
        up = torch.randn(d_out, rank, generator=generator) * (scale / math.sqrt(rank))
        if kohya:
            tensors |= {f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                        f"{stem}.alpha": torch.tensor(float(rank if alpha is None else alpha))}
        else:
            tensors |= {f"{stem}.lora_A.weight": down, f"{stem}.lora_B.weight": up}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


# layout name -> (table for a transformer, kohya-style keys)
TABLE_LAYOUTS: dict[str, tuple[Callable[[Any], Table], bool]] = {
    "kohya-flux": (kohya_flux_table, True),
    "hunyuan-original": (hunyuan_original_table, False),
    "flux2-ai-toolkit": (flux2_ai_toolkit_table, False),
    "ltx-original": (ltx_original_table, False),
    "lumina2-original": (lumina2_original_table, False),
}
