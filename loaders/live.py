"""The live-pipeline record: a diffusers pipeline plus what the reconciler knows about it.

Also the small helpers every reconcile step shares: timing and recording each diffusers/peft call
(`op`), and the peft tuner layers of a component, listed once per load.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
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
    state: AdapterState | None = field(default_factory=AdapterState)  # None: unknown (a rollback failed) -> reset first
    # component -> module name -> (weight, bias or None) as they were before the first fusion
    backups: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor | None]]] = field(default_factory=dict)
    live_active: ActiveSet | None = field(default_factory=ActiveSet)  # last set_adapters call; None = unknown scaling
    live_te_disabled: tuple[str, ...] = ()
    live_devices: dict[str, str | None] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)  # every diffusers/peft call made, for tests and logs
    warnings: list[str] = field(default_factory=list)  # messages for the user (partial key coverage)
    state_te_target: tuple[str, ...] = ()  # the text-encoder switch the running transition aims for
    parked: dict[str, AdapterSpec] = field(default_factory=dict)  # loaded in peft, in no state; oldest first
    # component -> its peft tuner layers as (name, layer); walking a UNet's modules costs ~10 ms, so
    # it is done once per load/delete/unload instead of once per operation
    layer_cache: dict[str, list] = field(default_factory=dict)
    # (file sha256, path) -> where its keys land on this pipeline (shapes only: adapters don't change it)
    coverage_cache: dict[tuple[str, str], Any] = field(default_factory=dict)
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

