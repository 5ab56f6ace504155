"""Fence entries, 5: LyCORIS files built with peft's tuners (formats/lycoris/).

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import importlib
import logging
import re
from typing import Any

import torch

from . import (
    VERIFIED,
    configured_mode,
    fast_paths,
    versions_verified,
)

logger = logging.getLogger(__name__)

def lycoris_refusal() -> str | None:
    """Why LoHa/LoKr/DoRA/full files cannot be loaded here, or None when they can.

    The layers are built with peft's public tuners (`inject_adapter_in_model` with LoraConfig,
    LoHaConfig, LoKrConfig, then `set_peft_model_state_dict`), and diffusers is told about them
    through `mark_peft_loaded` below, a private flag. That was verified (tests/test_lycoris.py,
    images against the LyCORIS library's own forward pass) on diffusers 0.42 / peft 0.21; peft
    0.20's tuners take the same configs. Outside the verified versions there is no public way
    to tell diffusers a component holds adapters it did not load, so such a file is refused with
    this message (the fallback), rather than loaded half-working. `fast_paths = on` forces it.
    """
    if versions_verified() or configured_mode() == "on":
        return None
    package = importlib.import_module(__name__.rpartition(".")[0])  # tests replace its installed_versions
    found = package.installed_versions()
    return (
        f"LyCORIS (LoHa/LoKr/DoRA/full) files need diffusers {'/'.join(VERIFIED['diffusers'])} and peft "
        f"{'/'.join(VERIFIED['peft'])}; installed are diffusers {found['diffusers']} and peft {found['peft']}"
    )


def mark_peft_loaded(model: torch.nn.Module) -> None:
    """Tell diffusers/transformers that a component holds peft adapters.

    diffusers' `set_adapters`/`delete_adapters` (and transformers' adapter methods) check the flag
    their own loaders set; peft's `inject_adapter_in_model` does not set it.
    Private name: the model's `_hf_peft_config_loaded` (diffusers 0.41, 0.42; transformers 5).
    Stands in for: what `load_lora_adapter`/`add_adapter` set after injecting layers; neither can
    take LoHa/LoKr layers or several peft configs under one adapter name.
    Fallback: none runs; outside the verified versions `lycoris_refusal` refuses the file first.
    """
    flagged: Any = model  # torch types an attribute it does not know as Tensor | Module
    flagged._hf_peft_config_loaded = True


def register_norm_layers(config: Any, layer_cls: type, norm_types: tuple[type, ...]) -> None:
    """Have a LoraConfig wrap norm layers (`norm_types`) in `layer_cls` (formats/lycoris/norms.py).

    peft has no tuner that adds a scaled diff to a norm layer's affine weight; its LoRA model takes
    custom layer types through an experimental registration, documented in peft's "custom models"
    guide. Private name: `LoraConfig._register_custom_module` (peft 0.20, 0.21).
    Stands in for: a peft tuner for `w_norm`/`b_norm` (LyCORIS `train_norm`), which peft lacks.
    Fallback: none runs; outside the verified versions `lycoris_refusal` refuses the file first.
    """
    config._register_custom_module(dict.fromkeys(norm_types, layer_cls))


def forward_conv_attributes(layer: torch.nn.Module) -> None:
    """Give a nested peft conv layer the `groups` of the conv it wraps.

    peft's LoRA conv layer reads `groups` straight off the layer it wraps; when that is a LoHa/LoKr
    conv layer (another adapter on the same conv), the attribute is not there.
    Touch (peft 0.20, 0.21): an attribute set on a peft tuner layer (no private name).
    Stands in for: peft nesting tuner layers of two families on one conv, which it does not support.
    Fallback: the same (the attribute is public torch Conv2d's); nothing version-specific.
    """
    peft_layer: Any = layer  # torch types the attributes peft adds as Tensor | Module
    base = peft_layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    if isinstance(base, torch.nn.Conv2d) and not hasattr(layer, "groups"):
        peft_layer.groups = base.groups


def move_adapter(module: Any, adapter_name: str, device: str | torch.device) -> None:
    """`set_lora_device` for any peft tuner layer (LoRA, LoHa, LoKr, DoRA magnitudes).

    diffusers' own `set_lora_device` reads `lora_A` of every tuner layer, which LoHa/LoKr lack.
    Touch (peft 0.20, 0.21): a `ParameterDict` entry of a tuner layer (its public
    `adapter_layer_names` tables) replaced by a moved Parameter, as diffusers does for `lora_A`.
    Stands in for: `pipe.set_lora_device([name], device)`.
    Fallback: the same code (public torch/peft attributes only); nothing version-specific.
    """
    for attr in (*module.adapter_layer_names, "lora_magnitude_vector"):
        table = getattr(module, attr, None)
        if table is not None and adapter_name in table:
            item = table[adapter_name]
            if isinstance(item, torch.nn.Parameter):  # a ParameterDict entry: replaced, as diffusers does
                table[adapter_name] = torch.nn.Parameter(item.data.to(device), item.requires_grad)
            else:
                item.to(device)


def sgm_module_paths(pipe: Any, names: list[str]) -> dict[str, str]:
    """{kohya SGM module name (lora_unet_input_blocks_4_1_...): diffusers UNet module path}.

    Private names (diffusers 0.41, 0.42): `lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers`
    and `_convert_unet_lora_key`, the converters `StableDiffusionXLPipeline.lora_state_dict` runs.
    Stands in for: that public `lora_state_dict(state_dict, unet_config=...)`.
    Fallback: exactly that public call on a stand-in file, one LoRA module per name whose rank is
    its index (a tiny tensor), the converted keys mapped back to names by rank. Names the public
    converter cannot place are left out (reported unmatched by coverage).
    """
    unet_config = pipe.unet.config
    if fast_paths():
        try:
            from diffusers.loaders.lora_conversion_utils import (
                _convert_unet_lora_key,
                _maybe_map_sgm_blocks_to_diffusers,
            )
        except ImportError:
            pass
        else:
            carried = {f"{n}.alpha": n for n in names}  # the values carry each name through the renames
            mapped = _maybe_map_sgm_blocks_to_diffusers(dict(carried), unet_config)
            return {
                orig: _convert_unet_lora_key(k.split(".")[0]).replace(".processor", "")
                for k, orig in mapped.items()
            }
    return _sgm_paths_public(pipe, names)


def _sgm_paths_public(pipe: Any, names: list[str]) -> dict[str, str]:
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    stand_in = {}
    for i, n in enumerate(names):
        stand_in[f"{n}.lora_down.weight"] = torch.zeros(i + 1, 1)
        stand_in[f"{n}.lora_up.weight"] = torch.zeros(1, i + 1)
    try:
        out = StableDiffusionXLLoraLoaderMixin.lora_state_dict(stand_in, unet_config=pipe.unet.config)
    except Exception as e:  # the converter's refusal leaves these names unmatched
        logger.info("diffusers could not convert kohya SGM names (%s): they stay unmatched", e)
        return {}
    converted = out[0] if isinstance(out, tuple) else out
    paths = {}
    for key, t in converted.items():
        # diffusers spells the converted down matrix `<path>.lora.down.weight`, or for attention
        # projections `<block>.processor.to_k_lora.down.weight` (its old processor form)
        m = re.match(r"^unet\.(.+?)(?:\.lora_A|\.lora\.down|_lora\.down)\.weight$", key)
        if m is not None and t.ndim == 2:
            # to_out_lora: to_out.0
            path = m.group(1) + (".0" if m.group(1).endswith(".processor.to_out") else "")
            paths[names[int(t.shape[0]) - 1]] = path.replace(".processor.", ".")
    return paths
