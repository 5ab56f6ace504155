"""How a denoiser's weights are stored: plain dtype, fp8 (diffusers' layerwise casting) or GGUF.

Read from the weights themselves, so LoRAInfo shows what is really in memory. A GGUF weight is
diffusers' `GGUFParameter`: its bytes in a uint8 tensor and its `quant_type` (public attributes).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch

# LoadPipeline's `weight_dtype` names (ComfyUI's UNETLoader's) for torch's fp8 dtypes.
FP8_NAMES = ("fp8_e4m3fn", "fp8_e5m2")
WEIGHT_DTYPES = ("default", *FP8_NAMES)


def fp8_dtype(name: str) -> torch.dtype:
    """The torch dtype of an fp8 `weight_dtype` name (KeyError-free: callers checked the name)."""
    return getattr(torch, name.replace("fp8_", "float8_"))


def fp8_name(dtype: torch.dtype) -> str | None:
    """`fp8_e4m3fn` / `fp8_e5m2` for torch's fp8 dtypes, None for any other dtype."""
    return _FP8_BY_DTYPE.get(dtype)


# fusion asks this of every layer on every fuse: one dict lookup instead of two getattr on torch
_FP8_BY_DTYPE = {
    dtype: name for name in FP8_NAMES
    if (dtype := getattr(torch, name.replace("fp8_", "float8_"), None)) is not None
}


def gguf_type(weight: torch.Tensor) -> int | None:
    """The GGML quant type of a GGUF weight (diffusers' GGUFParameter), None for a plain tensor."""
    quant_type = getattr(weight, "quant_type", None)
    return None if quant_type is None else int(quant_type)


def gguf_type_name(quant_type: int) -> str:
    """`Q8_0`, `Q4_K`, ...: gguf's name for a GGML quant type number."""
    try:
        import gguf

        return gguf.GGMLQuantizationType(quant_type).name
    except (ImportError, ValueError):
        return f"type {quant_type}"


def layer_storage(weight: torch.Tensor) -> str | None:
    """The quantized format of one weight (`GGUF Q8_0`, `fp8_e4m3fn`), None when it is not quantized."""
    quant_type = gguf_type(weight)
    if quant_type is not None:
        return f"GGUF {gguf_type_name(quant_type)}"
    return fp8_name(weight.dtype)


def logical_shape(weight: torch.Tensor) -> tuple[int, ...]:
    """A weight's shape as its layer computes with it: a GGUF weight keeps its bytes as uint8 rows,
    and diffusers' GGUFParameter holds the real shape as `quant_shape` (public)."""
    return tuple(int(s) for s in (getattr(weight, "quant_shape", None) or weight.shape))


def adapter_dtype(model: torch.nn.Module, layer: torch.nn.Module) -> torch.dtype:
    """The dtype an adapter on `layer` is made in: its weight's own float dtype; on a quantized
    weight (fp8 storage, fp8 viewed as bytes while an adapter loads, GGUF) the compute dtype, as on a
    plain base whose adapters take its dtype. Never the storage dtype: values cast to uint8 or fp8
    would be truncated."""
    weight = cast(torch.Tensor, layer.weight)
    if weight.dtype.is_floating_point and fp8_name(weight.dtype) is None and gguf_type(weight) is None:
        return weight.dtype
    compute = getattr(layer, "compute_dtype", None)  # diffusers' GGUFLinear
    if isinstance(compute, torch.dtype):
        return compute
    model_dtype = getattr(model, "dtype", None)  # layerwise casting: the hook's compute dtype
    if isinstance(model_dtype, torch.dtype) and model_dtype.is_floating_point and not fp8_name(model_dtype):
        return model_dtype
    return torch.float32


def storage(model: torch.nn.Module) -> str:
    """A denoiser's storage: `GGUF <its most common quant type>`, `fp8_e4m3fn` / `fp8_e5m2`, or
    the dtype name of its weights (`float32`, `bfloat16`, ...)."""
    quantized: Counter[str] = Counter()
    plain: Counter[str] = Counter()
    for param in model.parameters():
        kind = layer_storage(param)
        if kind is not None:
            quantized[kind] += 1
        elif param.dtype.is_floating_point:
            plain[str(param.dtype).removeprefix("torch.")] += param.numel()
    if quantized:
        return quantized.most_common(1)[0][0]
    return plain.most_common(1)[0][0] if plain else "unknown"


@contextmanager
def fp8_weights_as_bytes(models: list[torch.nn.Module]) -> Iterator[list[torch.nn.Module]]:
    """Show every fp8 weight as uint8 bytes (a view: nothing is copied or changed) for the block.

    peft moves a new adapter to its base layer's dtype when that dtype is a float one, which would
    put the adapter in fp8 (lossy, and CPU matmuls refuse fp8). It leaves the dtype alone for an
    integer weight, as it does for GGUF's bytes, so the adapter keeps the values of the file.
    Yields the models that hold fp8 weights.
    """
    shown: list[tuple[torch.nn.Parameter, torch.dtype, bool]] = []
    holding: list[torch.nn.Module] = []
    try:
        for model in models:
            before = len(shown)
            for module in model.modules():
                weight = getattr(module, "weight", None)
                if isinstance(weight, torch.nn.Parameter) and fp8_name(weight.dtype) is not None:
                    shown.append((weight, weight.dtype, weight.requires_grad))
                    weight.requires_grad_(False)  # torch allows integer data only without grad
                    weight.data = weight.data.view(torch.uint8)
            if len(shown) > before:
                holding.append(model)
        yield holding
    finally:
        for weight, dtype, grad in shown:
            weight.data = weight.data.view(dtype)
            weight.requires_grad_(grad)


def adapters_to_compute_dtype(model: torch.nn.Module) -> None:
    """Put every adapter weight of a model's peft tuner layers in its compute dtype (what a
    diffusers model's `dtype` says under layerwise casting).

    An adapter loaded under `fp8_weights_as_bytes` is left in the dtype peft made it in; adapters
    live in the compute dtype, never fp8, as on a plain base whose adapters take its dtype.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    dtype: Any = getattr(model, "dtype", None)
    if not isinstance(dtype, torch.dtype):
        return
    for module in model.modules():
        if not isinstance(module, BaseTunerLayer):
            continue
        for layer_name in module.adapter_layer_names:
            for param in getattr(module, layer_name).parameters():
                if param.dtype.is_floating_point and param.dtype != dtype:
                    param.data = param.data.to(dtype)
