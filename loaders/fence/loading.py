"""Fence entries, 2: loading a parsed file with its adapter metadata.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import (
    DIFFUSERS_PATCH_LOCK,
    fast_paths,
)

logger = logging.getLogger(__name__)

def load_lora_weights(
    pipe: Any, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any] | None,
    adapter_name: str, hotswap: bool = False, placement: Mapping[str, Any] | None = None,
) -> None:
    """`pipe.load_lora_weights(state_dict)` that keeps the file's `lora_adapter_metadata`.

    diffusers reads that metadata (the LoraConfig: alpha != rank) only when it loads from a path;
    with an in-memory dict it is lost and alpha falls back to rank.
    Private touch: for this one call, the pipeline's `lora_state_dict` is overridden on the
    instance to return the metadata already parsed, and diffusers' offloading check is answered
    once per load (`offloading_checked_once`). Verified on diffusers 0.41, 0.42.
    Stands in for: `pipe.load_lora_weights(folder, weight_name=file)`.
    Fallback: exactly that: the prepared state dict and metadata are written to a temporary
    safetensors file and loaded from its path (one extra write and read of the LoRA).
    """
    kwargs: dict[str, Any] = {"hotswap": True} if hotswap else {}  # into adapter `adapter_name`'s layers
    kwargs.update(placement or {})  # public keywords of the mixin (load_into_transformer_2)
    if metadata is None:
        with DIFFUSERS_PATCH_LOCK, offloading_checked_once():
            pipe.load_lora_weights(state_dict, adapter_name=adapter_name, **kwargs)
        return
    if not fast_paths():
        _load_from_temporary_file(pipe, state_dict, metadata, adapter_name, kwargs)
        return
    with DIFFUSERS_PATCH_LOCK, offloading_checked_once():
        original = type(pipe).lora_state_dict

        def lora_state_dict_with_metadata(sd, **kw):
            out = original(sd, **kw)
            if kw.get("return_lora_metadata") and isinstance(out, tuple) and out[-1] is None:
                out = (*out[:-1], metadata)
            return out

        pipe.lora_state_dict = lora_state_dict_with_metadata
        try:
            pipe.load_lora_weights(state_dict, adapter_name=adapter_name, **kwargs)
        finally:
            del pipe.lora_state_dict


def _load_from_temporary_file(pipe: Any, state_dict: dict, metadata: dict, adapter_name: str, kwargs) -> None:
    import safetensors.torch

    with tempfile.TemporaryDirectory(prefix="loragraph-load-") as folder:
        name = "adapter.safetensors"
        tensors = {k: v.contiguous() for k, v in state_dict.items()}
        header = {"format": "pt", "lora_adapter_metadata": json.dumps(metadata)}
        safetensors.torch.save_file(tensors, os.path.join(folder, name), metadata=header)
        pipe.load_lora_weights(folder, weight_name=name, adapter_name=adapter_name, **kwargs)


# The diffusers modules that look up `_func_optionally_disable_offloading` as a global.
_OFFLOAD_CHECKERS = ("diffusers.loaders.lora_base", "diffusers.loaders.peft", "diffusers.loaders.unet")
_OFFLOAD_CHECK = "_func_optionally_disable_offloading"


@contextlib.contextmanager
def offloading_checked_once() -> Iterator[None]:
    """Within one load, diffusers' accelerate/group-offloading check runs once, not per component.

    diffusers checks each model for offloading hooks again per component loaded (a walk over every
    module of every component, ~6 ms at SD1.5 size). A check that found none removed nothing, so
    its answer holds for the rest of the load: later checks return it. A check that found hooks
    runs every time, as diffusers does.
    Private name: the module global `_func_optionally_disable_offloading` of diffusers.loaders.
    lora_base / peft / unet, swapped for the call (diffusers 0.41, 0.42).
    Stands in for: diffusers' own check (public behaviour of `load_lora_weights`).
    Fallback: diffusers' own checks, unchanged (one walk per component).
    """
    def checked_once(real: Callable[[Any], Any]) -> Callable[[Any], Any]:
        none_found: list[bool] = []

        def check(_pipeline):
            if none_found:
                return (False, False, False)
            out = real(_pipeline)
            if not any(out):
                none_found.append(True)
            return out

        return check

    with offloading_check_replaced(checked_once):
        yield


@contextlib.contextmanager
def offloading_check_replaced(make: Callable[[Callable[[Any], Any]], Callable[[Any], Any]]) -> Iterator[None]:
    """For the call, diffusers' offloading check `_func_optionally_disable_offloading` is
    `make(real)` in every diffusers module that looks it up as a global (the one place that swaps
    it: `offloading_checked_once` here, `swap_checks.offloading_answered`). Unchanged when the fast
    paths are off or diffusers renamed it; the original goes back after, also on an error."""
    if not fast_paths():
        yield
        return
    modules = [importlib.import_module(m) for m in _OFFLOAD_CHECKERS]
    real = getattr(modules[0], _OFFLOAD_CHECK, None)
    if real is None:  # renamed: diffusers' own checks, unchanged
        yield
        return
    replacement = make(real)
    with DIFFUSERS_PATCH_LOCK:
        patched = [m for m in modules if getattr(m, _OFFLOAD_CHECK, None) is real]
        for m in patched:
            setattr(m, _OFFLOAD_CHECK, replacement)
        try:
            yield
        finally:
            for m in patched:
                setattr(m, _OFFLOAD_CHECK, real)
