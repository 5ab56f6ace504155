"""Fence entries, 6: fusion inside peft's tuner layers.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from . import (
    fast_paths,
)

logger = logging.getLogger(__name__)

def merges_by_gemm(module: Any, adapters: Sequence[str], weight: torch.Tensor) -> bool:
    """Whether fusion may merge `adapters` into `module` itself, one out-of-place GEMM each
    (`addmm(W, B, A, alpha=scaling * lora_scale)`), and record it with `record_merged`.

    That is peft's own merge for its LoRA Linear without DoRA, bias, variant or fan_in_fan_out:
    exactly W + scaling * B @ A, in a dtype/device where one GEMM is accurate: fp32, or any dtype on
    CUDA (peft itself computes CPU fp16 deltas in fp32, so those take peft's path); why out of place:
    `fusion.fuse`.
    Relies on (peft 0.20, 0.21): that formula; the layer's `use_dora`, `lora_bias`, `lora_variant`
    and `fan_in_fan_out` saying when it holds; `merged_adapters` being all the record a merge keeps
    (peft's forward runs the base layer alone for a merged adapter).
    Stands in for: `module.merge(adapter_names=adapters)`.
    Fallback: False, so fusion runs peft's `merge()` on a copy of the weight (the same sum, rounded
    the way peft rounds it).
    """
    if not fast_paths():
        return False
    from peft.tuners.lora.layer import Linear

    if type(module) is not Linear or module.fan_in_fan_out:
        return False
    if weight.dtype != torch.float32 and weight.device.type != "cuda":
        return False
    variants = getattr(module, "lora_variant", {})
    return not any(
        module.use_dora.get(a) or module.lora_bias.get(a) or variants.get(a) is not None for a in adapters
    )


def record_merged(module: Any, adapters: Sequence[str]) -> None:
    """Record `adapters` as merged into `module`, as peft's `merge()` does (after `merges_by_gemm`)."""
    module.merged_adapters.extend(adapters)


def record_unmerged(module: Any) -> None:
    """Record in peft's bookkeeping that nothing is merged into `module` any more: the exact unfuse,
    which puts the original weight tensors back. Call it before they go back.

    Fast path (peft 0.20, 0.21): `merged_adapters` emptied, the whole of peft's record of a merge.
    Stands in for: `module.unmerge()`, which subtracts the deltas again (and drifts in fp16).
    Fallback: `module.unmerge()` itself, on the fused weights about to be replaced: peft keeps its
    own record, and the originals put back after it overwrite what the subtraction left.
    """
    if not module.merged:
        return
    if fast_paths():
        module.merged_adapters = []
    else:
        module.unmerge()
