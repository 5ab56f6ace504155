"""LoRA Block Weight vectors (sd-webui-lora-block-weight, ComfyUI-Inspire-Pack) as diffusers block dicts.

A vector is `BASE,b1,b2,...`: BASE scales the text encoders, then one value per attention block of
the UNet in LDM order (input blocks, the middle block, output blocks): 17 values on SD 1.x (IN01,
IN02, IN04, IN05, IN07, IN08, M00, OUT03..OUT11), 12 on SDXL (IN04, IN05, IN07, IN08, M00,
OUT00..OUT05). The packs scale a block's patches by strength x value and the text encoder's by
text-encoder strength x BASE; diffusers' per-block dict with those products gives the same weights
(docs/CONTRACT.md, "Block-weight vectors"). Inspire gives the values to the blocks a file patches,
in order; for a file on every attention block (what the packs' vectors are written for) that is
the fixed order above, and a file on fewer blocks is refused here rather than shifted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

# Inspire-Pack's resources/lbw-preset.txt (the SD 1.x and SDXL presets without letters), which
# extends sd-webui-lora-block-weight's own list; both name them without the family prefix.
PRESETS: dict[str, dict[str, str]] = {
    "SD": {
        "NONE": "0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0",
        "ALL": "1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
        "INS": "1,1,1,1,0,0,0,0,0,0,0,0,0,0,0,0,0",
        "IND": "1,0,0,0,1,1,1,0,0,0,0,0,0,0,0,0,0",
        "INALL": "1,1,1,1,1,1,1,0,0,0,0,0,0,0,0,0,0",
        "MIDD": "1,0,0,0,1,1,1,1,1,1,1,1,0,0,0,0,0",
        "MIDD0.2": "1,0,0,0,0,0,0.2,0.4,0.4,0.2,0,0,0,0,0,0,0",
        "MIDD0.8": "1,0,0,0,0,0.5,0.8,0.8,0.4,0,0,0,0,0,0,0,0",
        "MOUT": "1,0,0,0,0,0,1,1,1,1,1,1,1,1,0.5,0,0",
        "OUTD": "1,0,0,0,0,0,0,0,1,1,1,1,0,0,0,0,0",
        "OUTS": "1,0,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1",
        "OUTALL": "1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1",
        "ALL0.5": "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5",
    },
    "SDXL": {
        "NONE": "0,0,0,0,0,0,0,0,0,0,0,0",
        "ALL": "1,1,1,1,1,1,1,1,1,1,1,1",
        "INALL": "1,1,1,1,1,0,0,0,0,0,0,0",
        "MIDALL": "1,0,0,0,0,1,0,0,0,0,0,0",
        "OUTALL": "1,0,0,0,0,0,1,1,1,1,1,1",
    },
}
# Letters the packs draw or fill in (R, U random; A, B from extra inputs): no fixed meaning here.
_LETTERS = set("RrUuAaBb")
_ATTENTION = re.compile(r"(down_blocks|up_blocks)[._]\d+[._]attentions[._]\d+|mid_block[._]attentions[._]0")

Slot = tuple[str, int, int]  # ("down" | "mid" | "up", block index, attention index)


class VectorError(ValueError):
    """A vector or preset that cannot be used; the caller names its input."""


def looks_like_vector(text: str) -> bool:
    """A vector or preset name, not JSON: what `block_weights` holds when it is no object."""
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith(("{", "["))


def layout(unet_config: Mapping[str, Any]) -> list[Slot]:
    """The attention blocks of a UNet in LDM order: one slot per `attentions.j` of each block."""
    per_down = int(unet_config.get("layers_per_block", 2))
    if not isinstance(unet_config.get("layers_per_block", 2), int):
        raise VectorError("this UNet has a layers_per_block per block; block vectors need one number")
    slots: list[Slot] = []
    for i, kind in enumerate(unet_config.get("down_block_types", ())):
        if "CrossAttn" in kind:
            slots += [("down", i, j) for j in range(per_down)]
    if "CrossAttn" in str(unet_config.get("mid_block_type") or "UNetMidBlock2DCrossAttn"):
        slots.append(("mid", 0, 0))
    for i, kind in enumerate(unet_config.get("up_block_types", ())):
        if "CrossAttn" in kind:
            slots += [("up", i, j) for j in range(per_down + 1)]
    return slots


def parse(text: str, family: str, n_values: int) -> list[float]:
    """A vector `"1,0,0.5,..."` or a preset name (`MIDD`, or Inspire's `SD-MIDD`), n_values numbers."""
    name = text.strip()
    presets = PRESETS.get(family, {})
    prefixed = {f"{fam}-{k}": v for fam, ps in PRESETS.items() for k, v in ps.items()}
    if name in presets or name in prefixed:
        name = presets.get(name) or prefixed[name]
    elif "," not in name and not re.fullmatch(r"-?[\d.]+", name):
        known = ", ".join(presets) or "none for this pipeline"
        raise VectorError(f"{text.strip()[:40]!r} is neither a vector nor a preset "
                          f"({family} presets: {known})")
    parts = [p.strip() for p in name.split(",")]
    values: list[float] = []
    for i, part in enumerate(parts):
        if part in _LETTERS or any(c in _LETTERS for c in part):
            raise VectorError(f"value {i + 1} is {part!r}: the letters R, U, A and B (random or extra "
                              "inputs) are not supported; write numbers")
        try:
            value = float(part)
        except ValueError:
            raise VectorError(f"value {i + 1} ({part[:20]!r}) is not a number") from None
        if not math.isfinite(value):
            raise VectorError(f"value {i + 1} must be a finite number")
        values.append(value)
    if len(values) != n_values:
        raise VectorError(f"{len(values)} values, but this UNet takes {n_values}: BASE, then one per "
                          f"attention block ({n_values - 1}; SD 1.x: 17 values, SDXL: 12)")
    return values


def unet_block_dict(slots: Sequence[Slot], values: Sequence[float], weight: float) -> dict[str, Any]:
    """diffusers' per-block dict for the UNet: each attention block at weight x its value."""
    out: dict[str, Any] = {"down": {}, "up": {}}
    for (kind, i, _j), value in zip(slots, values, strict=True):
        if kind == "mid":
            out["mid"] = weight * value
        else:
            out[kind].setdefault(f"block_{i}", []).append(weight * value)
    return out


def check_attention_only(module_names: Sequence[str]) -> None:
    """Refuse a file that patches UNet layers outside the attention blocks (LoCon's resnets, conv_in):
    diffusers' block dict cannot scale those as the packs do."""
    for name in module_names:
        if _ATTENTION.search(name) is None:
            raise VectorError(f"the file patches {name}, outside the UNet's attention blocks; block vectors "
                              "scale attention blocks only: use diffusers' per-block JSON")


def to_block_dicts(
    vector: str, slots: Sequence[Slot], family: str, weight: float, te_weight: float,
    text_encoders: Sequence[str], denoiser: str = "unet",
) -> dict[str, Any]:
    """{component: weight or per-block dict} for one adapter: the UNet per block, the text encoders at
    te_weight x BASE."""
    values = parse(vector, family, len(slots) + 1)
    return {denoiser: unet_block_dict(slots, values[1:], weight),
            **{te: te_weight * values[0] for te in text_encoders}}
