"""Fence entries, 9: diffusers' per-load walks that a hotswap into a parked adapter's layers does not need:
Flux's shape-expansion checks, a second `state_dict()` and the offloading check's walk.

Each entry: the private name, the versions verified, what it stands in for and its fallback
(loaders/fence/__init__.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from . import fast_paths
from .loading import offloading_check_replaced

logger = logging.getLogger(__name__)

# The two classmethods of diffusers' FluxLoraLoaderMixin (Flux, Chroma, Kontext, Fill/Control) that
# `load_lora_weights` calls on every load, a hotswap included, before any loading.
_EXPANDS_MODEL = "_maybe_expand_transformer_param_shape_or_error_"
_EXPANDS_LORA = "_maybe_expand_lora_state_dict"
_A, _B = ".lora_A.weight", ".lora_B.weight"


@contextlib.contextmanager
def expansion_checks_answered(pipe: Any, model: Any, slot_layers: Mapping[str, Any]) -> Iterator[None]:
    """Within a `load_lora_weights(hotswap=True)` on `pipe`, Flux's shape-expansion checks answer
    "nothing to expand" without walking the transformer, when the file's shapes prove it.

    diffusers' FluxLoraLoaderMixin checks, on every load, whether a LoRA's layers are wider than the
    transformer's (Flux Control LoRAs: the transformer is widened) or narrower (a LoRA loaded onto a
    widened transformer: the LoRA is zero-padded). Each check walks the whole transformer (its
    `named_modules`, its `state_dict()`): ~30 ms of a ~110 ms first swap at Kontext's 57 blocks. A
    hotswap copies into the parked adapter's layers, so its file targets those layers: when the file
    has no Control-LoRA norm keys, the transformer no quantizer, and each `lora_A`/`lora_B` pair names
    a layer of `slot_layers` ({module path in `model`, the transformer: peft tuner layer}) whose base weight
    is exactly (B's rows, A's columns), both checks are no-ops (they skip any layer whose shape is
    equal), and they return what they would: False, and the LoRA's state dict unchanged.
    Private names: the classmethods `_maybe_expand_transformer_param_shape_or_error_` and
    `_maybe_expand_lora_state_dict`, overridden on the pipeline instance for the call (verified on
    diffusers 0.41, 0.42: the same code in both).
    Stands in for: the walks inside `load_lora_weights`, which has no option to skip them.
    Fallback: diffusers' own checks, for any load whose shapes do not prove it (and always outside
    the verified versions, and on pipelines without these methods: every other family).
    """
    cls = type(pipe)
    expands_model = getattr(cls, _EXPANDS_MODEL, None)
    expands_lora = getattr(cls, _EXPANDS_LORA, None)
    if not fast_paths() or expands_model is None or expands_lora is None or not slot_layers:
        yield
        return
    lora_prefix = f"{getattr(cls, 'transformer_name', 'transformer')}."

    def model_checked(transformer, lora_state_dict=None, norm_state_dict=None, prefix=None):
        if (transformer is model and not norm_state_dict
                and _shapes_equal(transformer, lora_state_dict or {}, slot_layers, lora_prefix)):
            return False
        return expands_model(transformer, lora_state_dict, norm_state_dict, prefix)

    def lora_checked(transformer, lora_state_dict):
        if transformer is model and _shapes_equal(transformer, lora_state_dict, slot_layers, lora_prefix):
            return lora_state_dict
        return expands_lora(transformer=transformer, lora_state_dict=lora_state_dict)

    setattr(pipe, _EXPANDS_MODEL, model_checked)
    setattr(pipe, _EXPANDS_LORA, lora_checked)
    try:
        yield
    finally:
        delattr(pipe, _EXPANDS_MODEL)
        delattr(pipe, _EXPANDS_LORA)


def _shapes_equal(transformer: Any, state_dict: Mapping[str, Any], slot_layers: Mapping[str, Any],
                  prefix: str) -> bool:
    """Whether every LoRA pair of `state_dict` (keys with or without `prefix`) lands on a layer of
    `slot_layers` whose base weight has the pair's shape, on an unquantized transformer."""
    if hasattr(transformer, "hf_quantizer"):  # diffusers computes quantized shapes its own way
        return False
    pairs = 0
    for key, a in state_dict.items():
        if not key.endswith(_A):
            continue
        module = key[: -len(_A)].removeprefix(prefix)
        b = state_dict.get(key[: -len(_A)] + _B)
        layer = slot_layers.get(module)
        if layer is None or b is None or a.ndim != 2 or b.ndim != 2:
            return False
        weight = getattr(layer.get_base_layer(), "weight", None)
        if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (b.shape[0], a.shape[1]):
            return False
        pairs += 1
    return pairs > 0


