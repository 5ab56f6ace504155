"""LoRAs on quantized denoisers: GGUF files and fp8 storage (docs/CONTRACT.md, "Quantized denoisers").

- denoiser.py: LoadPipeline's `denoiser` file and `weight_dtype`, loaded by diffusers;
- storage.py: what a weight's storage is (LoRAInfo) and keeping adapters out of fp8;
- requantize.py: FuseLoRA into a quantized weight (dequantize, add, requantize to its own format).
"""

from __future__ import annotations

from .denoiser import (
    FROM_MODEL,
    GGUF_EXTRA,
    check_weight_dtype,
    enable_fp8,
    fp8_unavailable,
    replace_denoiser,
    resolve_denoiser,
    skipped_denoiser,
)
from .requantize import fused_weight, gguf_writable, refusal
from .storage import (
    FP8_NAMES,
    WEIGHT_DTYPES,
    adapter_dtype,
    adapters_to_compute_dtype,
    fp8_weights_as_bytes,
    gguf_type,
    layer_storage,
    logical_shape,
    storage,
)

__all__ = [
    "FP8_NAMES",
    "FROM_MODEL",
    "GGUF_EXTRA",
    "WEIGHT_DTYPES",
    "adapter_dtype",
    "adapters_to_compute_dtype",
    "check_weight_dtype",
    "enable_fp8",
    "fp8_unavailable",
    "fp8_weights_as_bytes",
    "fused_weight",
    "gguf_type",
    "gguf_writable",
    "layer_storage",
    "logical_shape",
    "refusal",
    "replace_denoiser",
    "resolve_denoiser",
    "skipped_denoiser",
    "storage",
]
