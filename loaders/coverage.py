"""Coverage: which of a file's LoRA modules would land on a pipeline, per component, and why the
rest would not, predicted with diffusers' own converters before the pipeline is touched.

A wrong-base or half-matching file is reported here (`Coverage.require`, `coverage_message`), so
the reconciler can refuse it or warn, instead of diffusers loading nothing or raising mid-load.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from . import fence
from .components import COMPONENTS, DENOISERS
from .formats import pipeline_state_dict
from .formats.keys import module_of
from .lora_file import LoraFile, LoraFileError


@dataclasses.dataclass(frozen=True)
class UnmatchedModule:
    component: str
    module: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How many of a file's LoRA modules land on a pipeline, per component, and why the rest don't.

    The reconciler refuses a file where nothing lands (`require`) and warns on a partial match;
    shape mismatches are fatal because diffusers itself raises on them.
    """

    file: str
    pipeline: str
    matched: int
    unmatched: tuple[UnmatchedModule, ...]
    per_component: Mapping[str, Mapping[str, int]]  # {component: {"matched": n, "unmatched": m}}
    # {component: {module: rank}} of the modules that land; `plain`: nothing but lora_A/lora_B
    # weights (no DoRA magnitude, no LoRA bias), so peft's hotswap can take the file's layers.
    layout: Mapping[str, Mapping[str, int]] = dataclasses.field(default_factory=dict)
    plain: bool = False

    @property
    def total(self) -> int:
        return self.matched + len(self.unmatched)

    @property
    def landed_fraction(self) -> float:
        return self.matched / self.total if self.total else 0.0

    @property
    def shape_mismatches(self) -> tuple[UnmatchedModule, ...]:
        return tuple(u for u in self.unmatched if u.reason.startswith("shape mismatch"))

    @property
    def complete(self) -> bool:
        return self.total > 0 and not self.unmatched

    @property
    def loadable(self) -> bool:
        """Whether diffusers would load it at all: something lands and no shape contradicts."""
        return self.matched > 0 and not self.shape_mismatches

    def message(self) -> str:
        return coverage_message(self)

    def require(self) -> None:
        """Raise LoraFileError when diffusers would fail or load nothing (wrong base model, ...)."""
        if not self.loadable:
            raise LoraFileError(coverage_message(self))

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "pipeline": self.pipeline,
            "matched": self.matched,
            "total": self.total,
            "landed_fraction": self.landed_fraction,
            "per_component": {k: dict(v) for k, v in self.per_component.items()},
            "unmatched": [dataclasses.asdict(u) for u in self.unmatched],
        }


def coverage_message(cov: Coverage) -> str:
    """One readable paragraph: what landed, what didn't and why, with a few examples."""
    name = Path(cov.file).name
    landed = ", ".join(f"{c} {v['matched']}" for c, v in cov.per_component.items() if v["matched"])
    if cov.total == 0:
        return f"{name}: holds no LoRA modules diffusers can place on this {cov.pipeline}"
    if cov.complete:
        return f"{name}: all {cov.total} LoRA modules land on this {cov.pipeline} ({landed})"
    groups: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    for u in cov.unmatched:
        groups[(u.component, u.reason.split(":", 1)[0])].append((u.module, u.reason))
    parts = []
    for (component, kind), items in groups.items():
        reasons = {r for _, r in items}
        if len(reasons) == 1:  # one reason for the whole group: say it once
            shown = "; ".join(m for m, _ in items[:2]) + ("; ..." if len(items) > 2 else "")
            parts.append(f"{component}: {len(items)} {reasons.pop()} (e.g. {shown})")
        else:
            shown = "; ".join(f"{m} ({r})" for m, r in items[:2]) + ("; ..." if len(items) > 2 else "")
            parts.append(f"{component}: {len(items)} {kind} (e.g. {shown})")
    head = (
        f"{name}: none of its {cov.total} LoRA modules land on this {cov.pipeline}"
        if cov.matched == 0
        else f"{name}: only {cov.matched} of {cov.total} LoRA modules land on this {cov.pipeline} ({landed})"
    )
    tail = ""
    if cov.shape_mismatches or cov.matched == 0:
        tail = " - it was probably made for another base model; diffusers cannot load it here"
    return f"{head}; not landing: {' | '.join(parts)}{tail}"


