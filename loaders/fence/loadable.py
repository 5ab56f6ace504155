"""Fence entries, 1: which components of a pipeline take LoRAs.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ..components import COMPONENTS
from . import (
    fast_paths,
)

logger = logging.getLogger(__name__)

def loadable_names(pipeline_class: type) -> tuple[str, ...]:
    """The components `pipeline_class`'s LoRA loader loads into, in diffusers' order, read from the
    class (a built-in source knows them before building); `loadable_components`: those a pipe has.

    Private name: the pipeline class's `_lora_loadable_modules` (diffusers 0.41, 0.42).
    Stands in for: no public API lists them.
    Fallback: the components whose `<component>_lora_layers` the public `save_lora_weights` takes
    (the same list on every pipeline verified but Wan's, whose saver takes no `transformer_2`).
    """
    names: Any = None
    if fast_paths():
        names = getattr(pipeline_class, "_lora_loadable_modules", None)
    if names is None:
        saver = getattr(pipeline_class, "save_lora_weights", None)
        params = inspect.signature(saver).parameters if saver is not None else {}
        names = [c for c in COMPONENTS if f"{c}_lora_layers" in params]
    return tuple(names)


def loadable_components(pipe: Any) -> tuple[str, ...]:
    """Its class's `loadable_names` that `pipe` has (Wan 2.1 leaves `transformer_2` None)."""
    return tuple(c for c in loadable_names(type(pipe)) if getattr(pipe, c, None) is not None)
