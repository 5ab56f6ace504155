"""kohya-ss / A1111 / OneTrainer keys: `lora_<component>_<module path with "_">`, read and written.

Reading: diffusers converts kohya keys itself; a file whose modules have different alphas loads
with one alpha per component (the most common; peft ignores diffusers' per-module alpha_pattern),
so each odd module's ratio to that alpha is folded into its lora_up and its alpha set to the
common one: the same delta.

Writing: an adapter in kohya-ss form, the LoRA dialect every SD1.x/SDXL tool reads.
ComfyUI maps `lora_unet_<diffusers module path with "_">` and `lora_te_/lora_te1_/lora_te2_
text_model_encoder_layers_...` keys (comfy/lora.py `model_lora_keys_unet` / `model_lora_keys_clip`)
but ignores diffusers/PEFT keys on SD1.x/SDXL UNets; A1111 and diffusers read kohya keys too. So
SaveLoRA writes kohya by default. diffusers' own `convert_state_dict_to_kohya` is not used: it
writes alpha = rank for every module (wrong for alpha != rank) and always `lora_te1_` (A1111 expects
`lora_te_` on SD1.x).

Only key names change when writing; every number is the adapter's own, and each module's true alpha
goes into its `.alpha` tensor, so the file acts exactly as the adapter does at strength 1.
"""

from __future__ import annotations

import collections
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ...base import disk
from .. import fence
from ..records import LoraFile, LoraModule

logger = logging.getLogger(__name__)

NAME = "kohya"

# kohya-ss / A1111 / OneTrainer prefixes: lora_<component>_<module path with "_">.
KOHYA_PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_te3_": "text_encoder_3",
    "lora_transformer_": "transformer",
}


def detect(keys: list[str]) -> bool:
    return any(k.startswith(tuple(KOHYA_PREFIXES)) for k in keys)


def component_of(key: str) -> str:
    for prefix, component in KOHYA_PREFIXES.items():
        if key.startswith(prefix):
            return component
    return "unknown"


def to_pipeline(pipe: Any, lora: LoraFile, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    _equalize_alphas(lora, source)
    return source, meta


def _equalize_alphas(lora: LoraFile, source: dict[str, torch.Tensor]) -> None:
    """Give every module of a component the same `.alpha`, folding alpha_i / common into lora_up."""
    by_component: dict[str, list[LoraModule]] = collections.defaultdict(list)
    for m in lora.modules:
        by_component[m.component].append(m)
    for component, mods in by_component.items():
        if all(m.alpha is None for m in mods):
            continue  # no alphas at all: diffusers uses alpha = rank everywhere, as kohya means
        true = {m.name: (m.alpha if m.alpha is not None else float(m.rank)) for m in mods}
        if len(set(true.values())) == 1 and all(m.alpha is not None for m in mods):
            continue
        common = collections.Counter(true.values()).most_common(1)[0][0]
        if common == 0:
            continue  # alpha 0 switches a module off; folding cannot express ratios to it
        for m in mods:
            up_key = f"{m.name}.lora_up.weight"
            if true[m.name] != common and up_key in source:
                source[up_key] = source[up_key] * (true[m.name] / common)
            source[f"{m.name}.alpha"] = torch.tensor(common, dtype=torch.float32)
        logger.info(
            "%s: %s alphas differ per module; folded into lora_up for diffusers", lora.path, component
        )


# --- writing ---------------------------------------------------------------------------------------

# kohya's text-encoder prefixes: SD1.x/SD2.x have one text encoder (lora_te_), SDXL two (te1/te2).
_TE_PREFIX_SD = {"text_encoder": "lora_te_"}
_TE_PREFIX_SDXL = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)(?:\.[^.]+)?\.weight$")


def _kohya_module(component: str, module: str, sdxl: bool) -> str:
    if component == "unet":
        return "lora_unet_" + module.replace(".", "_")
    prefixes = _TE_PREFIX_SDXL if sdxl else _TE_PREFIX_SD
    if component not in prefixes:
        raise ValueError(
            f"kohya form has no name for the {component!r} component"
            + (
                ""
                if component.startswith("text_encoder")
                else "; save this adapter in diffusers form instead"
            )
        )
    # transformers >= 5 flattens CLIPTextModel (no `text_model.`); kohya names always carry it.
    if not module.startswith(("text_model.", "text_projection")):
        module = "text_model." + module
    return prefixes[component] + module.replace(".", "_")


