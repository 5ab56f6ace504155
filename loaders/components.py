"""The pipeline components diffusers' LoRA loaders address, named once for the whole engine.

diffusers prefixes a LoRA's keys with the component they belong to ("unet.", "text_encoder.", ...);
pipelines, formats, coverage, the state transitions and the nodes all speak of the same names. A
pipeline's own adapter components are its LoRA mixin's `_lora_loadable_modules` (fence.
loadable_components); the names below are the union of those the engine knows by name, for static
lists (node combos) and for files whose keys name a component the pipeline lacks.
"""

from __future__ import annotations

from collections.abc import Iterable

DENOISERS = ("unet", "transformer", "transformer_2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
# Non-denoising adapter components of diffusers 0.42's mixins that are not text encoders (LTX-2's
# connectors, Anima's text conditioner): TextEncoderLoRAToggle's combo lists them.
OTHER_COMPONENTS = ("connectors", "text_conditioner")
# In diffusers' order (`_lora_loadable_modules` lists the denoisers first, then the text encoders).
COMPONENTS = DENOISERS + TEXT_ENCODERS


# The keyword of a mixin's `load_lora_weights` that puts a single-expert file on a denoiser other
# than its first (diffusers 0.42: Wan 2.2's low-noise expert); the first needs none.
PLACEMENT_KEYWORDS = {"transformer_2": "load_into_transformer_2"}


def placement(target: str, first_denoiser: str) -> dict[str, bool]:
    """`load_lora_weights`' keywords for LoadLoRA's `target` ("auto" or a denoiser's name)."""
    if target in ("auto", first_denoiser):
        return {}
    if target not in PLACEMENT_KEYWORDS:
        raise ValueError(f"diffusers cannot place a single-expert file on {target}")
    return {PLACEMENT_KEYWORDS[target]: True}


def is_denoiser(component: str) -> bool:
    """The one rule: `unet` and every `transformer*` component (`transformer`, `transformer_2`, ...)
    denoise; every other adapter component (text encoders, connectors, ...) does not."""
    return component == "unet" or component.startswith("transformer")


def denoisers(components: Iterable[str]) -> tuple[str, ...]:
    """The denoising components among `components`, in their order."""
    return tuple(c for c in components if is_denoiser(c))


def non_denoisers(components: Iterable[str]) -> tuple[str, ...]:
    """The other adapter components among `components` (text encoders and the like), in their order."""
    return tuple(c for c in components if not is_denoiser(c))
