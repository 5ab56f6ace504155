"""LoRA key formats: one module per family, each recognising its keys and converting a file into
what diffusers' `load_lora_weights` (and peft behind it) loads.

A family is a module (or any object) with:

    NAME: str                                      # the `LoraFile.format` it stands for
    detect(keys: list[str]) -> bool                # these adapter keys are this family's
    component_of(key: str) -> str                  # "unet", "text_encoder", ... or "unknown"
    to_pipeline(pipe, lora, source, meta) -> (source, meta)
        # the file's tensors (a private copy: may be changed) and diffusers' adapter metadata,
        # made loadable by `pipe.load_lora_weights`; diffusers converts most families itself

`FORMATS` is tried in order and the first family whose `detect` says yes names the file; a file no
family claims is read as `FALLBACK`. A new family goes in with `register(module, before=...)`
(its own module in this package), ahead of any family whose detection would also claim its keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from . import diffusers_attn_procs, diffusers_native, kohya, peft_native
from .keys import is_adapter_key, list_modules

if TYPE_CHECKING:
    from ..lora_file import LoraFile, LoraModule

# The name of a family in FORMATS ("diffusers", "peft", "diffusers-old", "kohya", ...).
LoraFormat = str

# Order matters: kohya prefixes and old attention-processor keys are recognised before the plain
# component-prefixed (diffusers) and unprefixed lora_A/lora_B (peft) spellings.
FORMATS: list[ModuleType | Any] = [kohya, diffusers_attn_procs, diffusers_native, peft_native]
FALLBACK = diffusers_attn_procs


def register(family: ModuleType | Any, *, before: str | None = None) -> None:
    """Add a format family, ahead of the family named `before` (else last, before the fallback)."""
    if any(f.NAME == family.NAME for f in FORMATS):
        raise ValueError(f"a LoRA format named {family.NAME!r} is registered already")
    names = [f.NAME for f in FORMATS]
    FORMATS.insert(names.index(before) if before is not None else len(FORMATS), family)


# --- #15: LyCORIS (LoHa/LoKr/DoRA/full/Tucker kohya modules, built by peft) ahead of kohya, whose
# prefixes it shares; XLabs Flux ahead of diffusers-old, whose `.processor.` keys it shares.
from . import lycoris, xlabs

register(lycoris, before="kohya")
register(xlabs, before="diffusers-old")
# --- end #15


def family(name: LoraFormat) -> ModuleType | Any:
    """The family module of a format name."""
    for f in FORMATS:
        if f.NAME == name:
            return f
    raise KeyError(f"unknown LoRA format {name!r}")


def detect_format(keys: Iterable[str]) -> LoraFormat:
    """Which family of key names the file uses (see each family's `detect`)."""
    keys = [k for k in keys if is_adapter_key(k)]
    for f in FORMATS:
        if f.detect(keys):
            return f.NAME
    return FALLBACK.NAME


def modules_of(tensors: Mapping[str, torch.Tensor], fmt: LoraFormat) -> tuple[LoraModule, ...]:
    """The file's adapted modules, each placed in its component by the family's rule."""
    return list_modules(tensors, family(fmt).component_of)


def pipeline_state_dict(
    pipe: Any, lora: LoraFile, *, copy: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's tensors keyed as `pipe.load_lora_weights` expects, and diffusers' adapter metadata.

    What diffusers 0.42 gets wrong from an in-memory dict is fixed by the family, in the copy only
    (unprefixed keys: peft, diffusers-old; per-module alphas: kohya). Other keys pass unchanged:
    diffusers converts kohya and old keys itself.
    The metadata (None when absent) must reach `load_lora_into_*(..., metadata=)`, since with a
    dict `load_lora_weights` drops it and alpha falls back to rank; `loading.load_lora_file` does that.
    `copy=True` clones the tensors (diffusers may adopt them as parameters; the cache's must stay
    untouched); `copy=False` is for read-only uses such as `coverage`.
    """
    source = lora.state_dict_copy() if copy else dict(lora.state_dict)
    return family(lora.format).to_pipeline(pipe, lora, source, lora.adapter_metadata)


__all__ = [
    "FALLBACK",
    "FORMATS",
    "LoraFormat",
    "detect_format",
    "family",
    "modules_of",
    "pipeline_state_dict",
    "register",
]
