"""LoRA key formats: one family per spelling of a LoRA file's keys, each recognising its files and
answering for them, so that nothing outside a family asks which one a file is.

A family is a `Family` (family.py) with:

    NAME: str                                          # the `LoraFile.format` it stands for
    detect(keys) -> bool                               # every tensor name of the file: is it ours?
    modules(tensors) -> tuple[LoraModule, ...]         # the adapted modules, each in its component
    coverage(pipe, lora) -> Coverage                   # where they would land on `pipe`, and why not
    load(pipe, lora, adapter_name, *, hotswap) -> None # put them on `pipe` as one adapter
    algorithm(lora) -> str                             # LoRAInfo's word for it ("lora" by default)
    save_refusal(lora, adapter_name, fmt) -> str|None  # why SaveLoRA cannot write it as `fmt`
    export(pipe, lora, adapter_name, fmt, components) -> writer   # SaveLoRA's file, at strength 1

A family diffusers loads itself is a module of key rules here (NAME, `detect(adapter keys)`,
`component_of(key)`, `to_pipeline(pipe, lora, source, meta)`), wrapped in `DiffusersFamily`, which
answers every hook the plain way: diffusers' `load_lora_weights`, its converters for coverage, the
peft layers for saving. A family diffusers cannot load (LyCORIS) implements the hooks itself, in a
package of its own (lycoris/).

`FORMATS` is the one table of families, tried in order: the first whose `detect` says yes names the
file; a file no family claims is read as `FALLBACK` when it holds adapter keys at all. A new family
goes in with `register(family, before=...)`, ahead of any family whose detection would also claim
its keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, cast

import torch

from ..records import LoraFile, LoraFormat, LoraModule
from . import diffusers_attn_procs, diffusers_native, kohya, peft_native, xlabs
from .family import DiffusersFamily, Family
from .keys import is_adapter_key
from .lycoris import FAMILY as LYCORIS

FALLBACK = DiffusersFamily(diffusers_attn_procs)

# Order matters. LyCORIS (LoHa/LoKr/DoRA/full/Tucker kohya modules, built by peft) comes ahead of
# kohya, whose prefixes it shares; kohya prefixes ahead of XLabs Flux keys and old attention-processor
# keys (which share `.processor.`), and those ahead of the plain component-prefixed (diffusers) and
# unprefixed lora_A/lora_B (peft) spellings.
FORMATS: list[Family] = [
    LYCORIS,
    DiffusersFamily(kohya),
    DiffusersFamily(xlabs),
    FALLBACK,
    DiffusersFamily(diffusers_native),
    DiffusersFamily(peft_native),
]


def register(family: Family, *, before: str | None = None) -> None:
    """Add a format family, ahead of the family named `before` (else last)."""
    if any(f.NAME == family.NAME for f in FORMATS):
        raise ValueError(f"a LoRA format named {family.NAME!r} is registered already")
    names = [f.NAME for f in FORMATS]
    FORMATS.insert(names.index(before) if before is not None else len(FORMATS), family)


def family(name: LoraFormat) -> Family:
    """The family of a format name."""
    for f in FORMATS:
        if name == f.NAME:
            return f
    raise KeyError(f"unknown LoRA format {name!r}")


def detect_format(keys: Iterable[str]) -> LoraFormat | None:
    """Which family the file's tensor names belong to (see each family's `detect`): `FALLBACK` when
    none claims them but some are adapter keys, None when the file holds no LoRA at all."""
    keys = list(keys)
    for f in FORMATS:
        if f.detect(keys):
            return f.NAME
    return FALLBACK.NAME if any(is_adapter_key(k) for k in keys) else None


def modules_of(tensors: Mapping[str, torch.Tensor], fmt: LoraFormat) -> tuple[LoraModule, ...]:
    """The file's adapted modules, each placed in its component by the family's rule."""
    return family(fmt).modules(tensors)


def load_lora_file(
    pipe: Any, lora: LoraFile, adapter_name: str, hotswap: bool = False, target: str = "auto"
) -> None:
    """Load a cached LoraFile onto `pipe` as its family does: diffusers' `load_lora_weights` exactly as
    from the file's path for the plain families, peft's tuners built per module for LyCORIS.
    `target`: LoadLoRA's ("auto", or the denoiser a single-expert file goes on).

    Not transactional: callers roll back on error.
    """
    family(lora.format).load(pipe, lora, adapter_name, hotswap=hotswap, target=target)


def pipeline_state_dict(
    pipe: Any, lora: LoraFile, *, copy: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The file's tensors keyed as `pipe.load_lora_weights` expects, and diffusers' adapter metadata,
    for a file of a family diffusers loads (`DiffusersFamily`).

    What diffusers 0.42 gets wrong from an in-memory dict is fixed by the family, in the copy only
    (unprefixed keys: peft, diffusers-old; per-module alphas: kohya). Other keys pass unchanged:
    diffusers converts kohya and old keys itself.
    The metadata (None when absent) must reach `load_lora_into_*(..., metadata=)`, since with a
    dict `load_lora_weights` drops it and alpha falls back to rank; `load_lora_file` does that.
    `copy=True` clones the tensors (diffusers may adopt them as parameters; the cache's must stay
    untouched); `copy=False` is for read-only uses such as `coverage`.
    """
    # cast: only the families diffusers loads have this dict; another family's file fails on the attribute
    plain = cast(DiffusersFamily, family(lora.format))
    return plain.pipeline_state_dict(pipe, lora, copy=copy)


__all__ = [
    "FALLBACK",
    "FORMATS",
    "DiffusersFamily",
    "Family",
    "LoraFormat",
    "detect_format",
    "family",
    "load_lora_file",
    "modules_of",
    "pipeline_state_dict",
    "register",
]
