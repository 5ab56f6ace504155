"""The records formats/ and the rest of loaders/ share: a parsed LoRA file (`LoraFile`, its
`LoraModule`s), the error a file that cannot be used raises (`LoraFileError`), and where a file's
modules land on a pipeline (`Coverage`).

They sit below both the readers (lora_file.py, coverage.py) and the format families (formats/),
which build them, so neither has to import the other to name them.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..base import limits
from .summary import summary as file_summary

logger = logging.getLogger(__name__)

# A1111's "Lora hashes" PNG field uses the first 12 hex digits of the hash (its `shorthash`).
_A1111_SHORT_HASH_LEN = 12
# A LoRA value beyond the largest half-precision number cannot be run in fp16, where LoRAs are made
# and used; trained LoRA weights are of order 1, so such a value (1e30 in the probe) is damage.
MAX_LORA_MAGNITUDE = 65504.0

# The name of a family in formats.FORMATS ("diffusers", "peft", "diffusers-old", "kohya", ...).
LoraFormat = str


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """One adapted layer as the file spells it: enough to count, rank and place it without a model."""

    component: str  # "unet", "text_encoder", ... or "unknown"
    name: str  # the module path in the file's own spelling (kohya: lora_unet_..., else dotted)
    rank: int
    alpha: float | None  # None: the file carries no alpha for it (diffusers then uses alpha = rank)
    down_shape: tuple[int, ...]
    up_shape: tuple[int, ...] | None
    algorithm: str = "lora"  # lora | locon | dora | loha | lokr | full (LyCORIS files), or an unsupported one


@dataclasses.dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file. Shared through the cache: treat `state_dict` as read-only.

    `state_dict` is a read-only mapping of CPU tensors. Tensors themselves cannot be frozen, so
    anything that hands them to diffusers (which may adopt them as parameters) must go through
    `state_dict_copy()` or `pipeline_state_dict()`, never pass these tensors on directly.
    """

    path: str
    sha256: str
    size: int
    format: LoraFormat
    state_dict: Mapping[str, torch.Tensor] = dataclasses.field(compare=False, repr=False)
    metadata: Mapping[str, str] = dataclasses.field(compare=False, repr=False)
    addnet_hash: str | None = dataclasses.field(default=None, compare=False)
    modules: tuple[LoraModule, ...] = dataclasses.field(default=(), compare=False, repr=False)
    nonfinite_keys: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def short_hash(self) -> str:
        """The hash A1111 writes into "Lora hashes" (and Civitai indexes), so images can be traced.

        A1111 takes the file's `sshs_model_hash` metadata when present, else the kohya/"addnet" hash
        (sha256 of the safetensors tensor data after the header), else the whole file's sha256; and
        keeps the first 12 hex digits.
        """
        declared = self.metadata.get("sshs_model_hash", "")
        if re.fullmatch(r"[0-9a-fA-F]{12,64}", declared or ""):
            return declared[:_A1111_SHORT_HASH_LEN].lower()
        return (self.addnet_hash or self.sha256)[:_A1111_SHORT_HASH_LEN]

    @property
    def adapter_metadata(self) -> dict[str, Any] | None:
        """diffusers' `lora_adapter_metadata` (the LoraConfig the file was saved with), parsed.

        It is the only place a diffusers/PEFT file keeps alpha != rank. diffusers reads it only when
        `load_lora_weights` gets a *path*; with an in-memory dict it is lost, so callers pass it on
        as `metadata=` (see `pipeline_state_dict`).
        """
        raw = self.metadata.get("lora_adapter_metadata")
        if not raw:
            return None
        try:
            value = limits.loads(raw)
        except limits.JSONLimitError as e:  # deep, NaN, 1e999: written to break readers, not a config
            raise LoraFileError(f"{self.path}: its lora_adapter_metadata is refused ({e})") from None
        except ValueError:
            logger.warning("%s: ignoring lora_adapter_metadata that is not valid JSON", self.path)
            return None
        return value if isinstance(value, dict) else None

    def state_dict_copy(self) -> dict[str, torch.Tensor]:
        """A fresh dict of cloned tensors: safe to hand to diffusers, which may adopt the tensors."""
        return {k: v.clone() for k, v in self.state_dict.items()}

    def check_finite(self) -> None:
        """Raise if any tensor holds NaN, inf or a magnitude above MAX_LORA_MAGNITUDE: such a LoRA turns
        every image black. LoadLoRA calls it (engine.lora_spec); reading alone does not, so
        `loragraph inspect` can still describe a broken file.
        """
        if self.nonfinite_keys:
            raise LoraFileError(
                f"{self.path}: tensor {self.nonfinite_keys[0]!r} holds NaN, inf or values beyond "
                f"±{MAX_LORA_MAGNITUDE:g} ({len(self.nonfinite_keys)} bad tensor(s) in all); "
                "the LoRA would produce black or broken images"
            )

    def summary(self) -> dict[str, Any]:
        """A JSON-able description for LoRAInfo, the server's metadata route and `loragraph inspect`."""
        return file_summary(self)



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
