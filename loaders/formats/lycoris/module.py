"""One LyCORIS/kohya module as the file spells it (`Module`), the algorithms this package builds, and
the error a module that cannot be built raises: what parse, place, deltas and build all speak.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol, TypeAlias

import torch

# kohya/LyCORIS prefixes -> component. SD1.x/SD2.x write lora_te_, SDXL lora_te1_/lora_te2_.
PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_transformer_": "transformer",
}

# The algorithms this package builds (anything else in a file is reported, never skipped).
ALGORITHMS = ("lora", "locon", "dora", "loha", "lokr", "doha", "dokr", "full", "norm")
# The DoRA family: a LoRA/LoHa/LoKr module with a `dora_scale` magnitude (LyCORIS `dora_wd`).
DORA = {"dora": "lora", "doha": "loha", "dokr": "lokr"}
# How many keys an error shows.
KEYS_SHOWN = 5


class LycorisError(ValueError):
    """A module of the file that cannot be built; the message names the algorithm and some keys."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One adapted layer of a LyCORIS/kohya file, in the file's own spelling."""

    name: str  # kohya name, e.g. lora_unet_down_blocks_0_attentions_0_proj_in
    component: str
    algorithm: str  # lora | locon | dora | loha | lokr | full | norm | an unsupported one (oft, glora, ...)
    # in a share, a tensor may be a deltas.Deferred until it loads (deltas.take_rows)
    tensors: Mapping[str, torch.Tensor] = dataclasses.field(repr=False)
    # A share of a fused module (Flux's BFL names, flux_names.py): the [start, stop) ranges of its
    # delta's rows, in order, that one layer takes; None: the whole module. See `take_rows`.
    rows: tuple[tuple[int, int], ...] | None = None

    @property
    def alpha(self) -> float | None:
        t = self.tensors.get("alpha")
        return None if t is None else float(t.float().reshape(-1)[0])

    @property
    def rank(self) -> int:
        t = self.tensors
        if "lora_down.weight" in t:
            return int(t["lora_down.weight"].shape[0])
        if "hada_w1_b" in t:
            return int(t["hada_w1_b"].shape[0])
        for k in ("lokr_t2", "lokr_w1_b", "lokr_w2_b"):
            if k in t:
                return int(t[k].shape[0])
        return 0

    @property
    def keys(self) -> list[str]:
        return [f"{self.name}.{s}" for s in self.tensors]


# The layers a module lands on (place.kohya_names lists no other kind).
BaseLayer: TypeAlias = torch.nn.Linear | torch.nn.Conv2d | torch.nn.LayerNorm | torch.nn.GroupNorm


class Layer(Protocol):
    """What the delta math reads of a layer: its weight. Every BaseLayer is one, and so is the
    stand-in for a fused layer (deltas.take_rows)."""

    @property
    def weight(self) -> torch.Tensor: ...


def base_layer(layer: torch.nn.Module) -> BaseLayer:
    """The layer a peft tuner layer wraps, or the layer itself."""
    # Any: placement finds only BaseLayer kinds (or peft layers wrapping one), which torch types as
    # a Module, and its get_base_layer as Tensor | Module
    found: Any = layer
    return found.get_base_layer() if hasattr(found, "get_base_layer") else found
