"""Fence entries, 3: fusion bookkeeping diffusers keeps.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import logging
from typing import Any

from . import (
    fast_paths,
)

logger = logging.getLogger(__name__)

def set_fused_record(pipe: Any, names: set[str]) -> None:
    """Tell diffusers which adapters are fused into the weights (its `fused_loras`).

    The reconciler fuses and unfuses layers itself (peft's `merge` or one GEMM, keeping the
    original weights for an exact unfuse) instead of calling `fuse_lora`/`unfuse_lora`.
    Private name: the pipeline's `_merged_adapters` set (diffusers 0.41, 0.42), which is all that
    `fuse_lora` records and `fused_loras`/`num_fused_loras` report; nothing in loading reads it.
    Stands in for: the record `pipe.fuse_lora()` keeps.
    Fallback: the record is left as diffusers keeps it (`pipe.fused_loras` does not list the
    engine's fusions; the engine's own state says what is fused, and images are the same).
    """
    if fast_paths() and hasattr(pipe, "_merged_adapters"):
        pipe._merged_adapters = set(names)
