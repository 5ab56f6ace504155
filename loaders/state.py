"""The PIPELINE handle: an immutable description of a pipeline and the LoRA state it should be in.

Nodes never hand each other a mutated diffusers object. Each LoRA node returns a new handle made by
one of the pure transition functions below; the reconciler (reconcile.py) later brings the live
pipeline to a handle's state. Because handles are values, ComfyUI-style caching is safe: two
branches off one handle cannot see each other's adapters and re-running a graph cannot apply a
LoRA twice.

Every transition validates its inputs and raises `NodeInputError` naming the input at fault, so
the error reaches the user on the right node before anything touches the pipeline.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from .. import limits
from ..errors import NodeInputError
from .components import DENOISERS, TEXT_ENCODERS  # noqa: F401 - st.DENOISERS, as before


@dataclass(frozen=True)
class PipelineSource:
    """Which base pipeline: enough to (re)build it, and the key of the live-pipeline cache."""

    model: str  # as the user chose it: "builtin:tiny-sd", "tiny-sd", "sd15/x.safetensors"
    kind: str  # "builtin" | "diffusers" | "single_file"
    path: str  # builtin name or absolute path
    dtype: str  # resolved: float32 | float16 | bfloat16
    device: str  # resolved: cpu | cuda | mps
    fingerprint: str  # content identity of the weights (builtin version, or file hashes / mtimes)
    components: tuple[str, ...] = ()  # LoRA-loadable components the pipeline has, in diffusers' order

    @property
    def denoiser(self) -> str:
        return "transformer" if "transformer" in self.components else "unet"

    @property
    def text_encoders(self) -> tuple[str, ...]:
        return tuple(c for c in self.components if c in TEXT_ENCODERS)


@dataclass(frozen=True)
class AdapterSpec:
    """One loaded LoRA file under an adapter name."""

    name: str
    path: str
    sha256: str
    strength: float
    device: str | None = None  # None: the pipeline's own device
    origin: str = field(default="", compare=False)  # "LoadLoRA #5", for error messages only


@dataclass(frozen=True)
class ActiveSet:
    """What one `set_adapters` call sets: the active adapters and their weights.

    A weight is stored as canonical JSON text (a number, or a {component: number | per-block dict}
    object) so that the whole state stays hashable and comparable.
    """

    names: tuple[str, ...] = ()
    weights: tuple[str, ...] = ()

    def weight_values(self) -> list[Any]:
        return [json.loads(w) for w in self.weights]

    def as_dict(self) -> dict[str, Any]:
        return dict(zip(self.names, self.weight_values()))


@dataclass(frozen=True)
class FuseOp:
    """One `fuse_lora` call, with the active weights at the time it was made."""

    components: tuple[str, ...]
    lora_scale: float
    safe_fusing: bool
    adapter_names: tuple[str, ...]
    active: ActiveSet
    origin: str = field(default="", compare=False)

    def restricted(self, component: str) -> FuseOp | None:
        return replace(self, components=(component,)) if component in self.components else None


@dataclass(frozen=True)
class AdapterState:
    adapters: tuple[AdapterSpec, ...] = ()
    active: ActiveSet = ActiveSet()
    te_disabled: tuple[str, ...] = ()  # text encoders whose LoRA layers are switched off, sorted
    fused: tuple[FuseOp, ...] = ()

    def adapter(self, name: str) -> AdapterSpec | None:
        for spec in self.adapters:
            if spec.name == name:
                return spec
        return None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.adapters)

    def fuse_ops_for(self, component: str) -> tuple[FuseOp, ...]:
        return tuple(op.restricted(component) for op in self.fused if component in op.components)

    @property
    def fused_components(self) -> tuple[str, ...]:
        seen: list[str] = []
        for op in self.fused:
            for c in op.components:
                if c not in seen:
                    seen.append(c)
        return tuple(seen)

    def unfused(self) -> AdapterState:
        return replace(self, fused=())


@dataclass(frozen=True)
class PipelineHandle:
    """The value that travels on PIPELINE edges."""

    source: PipelineSource
    state: AdapterState = AdapterState()

    def with_state(self, state: AdapterState) -> PipelineHandle:
        return replace(self, state=state)


# ----------------------------------------------------------------------------------------------
# Parsing helpers shared by the nodes


def canonical_weight(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def parse_names(text: str, input_name: str) -> list[str]:
    names = [n.strip() for n in (text or "").split(",")]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise NodeInputError(input_name, f"an adapter is named twice in {text!r}")
    return names


def parse_numbers(text: str, count: int, input_name: str) -> list[float]:
    """One number for all, or exactly one per adapter."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise NodeInputError(input_name, f"expected numbers separated by commas, got {text!r}") from None
    if any(not math.isfinite(v) for v in values):
        raise NodeInputError(input_name, f"weights must be finite numbers, got {text!r}")
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise NodeInputError(
            input_name, f"give one number for all adapters or one per adapter ({count}), got {len(values)}"
        )
    return values


