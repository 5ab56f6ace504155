"""Activation: which adapters are active with which weights (`set_adapters`), and the
text-encoder LoRA switch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import fence
from .components import is_denoiser
from .live import LivePipeline, LoraOperationError, adapter_in_layer, has_lora, is_lora_layer, layers, timed
from .state import ActiveSet, ComponentWeights, plain_weight


def _adapter_weights_for_call(live: LivePipeline, active: ActiveSet) -> list[Any]:
    """Per-adapter weights in set_adapters' form, with components the adapter lacks left out."""
    present = live.pipe.get_list_adapters()
    out = []
    for name, weight in zip(active.names, active.weights, strict=True):
        value = plain_weight(weight)
        if isinstance(value, dict):
            value = {c: v for c, v in value.items() if name in present.get(c, ())}
        out.append(value)
    return out


def _has_blocks(active: ActiveSet) -> bool:
    """Whether some weight is more than a number per component: per-block (BlockWeights), or
    something diffusers is left to refuse."""
    return any(
        isinstance(w, ComponentWeights) and not all(isinstance(v, (int, float)) for _, v in w.entries)
        for w in active.weights
    )


def set_active(live: LivePipeline, active: ActiveSet) -> None:
    pipe = live.pipe
    if active.names and not _has_blocks(active):
        # Plain numbers (no block-wise dicts): set_adapters per cached tuner layer (the fence's
        # entry 7), setting only the scales when the names are those of the last call.
        same_names = live.live_active is not None and live.live_active.names == active.names
        with timed(live, "set_adapters", ("scales " if same_names else "") + ",".join(active.names)):
            fence.set_adapters(
                pipe,
                lambda comp: layers(live, comp),
                live.components,
                active.names,
                [plain_weight(w) for w in active.weights],
                same_names,
            )
    elif active.names:
        weights = _adapter_weights_for_call(live, active)
        _check_block_layers(live, active.names, weights)
        # transformer block weights (SD3/Flux), which diffusers refuses: 1.0 to diffusers, then each
        # transformer layer's scale set from its block (loaders/blocks.py)
        per_block = {
            n: w["transformer"] for n, w in zip(active.names, weights, strict=True)
            if isinstance(w, dict) and isinstance(w.get("transformer"), dict)
        }
        weights = [
            {**w, "transformer": 1.0} if n in per_block else w
            for n, w in zip(active.names, weights, strict=True)
        ]
        with timed(live, "set_adapters", ",".join(active.names)):
            pipe.set_adapters(list(active.names), weights)
            if per_block:
                from .blocks import weight_for

                for layer_name, module in layers(live, "transformer"):
                    for n, block_dict in per_block.items():
                        module.set_scale(n, weight_for(block_dict, layer_name))
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


# --- LyCORIS layers (devices, block weights) ---------------------------------------------------------


def set_lora_device(live: LivePipeline, name: str, device: str) -> None:
    """`set_lora_device` that also moves LoHa/LoKr layers, whose missing `lora_A` diffusers' own trips on."""
    if any(not is_lora_layer(m) for c in live.components for _, m in layers(live, c)):
        for comp in live.components:
            for _, module in layers(live, comp):
                fence.move_adapter(module, name, device)
    else:
        live.pipe.set_lora_device([name], device)


def _check_block_layers(live: LivePipeline, names: Sequence[str], weights: Sequence[Any]) -> None:
    """diffusers' per-block UNet weights index every adapter layer as `<blocks>.<i>.<kind>.<j>` and
    fail (IndexError) on layers outside the down/mid/up blocks (conv_in, time_embedding, conv_out),
    which LoCon/LyCORIS files adapt: say so, naming the input, instead of a bare IndexError."""
    for name, value in zip(names, weights, strict=True):
        blocks = value.get("unet") if isinstance(value, dict) else None
        if not isinstance(blocks, dict) or getattr(live.pipe, "unet", None) is None:
            continue
        outside = [n for n, m in layers(live, "unet") if len(n.split(".")) < 4 and adapter_in_layer(m, name)]
        if outside:
            raise LoraOperationError(
                f"adapter {name!r} adapts UNet layers outside the down/mid/up blocks "
                f"({', '.join(outside[:3])}), which diffusers' per-block weights cannot scale; give it a "
                "plain weight instead",
                "block_weights",
            )


def apply_text_encoder_switch(live: LivePipeline, disabled: tuple[str, ...], force: bool = False) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder

    for te in live.components:
        if is_denoiser(te):
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

