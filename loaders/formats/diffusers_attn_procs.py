"""diffusers' old attention-processor format: `.processor.` keys and `to_q_lora.down.weight`, or
non-PEFT LoRA keys without a component prefix (what `unet.save_attn_procs` wrote).

diffusers converts these keys itself; unprefixed ones get their component's prefix here.
"""

from __future__ import annotations

from typing import Any

from .diffusers_native import component_of
from .keys import prefix_components

NAME = "diffusers-old"

__all__ = ["NAME", "component_of", "detect", "to_pipeline"]


def detect(keys: list[str]) -> bool:
    return any(".processor." in k or "_lora.down." in k or "_lora.up." in k for k in keys)


def to_pipeline(pipe: Any, lora: Any, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    return prefix_components(pipe, source, meta)
