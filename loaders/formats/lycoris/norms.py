"""Norm-layer diffs (`w_norm`/`b_norm`, LyCORIS `train_norm`) as a peft tuner layer.

LyCORIS's NormModule adds `multiplier * w_norm` to a LayerNorm's or GroupNorm's affine weight and
`multiplier * b_norm` to its bias. peft has no tuner for that (its LN tuning swaps in a trained copy
of the layer, one adapter at a time, with no strength), so `NormDelta` (norm_layer.py) is a
LoRA-family layer peft builds for norm layers through its custom-module registration
(`LoraConfig._register_custom_module`, fence.register_norm_layers): peft then owns it like every
other adapter layer, so every node works on it as on a LoRA, with no second mechanism in the engine:
- `set_adapters`/`set_scale` (weights, per-component and per-block weights, step schedules) set its
  `scaling`, the adapter's strength;
- the text-encoder switch (`enable_adapters`), `delete_adapter`, `unload_lora_weights` and device
  moves (its `adapter_layer_names` tables) are peft's and diffusers' own;
- `merge`/`unmerge` fold the scaled delta into the affine weight and bias; the engine's exact-fuse
  backup (fusion.py) restores both bit for bit.

Forward, unfused: `base(x) + norm(x; weight = sum_a s_a w_a, bias = sum_a s_a b_a)`, the functional
norm without the layer's own affine; LyCORIS's forward is `base(x) + norm(x; delta_w, delta_b)` with
delta = multiplier * (w_norm, b_norm), so the two agree term by term.
"""

from __future__ import annotations

from typing import Any

import torch

NORM_TYPES = (torch.nn.LayerNorm, torch.nn.GroupNorm)
# The layer's first adapter table: how the engine tells a norm layer's diffs from other tuner layers
# without importing peft (norm_layer.py does, and takes its table names from here) when the package
# loads. build.py imports `NormDelta` when it first builds one.
TABLE = "lora_norm_weight"


def is_norm_layer(module: Any) -> bool:
    return tuple(getattr(module, "adapter_layer_names", ()))[:1] == (TABLE,)


def fits(layer: torch.nn.Module, w_norm: torch.Tensor, b_norm: torch.Tensor | None) -> str | None:
    """None when the diffs fit the norm layer, else why not (for coverage's unmatched list)."""
    if not isinstance(layer, NORM_TYPES):
        return f"w_norm on a {type(layer).__name__}, not a LayerNorm or GroupNorm"
    if getattr(layer, "weight", None) is None:
        return f"the {type(layer).__name__} has no affine weight to add w_norm to"
    if w_norm.numel() != layer.weight.numel():
        return (
            f"shape mismatch: w_norm has {w_norm.numel()} values, the layer's weight {layer.weight.numel()}"
        )
    if b_norm is not None and getattr(layer, "bias", None) is None:
        return f"the {type(layer).__name__} has no bias to add b_norm to"
    if b_norm is not None and b_norm.numel() != layer.bias.numel():
        return f"shape mismatch: b_norm has {b_norm.numel()} values, the layer's bias {layer.bias.numel()}"
    return None
