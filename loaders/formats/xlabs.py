"""XLabs' Flux LoRA keys: `double_blocks.N.processor.qkv_lora1.down.weight`, `single_blocks.N.
processor.proj_lora.up.weight`, with no component prefix.

diffusers' Flux loader recognises these keys and converts them itself, so they pass unchanged; the
family exists so such a file is not taken for diffusers' old attention-processor format (whose
`.processor.` keys it shares) and so its modules are placed on the transformer.
"""

from __future__ import annotations

import re
from typing import Any

NAME = "xlabs"

__all__ = ["NAME", "component_of", "detect", "to_pipeline"]

_KEY = re.compile(r"(double|single)_blocks\.\d+\.processor\.")


def detect(keys: list[str]) -> bool:
    return bool(keys) and all(_KEY.match(k) for k in keys)


def component_of(key: str) -> str:
    return "transformer"


def to_pipeline(pipe: Any, lora: Any, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    return source, meta
