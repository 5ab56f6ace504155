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
from itertools import pairwise
from typing import Any

from ..base import limits
from ..base.errors import NodeInputError
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


INTERPOLATIONS = ("linear", "hold", "ease")


@dataclass(frozen=True)
class Schedule:
    """ScheduleAdapterWeights: one adapter's denoiser strength over the sampling progress (SPEC).

    `keyframes` are (progress, strength) pairs, progress in [0, 1] and strictly increasing. The
    Sampler runs step i of N at `strength(i / N)` (loaders/weight_schedule.py applies it).
    """

    adapter: str
    keyframes: tuple[tuple[float, float], ...]
    interpolation: str = "linear"
    origin: str = field(default="", compare=False)

    def strength(self, progress: float) -> float:
        """Before the first keyframe the first strength holds, after the last the last; at a
        keyframe's own progress that keyframe's strength holds (so `hold` starts there)."""
        ks = self.keyframes
        if progress <= ks[0][0]:
            return ks[0][1]
        if progress >= ks[-1][0]:
            return ks[-1][1]
        for (p0, s0), (p1, s1) in pairwise(ks):
            if p0 <= progress < p1:
                if self.interpolation == "hold":
                    return s0
                t = (progress - p0) / (p1 - p0)
                if self.interpolation == "ease":
                    t = t * t * (3.0 - 2.0 * t)  # smoothstep: flat at both keyframes
                return s0 + (s1 - s0) * t
        return ks[-1][1]  # unreachable: the keyframes cover [first, last)

    def text(self) -> str:
        return ", ".join(f"{p:g}:{s:g}" for p, s in self.keyframes)


@dataclass(frozen=True)
class AdapterState:
    adapters: tuple[AdapterSpec, ...] = ()
    active: ActiveSet = ActiveSet()
    te_disabled: tuple[str, ...] = ()  # text encoders whose LoRA layers are switched off, sorted
    fused: tuple[FuseOp, ...] = ()
    # denoiser strength curves, sorted by adapter; the reconciler never sees them (the engine strips
    # them before realize) and the Sampler applies those of active adapters step by step
    schedules: tuple[Schedule, ...] = ()

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

    def schedule(self, name: str) -> Schedule | None:
        for sch in self.schedules:
            if sch.adapter == name:
                return sch
        return None

    def without_schedules(self, names: set[str] | None = None) -> AdapterState:
        """Drop the schedules of `names` (None: all)."""
        if not self.schedules:
            return self
        keep = () if names is None else tuple(s for s in self.schedules if s.adapter not in names)
        return replace(self, schedules=keep)


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
    from . import blocks as transformer_blocks

    if transformer_blocks.is_transformer_blocks(value) and source.denoiser != "transformer":
        raise NodeInputError(input_name, "transformer blocks are for transformer pipelines; a UNet takes down/mid/up")
    if value and set(value) <= {"down", "mid", "up"} or transformer_blocks.is_transformer_blocks(value):
        value = {source.denoiser: value}  # a bare block dict means the denoiser (#15: SD3/Flux blocks too)
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
    # Naming an adapter sets its weight outright, so its schedule goes (SPEC). One left out is
    # inactive: its schedule stays but does nothing while it is (the Sampler schedules active ones).
    state = state.without_schedules(set(names))
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
    state = state.without_schedules(gone)
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


def parse_keyframes(text: str, input_name: str = "keyframes") -> tuple[tuple[float, float], ...]:
    """`"0:1.0, 0.4:1.0, 0.6:0.0"` -> ((0.0, 1.0), (0.4, 1.0), (0.6, 0.0)); errors name the keyframe."""
    parts = [p.strip() for p in (text or "").split(",")]
    if not any(parts):
        raise NodeInputError(input_name, 'give at least one progress:strength pair, e.g. "0:1.0, 0.6:0.0"')
    out: list[tuple[float, float]] = []
    for i, part in enumerate(parts, 1):
        where = f"keyframe {i} ({part!r})"
        if not part:
            raise NodeInputError(input_name, f"keyframe {i} is empty (two commas in a row, or a trailing comma)")
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
            raise NodeInputError(input_name, f"{where}: progress must be between 0 and 1 (a fraction of the steps)")
        if not math.isfinite(strength):
            raise NodeInputError(input_name, f"{where}: strength must be a finite number")
        if out and progress <= out[-1][0]:
            raise NodeInputError(
                input_name, f"{where}: progress must increase strictly, but {progress:g} follows {out[-1][0]:g}"
            )
        out.append((progress, strength))
    return tuple(out)


def schedule_weights(
    handle: PipelineHandle, adapter_name: str, keyframes: str, interpolation: str = "linear", origin: str = ""
) -> PipelineHandle:
    """ScheduleAdapterWeights: the adapter's denoiser strength follows a curve over the steps.

    Replaces any earlier schedule of the adapter. The text-encoder weight stays: text encoders run
    once per prompt, before the first step.
    """
    state = handle.state
    if not state.adapters:
        raise NodeInputError("pipeline", "no LoRA is loaded on this pipeline; add a LoadLoRA before this node")
    name = (adapter_name or "").strip()
    if not name:
        raise NodeInputError("adapter_name", f"name the adapter to schedule (loaded: {', '.join(state.names)})")
    check_known(state, [name], "adapter_name")
    if name not in state.active.names:
        raise NodeInputError(
            "adapter_name",
            f"adapter {name!r} is not active (a SetAdapterWeights left it out); only an active adapter can "
            "be scheduled",
        )
    if interpolation not in INTERPOLATIONS:
        raise NodeInputError("interpolation", f"expected one of {', '.join(INTERPOLATIONS)}, got {interpolation!r}")
    schedule = Schedule(name, parse_keyframes(keyframes), interpolation, origin)
    rest = state.without_schedules({name}).schedules
    schedules = tuple(sorted(rest + (schedule,), key=lambda s: s.adapter))
    return handle.with_state(replace(state, schedules=schedules))
