"""Wan modules in the original repository's names, as musubi-tuner and LyCORIS write them when trained
on the original Wan 2.x model, mapped to diffusers' WanTransformer3DModel layers.

`lora_unet_blocks_3_self_attn_q` is block 3's self-attention query (`blocks.3.attn1.to_q` in
diffusers). Every module maps to one layer, unchanged (Wan fuses nothing); the table follows
diffusers' own converter for Wan LoRAs (`_convert_non_diffusers_wan_lora_to_diffusers` in
diffusers/loaders/lora_conversion_utils.py), name for name.
"""

from __future__ import annotations

import re
from typing import Any

from .flux_names import Target

# lora_unet_blocks_{i}_<part>: diffusers paths under blocks.{i}
BLOCK = {
    "self_attn_q": "attn1.to_q", "self_attn_k": "attn1.to_k", "self_attn_v": "attn1.to_v",
    "self_attn_o": "attn1.to_out.0",
    "cross_attn_q": "attn2.to_q", "cross_attn_k": "attn2.to_k", "cross_attn_v": "attn2.to_v",
    "cross_attn_o": "attn2.to_out.0",
    # image-to-video models' extra cross-attention projections for the image tokens
    "cross_attn_k_img": "attn2.add_k_proj", "cross_attn_v_img": "attn2.add_v_proj",
    # the FFN is Sequential(Linear, GELU, Linear): indices 0 and 2
    "ffn_0": "ffn.net.0.proj", "ffn_2": "ffn.net.2",
}
TOP = {
    "time_projection_1": "condition_embedder.time_proj",
    "head_head": "proj_out",
}
_BLOCK = re.compile(r"^blocks_(\d+)_(.+)$")


def is_wan(model: Any) -> bool:
    """A diffusers Wan transformer: `blocks` of WanTransformerBlock and a `condition_embedder`."""
    return all(hasattr(model, a) for a in ("blocks", "condition_embedder", "rope"))


def targets(name: str, model: Any) -> list[Target] | None:
    """The diffusers layer a Wan module (`blocks_0_self_attn_q`, no `lora_unet_` prefix) lands on, or None
    when the name is not Wan's or the model lacks that layer."""
    if not is_wan(model):
        return None
    m = _BLOCK.match(name)
    if m is not None:
        index, part = m.groups()
        if part not in BLOCK:
            return None
        path = f"blocks.{index}.{BLOCK[part]}"
    elif name in TOP:
        path = TOP[name]
    else:
        return None
    try:
        model.get_submodule(path)
    except AttributeError:
        return None
    return [Target(path, None)]
