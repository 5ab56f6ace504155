"""LoRA schedules at sampling time: each step's denoiser scales, and the static ones put back after.

A handle's schedules (ScheduleAdapterWeights, transitions.py) never reach the reconciler. For a Sampler the
engine realizes `sampling_state(state)`: the static state with every scheduled adapter taken out of
the denoiser's fusions, because a fused adapter's strength is baked into the weights. Unscheduled
adapters stay fused; the reconciler's exact restore brings a scheduled adapter's fusion back when a
later handle needs it.

`StepWeights` then changes only peft's per-layer `scaling` of the scheduled adapters in the denoiser,
through `set_scale` on the engine's cached tuner layers (what diffusers' `set_adapters` does per
layer, without its walk over every module): well under a millisecond a step at SD1.5 size. It is the
same per-step recipe diffusers documents (`callback_on_step_end` -> `set_adapters`), and after
sampling, exception and interrupt included, it writes every scale it touched back bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from .live import LivePipeline, LoraOperationError, layers
from .state import AdapterState, BlockWeights, ComponentWeights, FuseOp, Schedule, Weight

logger = logging.getLogger(__name__)


def active_schedules(state: AdapterState) -> tuple[Schedule, ...]:
    """The schedules the Sampler applies: those of active adapters (an inactive adapter is off, and
    so is its schedule)."""
    active = set(state.active.names)
    return tuple(s for s in state.schedules if s.adapter in active)


def sampling_state(state: AdapterState, denoisers: tuple[str, ...]) -> AdapterState:
    """The state to realize for a Sampler: no schedules, scheduled adapters unfused in the denoisers."""
    scheduled = {s.adapter for s in active_schedules(state)}
    fused: list[FuseOp] = []
    for op in state.fused:
        inside = tuple(c for c in op.components if c in denoisers)
        if not inside or not scheduled & set(op.adapter_names):
            fused.append(op)
            continue
        # one op split in two keeps every component's sequence of fusions (fuse_ops_for) as it was
        others = tuple(c for c in op.components if c not in denoisers)
        if others:
            fused.append(replace(op, components=others))
        names = tuple(n for n in op.adapter_names if n not in scheduled)
        if names:
            fused.append(replace(op, components=inside, adapter_names=names))
    return replace(state, schedules=(), fused=tuple(fused))


def _cannot_hold(name: str, fused: list[str], denoisers: tuple[str, ...], origin: str) -> LoraOperationError:
    denoiser = " / ".join(denoisers)
    return LoraOperationError(
        f"adapter {name!r} is scheduled, but {', '.join(fused)} is fused into {denoiser} layers that "
        f"{name!r} adapts too; peft runs a layer holding a fused adapter from its fused weight alone and "
        f"would skip {name!r} there. Unfuse the {denoiser} (UnfuseLoRA, or FuseLoRA with fuse_unet off) "
        "or fuse only adapters on other layers",
        "adapter_name",
        origin,
    )


def _scheduled_layers(live: LivePipeline, sch: Schedule, denoisers: tuple[str, ...]) -> list[Any]:
    mods = [
        m for d in denoisers for _, m in layers(live, d) if sch.adapter in (getattr(m, "scaling", None) or {})
    ]
    if not mods:
        denoiser = " / ".join(denoisers)
        raise LoraOperationError(
            f"adapter {sch.adapter!r} has no layers in the {denoiser}: a schedule acts on the denoiser only "
            "(text encoders run once per prompt)",
            "adapter_name",
            sch.origin,
        )
    return mods


def check_layers(live: LivePipeline, state: AdapterState, denoisers: tuple[str, ...]) -> None:
    """What StepWeights checks, from which adapters the layers hold (the adapters are loaded, the
    scheduled ones need not be unfused yet): for the node that makes or fuses a schedule."""
    sampled = sampling_state(state, denoisers)
    fused = {
        n for op in sampled.fused if set(denoisers) & set(op.components) for n in op.adapter_names
    }
    for sch in active_schedules(state):
        mods = _scheduled_layers(live, sch, denoisers)
        clash = sorted({a for m in mods for a in m.scaling if a in fused})
        if clash:
            raise _cannot_hold(sch.adapter, clash, denoisers, sch.origin)


def _has_block_weights(weight: Weight | None, denoisers: tuple[str, ...]) -> bool:
    return isinstance(weight, ComponentWeights) and any(
        isinstance(weight.get(d, 1.0), BlockWeights) for d in denoisers
    )


class StepWeights:
    """Per-step denoiser scales of the scheduled adapters on a live pipeline in `sampling_state`.

    Checks first, touches nothing on failure: a schedule needs the adapter in the denoiser, and no
    other adapter merged into the layers it adapts (peft runs a layer that holds a merged adapter
    from its fused weight alone and would skip the scheduled one there).
    """

    def __init__(self, live: LivePipeline, state: AdapterState, denoisers: tuple[str, ...]):
        self.live = live
        self.schedules = active_schedules(state)
        # per schedule: [(layer, multiplier)]; the multiplier is the layer's block weight (1.0 unless
        # per-block weights were set: then the scheduled strength scales them, keeping their shape)
        self.targets: list[tuple[Schedule, list[tuple[Any, float]]]] = []
        self.saved: list[tuple[Any, str, Any]] = []
        for sch in self.schedules:
            name = sch.adapter
            mods = _scheduled_layers(live, sch, denoisers)
            merged = sorted({a for m in mods for a in m.merged_adapters})
            if merged:
                raise _cannot_hold(name, merged, denoisers, sch.origin)
            blocks = _has_block_weights(state.active.weight(name), denoisers)
            pairs = []
            for m in mods:
                static = m.scaling[name]
                mult = 1.0
                if blocks:  # the layer's own weight = its scaling over its scaling at weight 1
                    m.set_scale(name, 1.0)
                    unit = m.scaling[name]
                    m.scaling[name] = static
                    mult = static / unit if unit else 0.0
                pairs.append((m, mult))
            self.targets.append((sch, pairs))
        self.saved = [
            (m, sch.adapter, m.scaling[sch.adapter]) for sch, pairs in self.targets for m, _ in pairs
        ]
        self.applied: list[tuple[float, ...]] = []  # per step: the strengths set, one per schedule (logs)

    def apply(self, step: int, total: int) -> None:
        """Set the scales for step `step` of `total` (0-based): strength(step / total) per schedule."""
        progress = step / total if total else 0.0
        strengths = []
        for sch, pairs in self.targets:
            strength = sch.strength(progress)
            for m, mult in pairs:
                m.set_scale(sch.adapter, strength * mult)
            strengths.append(strength)
        self.applied.append(tuple(strengths))

    def restore(self) -> None:
        """Every scale touched back to its static value, bit for bit (the saved float itself)."""
        for m, name, value in self.saved:
            m.scaling[name] = value
