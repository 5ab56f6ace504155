"""diffusers' own format: every key starts with its component (`unet.`, `text_encoder.`, ...).

What `save_lora_weights` writes; diffusers loads it as it is.
"""

from __future__ import annotations

from typing import Any

from ..components import COMPONENTS
from .keys import guess_unprefixed_component, has_component_prefix

NAME = "diffusers"


def detect(keys: list[str]) -> bool:
    return has_component_prefix(keys)


def component_of(key: str) -> str:
    first = key.split(".", 1)[0]
    return first if first in COMPONENTS else guess_unprefixed_component(key)


def to_pipeline(pipe: Any, lora: Any, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    return source, meta
