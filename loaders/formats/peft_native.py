"""A single model's PEFT adapter: lora_A / lora_B keys with no component prefix (maybe under
`base_model.model.`), as `get_peft_model_state_dict` or `save_pretrained` write them.
"""

from __future__ import annotations

from typing import Any

from .diffusers_native import component_of
from .keys import prefix_components

NAME = "peft"

__all__ = ["NAME", "component_of", "detect", "to_pipeline"]


def detect(keys: list[str]) -> bool:
    return any(".lora_A" in k or ".lora_B" in k for k in keys)


def to_pipeline(pipe: Any, lora: Any, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    # diffusers loads nothing from unprefixed keys: they get their component's prefix
    return prefix_components(pipe, source, meta)