def check_known(state: AdapterState, names: list[str], input_name: str) -> None:
    unknown = [n for n in names if state.adapter(n) is None]
    if unknown:
        loaded = ", ".join(state.names) or "none"
        raise NodeInputError(input_name, f"no adapter named {', '.join(unknown)} is loaded (loaded: {loaded})")


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


# ----------------------------------------------------------------------------------------------
# Transitions: one per node. Pure: they return a new handle or raise NodeInputError.


def add_adapter(handle: PipelineHandle, spec: AdapterSpec) -> PipelineHandle:
    """LoadLoRA: the new adapter joins, and every loaded adapter is active.

    Adapters that were active keep the weight SetAdapterWeights gave them; inactive ones come back
    at their load strength (diffusers itself would leave only the newest active).
    """
    state = handle.state
    if state.adapter(spec.name) is not None:
        raise NodeInputError("adapter_name", f"an adapter named {spec.name!r} is already loaded")
    adapters = state.adapters + (spec,)
    current = state.active.as_dict()
    names = tuple(a.name for a in adapters)
    weights = tuple(
        canonical_weight(current[a.name]) if a.name in current else canonical_weight(a.strength)
        for a in adapters
    )
    return handle.with_state(replace(state, adapters=adapters, active=ActiveSet(names, weights)))


def _normalise_block_dict(value: Any, source: PipelineSource, input_name: str) -> dict[str, Any]:
    """Accept diffusers' per-block form; a bare {"down","mid","up"} dict means the denoiser."""
    if not isinstance(value, dict):
        raise NodeInputError(input_name, f"expected a JSON object per adapter, got {value!r}")
    if value and set(value) <= {"down", "mid", "up"}:
        value = {source.denoiser: value}
    allowed = set(source.components)
    bad = [k for k in value if k not in allowed]
    if bad:
        raise NodeInputError(
            input_name, f"unknown component(s) {bad}; this pipeline has {sorted(allowed)}"
        )
    return value


def set_weights(
    handle: PipelineHandle,
    adapter_names: str,
    weights: str,
    text_encoder_weights: str = "",
    block_weights: str = "",
) -> PipelineHandle:
    """SetAdapterWeights = `set_adapters(names, weights)`: the named adapters become the active set."""
    state, source = handle.state, handle.source
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline; add a LoadLoRA before this node")
    names = parse_names(adapter_names, "adapter_names") or list(state.names)
    check_known(state, names, "adapter_names")
    unet_w = parse_numbers(weights or "1.0", len(names), "weights")
    te_w = parse_numbers(text_encoder_weights, len(names), "text_encoder_weights") if text_encoder_weights.strip() else None

    blocks: dict[str, dict] = {}
    if block_weights.strip():
        try:
            parsed = limits.loads(block_weights)  # finite numbers only
        except json.JSONDecodeError as e:
            raise NodeInputError("block_weights", f"not valid JSON ({e.msg} at char {e.pos})") from None
        except limits.JSONLimitError as e:
            raise NodeInputError("block_weights", f"not valid: {e}") from None
        if not isinstance(parsed, dict):
            raise NodeInputError("block_weights", "expected a JSON object")
        if parsed and set(parsed) <= set(state.names):
            unknown = [k for k in parsed if k not in names]
            if unknown:
                raise NodeInputError("block_weights", f"adapter(s) {unknown} are not in adapter_names")
            blocks = {k: _normalise_block_dict(v, source, "block_weights") for k, v in parsed.items()}
        else:
            one = _normalise_block_dict(parsed, source, "block_weights")
            blocks = {n: one for n in names}

    values = []
    for i, name in enumerate(names):
        if te_w is None and name not in blocks:
            values.append(canonical_weight(unet_w[i]))
            continue
        per: dict[str, Any] = {source.denoiser: unet_w[i]}
        for te in source.text_encoders:
            per[te] = te_w[i] if te_w is not None else unet_w[i]
        per.update(blocks.get(name, {}))
        values.append(canonical_weight(per))
    return handle.with_state(replace(state, active=ActiveSet(tuple(names), tuple(values))))


