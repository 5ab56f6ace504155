"""Hotswap: load a file into the layers of a parked adapter with the same layout, copying weights
instead of peft building layers (peft's `hotswap_adapter_from_state_dict`), then rename the slot.

The policy lives here (which parked adapter fits, what is remembered per file); the private
diffusers/peft touches it needs are the fence's (`hotswap_through_diffusers`, `rename_adapter`).
On diffusers/peft versions outside the fence's verified set no slot is offered and files load.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Any

from . import fence
from .formats import load_lora_file
from .live import LivePipeline, is_lora_layer, layers, quiet_loading, timed


def slot_for(live: LivePipeline, cov, slots: list[str]) -> str | None:
    """A parked adapter the file can be hot-swapped into, or None.

    peft's hotswap copies weights into existing tensors, so: a file of plain LoRA weights that lands
    completely, and a parked, plain, unmerged adapter on the pipeline's device with exactly the same
    modules and ranks in exactly the same components (denoiser and text encoders alike).
    """
    if not slots or not cov.plain or not cov.complete or not cov.layout or not fence.hotswap_available():
        return None
    comps = live.components
    if any(c not in comps for c in cov.layout):
        return None
    models = {c: getattr(live.pipe, c) for c in comps}
    for slot in slots:  # the oldest parked first: the most recent is the likeliest to be toggled back to
        if live.live_devices.get(slot) is not None:
            continue
        holding = {c for c, m in models.items() if slot in (getattr(m, "peft_config", None) or {})}
        if holding != set(cov.layout):
            continue
        if all(_slot_fits(live, c, slot, cov.layout[c]) for c in cov.layout):
            return slot
    return None


def _slot_fits(live: LivePipeline, comp: str, slot: str, wanted) -> bool:
    config = getattr(live.pipe, comp).peft_config[slot]
    if getattr(config, "use_dora", True) or config.use_rslora or getattr(config, "lora_bias", False):
        return False
    have = {}
    for name, m in layers(live, comp):
        if slot in getattr(m, "r", {}):
            if slot in m.merged_adapters or not is_lora_layer(m):  # peft hot-swaps LoRA layers only
                return False
            have[name] = int(m.r[slot])
    return have == wanted


# A name no module path or other adapter's key contains: peft's hotswap finds the slot's keys by
# substring (`adapter_name in key`) and zeroes the ones the new file lacks, so swapping into a slot
# named "d" would zero every other adapter's "down_blocks..." weights.
_SWAP_NAME = "loragraph_hotswap_slot_5f1c"


def swap(live: LivePipeline, lf, slot: str, name: str, comps, target: str = "auto") -> None:
    """Load `lf` into the layers of parked adapter `slot` (peft's hotswap), then call it `name`.

    The first swap of a file goes through diffusers' own loader, so its key conversion and
    LoraConfig are the ones a load would use: the denoiser with `hotswap=True` (diffusers calls
    peft's `hotswap_adapter_from_state_dict`); the text encoders, which diffusers refuses to
    hot-swap, with `hotswap=False` but their `load_adapter` (transformers' inject + load) replaced,
    for this call, by the same peft function on the same converted state dict. What diffusers hands
    peft is kept per file (`swap_inputs`), so a later swap of the same file calls peft directly with
    it, skipping diffusers' conversions and its per-load walks over every module (~15 ms at SD1.5
    size). The slot is renamed to `_SWAP_NAME` for the swap (see there). peft's hotswap updates
    each layer's `scaling` but not `lora_alpha`, from which `set_adapters` recomputes it, nor the
    adapter's config, from which SaveLoRA reads alphas: both are set here from diffusers' config.
    """
    import peft.utils.hotswap as peft_hotswap

    pipe = live.pipe
    key = (lf.sha256, lf.path, target)
    inputs = live.swap_inputs.get(key)
    _rename_adapter(live, slot, _SWAP_NAME, comps)
    if inputs is not None and set(inputs) == set(comps):
        live.swap_inputs.move_to_end(key)
        with timed(live, "hotswap", f"{name} into {slot} (peft, diffusers' inputs kept)"):
            for comp in comps:
                model, (state_dict, config) = getattr(pipe, comp), inputs[comp]
                peft_hotswap.check_hotswap_configs_compatible(model.peft_config[_SWAP_NAME], config)
                peft_hotswap.hotswap_adapter_from_state_dict(
                    model=model, state_dict=state_dict, adapter_name=_SWAP_NAME, config=config
                )
    else:
        inputs = _hotswap_through_diffusers(live, lf, comps, f"{name} into {slot}", target)
        live.swap_inputs[key] = inputs
        while len(live.swap_inputs) > _SWAP_INPUTS_KEPT:
            live.swap_inputs.popitem(last=False)
    for comp in comps:
        for _, module in layers(live, comp):
            if _SWAP_NAME in getattr(module, "scaling", {}):  # scaling = the file's alpha / r now
                module.lora_alpha[_SWAP_NAME] = module.scaling[_SWAP_NAME] * module.r[_SWAP_NAME]
        config = inputs[comp][1]
        getattr(pipe, comp).peft_config[_SWAP_NAME] = copy.deepcopy(config)  # the kept one stays as built
    _rename_adapter(live, _SWAP_NAME, name, comps)
    gone = live.parked.pop(slot, None)
    live.live_devices.pop(slot, None)
    if gone is not None:
        live.swapped_out[gone.sha256] = None
        while len(live.swapped_out) > _SWAPPED_OUT_KEPT:
            live.swapped_out.pop(next(iter(live.swapped_out)))


# How many overwritten files are remembered: more than a graph switches between, a few bytes each.
_SWAPPED_OUT_KEPT = 256
# Files whose swap inputs are kept per pipeline: their tensors are mostly the parsed file's own
# (conversions rename keys), so a few cost little; kohya files' rescaled ones cost one LoRA each.
_SWAP_INPUTS_KEPT = 8


def _hotswap_through_diffusers(
    live: LivePipeline, lf, comps, detail: str, target: str = "auto"
) -> dict[str, tuple[dict, Any]]:
    """Hot-swap `lf` into adapter `_SWAP_NAME` through diffusers' loader (see `swap`); returns
    {component: (state dict, LoraConfig)} as diffusers handed them to peft."""

    def load() -> None:
        walked_once = fence.state_dict_walked_once([getattr(live.pipe, c) for c in comps])
        checked = _expansion_checks_answered(live, comps)
        swapped = [module for c in comps for _, module in layers(live, c)]
        offloading = fence.offloading_answered(live.pipe, swapped)
        with timed(live, "hotswap", detail), quiet_loading(), checked, walked_once, offloading:
            load_lora_file(live.pipe, lf, _SWAP_NAME, hotswap=True, target=target)

    return fence.hotswap_through_diffusers(live.pipe, comps, load)


def _expansion_checks_answered(live: LivePipeline, comps):
    """Flux's shape-expansion checks, answered from the slot's layers where the file's shapes prove
    them no-ops (fence.expansion_checks_answered); diffusers' own checks otherwise."""
    denoiser = next((c for c in comps if c == getattr(live.pipe, "transformer_name", None)), None)
    if denoiser is None:
        return contextlib.nullcontext()
    model = getattr(live.pipe, denoiser)
    return fence.expansion_checks_answered(live.pipe, model, dict(layers(live, denoiser)))


def _rename_adapter(live: LivePipeline, old: str, new: str, comps) -> None:
    """Rename an adapter in every peft layer and in the models' peft_config (peft has no rename)."""
    found = [module for comp in comps for _, module in layers(live, comp)]  # the same before and after a swap
    fence.rename_adapter(found, [getattr(live.pipe, comp).peft_config for comp in comps], old, new)