def _alpha_lookup(spec: Any) -> Callable[[str], float | None]:
    """module -> alpha, from {module: alpha} or from a peft LoraConfig (lora_alpha + alpha_pattern)."""
    if spec is None:
        return lambda module: None
    if hasattr(spec, "lora_alpha"):
        from peft.utils.other import get_pattern_key

        pattern = dict(getattr(spec, "alpha_pattern", None) or {})

        def from_config(module: str) -> float:
            key = get_pattern_key(list(pattern), module)  # peft's own matching rule
            return float(pattern.get(key, spec.lora_alpha))

        return from_config
    return lambda module: spec.get(module)


def peft_to_kohya(
    component_state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    alphas: Mapping[str, Any],
    *,
    sdxl: bool | None = None,
) -> dict[str, torch.Tensor]:
    """PEFT state dicts per component -> one kohya state dict with a true `.alpha` per module.

    component_state_dicts: {"unet" | "text_encoder" | "text_encoder_2": {"<module>.lora_A.weight": t,
        "<module>.lora_B.weight": t}} as `get_peft_model_state_dict(model, adapter_name)` returns them.
    alphas: per component either {module: alpha} (see `adapter_alphas`) or the adapter's peft
        LoraConfig (lora_alpha + alpha_pattern); a module with no alpha gets alpha = rank (scale 1).
    sdxl: name the text encoders lora_te1_/lora_te2_ (True) or lora_te_ (False); None guesses from
        the presence of a text_encoder_2 state dict - pass it explicitly when the pipeline is known.
    Raises ValueError for keys kohya cannot express (DoRA magnitudes, LoRA biases, embeddings, a
    transformer denoiser).
    """
    if sdxl is None:
        sdxl = "text_encoder_2" in component_state_dicts
    out: dict[str, torch.Tensor] = {}
    for component, sd in component_state_dicts.items():
        if not sd:
            continue
        if component == "transformer":
            raise ValueError(
                "kohya form is defined for UNet pipelines only; save a transformer LoRA in diffusers form"
            )
        alpha_of = _alpha_lookup(alphas.get(component))
        for key, tensor in sd.items():
            m = _PEFT_KEY.match(key)
            if m is None:
                raise ValueError(
                    f"{component}: key {key!r} has no kohya equivalent (only lora_A/lora_B weights do)"
                )
            module, which = m.group("module"), m.group("which")
            name = _kohya_module(component, module, sdxl)
            if which == "lora_A":
                out[f"{name}.lora_down.weight"] = tensor.detach().cpu().contiguous()
                alpha = alpha_of(module)
                rank = int(tensor.shape[0])
                out[f"{name}.alpha"] = torch.tensor(
                    float(rank if alpha is None else alpha), dtype=torch.float32
                )
            else:
                out[f"{name}.lora_up.weight"] = tensor.detach().cpu().contiguous()
    downs = {k.removesuffix(".lora_down.weight") for k in out if k.endswith(".lora_down.weight")}
    ups = {k.removesuffix(".lora_up.weight") for k in out if k.endswith(".lora_up.weight")}
    if downs != ups:
        raise ValueError(f"unpaired LoRA matrices for: {sorted(downs ^ ups)[:5]}")
    return out


def adapter_alphas(model: torch.nn.Module, adapter_name: str) -> dict[str, float]:
    """{module name: true alpha} of one adapter in a peft-injected model (unaffected by set_adapters)."""
    from peft.tuners.lora import LoraLayer

    found = {}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_alpha:
            found[name] = float(module.lora_alpha[adapter_name])
    return found


def adapter_for_save(
    pipe: Any, adapter_name: str
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, float]]]:
    """One adapter's PEFT state dicts and true alphas per component, at strength 1, for saving.

    Weights set by set_adapters only change peft's `scaling`, never `lora_alpha` or the matrices, so
    what comes out is the adapter as it was loaded.
    """
    from peft.utils import get_peft_model_state_dict

    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, dict[str, float]] = {}
    for component in fence.loadable_components(pipe):
        model = getattr(pipe, component, None)
        if model is None or adapter_name not in getattr(model, "peft_config", {}):
            continue
        state_dicts[component] = {
            k: v.detach().cpu().clone()
            for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()
        }
        alphas[component] = adapter_alphas(model, adapter_name)
    if not state_dicts:
        raise ValueError(f"no adapter named {adapter_name!r} is loaded in this pipeline")
    return state_dicts, alphas


def save_kohya(
    component_state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    alphas: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    sdxl: bool | None = None,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `peft_to_kohya(...)` as a .safetensors (header: `format: pt` plus `metadata`).

    Written whole (base/disk.py), so a crash never leaves a half-written LoRA behind.
    """
    import safetensors.torch

    tensors = peft_to_kohya(component_state_dicts, alphas, sdxl=sdxl)
    header = {"format": "pt", **{str(k): str(v) for k, v in (metadata or {}).items()}}
    disk.write_file(path, lambda tmp: safetensors.torch.save_file(tensors, tmp, metadata=header))
