"""Fusing into quantized weights: dequantize, add the adapters' delta in fp32, requantize to the
layer's own format. The caller (fusion.py) keeps the original quantized tensor, so an unfuse puts
the file's bytes back exactly.

fp8: torch's cast, round to nearest even, after clamping to the format's finite range (a cast of
an out-of-range value gives NaN in e4m3fn). GGUF: gguf-py's quantizer for the layer's quant type,
where gguf-py has one (`writable_gguf_types`); its reference rounding is numpy's, on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import torch

from .storage import fp8_name, gguf_type, gguf_type_name, layer_storage


@cache
def gguf_writable(quant_type: int) -> bool:
    """Whether the installed gguf-py can quantize this type (it has no K-quant or IQ quantizer).

    Asked of gguf-py itself with one block of zeros, so a release that adds a quantizer is used."""
    try:
        import gguf
        import numpy as np

        block_size, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(quant_type)]
        gguf.quants.quantize(np.zeros((1, block_size), np.float32), gguf.GGMLQuantizationType(quant_type))
    except (ImportError, ValueError, KeyError, NotImplementedError):
        return False
    return True


def refusal(module: Any, adapters: Sequence[str]) -> str | None:
    """Why `adapters` cannot be fused into this tuner layer's quantized weight (None: they can,
    or the weight is not quantized)."""
    weight = module.get_base_layer().weight
    kind = layer_storage(weight)
    if kind is None:
        return None
    quant_type = gguf_type(weight)
    if quant_type is not None and not gguf_writable(quant_type):
        return (f"{kind} cannot be written back (the installed gguf package cannot quantize "
                f"{gguf_type_name(quant_type)}); the LoRA stays unfused and works as it is")
    for a in adapters:
        if getattr(module, "use_dora", {}).get(a) or getattr(module, "lora_bias", {}).get(a):
            return f"adapter {a} is a DoRA or bias LoRA, which is fused into plain weights only ({kind})"
        if not hasattr(module, "get_delta_weight"):
            return f"a {type(module).__name__} layer is fused into plain weights only ({kind})"
    return None


def delta(module: Any, adapters: Sequence[str], scale: float) -> torch.Tensor:
    """The adapters' summed weight delta in fp32, as peft's merge adds it (its own scaling, times
    fuse_lora's `lora_scale`)."""
    total = None
    for a in adapters:
        d = module.get_delta_weight(a).float()
        total = d if total is None else total + d
    assert total is not None  # callers pass at least one adapter
    return total * scale


def dequantized(weight: torch.Tensor) -> torch.Tensor:
    """The fp32 values of a quantized weight (GGUF through diffusers' own dequantizer, as its
    forward does; fp8 by a cast)."""
    if gguf_type(weight) is not None:
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        return dequantize_gguf_tensor(weight).float()
    return weight.float()


def requantized(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """fp32 `values` in `like`'s quantized format: the raw tensor to put in the layer's weight."""
    quant_type = gguf_type(like)
    if quant_type is not None:
        import gguf

        data = gguf.quants.quantize(values.detach().cpu().numpy(), gguf.GGMLQuantizationType(quant_type))
        out = torch.from_numpy(data).to(like.device)
        if out.shape != like.shape:  # the same type and width give the same byte layout
            raise RuntimeError(f"requantized {tuple(out.shape)} bytes for a {tuple(like.shape)} weight")
        return out
    assert fp8_name(like.dtype) is not None, like.dtype
    finite = torch.finfo(like.dtype).max
    return values.clamp(-finite, finite).to(like.dtype)


def fused_weight(module: Any, adapters: Sequence[str], scale: float, safe: bool) -> torch.Tensor | None:
    """The layer's weight with `adapters` fused, requantized; None if a `safe` check finds NaN/inf."""
    weight = module.get_base_layer().weight
    with torch.no_grad():
        values = dequantized(weight) + delta(module, adapters, scale).to(weight.device)
    if safe and not torch.isfinite(values).all():
        return None
    return requantized(values, weight)
