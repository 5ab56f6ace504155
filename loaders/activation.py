"""Activation: which adapters are active with which weights (`set_adapters`), and the
text-encoder LoRA switch.
"""

from __future__ import annotations

from typing import Any

from .components import TEXT_ENCODERS
from .live import LivePipeline, has_lora, layers, timed
from .state import ActiveSet


def _adapter_weights_for_call(live: LivePipeline, active: ActiveSet) -> list[Any]:
    """Per-adapter weights in set_adapters' form, with components the adapter lacks left out."""
    present = live.pipe.get_list_adapters()
    out = []
    for name, value in zip(active.names, active.weight_values()):
        if isinstance(value, dict):
            value = {c: v for c, v in value.items() if name in present.get(c, ())}
        out.append(value)
    return out


def set_active(live: LivePipeline, active: ActiveSet) -> None:
    pipe = live.pipe
    values = active.weight_values()
    flat = all(
        isinstance(v, (int, float)) or (isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()))
        for v in values
    )
    if active.names and flat:
        # Plain numbers (no block-wise dicts): the per-layer part of diffusers' set_adapters, which
        # hands every component all names and calls peft's set_adapter + set_scale on each tuner
        # layer, without re-walking every module. Components a dict leaves out get 1.0, as in diffusers.
        same_names = live.live_active is not None and live.live_active.names == active.names
        with timed(live, "set_adapters", ("scales " if same_names else "") + ",".join(active.names)):
            for comp in live.components:
                for _, module in layers(live, comp):
                    if not same_names:
                        module.set_adapter(list(active.names))
                    for name, value in zip(active.names, values):
                        module.set_scale(name, value.get(comp, 1.0) if isinstance(value, dict) else value)
    elif active.names:
        weights = _adapter_weights_for_call(live, active)
        with timed(live, "set_adapters", ",".join(active.names)):
            pipe.set_adapters(list(active.names), weights)
    else:
        # No active adapter: peft layers run the base layer only. diffusers' set_adapters refuses an
        # empty list, so each tuner layer is told directly.
        with timed(live, "set_adapters", "(none)"):
            for comp in live.components:
                for _, module in layers(live, comp):
                    module.set_adapter([])
    live.live_active = active
    # set_adapters re-creates nothing, but layers made by a load start enabled: re-assert the switch.
    apply_text_encoder_switch(live, live.state_te_target, force=True)


def apply_text_encoder_switch(live: LivePipeline, disabled: tuple[str, ...], force: bool = False) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder

    for te in live.components:
        if te not in TEXT_ENCODERS:
            continue
        model = getattr(live.pipe, te)
        if not has_lora(model):
            continue
        want_off = te in disabled
        was_off = te in live.live_te_disabled
        if want_off == was_off and not (force and want_off):
            continue
        with timed(live, "disable_lora_for_text_encoder" if want_off else "enable_lora_for_text_encoder", te):
            (disable_lora_for_text_encoder if want_off else enable_lora_for_text_encoder)(model)
    live.live_te_disabled = tuple(sorted(disabled))

