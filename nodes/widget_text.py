"""The text of the LoRA nodes' STRING widgets, parsed into the typed values the transitions take.

The widget names are the nodes' own, so the parsing lives here, next to them: each parser raises
`NodeInputError` naming the widget and quoting the text the user typed. The transitions
(loaders/transitions.py) then check the values against the handle (which adapters are loaded, how
many weights they need). The functions at the end are the nodes' whole step from widget text to new
handle, the same for a node run, a script or a test.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ..base import limits
from ..base.errors import NodeInputError
from ..loaders import block_vectors, transitions
from ..loaders.state import PipelineHandle


def parse_names(text: str, input_name: str) -> list[str]:
    """`"a, b"` -> ["a", "b"]; empty text gives no names (the node's default applies)."""
    names = [n.strip() for n in (text or "").split(",")]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise NodeInputError(input_name, f"an adapter is named twice in {text!r}")
    return names


# The largest adapter weight accepted, as LoadLoRA's strength widget: a trained LoRA is made for about
# 1, and 1e30 passed every finiteness check yet overflowed the pipeline into an all-black image.
MAX_ADAPTER_WEIGHT = 100.0


def weight_refusal(values: list[float], text: Any) -> str | None:
    """Why adapter weights are refused (not finite, or beyond ±MAX_ADAPTER_WEIGHT), or None."""
    if any(not math.isfinite(v) for v in values):
        return f"weights must be finite numbers, got {str(text)[:80]!r}"
    if any(abs(v) > MAX_ADAPTER_WEIGHT for v in values):
        return (f"weights must lie between -{MAX_ADAPTER_WEIGHT:g} and {MAX_ADAPTER_WEIGHT:g} (a trained "
                f"LoRA is made for about 1; larger ones overflow the pipeline), got {str(text)[:80]!r}")
    return None


def parse_numbers(text: str, input_name: str) -> list[float]:
    """`"0.8, 0.5"` -> [0.8, 0.5]: finite numbers; how many the node needs is the transition's check."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise NodeInputError(input_name, f"expected numbers separated by commas, got {text!r}") from None
    refusal = weight_refusal(values, text)
    if refusal is not None:
        raise NodeInputError(input_name, refusal)
    return values


def parse_block_weights(text: str, input_name: str = "block_weights") -> dict[str, Any] | str | None:
    """The JSON object of SetAdapterWeights' `block_weights` (finite numbers only); None when empty. A
    LoRA Block Weight vector or preset name for every adapter comes back as its text (block_vectors.py)."""
    if not text.strip():
        return None
    if block_vectors.looks_like_vector(text):
        return text.strip()
    try:
        parsed = limits.loads(text)
    except json.JSONDecodeError as e:
        raise NodeInputError(input_name, f"not valid JSON ({e.msg} at char {e.pos})") from None
    except limits.JSONLimitError as e:
        raise NodeInputError(input_name, f"not valid: {e}") from None
    if not isinstance(parsed, dict):
        raise NodeInputError(input_name, "expected a JSON object")
    return parsed


def expand_block_vectors(
    handle: PipelineHandle,
    names: list[str],
    weights: list[float],
    te_weights: list[float] | None,
    blocks: dict[str, Any] | str,
    input_name: str = "block_weights",
) -> dict[str, Any]:
    """Vectors (one for all adapters, or {adapter: vector}) as diffusers' per-block dicts, each block
    at the adapter's weight x its value and the text encoders at their weight x BASE."""
    from ..loaders import store
    from .common import engine

    names = names or list(handle.state.names)
    per = {n: blocks for n in names} if isinstance(blocks, str) else blocks
    if not any(isinstance(v, str) for v in per.values()):
        return per
    source = handle.source
    unet = getattr(engine().live(source).pipe, "unet", None)
    if unet is None:
        raise NodeInputError(input_name, "block vectors are for UNet pipelines (SD 1.x, SDXL); "
                             "use the transformer block JSON here")
    family = "SDXL" if "text_encoder_2" in source.components else "SD"
    try:
        slots = block_vectors.layout(unet.config)
    except block_vectors.VectorError as e:
        raise NodeInputError(input_name, str(e)) from None
    out: dict[str, Any] = {}
    for name, value in per.items():
        if not isinstance(value, str):
            out[name] = value
            continue
        if name not in names:
            raise NodeInputError(input_name, f"adapter {name!r} is not in adapter_names")
        i = names.index(name)
        w = weights[0] if len(weights) == 1 else weights[i] if i < len(weights) else weights[0]
        te = w if te_weights is None else te_weights[0] if len(te_weights) == 1 else te_weights[i]
        spec = handle.state.adapter(name)
        try:
            if spec is not None:
                lora = store.read_lora(spec.path)
                block_vectors.check_attention_only([m.name for m in lora.modules if m.component == "unet"])
            out[name] = block_vectors.to_block_dicts(value, slots, family, w, te, source.text_encoders,
                                                     source.denoiser)
        except block_vectors.VectorError as e:
            raise NodeInputError(input_name, f"{name}: {e}") from None
    return out


def parse_keyframes(text: str, input_name: str = "keyframes") -> tuple[tuple[float, float], ...]:
    """`"0:1.0, 0.4:1.0, 0.6:0.0"` -> ((0.0, 1.0), (0.4, 1.0), (0.6, 0.0)); errors name the keyframe."""
    parts = [p.strip() for p in (text or "").split(",")]
    if not any(parts):
        raise NodeInputError(input_name, 'give at least one progress:strength pair, e.g. "0:1.0, 0.6:0.0"')
    out: list[tuple[float, float]] = []
    for i, part in enumerate(parts, 1):
        where = f"keyframe {i} ({part!r})"
        if not part:
            raise NodeInputError(input_name,
                                 f"keyframe {i} is empty (two commas in a row, or a trailing comma)")
        if part.count(":") != 1:
            raise NodeInputError(input_name, f"{where}: expected progress:strength, e.g. 0.4:1.0")
        p_text, s_text = (x.strip() for x in part.split(":"))
        try:
            progress = float(p_text)
        except ValueError:
            raise NodeInputError(input_name, f"{where}: progress {p_text!r} is not a number") from None
        try:
            strength = float(s_text)
        except ValueError:
            raise NodeInputError(input_name, f"{where}: strength {s_text!r} is not a number") from None
        if not math.isfinite(progress) or not 0.0 <= progress <= 1.0:
            raise NodeInputError(input_name,
                                 f"{where}: progress must be between 0 and 1 (a fraction of the steps)")
        if not math.isfinite(strength):
            raise NodeInputError(input_name, f"{where}: strength must be a finite number")
        if abs(strength) > MAX_ADAPTER_WEIGHT:
            raise NodeInputError(input_name, f"{where}: strength must lie between -{MAX_ADAPTER_WEIGHT:g} "
                                             f"and {MAX_ADAPTER_WEIGHT:g}")
        if out and progress <= out[-1][0]:
            raise NodeInputError(
                input_name,
                f"{where}: progress must increase strictly, but {progress:g} follows {out[-1][0]:g}",
            )
        out.append((progress, strength))
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Widget text -> transition, one per node with STRING widgets


def set_weights(
    handle: PipelineHandle,
    adapter_names: str,
    weights: str,
    text_encoder_weights: str = "",
    block_weights: str = "",
) -> PipelineHandle:
    """SetAdapterWeights: empty `weights` is 1.0; empty `text_encoder_weights` follows `weights`."""
    names = parse_names(adapter_names, "adapter_names")
    numbers = parse_numbers(weights or "1.0", "weights")
    te_numbers = (parse_numbers(text_encoder_weights, "text_encoder_weights")
                  if text_encoder_weights.strip() else None)
    parsed = parse_block_weights(block_weights)
    blocks: dict[str, Any] | None = None
    if parsed is not None and handle.state.adapters:  # no adapter loaded: the transition says so
        blocks = expand_block_vectors(handle, names, numbers, te_numbers, parsed)
    elif parsed is not None:
        blocks = {}
    return transitions.set_weights(handle, names, numbers, te_numbers, blocks)


def fuse(
    handle: PipelineHandle,
    fuse_unet: bool,
    fuse_text_encoder: bool,
    lora_scale: float,
    safe_fusing: bool,
    adapter_names: str,
    origin: str = "",
) -> PipelineHandle:
    """FuseLoRA: empty `adapter_names` fuses the active adapters."""
    names = parse_names(adapter_names, "adapter_names")
    return transitions.fuse(handle, fuse_unet, fuse_text_encoder, lora_scale, safe_fusing, names, origin)


def delete(handle: PipelineHandle, adapter_names: str) -> PipelineHandle:
    """DeleteAdapters."""
    return transitions.delete(handle, parse_names(adapter_names, "adapter_names"))


def set_device(handle: PipelineHandle, adapter_names: str, device: str) -> PipelineHandle:
    """SetLoRADevice: empty `adapter_names` moves every adapter."""
    return transitions.set_device(handle, parse_names(adapter_names, "adapter_names"), device)


def schedule_weights(
    handle: PipelineHandle, adapter_name: str, keyframes: str, interpolation: str = "linear", origin: str = ""
) -> PipelineHandle:
    """ScheduleAdapterWeights."""
    return transitions.schedule_weights(
        handle, (adapter_name or "").strip(), parse_keyframes(keyframes), interpolation, origin
    )
