"""The transitions: one pure function per LoRA node, from a handle to the new handle it asks for.

They take typed values (the nodes parse their widget text, nodes/widget_text.py) and check them
against the handle: adapters that are not loaded, counts, ranges, components the pipeline lacks.
Every check raises `NodeInputError` naming the node's input at fault, so the error reaches the user
on the right node before anything touches the pipeline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from ..base.errors import NodeInputError
from ..base.suggest import did_you_mean
from .state import (
    INTERPOLATIONS,
    ActiveSet,
    AdapterSpec,
    AdapterState,
    ComponentWeights,
    FuseOp,
    PipelineHandle,
    PipelineSource,
    Schedule,
    Weight,
)

_NAME_OK = re.compile(r"[^A-Za-z0-9_\-]+")


def derive_adapter_name(lora_name: str, taken: tuple[str, ...]) -> str:
    """From `styles/ink-v2.safetensors` make `ink-v2`, then `ink-v2_2`, ... until unused."""
    stem = lora_name.replace("\\", "/").rsplit("/", 1)[-1]
    stem = stem.rsplit(".", 1)[0] if "." in stem else stem
    # peft stores adapter names as module keys: dots would break nn.ModuleDict, so keep it simple.
    base = _NAME_OK.sub("_", stem).strip("_") or "lora"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def check_known(state: AdapterState, names: Sequence[str], input_name: str) -> None:
    unknown = [n for n in names if state.adapter(n) is None]
    if unknown:
        loaded = ", ".join(state.names) or "none"
        hint = did_you_mean(unknown[0], state.names) if len(unknown) == 1 else ""
        raise NodeInputError(
            input_name, f"no adapter named {', '.join(unknown)} is loaded (loaded: {loaded}){hint}"
        )


def _check_unique(names: Sequence[str], input_name: str) -> None:
    if len(set(names)) != len(names):
        raise NodeInputError(input_name, f"an adapter is named twice in {', '.join(names)!r}")


def _per_adapter(values: Sequence[float], count: int, input_name: str) -> list[float]:
    """One number for all, or exactly one per adapter."""
    values = list(values)
    if any(not math.isfinite(v) for v in values):
        raise NodeInputError(input_name, f"weights must be finite numbers, got {values!r}")
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise NodeInputError(
            input_name, f"give one number for all adapters or one per adapter ({count}), got {len(values)}"
        )
    return values


def add_adapter(handle: PipelineHandle, spec: AdapterSpec) -> PipelineHandle:
    """LoadLoRA: the new adapter joins, and every loaded adapter is active.

    Adapters that were active keep the weight SetAdapterWeights gave them; inactive ones come back
    at their load strength (diffusers itself would leave only the newest active).
    """
    state = handle.state
    if state.adapter(spec.name) is not None:
        raise NodeInputError("adapter_name", f"an adapter named {spec.name!r} is already loaded")
    adapters = (*state.adapters, spec)
    names = tuple(a.name for a in adapters)
    current = state.active
    weights = tuple(
        w if (w := current.weight(a.name)) is not None else a.strength for a in adapters
    )
    return handle.with_state(replace(state, adapters=adapters, active=ActiveSet(names, weights)))


def _normalise_block_dict(value: Any, source: PipelineSource, input_name: str) -> dict[str, Any]:
    """Accept diffusers' per-block form; a bare {"down","mid","up"} dict means the denoiser."""
    if not isinstance(value, dict):
        raise NodeInputError(input_name, f"expected a JSON object per adapter, got {value!r}")
    from . import blocks as transformer_blocks

    if transformer_blocks.is_transformer_blocks(value) and source.denoiser != "transformer":
        raise NodeInputError(
            input_name, "transformer blocks are for transformer pipelines; a UNet takes down/mid/up"
        )
    if (value and set(value) <= {"down", "mid", "up"}) or transformer_blocks.is_transformer_blocks(value):
        value = {source.denoiser: value}  # a bare block dict means the denoiser, UNet or transformer
    if source.denoiser == "transformer" and isinstance(value.get("transformer"), dict):
        try:
            value = {**value, "transformer": transformer_blocks.normalise(value["transformer"])}
        except ValueError as e:
            raise NodeInputError(input_name, f"transformer: {e}") from None
    allowed = set(source.components)
    bad = [k for k in value if k not in allowed]
    if bad:
        raise NodeInputError(
            input_name, f"unknown component(s) {bad}; this pipeline has {sorted(allowed)}"
        )
    return value


