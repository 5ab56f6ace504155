"""SaveLoRA for a LyCORIS adapter: its modules that landed, in their own family's kohya keys.

A loaded adapter's tensors are the file's (nothing here trains or rescales them; weights live in
peft's `scaling`), so the file's own module tensors are written, at strength 1, for the modules
that are on the pipeline. diffusers cannot load LoHa/LoKr/DoRA/full kohya modules, so `format =
diffusers` is refused for these adapters (docs/CONTRACT.md: offered only where diffusers can load it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ...records import LoraFile
from .module import Module
from .parse import file_algorithm, parse
from .place import place


def kohya_tensors(modules: Iterable[Module], keep: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The modules' tensors under their own family's kohya keys (`name.suffix`), for SaveLoRA."""
    out = {}
    for m in modules:
        if keep is not None and m.name not in keep:
            continue
        for suffix, v in m.tensors.items():
            out[f"{m.name}.{suffix}"] = v.detach().cpu().contiguous()
    return out


def save_refusal(lora: LoraFile, adapter_name: str, fmt: str) -> str | None:
    """Why the adapter cannot be saved as `fmt`: only kohya keys hold its modules."""
    if fmt == "kohya":
        return None
    return (
        f"{adapter_name!r} is a {file_algorithm(parse(lora.state_dict))} adapter (LyCORIS); diffusers cannot "
        "load it, so it can only be saved as format = kohya"
    )


def writer(pipe: Any, lora: LoraFile) -> Callable[[str], None]:
    """The writer of the file's modules that are on `pipe`, with the algorithm in the header."""
    from safetensors.torch import save_file

    modules = parse(lora.state_dict)
    placement = place(pipe, modules)
    keep = {m.name for items in placement.landed.values() for m, _ in items}
    tensors = kohya_tensors(modules, keep)
    meta = {
        "format": "pt", "ss_network_module": "lycoris.kohya", "loragraph_algorithm": file_algorithm(modules)
    }

    def write(tmp: str) -> None:
        save_file(tensors, tmp, metadata=meta)

    return write