@contextlib.contextmanager
def state_dict_walked_once(models: list[torch.nn.Module]) -> Iterator[None]:
    """Within one hotswap load, each model's `state_dict()` walks the model once: later calls in the
    block get the first call's dict.

    A `load_lora_weights(hotswap=True)` builds the denoiser's whole `state_dict()` twice: diffusers
    for the LoraConfig (`model_state_dict=self.state_dict()`, an argument `get_peft_kwargs` reads no
    key of, diffusers 0.41, 0.42) and peft's `hotswap_adapter_from_state_dict` for the names of the
    adapter's keys (peft 0.20, 0.21); ~5-12 ms each at Kontext's 57 blocks. A hotswap adds, removes and
    replaces no module or parameter (it copies values into the adapter's tensors, which the dict
    holds by reference), so the second dict would have the same keys and tensors as the first. Calls
    with arguments (a prefix, `keep_vars`, a destination) run torch's own.
    Private touch: none of diffusers/peft; torch's public `Module.state_dict` is overridden on the
    model instance for the block (the engine's hotswap is the only caller).
    Stands in for: the second walk of the same model.
    Fallback: outside the verified versions, every call walks (torch's own).
    """
    if not fast_paths():
        yield
        return
    patched = []
    for model in dict.fromkeys(models):  # once per model
        real = model.state_dict
        walked: list[dict] = []

        def walked_once(*args, _real=real, _walked=walked, **kwargs):
            if args or kwargs:
                return _real(*args, **kwargs)
            if not _walked:
                _walked.append(_real())
            return _walked[0]

        model.state_dict = walked_once  # type: ignore[method-assign]
        patched.append(model)
    try:
        yield
    finally:
        for model in patched:
            del model.state_dict


# The diffusers modules that look up the offloading check as a global (as fence/loading.py's).
# What accelerate (model/sequential CPU offload) and diffusers (group offloading and other hooks)
# attach to a module they hook.
_HOOK_ATTRIBUTES = ("_hf_hook", "_diffusers_hook")


@contextlib.contextmanager
def offloading_answered(pipe: Any, slot_layers: list[Any]) -> Iterator[None]:
    """Within a hotswap load, diffusers' offloading check answers "none" without its walk when no
    hook is where any offloading puts one.

    diffusers' check walks every module of every component for a group-offloading hook (~3 ms at
    Kontext's 57 blocks, more than the rest of a small model's first swap: Flux 2's 40 layers) and
    reads accelerate's `_hf_hook` on each component. Offloading hooks sit on: each component itself
    (accelerate's model and sequential offload; diffusers' block-level group offload, which hooks
    the top module, and any group offload with streams), and on every leaf layer (leaf-level group
    offload and sequential offload hook each base layer a LoRA wraps). So: no `hf_device_map`, no
    `_hf_hook`/`_diffusers_hook` on any component nor on any of the swapped layers or their base
    layers, and the check answers (False, False, False); anything else (diffusers' own hooks for
    layerwise casting included) runs diffusers' check. Not seen this way: leaf-level group offload,
    without streams, of a component the swap does not touch (a VAE); diffusers would remove and
    re-apply it after the load, which changes nothing there.
    Private name: the module global `_func_optionally_disable_offloading` of diffusers.loaders.
    lora_base / peft / unet, swapped for the call (diffusers 0.41, 0.42); accelerate's and diffusers'
    hook attributes read.
    Stands in for: diffusers' own check (public behaviour of `load_lora_weights`).
    Fallback: diffusers' check, run (outside the verified versions always).
    """

    def answered(real: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def check(_pipeline):
            if _pipeline is pipe and not _hooks_seen(pipe, slot_layers):
                return (False, False, False)
            return real(_pipeline)

        return check

    with offloading_check_replaced(answered):
        yield


def _hooks_seen(pipe: Any, slot_layers: list[Any]) -> bool:
    if getattr(pipe, "hf_device_map", None) is not None:
        return True
    hooked = [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]
    hooked += slot_layers
    hooked += [layer.get_base_layer() for layer in slot_layers]
    return any(hasattr(m, a) for m in hooked for a in _HOOK_ATTRIBUTES)
