"""The PIPELINE handle: an immutable description of a pipeline and the LoRA state it should be in.

Nodes never hand each other a mutated diffusers object. Each LoRA node returns a new handle made by
one of the pure transitions (transitions.py); the reconciler (reconcile.py) later brings the live
pipeline to a handle's state. Because handles are values, ComfyUI-style caching is safe: two
branches off one handle cannot see each other's adapters and re-running a graph cannot apply a
LoRA twice. Every record here is frozen and hashable, weights included, so two handles that want
the same state compare equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any, TypeAlias

from .components import denoisers, non_denoisers


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
    # LoadPipeline's `denoiser` file (absolute path; "" = the model's own) and `weight_dtype`
    denoiser_file: str = ""
    weight_dtype: str = "default"  # default | fp8_e4m3fn | fp8_e5m2

    @property
    def denoisers(self) -> tuple[str, ...]:
        """Every denoising component (components.is_denoiser), in diffusers' order: the ones
        `fuse_unet`, hotswaps and weight schedules act on (Wan 2.2: both experts)."""
        return denoisers(self.components) or ("unet",)

    @property
    def denoiser(self) -> str:
        """The first denoiser: the one a bare per-block weight dict means."""
        return self.denoisers[0]

    @property
    def text_encoders(self) -> tuple[str, ...]:
        """Every non-denoising component: what `fuse_text_encoder`, `text_encoder_weights` and
        TextEncoderLoRAToggle act on (text encoders, and e.g. LTX-2's connectors)."""
        return non_denoisers(self.components)


@dataclass(frozen=True)
class AdapterSpec:
    """One loaded LoRA file under an adapter name."""

    name: str
    path: str
    sha256: str
    strength: float
    device: str | None = None  # None: the pipeline's own device
    origin: str = field(default="", compare=False)  # "LoadLoRA #5", for error messages only
    # LoadLoRA's `target`: "auto" (where the keys say) or the denoising component a single-expert
    # file goes on (Wan 2.2's low-noise LoRA on transformer_2); the same file elsewhere is another adapter
    target: str = "auto"


def _freeze(value: Any) -> Any:
    """A JSON value as a hashable one: objects become BlockWeights, arrays tuples."""
    if isinstance(value, Mapping):
        return BlockWeights.of(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _thaw(value: Any) -> Any:
    """The inverse of `_freeze`: the plain JSON value diffusers and the reports take."""
    if isinstance(value, (BlockWeights, ComponentWeights)):
        return value.plain()
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _sorted_entries(value: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    # sorted by key: two mappings with the same entries are one value, whatever order they were given in
    return tuple(sorted(((str(k), _freeze(v)) for k, v in value.items()), key=lambda kv: kv[0]))


@dataclass(frozen=True)
class BlockWeights:
    """One component's per-block weights, frozen: diffusers' UNet form (`{"down": .., "mid": ..,
    "up": ..}`, nested as diffusers allows) or the transformer form of loaders/blocks.py.

    Held as given, numbers and nesting alike (diffusers checks the UNet form when it is set), with
    keys sorted, objects as BlockWeights and arrays as tuples, so the state stays hashable.
    """

    entries: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> BlockWeights:
        return cls(_sorted_entries(value))

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.entries:
            if k == key:
                return v
        return default

    def plain(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.entries}


@dataclass(frozen=True)
class ComponentWeights:
    """One adapter's weights per component (`{"unet": 0.8, "text_encoder": 0.5}`): a number each, or
    BlockWeights. A component left out runs at 1.0, as in diffusers' `set_adapters`."""

    entries: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def of(cls, value: Mapping[str, Any]) -> ComponentWeights:
        return cls(_sorted_entries(value))

    def get(self, component: str, default: Any = None) -> Any:
        for k, v in self.entries:
            if k == component:
                return v
        return default

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.entries)

    def plain(self) -> dict[str, Any]:
        return {k: _thaw(v) for k, v in self.entries}


# One adapter's weight: a number for every component, or per component.
Weight: TypeAlias = float | ComponentWeights


def plain_weight(weight: Weight) -> Any:
    """A weight as diffusers' `set_adapters` and the reports take it: a number or a dict."""
    return _thaw(weight)


@dataclass(frozen=True)
class ActiveSet:
    """What one `set_adapters` call sets: the active adapters and their weights, in order (one
    weight per name: the transitions build both together)."""

    names: tuple[str, ...] = ()
    weights: tuple[Weight, ...] = ()

    def weight(self, name: str) -> Weight | None:
        for n, w in zip(self.names, self.weights, strict=True):
            if n == name:
                return w
        return None

    def as_dict(self) -> dict[str, Any]:
        """{name: weight} with plain weights, for reports (LoRAInfo, image credits)."""
        return {n: plain_weight(w) for n, w in zip(self.names, self.weights, strict=True)}

    def without(self, gone: set[str]) -> ActiveSet:
        keep = [i for i, n in enumerate(self.names) if n not in gone]
        return ActiveSet(tuple(self.names[i] for i in keep), tuple(self.weights[i] for i in keep))


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
    """ScheduleAdapterWeights: one adapter's denoiser strength over the sampling progress.

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
        restricted = (op.restricted(component) for op in self.fused)
        return tuple(op for op in restricted if op is not None)  # None: the op leaves `component` alone

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


