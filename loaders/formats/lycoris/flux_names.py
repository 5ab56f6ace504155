"""Flux modules in Black Forest Labs' (BFL) names, as kohya sd-scripts and LyCORIS write them when
trained on the original Flux model, mapped to diffusers' FluxTransformer2DModel layers.

`lora_unet_double_blocks_3_img_attn_qkv` is BFL's fused q,k,v projection of double block 3; diffusers
has three layers there (`transformer_blocks.3.attn.to_q/to_k/to_v`). The table follows diffusers' own
kohya converter (`_convert_sd_scripts_to_ai_toolkit` in diffusers/loaders/lora_conversion_utils.py),
name for name, with one difference: a fused module's rows are split at the sizes of the MODEL's
layers (that converter hardcodes full Flux's 3072/12288), so any Flux-shaped model gets its own split
and a file made for another size is a shape mismatch, not a wrong split.

A target's `rows` say which rows of the module's weight delta the layer takes, in order: a fused
module gives each layer a contiguous range; `final_layer_adaLN_modulation_1` gives `norm_out.linear`
its two halves swapped (see `_SWAPPED`); None means the whole delta, unchanged.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

# lora_unet_double_blocks_{i}_<part>: diffusers paths under transformer_blocks.{i}, in the fused row order.
DOUBLE = {
    # BFL's SelfAttention.qkv: rows are q, k, v ("B L (K H D)" with K = 3), each hidden wide
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    # BFL's img_mlp is Sequential(Linear, GELU, Linear): indices 0 and 2
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    # Modulation.lin: both chunk 6 ways as shift, scale, gate (x2), so the rows map as they are
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
# lora_unet_single_blocks_{i}_<part>: paths under single_transformer_blocks.{i}.
SINGLE = {
    # BFL's SingleStreamBlock.linear1: rows q, k, v (hidden each), then the MLP's (mlp_ratio x hidden)
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    # linear2 reads cat(attention, MLP activation), as diffusers' proj_out does: columns map as they are
    "linear2": ("proj_out",),
    # Modulation.lin with 3 chunks: shift, scale, gate in both
    "modulation_lin": ("norm.linear",),
}
# Top-level modules: one layer each.
TOP = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in_in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in_out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in_in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in_out_layer": "time_text_embed.text_embedder.linear_2",
    # guidance-distilled models only (dev)
    "guidance_in_in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in_out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer_linear": "proj_out",
    "final_layer_adaLN_modulation_1": "norm_out.linear",
}
# BFL's LastLayer chunks its modulation as (shift, scale), diffusers' AdaLayerNormContinuous as
# (scale, shift): the rows' two halves trade places (diffusers' converter: `swap_scale_shift`).
_SWAPPED = {"final_layer_adaLN_modulation_1"}
_BLOCK = re.compile(r"^(double|single)_blocks_(\d+)_(.+)$")


@dataclasses.dataclass(frozen=True)
class Target:
    path: str  # the diffusers layer
    rows: tuple[tuple[int, int], ...] | None  # [start, stop) ranges of the module's delta rows, in order


def _out_features(model: Any, path: str) -> int | None:
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        return None
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    return getattr(base, "out_features", None)


def is_flux(model: Any) -> bool:
    """A diffusers Flux transformer: double-stream `transformer_blocks`, `single_transformer_blocks`."""
    return all(hasattr(model, a) for a in ("transformer_blocks", "single_transformer_blocks", "x_embedder"))


def targets(name: str, model: Any) -> list[Target] | None:
    """The diffusers layers a BFL module (`double_blocks_0_img_attn_qkv`, no `lora_unet_` prefix) lands on,
    or None when the name is not BFL's or the model lacks one of its layers."""
    if not is_flux(model):
        return None
    m = _BLOCK.match(name)
    if m is not None:
        kind, index, part = m.groups()
        is_double = kind == "double"
        table, block = (DOUBLE, "transformer_blocks") if is_double else (SINGLE, "single_transformer_blocks")
        if part not in table:
            return None
        paths = [f"{block}.{index}.{p}" for p in table[part]]
    elif name in TOP:
        paths = [TOP[name]]
    else:
        return None
    found = [_out_features(model, p) for p in paths]
    sizes = [s for s in found if s is not None]
    if len(sizes) != len(found):
        return None
    if name in _SWAPPED:
        half = sizes[0] // 2
        return [Target(paths[0], ((half, 2 * half), (0, half)))]
    if len(paths) == 1:
        return [Target(paths[0], None)]
    out, start = [], 0
    for path, size in zip(paths, sizes, strict=True):  # one size per path
        out.append(Target(path, ((start, start + size),)))
        start += size
    return out