def fuse(
    handle: PipelineHandle,
    fuse_unet: bool,
    fuse_text_encoder: bool,
    lora_scale: float,
    safe_fusing: bool,
    adapter_names: str,
    origin: str = "",
) -> PipelineHandle:
    """FuseLoRA = `fuse_lora(components, lora_scale, safe_fusing, adapter_names)`.

    A text encoder whose LoRA is switched off is not fused: peft would silently unmerge it (by
    subtraction) on the next forward pass.
    """
    state, source = handle.state, handle.source
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline; nothing to fuse")
    if not math.isfinite(lora_scale):
        raise NodeInputError("lora_scale", "must be a finite number")
    names = parse_names(adapter_names, "adapter_names")
    if names:
        check_known(state, names, "adapter_names")
    else:
        names = list(state.active.names)
        if not names:
            raise NodeInputError("adapter_names", "no adapter is active; name the adapters to fuse")
    components: list[str] = []
    if fuse_unet:
        components.append(source.denoiser)
    if fuse_text_encoder:
        components += [te for te in source.text_encoders if te not in state.te_disabled]
    if not components:
        raise NodeInputError("fuse_unet", "nothing to fuse: both fuse_unet and fuse_text_encoder are off")
    op = FuseOp(tuple(components), float(lora_scale), bool(safe_fusing), tuple(names), state.active, origin)
    return handle.with_state(replace(state, fused=state.fused + (op,)))


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
        drop.add(source.denoiser)
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
            "text_encoder", f"this pipeline has no {text_encoder} (it has {', '.join(source.text_encoders) or 'none'})"
        )
    disabled = set(state.te_disabled)
    fused = state.fused
    if enabled:
        disabled -= targets
    else:
        disabled |= targets
        fused = _drop_components(fused, targets)  # a disabled text encoder cannot stay fused (see fuse)
    return handle.with_state(replace(state, te_disabled=tuple(sorted(disabled)), fused=fused))


def delete(handle: PipelineHandle, adapter_names: str) -> PipelineHandle:
    """DeleteAdapters = `delete_adapters`. A deleted adapter also leaves every fusion it was in."""
    state = handle.state
    names = parse_names(adapter_names, "adapter_names")
    if not names:
        raise NodeInputError("adapter_names", "name the adapters to delete (UnloadLoRA removes them all)")
    check_known(state, names, "adapter_names")
    gone = set(names)
    adapters = tuple(a for a in state.adapters if a.name not in gone)
    keep = [i for i, n in enumerate(state.active.names) if n not in gone]
    active = ActiveSet(tuple(state.active.names[i] for i in keep), tuple(state.active.weights[i] for i in keep))
    fused = []
    for op in state.fused:
        op_names = tuple(n for n in op.adapter_names if n not in gone)
        if op_names:
            keep_op = [i for i, n in enumerate(op.active.names) if n not in gone]
            op_active = ActiveSet(
                tuple(op.active.names[i] for i in keep_op), tuple(op.active.weights[i] for i in keep_op)
            )
            fused.append(replace(op, adapter_names=op_names, active=op_active))
    if not adapters:
        return handle.with_state(AdapterState())
    return handle.with_state(replace(state, adapters=adapters, active=active, fused=tuple(fused)))


def unload(handle: PipelineHandle) -> PipelineHandle:
    """UnloadLoRA = `unload_lora_weights`: back to the base pipeline (fused LoRAs included)."""
    return handle.with_state(AdapterState())


def set_device(handle: PipelineHandle, adapter_names: str, device: str) -> PipelineHandle:
    """SetLoRADevice = `set_lora_device`; `auto` means the pipeline's own device."""
    state = handle.state
    names = parse_names(adapter_names, "adapter_names") or list(state.names)
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline")
    check_known(state, names, "adapter_names")
    target = None if device in ("auto", handle.source.device) else device
    adapters = tuple(replace(a, device=target) if a.name in names else a for a in state.adapters)
    return handle.with_state(replace(state, adapters=adapters))
