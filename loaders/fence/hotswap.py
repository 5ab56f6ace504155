"""Fence entries, 4: hotswap into a parked adapter's layers.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import torch

from . import (
    DIFFUSERS_PATCH_LOCK,
    fast_paths,
)

logger = logging.getLogger(__name__)

def hotswap_available() -> bool:
    """Whether a load may hot-swap into a parked adapter's layers (entries 4a and 4b).

    Fallback when not: the file is loaded as a new adapter with `load_lora_weights` (peft builds
    its layers: ~2x slower per switch, same images).
    """
    return fast_paths()


def hotswap_through_diffusers(
    pipe: Any, comps: tuple[str, ...] | list[str], load: Callable[[], None]
) -> dict[str, tuple[dict, Any]]:
    """Run `load()` (a `load_lora_weights(..., hotswap=True)`) and return, per component, the
    (state dict, LoraConfig) diffusers handed peft's hotswap, so later swaps of the same file can
    call peft directly with them.

    The denoiser goes through diffusers' hotswap (which calls peft's
    `hotswap_adapter_from_state_dict`); the text encoders, which diffusers refuses to hot-swap,
    load with `hotswap=False` but their `load_adapter` (transformers' inject + load) replaced by
    the same peft function on the same converted state dict.
    Private touches (diffusers 0.41, 0.42 / peft 0.20, 0.21): the module global
    `peft.utils.hotswap.hotswap_adapter_from_state_dict` swapped for a recording wrapper (diffusers
    imports it at call time); the instance attributes `pipe.load_lora_into_text_encoder` and
    `text_encoder.load_adapter` overridden for the call.
    Stands in for: `load_lora_weights(hotswap=True)`, which diffusers offers for the denoiser only.
    Fallback: none is run; `hotswap_available()` is False and files load as new adapters.
    """
    import peft.utils.hotswap as peft_hotswap

    models = {id(getattr(pipe, c)): c for c in comps}
    captured: dict[str, tuple[dict, Any]] = {}

    def recording(model, state_dict, adapter_name, config, **kwargs):
        captured[models[id(model)]] = (state_dict, config)
        return original(
            model=model, state_dict=state_dict, adapter_name=adapter_name, config=config, **kwargs
        )

    def te_swapper(te):
        def load_adapter(adapter_name=None, adapter_state_dict=None, peft_config=None, **_):
            peft_hotswap.check_hotswap_configs_compatible(te.peft_config[adapter_name], peft_config)
            recording(te, _with_adapter_name(adapter_state_dict, adapter_name), adapter_name, peft_config)

        return load_adapter

    has_te_loader = hasattr(pipe, "load_lora_into_text_encoder")
    te_loader = type(pipe).load_lora_into_text_encoder if has_te_loader else None

    def load_te(*args, **kwargs):
        te = kwargs["text_encoder"]
        kwargs["hotswap"] = False
        te.load_adapter = te_swapper(te)
        try:
            return te_loader(*args, **kwargs)
        finally:
            del te.load_adapter

    with DIFFUSERS_PATCH_LOCK:
        original = peft_hotswap.hotswap_adapter_from_state_dict  # what `recording` calls
        # cast: `recording` takes peft's optional parameters as keywords only, as diffusers passes them
        peft_hotswap.hotswap_adapter_from_state_dict = cast(Any, recording)
        if te_loader is not None:
            pipe.load_lora_into_text_encoder = load_te
        try:
            load()
        finally:
            peft_hotswap.hotswap_adapter_from_state_dict = original
            if te_loader is not None:
                del pipe.load_lora_into_text_encoder
    if set(captured) != set(comps):
        raise RuntimeError(f"diffusers hot-swapped {sorted(captured)}, not {sorted(comps)}")
    return captured


def _with_adapter_name(state_dict: dict, adapter_name: str) -> dict:
    """peft-format keys with the adapter's name, as peft's hotswap wants (diffusers does the same)."""
    out = {}
    for k, v in state_dict.items():
        for suffix in (".weight", ".bias"):
            if k.endswith(("lora_A" + suffix, "lora_B" + suffix)):
                k = k[: -len(suffix)] + f".{adapter_name}{suffix}"
                break
        out[k] = v
    return out


def rename_adapter(layers: list, configs: list[dict], old: str, new: str) -> None:
    """Rename an adapter in the given peft tuner layers and in the models' `peft_config` tables.

    Private names (peft 0.20, 0.21; torch): each per-adapter `ModuleDict`'s `_modules` (its ordered
    dict, renamed in place without add_module's checks) and the layer's `_active_adapter`.
    Stands in for: peft has no public rename (delete + load is the public way).
    Fallback: none is run; `hotswap_available()` is False, so adapters are never renamed.
    """
    tables: dict[type, list[str]] = {}  # per layer class: the attributes that are per-adapter tables
    for module in layers:
        attrs = tables.get(type(module))
        if attrs is None and old in getattr(module, "r", {}):
            attrs = tables[type(module)] = _adapter_tables(module, old)
        for attr in attrs or ():
            table = getattr(module, attr)
            if isinstance(table, torch.nn.ModuleDict):  # its ordered dict: no add_module checks
                table = table._modules
            if old in table:
                table[new] = table.pop(old)
        active = module._active_adapter
        module._active_adapter = new if active == old else [new if a == old else a for a in active]
        module.merged_adapters = [new if a == old else a for a in module.merged_adapters]
    for config in configs:
        config[new] = config.pop(old)


def _adapter_tables(module, name: str) -> list[str]:
    """The attributes of a peft layer keyed by adapter name: its declared ones and any other dict."""
    declared = (*module.adapter_layer_names, *module.other_param_names)
    attrs = [a for a in declared if getattr(module, a, None) is not None]
    attrs += [
        a for a, t in vars(module).items()
        if not a.startswith("_") and a not in attrs and isinstance(t, dict) and name in t
    ]
    return attrs