def _block_weights_per_adapter(
    block_weights: Mapping[str, Any], state: AdapterState, source: PipelineSource, names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """{adapter: {component: weight}} from `block_weights`: keyed by adapter, or one form for all."""
    if block_weights and set(block_weights) <= set(state.names):
        unknown = [k for k in block_weights if k not in names]
        if unknown:
            raise NodeInputError("block_weights", f"adapter(s) {unknown} are not in adapter_names")
        return {k: _normalise_block_dict(v, source, "block_weights") for k, v in block_weights.items()}
    one = _normalise_block_dict(block_weights, source, "block_weights")
    return {n: one for n in names}


def set_weights(
    handle: PipelineHandle,
    adapter_names: Sequence[str],
    weights: Sequence[float],
    text_encoder_weights: Sequence[float] | None = None,
    block_weights: Mapping[str, Any] | None = None,
) -> PipelineHandle:
    """SetAdapterWeights = `set_adapters(names, weights)`: the named adapters become the active set.

    No names: every loaded adapter. `weights` and `text_encoder_weights` (None: as `weights`) hold
    one number for all or one per adapter; `block_weights` is the parsed JSON object, one per-block
    form for all adapters or {adapter: form}.
    """
    state, source = handle.state, handle.source
    if not state.adapters:
        raise NodeInputError(
            "pipeline", "no LoRA is loaded on this pipeline; add a LoadLoRA before this node"
        )
    names = list(adapter_names) or list(state.names)
    _check_unique(names, "adapter_names")
    check_known(state, names, "adapter_names")
    unet_w = _per_adapter(weights, len(names), "weights")
    te_w: list[float] | None = None
    if text_encoder_weights is not None:
        te_w = _per_adapter(text_encoder_weights, len(names), "text_encoder_weights")
    blocks: dict[str, dict[str, Any]] = {}
    if block_weights is not None:
        if not isinstance(block_weights, Mapping):
            raise NodeInputError("block_weights", "expected a JSON object")
        blocks = _block_weights_per_adapter(block_weights, state, source, names)

    values: list[Weight] = []
    for i, name in enumerate(names):
        if te_w is None and name not in blocks:
            values.append(unet_w[i])
            continue
        per: dict[str, Any] = {d: unet_w[i] for d in source.denoisers}
        for te in source.text_encoders:
            per[te] = te_w[i] if te_w is not None else unet_w[i]
        per.update(blocks.get(name, {}))
        values.append(ComponentWeights.of(per))
    # Naming an adapter sets its weight outright, so its schedule goes. One left out is inactive:
    # its schedule stays but does nothing while it is (the Sampler schedules active ones only).
    state = state.without_schedules(set(names))
    return handle.with_state(replace(state, active=ActiveSet(tuple(names), tuple(values))))


def fuse(
    handle: PipelineHandle,
    fuse_unet: bool,
    fuse_text_encoder: bool,
    lora_scale: float,
    safe_fusing: bool,
    adapter_names: Sequence[str] = (),
    origin: str = "",
) -> PipelineHandle:
    """FuseLoRA = `fuse_lora(components, lora_scale, safe_fusing, adapter_names)`; no names: the
    active adapters.

    A text encoder whose LoRA is switched off is not fused: peft would silently unmerge it (by
    subtraction) on the next forward pass.
    """
    state, source = handle.state, handle.source
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline; nothing to fuse")
    if not math.isfinite(lora_scale):
        raise NodeInputError("lora_scale", "must be a finite number")
    names = list(adapter_names)
    if names:
        _check_unique(names, "adapter_names")
        check_known(state, names, "adapter_names")
    else:
        names = list(state.active.names)
        if not names:
            raise NodeInputError("adapter_names", "no adapter is active; name the adapters to fuse")
    components: list[str] = []
    if fuse_unet:
        components += source.denoisers  # fusion skips the layers that do not hold the adapters
    if fuse_text_encoder:
        components += [te for te in source.text_encoders if te not in state.te_disabled]
    if not components:
        raise NodeInputError("fuse_unet", "nothing to fuse: both fuse_unet and fuse_text_encoder are off")
    op = FuseOp(tuple(components), float(lora_scale), bool(safe_fusing), tuple(names), state.active, origin)
    return handle.with_state(replace(state, fused=(*state.fused, op)))


def _drop_components(fused: tuple[FuseOp, ...], drop: set[str]) -> tuple[FuseOp, ...]:
    out = []
    for op in fused:
        comps = tuple(c for c in op.components if c not in drop)
        if comps:
            out.append(replace(op, components=comps))
    return tuple(out)


def unfuse(handle: PipelineHandle, unfuse_unet: bool, unfuse_text_encoder: bool) -> PipelineHandle:
    """UnfuseLoRA = `unfuse_lora(components)`; the reconciler restores the original bits."""
    source = handle.source
    drop: set[str] = set()
    if unfuse_unet:
        drop.update(source.denoisers)
    if unfuse_text_encoder:
        drop.update(source.text_encoders)
    return handle.with_state(replace(handle.state, fused=_drop_components(handle.state.fused, drop)))


def toggle_text_encoder(handle: PipelineHandle, enabled: bool, text_encoder: str) -> PipelineHandle:
    """TextEncoderLoRAToggle = `enable_lora_for_text_encoder` / `disable_lora_for_text_encoder`."""
    source, state = handle.source, handle.state
    if text_encoder == "all":
        targets = set(source.text_encoders)
    elif text_encoder in source.text_encoders:
        targets = {text_encoder}
    else:
        raise NodeInputError(
            "text_encoder",
            f"this pipeline has no {text_encoder} (it has {', '.join(source.text_encoders) or 'none'})",
        )
    disabled = set(state.te_disabled)
    fused = state.fused
    if enabled:
        disabled -= targets
    else:
        disabled |= targets
        fused = _drop_components(fused, targets)  # a disabled text encoder cannot stay fused (see fuse)
    return handle.with_state(replace(state, te_disabled=tuple(sorted(disabled)), fused=fused))


def delete(handle: PipelineHandle, adapter_names: Sequence[str]) -> PipelineHandle:
    """DeleteAdapters = `delete_adapters`. A deleted adapter also leaves every fusion it was in."""
    state = handle.state
    names = list(adapter_names)
    if not names:
        raise NodeInputError("adapter_names", "name the adapters to delete (UnloadLoRA removes them all)")
    _check_unique(names, "adapter_names")
    check_known(state, names, "adapter_names")
    gone = set(names)
    adapters = tuple(a for a in state.adapters if a.name not in gone)
    fused = []
    for op in state.fused:
        op_names = tuple(n for n in op.adapter_names if n not in gone)
        if op_names:
            fused.append(replace(op, adapter_names=op_names, active=op.active.without(gone)))
    if not adapters:
        return handle.with_state(AdapterState())
    state = state.without_schedules(gone)
    active = state.active.without(gone)
    return handle.with_state(replace(state, adapters=adapters, active=active, fused=tuple(fused)))


def unload(handle: PipelineHandle) -> PipelineHandle:
    """UnloadLoRA = `unload_lora_weights`: back to the base pipeline (fused LoRAs included)."""
    return handle.with_state(AdapterState())


def set_device(handle: PipelineHandle, adapter_names: Sequence[str], device: str) -> PipelineHandle:
    """SetLoRADevice = `set_lora_device`; no names: every adapter; `auto`: the pipeline's own device."""
    state = handle.state
    names = list(adapter_names) or list(state.names)
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline")
    _check_unique(names, "adapter_names")
    check_known(state, names, "adapter_names")
    target = None if device in ("auto", handle.source.device) else device
    adapters = tuple(replace(a, device=target) if a.name in names else a for a in state.adapters)
    return handle.with_state(replace(state, adapters=adapters))


def check_keyframes(keyframes: Sequence[tuple[float, float]], input_name: str = "keyframes") -> None:
    """What a schedule's curve needs: at least one keyframe, progress in [0, 1] and strictly
    increasing, finite strengths (Schedule.strength relies on all three)."""
    if not keyframes:
        raise NodeInputError(input_name, 'give at least one progress:strength pair, e.g. "0:1.0, 0.6:0.0"')
    previous = None
    for i, (progress, strength) in enumerate(keyframes, 1):
        where = f"keyframe {i} ({progress:g}:{strength:g})"
        if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
            raise NodeInputError(
                input_name, f"{where}: progress must be between 0 and 1 (a fraction of the steps)"
            )
        if not math.isfinite(strength):
            raise NodeInputError(input_name, f"{where}: strength must be a finite number")
        if previous is not None and progress <= previous:
            raise NodeInputError(
                input_name, f"{where}: progress must increase strictly, but {progress:g} follows {previous:g}"
            )
        previous = progress


def schedule_weights(
    handle: PipelineHandle,
    adapter_name: str,
    keyframes: Sequence[tuple[float, float]],
    interpolation: str = "linear",
    origin: str = "",
) -> PipelineHandle:
    """ScheduleAdapterWeights: the adapter's denoiser strength follows a curve over the steps.

    Replaces any earlier schedule of the adapter. The text-encoder weight stays: text encoders run
    once per prompt, before the first step.
    """
    state = handle.state
    if not state.adapters:
        raise NodeInputError(
            "pipeline", "no LoRA is loaded on this pipeline; add a LoadLoRA before this node"
        )
    name = adapter_name
    if not name:
        raise NodeInputError(
            "adapter_name", f"name the adapter to schedule (loaded: {', '.join(state.names)})"
        )
    check_known(state, [name], "adapter_name")
    if name not in state.active.names:
        raise NodeInputError(
            "adapter_name",
            f"adapter {name!r} is not active (a SetAdapterWeights left it out); only an active adapter can "
            "be scheduled",
        )
    if interpolation not in INTERPOLATIONS:
        raise NodeInputError(
            "interpolation", f"expected one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}"
        )
    check_keyframes(keyframes)
    points = tuple((float(p), float(s)) for p, s in keyframes)
    schedule = Schedule(name, points, interpolation, origin)
    rest = state.without_schedules({name}).schedules
    schedules = tuple(sorted((*rest, schedule), key=lambda s: s.adapter))
    return handle.with_state(replace(state, schedules=schedules))
