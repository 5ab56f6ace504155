"""The key grammar every LoRA format shares: how down/up matrices and alphas are spelled.

Format modules (and the files/coverage parts) use these to find a file's modules without knowing
which family it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..components import COMPONENTS, DENOISERS
from ..records import LoraModule

# How the "down" (A) and "up" (B) matrix of a module are spelled in each family of formats. The
# module name is everything before the match; the marker says which family it is.
DOWN_RE = re.compile(
    r"^(?P<module>.+?)(?P<marker>\.lora_A(?:\.[^.]+)?|\.lora_down|\.lora\.down|\.lora_linear_layer\.down"
    r"|_lora\.down|_lora1\.down|_lora2\.down)\.weight$"  # _lora1/_lora2: XLabs Flux (xlabs.py)
)
UP_MARKERS = {
    ".lora_A": ".lora_B",
    ".lora_down": ".lora_up",
    ".lora.down": ".lora.up",
    ".lora_linear_layer.down": ".lora_linear_layer.up",
    "_lora.down": "_lora.up",
    "_lora1.down": "_lora1.up",  # XLabs Flux (xlabs.py)
    "_lora2.down": "_lora2.up",
}
# Key fragments that mark a tensor as belonging to some low-rank adapter (LoRA, LoHa, LoKr).
ADAPTER_KEY_MARKERS = (
    "lora_A",
    "lora_B",
    "lora_down",
    "lora_up",
    "lora.down",
    "lora.up",
    "lora_linear_layer",
    "_lora.",
    "hada_w",
    "lokr_w",
    "lora_magnitude_vector",
    "dora_scale",
    "_lora1.",  # XLabs Flux (xlabs.py)
    "_lora2.",
)


def is_adapter_key(key: str) -> bool:
    """Whether a tensor name belongs to some low-rank adapter (LoRA, LoHa, LoKr, DoRA)."""
    return any(m in key for m in ADAPTER_KEY_MARKERS)


def has_component_prefix(keys) -> bool:
    """Whether any key starts with a pipeline component ("unet.", "text_encoder.", ...)."""
    return any(k.split(".", 1)[0] in COMPONENTS for k in keys)


def guess_unprefixed_component(key: str) -> str:
    """The component a key without a component prefix most likely belongs to, by its module path."""
    key = key.removeprefix("base_model.model.")
    if key.startswith(("text_model.", "encoder.layers.", "embeddings.", "text_projection")):
        return "text_encoder"
    if key.startswith(
        ("transformer_blocks.", "single_transformer_blocks.", "double_blocks.", "single_blocks.")
    ):
        return "transformer"
    return "unet"


def list_modules(
    tensors: Mapping[str, torch.Tensor], component_of: Callable[[str], str]
) -> tuple[LoraModule, ...]:
    """One `LoraModule` per down matrix, its up matrix and alpha found by the shared grammar."""
    out = []
    for key, down in tensors.items():
        m = DOWN_RE.match(key)
        if m is None:
            continue
        module, marker = m.group("module"), m.group("marker")
        base_marker = ".lora_A" if marker.startswith(".lora_A") else marker
        up_key = key.replace(
            marker + ".weight", marker.replace(base_marker, UP_MARKERS[base_marker]) + ".weight"
        )
        up = tensors.get(up_key)
        alpha_t = tensors.get(f"{module}.alpha")
        alpha = float(alpha_t.float().reshape(-1)[0]) if isinstance(alpha_t, torch.Tensor) else None
        out.append(
            LoraModule(
                component=component_of(key),
                name=module,
                rank=int(down.shape[0]) if down.ndim else 0,
                alpha=alpha,
                down_shape=tuple(down.shape),
                up_shape=tuple(up.shape) if up is not None else None,
            )
        )
    return tuple(out)


def module_of(key: str) -> str:
    """The module path of a key: the key without its down/up/alpha suffix."""
    m = DOWN_RE.match(key)
    if m:
        return m.group("module")
    return re.sub(
        r"(\.lora_[AB](\.[^.]+)?|\.lora_(down|up)|\.lora(_linear_layer)?\.(down|up)|_lora\.(down|up))"
        r"\.weight$|\.alpha$|\.weight$",
        "",
        key,
    )


def denoiser_name(pipe: Any) -> str:
    """The pipeline's first denoiser: where diffusers puts a file's unprefixed denoiser keys."""
    from .. import fence
    from ..components import is_denoiser

    first = next((c for c in fence.loadable_components(pipe) if is_denoiser(c)), None)
    return first or ("unet" if getattr(pipe, "unet", None) is not None else "transformer")


def prefix_components(
    pipe: Any, source: dict[str, torch.Tensor], meta: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Give keys without a component prefix the prefix of the component they belong to.

    diffusers 0.42 loads nothing from an in-memory dict whose keys lack it (PEFT adapter files,
    `unet.save_attn_procs` files). The metadata of such a file is one LoraConfig for its one model:
    it is filed under the denoiser.
    """
    if has_component_prefix(source):
        return source, meta
    denoiser = denoiser_name(pipe)
    out = {}
    for k, v in source.items():
        bare = k.removeprefix("base_model.model.")
        component = guess_unprefixed_component(bare)
        if component in DENOISERS:
            component = denoiser
        out[f"{component}.{bare}"] = v
    if meta is not None and not has_component_prefix(meta):
        meta = {f"{denoiser}.{k}": v for k, v in meta.items()}
    return out, meta