def _converted_for_component(
    pipe: Any, component: str, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The component's keys converted exactly as diffusers' loader would, to PEFT names."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if not state_dict:
        return state_dict
    if component in DENOISERS:
        # As ModelMixin.load_lora_adapter: convert unless the first key is already PEFT.
        first = next(iter(state_dict))
        return state_dict if "lora_A" in first else convert_unet_state_dict_to_peft(state_dict)
    # As lora_base._load_lora_into_text_encoder.
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
    if not hasattr(getattr(pipe, component), "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def _layer_fits(layer: torch.nn.Module, a: torch.Tensor, b: torch.Tensor | None) -> str | None:
    """None when lora_A/lora_B fit the layer, else the reason they don't."""
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    n_in = getattr(base, "in_features", None) or getattr(base, "in_channels", None)
    n_out = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
    if n_in is None or n_out is None:
        return f"not a layer LoRA can adapt: {type(base).__name__}"
    lora_in = int(a.shape[1]) if a.ndim >= 2 else None
    lora_out = int(b.shape[0]) if b is not None and b.ndim >= 1 else None
    if b is None:
        return "lora_B (up) matrix missing"
    if b.ndim >= 2 and a.ndim >= 1 and b.shape[1] != a.shape[0]:
        return f"lora_A/lora_B ranks differ ({a.shape[0]} vs {b.shape[1]})"
    if lora_in != n_in or lora_out != n_out:
        return f"shape mismatch: lora expects (in,out)=({lora_in},{lora_out}), layer has ({n_in},{n_out})"
    return None


def coverage(pipe: Any, lora: LoraFile) -> Coverage:
    """Which of the file's LoRA modules would land on `pipe`, per component; nothing is changed.

    Uses diffusers' own `lora_state_dict` (kohya and old-format conversion) and the same key
    converters as `load_lora_into_unet` / `_load_lora_into_text_encoder`, then checks each
    `<module>.lora_A.weight` against the live module and its shapes.
    """
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    cls = type(pipe)
    if not hasattr(cls, "lora_state_dict"):
        raise LoraFileError(f"{lora.path}: {cls.__name__} does not take LoRAs")
    if lora.format == "lycoris":  # --- #15
        return _lycoris_coverage(pipe, lora)
    source, _ = pipeline_state_dict(pipe, lora, copy=False)
    kwargs = {}
    if isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
        kwargs["unet_config"] = pipe.unet.config  # as its load_lora_weights does
    try:
        out = cls.lora_state_dict(source, **kwargs)
    except Exception as e:  # diffusers raises ValueError/KeyError/... on keys it cannot convert
        raise LoraFileError(
            f"{lora.path}: diffusers cannot convert this {lora.format} LoRA for {cls.__name__} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else e!r})"
        ) from e
    converted = out[0] if isinstance(out, tuple) else out
    loadable = fence.loadable_components(pipe)

    unmatched: list[UnmatchedModule] = []
    per: dict[str, dict[str, int]] = {}
    layout: dict[str, dict[str, int]] = {}
    plain = True
    matched = 0
    claimed: set[str] = set()
    for component in loadable:
        part = {k[len(component) + 1 :]: v for k, v in converted.items() if k.startswith(f"{component}.")}
        claimed |= {f"{component}.{k}" for k in part}
        if not part:
            continue
        counts = per.setdefault(component, {"matched": 0, "unmatched": 0})
        try:
            peft_keys = _converted_for_component(pipe, component, part)
        except ValueError as e:
            for module in sorted({module_of(k) for k in part}):
                unmatched.append(UnmatchedModule(component, module, f"keys diffusers cannot convert: {e}"))
                counts["unmatched"] += 1
            continue
        model = getattr(pipe, component)
        for key, a in peft_keys.items():
            m = re.match(r"^(.+)\.lora_A(?:\.[^.]+)?\.weight$", key)
            if m is None:
                plain = plain and bool(re.search(r"\.lora_B(?:\.[^.]+)?\.weight$", key))
                continue
            module = m.group(1)
            b = peft_keys.get(key.replace(".lora_A", ".lora_B"))
            try:
                layer = model.get_submodule(module)
                reason = _layer_fits(layer, a, b)
            except AttributeError:
                reason = "no such module"
            if reason is None:
                matched += 1
                counts["matched"] += 1
                layout.setdefault(component, {})[module] = int(a.shape[0])
            else:
                unmatched.append(UnmatchedModule(component, module, reason))
                counts["unmatched"] += 1
    leftover = [k for k in converted if k not in claimed]
    for module in sorted({module_of(k) for k in leftover}):
        component = module.split(".", 1)[0]
        reason = (
            f"no such component: {cls.__name__} has no {component}"
            if component in COMPONENTS
            else "no component prefix this pipeline loads (diffusers ignores it)"
        )
        per.setdefault(component, {"matched": 0, "unmatched": 0})["unmatched"] += 1
        unmatched.append(UnmatchedModule(component, module, reason))
    return Coverage(
        file=lora.path,
        pipeline=cls.__name__,
        matched=matched,
        unmatched=tuple(unmatched),
        per_component=types.MappingProxyType(per),
        layout=types.MappingProxyType({c: types.MappingProxyType(v) for c, v in layout.items()}),
        plain=plain,
    )



def _lycoris_coverage(pipe: Any, lora: LoraFile) -> Coverage:
    """`coverage` for a LyCORIS file: its modules matched by kohya name and delta shape (#15)."""
    from .formats import lycoris

    modules = lycoris.parse(lora.state_dict)
    bad = lycoris.unsupported(modules)
    if bad:
        raise LoraFileError(f"{lora.path}: {lycoris.unsupported_message(bad)}")
    placement = lycoris.place(pipe, modules)
    per: dict[str, dict[str, int]] = {}
    layout: dict[str, dict[str, int]] = {}
    for comp, items in placement.landed.items():
        # a module of the file counts once, also where it is split across layers (Flux's fused qkv)
        per.setdefault(comp, {"matched": 0, "unmatched": 0})["matched"] += len({m.name for m, _ in items})
        layout[comp] = {path: m.rank for m, path in items}
    unmatched = [UnmatchedModule(c, n, r) for c, n, r in placement.unmatched]
    for u in unmatched:
        per.setdefault(u.component, {"matched": 0, "unmatched": 0})["unmatched"] += 1
    return Coverage(
        file=lora.path,
        pipeline=type(pipe).__name__,
        matched=sum(v["matched"] for v in per.values()),
        unmatched=tuple(unmatched),
        per_component=types.MappingProxyType(per),
        layout=types.MappingProxyType({c: types.MappingProxyType(v) for c, v in layout.items()}),
        plain=False,  # peft's hotswap takes plain LoRA layers only
    )
