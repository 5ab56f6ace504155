"""The live-pipeline record: a diffusers pipeline plus what the reconciler knows about it.

Also the small helpers every reconcile step shares: timing and recording each diffusers/peft call
(`timed`), muting diffusers' misleading messages while a file loads (`quiet_loading`), the peft tuner
layers of a component, listed once per load, and what a tuner layer of any peft family holds (public
peft attributes only: `adapter_layer_names`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from . import fence
from .config import get_config
from .state import ActiveSet, AdapterSpec, AdapterState

logger = logging.getLogger(__name__)


class LoraOperationError(RuntimeError):
    """A LoRA operation failed; the pipeline was rolled back. Names the node and input at fault."""

    def __init__(self, message: str, input_name: str | None = None, origin: str = ""):
        prefix = f"{origin}: " if origin else ""
        where = f"{input_name}: " if input_name else ""
        super().__init__(f"{prefix}{where}{message}")
        self.input_name = input_name
        self.origin = origin


@dataclass
class LivePipeline:
    """A diffusers pipeline plus what the reconciler knows about it."""

    pipe: Any
    # None: unknown (a rollback failed) -> reset first
    state: AdapterState | None = field(default_factory=AdapterState)
    # component -> module name -> (weight, bias or None) as they were before the first fusion
    backups: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)
    # (component, module name) -> a fused weight an exact unfuse set aside during this transition, for
    # the next fuse of that layer to write into (fusion.py): no fresh pages per weight change
    fusion_spares: dict[tuple[str, str], torch.Tensor] = field(default_factory=dict)
    # the last set_adapters call; None = unknown scaling
    live_active: ActiveSet | None = field(default_factory=ActiveSet)
    live_te_disabled: tuple[str, ...] = ()
    live_devices: dict[str, str | None] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)  # every diffusers/peft call made, for tests and logs
    warnings: list[str] = field(default_factory=list)  # messages for the user (partial key coverage)
    state_te_target: tuple[str, ...] = ()  # the text-encoder switch the running transition aims for
    parked: dict[str, AdapterSpec] = field(default_factory=dict)  # loaded in peft, in no state; oldest first
    # component -> its peft tuner layers as (name, layer); walking a UNet's modules costs ~10 ms, so
    # it is done once per load/delete/unload instead of once per operation
    layer_cache: dict[str, list] = field(default_factory=dict)
    # (file sha256, path, LoadLoRA target) -> where its keys land on this pipeline (shapes only)
    coverage_cache: dict[tuple[str, str, str], Any] = field(default_factory=dict)
    # sha256 of the files whose adapters a hotswap overwrote, most recent last (see loading.load_adapter)
    swapped_out: dict[str, None] = field(default_factory=dict)
    # (file sha256, path) -> {component: (state dict, LoraConfig)} diffusers handed peft's hotswap
    swap_inputs: OrderedDict = field(default_factory=OrderedDict)
    # bytes of inactive adapters kept loaded (the engine configuration's `parked_bytes`)
    parked_bytes: int = field(default_factory=lambda: get_config().parked_bytes)

    @property
    def components(self) -> tuple[str, ...]:
        return fence.loadable_components(self.pipe)

    @property
    def device(self) -> torch.device:
        return self.pipe.device


@contextmanager
def timed(live: LivePipeline, name: str, detail: str = ""):
    t0 = time.perf_counter()
    yield
    live.ops.append(name)
    logger.debug("%s %s took %.1f ms", name, detail, (time.perf_counter() - t0) * 1e3)


def tuner_layers(model: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def layers(live: LivePipeline, comp: str) -> list:
    cached = live.layer_cache.get(comp)
    if cached is None:
        cached = live.layer_cache[comp] = list(tuner_layers(getattr(live.pipe, comp)))
    return cached


def has_lora(model: torch.nn.Module) -> bool:
    return getattr(model, "peft_config", None) is not None and bool(model.peft_config)


def is_lora_layer(module: Any) -> bool:
    """A peft LoRA layer proper (lora_A/lora_B), not LoHa/LoKr nor a norm layer's diffs
    (formats/lycoris/norms.py)."""
    return tuple(getattr(module, "adapter_layer_names", ()))[:1] == ("lora_A",)


def adapter_in_layer(module: Any, adapter_name: str) -> bool:
    """Whether a peft tuner layer (LoRA, LoHa, LoKr) holds `adapter_name`."""
    table = getattr(module, module.adapter_layer_names[0], None)
    return table is not None and adapter_name in table


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Mute three misleading messages while diffusers loads an adapter; our coverage report replaces them.

    - transformers 5 prints a whole-model "LOAD REPORT" (every base weight MISSING) and a progress bar;
    - diffusers warns, on loading a second adapter, that the *first* adapter's keys are "missing";
    - peft warns that a `peft_config` already exists whenever a second adapter is added.
    """
    import warnings

    from diffusers.utils import logging as dlog
    from transformers.utils import logging as tlog

    t_level, d_level = tlog.get_verbosity(), dlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    dlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            yield
    finally:
        tlog.set_verbosity(t_level)
        dlog.set_verbosity(d_level)
        if bars:
            tlog.enable_progress_bar()
