"""The fence: every touch of a private diffusers or peft name, and nothing else.

The engine drives diffusers and peft through their public API, except in the few places below
where a private name buys speed or fills a gap. Each entry says the versions it was verified on,
the public API it stands in for, and its fallback: the plain public path, slower but correct. The
fast path runs only where `fast_paths()` says so: on the verified versions (`VERIFIED`), unless
the configuration (`fast_paths`: auto/on/off, LORAGRAPH_FAST_PATHS) says otherwise. Anywhere
else the fallback runs, so a diffusers or peft release that renames one of these internals costs
speed, never correctness. No other module of the package may name a private diffusers/peft
attribute (tests/test_fence.py checks it).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any, cast

import torch

from .components import COMPONENTS
from .config import FastPaths, get_config

logger = logging.getLogger(__name__)

# The minor releases every fast path below was verified on (the whole test suite, images compared
# with raw diffusers): the two ends of pyproject's ranges.
VERIFIED: Mapping[str, tuple[str, ...]] = {"diffusers": ("0.41", "0.42"), "peft": ("0.20", "0.21")}

# Held while a diffusers/peft module global is swapped for one call, so two engines loading in two
# threads cannot interleave their swaps and leave a stale one in place.
DIFFUSERS_PATCH_LOCK = threading.RLock()

_mode: FastPaths | None = None  # None: as the process configuration says


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@lru_cache(maxsize=1)
def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in VERIFIED}


@lru_cache(maxsize=1)
def versions_verified() -> bool:
    """Whether the installed diffusers and peft are releases the fast paths were verified on."""
    found = installed_versions()
    ok = all(_minor(found[name]) in minors for name, minors in VERIFIED.items())
    if not ok:
        logger.info(
            "diffusers %s / peft %s are outside the versions loragraph's fast paths were verified on "
            "(%s): using the plain public diffusers/peft paths",
            found["diffusers"], found["peft"], ", ".join(f"{n} {'/'.join(m)}" for n, m in VERIFIED.items()),
        )
    return ok


def configure(mode: FastPaths | None) -> None:
    """Set the fast-path mode for the process ("auto", "on", "off"; None: the configuration's)."""
    global _mode
    if mode not in (None, "auto", "on", "off"):
        raise ValueError(f"fast paths: expected auto, on or off, not {mode!r}")
    _mode = mode


@contextlib.contextmanager
def fast_paths_mode(mode: FastPaths | None) -> Iterator[None]:
    """`configure(mode)` for a block (tests, benchmarks), restoring the previous mode after."""
    previous = _mode
    configure(mode)
    try:
        yield
    finally:
        configure(previous)


def fast_paths() -> bool:
    """Whether the fast paths below run now (else their public fallbacks)."""
    mode = _mode or get_config().fast_paths
    if mode == "off":
        return False
    if mode == "on":
        return True
    return versions_verified()


# --- 1. which components take LoRAs -----------------------------------------------------------------


def loadable_names(pipeline_class: type) -> tuple[str, ...]:
    """The components `pipeline_class`'s LoRA loader loads into, in diffusers' order, read from the
    class (a built-in source knows them before building); `loadable_components`: those a pipe has.

    Private name: the pipeline class's `_lora_loadable_modules` (diffusers 0.41, 0.42).
    Stands in for: no public API lists them.
    Fallback: the components whose `<component>_lora_layers` the public `save_lora_weights` takes
    (the same list on every pipeline verified but Wan's, whose saver takes no `transformer_2`).
    """
    names: Any = None
    if fast_paths():
        names = getattr(pipeline_class, "_lora_loadable_modules", None)
    if names is None:
        saver = getattr(pipeline_class, "save_lora_weights", None)
        params = inspect.signature(saver).parameters if saver is not None else {}
        names = [c for c in COMPONENTS if f"{c}_lora_layers" in params]
    return tuple(names)


def loadable_components(pipe: Any) -> tuple[str, ...]:
    """Its class's `loadable_names` that `pipe` has (Wan 2.1 leaves `transformer_2` None)."""
    return tuple(c for c in loadable_names(type(pipe)) if getattr(pipe, c, None) is not None)


# --- 2. loading a parsed file with its adapter metadata ---------------------------------------------


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
    if not fast_paths():
        yield
        return
    modules = [importlib.import_module(m) for m in _OFFLOAD_CHECKERS]
    real = getattr(modules[0], _OFFLOAD_CHECK, None)
    if real is None:  # renamed: diffusers' own checks, unchanged
        yield
        return
    none_found: list[bool] = []

    def checked_once(_pipeline):
        if none_found:
            return (False, False, False)
        out = real(_pipeline)
        if not any(out):
            none_found.append(True)
        return out

    patched = [m for m in modules if getattr(m, _OFFLOAD_CHECK, None) is real]
    for m in patched:
        setattr(m, _OFFLOAD_CHECK, checked_once)
    try:
        yield
    finally:
        for m in patched:
            setattr(m, _OFFLOAD_CHECK, real)


# --- 3. fusion bookkeeping ----------------------------------------------------------------------------


def set_fused_record(pipe: Any, names: set[str]) -> None:
    """Tell diffusers which adapters are fused into the weights (its `fused_loras`).

    The reconciler fuses and unfuses layers itself (peft's `merge` or one GEMM, keeping the
    original weights for an exact unfuse) instead of calling `fuse_lora`/`unfuse_lora`.
    Private name: the pipeline's `_merged_adapters` set (diffusers 0.41, 0.42), which is all that
    `fuse_lora` records and `fused_loras`/`num_fused_loras` report; nothing in loading reads it.
    Stands in for: the record `pipe.fuse_lora()` keeps.
    Fallback: the record is left as diffusers keeps it (`pipe.fused_loras` does not list the
    engine's fusions; the engine's own state says what is fused, and images are the same).
    """
    if fast_paths() and hasattr(pipe, "_merged_adapters"):
        pipe._merged_adapters = set(names)


# --- 4. hotswap ---------------------------------------------------------------------------------------


def hotswap_available() -> bool:
    """Whether a load may hot-swap into a parked adapter's layers (entries 4a and 4b).

    Fallback when not: the file is loaded as a new adapter with `load_lora_weights` (peft builds
    its layers: ~2x slower per switch, same images).
    """
    return fast_paths()


def hotswap_through_diffusers(
    pipe: Any, comps: tuple[str, ...] | list[str], load: Callable[[], None]
) -> dict[str, tuple[dict, Any]]:
    """Run `load()` (a `load_lora_weights(..., hotswap=True)`) and return, per component, the
    (state dict, LoraConfig) diffusers handed peft's hotswap, so later swaps of the same file can
    call peft directly with them.

    The denoiser goes through diffusers' hotswap (which calls peft's
    `hotswap_adapter_from_state_dict`); the text encoders, which diffusers refuses to hot-swap,
    load with `hotswap=False` but their `load_adapter` (transformers' inject + load) replaced by
    the same peft function on the same converted state dict.
    Private touches (diffusers 0.41, 0.42 / peft 0.20, 0.21): the module global
    `peft.utils.hotswap.hotswap_adapter_from_state_dict` swapped for a recording wrapper (diffusers
    imports it at call time); the instance attributes `pipe.load_lora_into_text_encoder` and
    `text_encoder.load_adapter` overridden for the call.
    Stands in for: `load_lora_weights(hotswap=True)`, which diffusers offers for the denoiser only.
    Fallback: none is run; `hotswap_available()` is False and files load as new adapters.
    """
    import peft.utils.hotswap as peft_hotswap

    models = {id(getattr(pipe, c)): c for c in comps}
    captured: dict[str, tuple[dict, Any]] = {}

    def recording(model, state_dict, adapter_name, config, **kwargs):
        captured[models[id(model)]] = (state_dict, config)
        return original(
            model=model, state_dict=state_dict, adapter_name=adapter_name, config=config, **kwargs
        )

    def te_swapper(te):
        def load_adapter(adapter_name=None, adapter_state_dict=None, peft_config=None, **_):
            peft_hotswap.check_hotswap_configs_compatible(te.peft_config[adapter_name], peft_config)
            recording(te, _with_adapter_name(adapter_state_dict, adapter_name), adapter_name, peft_config)

        return load_adapter

    has_te_loader = hasattr(pipe, "load_lora_into_text_encoder")
    te_loader = type(pipe).load_lora_into_text_encoder if has_te_loader else None

    def load_te(*args, **kwargs):
        te = kwargs["text_encoder"]
        kwargs["hotswap"] = False
        te.load_adapter = te_swapper(te)
        try:
            return te_loader(*args, **kwargs)
        finally:
            del te.load_adapter

    with DIFFUSERS_PATCH_LOCK:
        original = peft_hotswap.hotswap_adapter_from_state_dict  # what `recording` calls
        # cast: `recording` takes peft's optional parameters as keywords only, as diffusers passes them
        peft_hotswap.hotswap_adapter_from_state_dict = cast(Any, recording)
        if te_loader is not None:
            pipe.load_lora_into_text_encoder = load_te
        try:
            load()
        finally:
            peft_hotswap.hotswap_adapter_from_state_dict = original
            if te_loader is not None:
                del pipe.load_lora_into_text_encoder
    if set(captured) != set(comps):
        raise RuntimeError(f"diffusers hot-swapped {sorted(captured)}, not {sorted(comps)}")
    return captured


def _with_adapter_name(state_dict: dict, adapter_name: str) -> dict:
    """peft-format keys with the adapter's name, as peft's hotswap wants (diffusers does the same)."""
    out = {}
    for k, v in state_dict.items():
        for suffix in (".weight", ".bias"):
            if k.endswith(("lora_A" + suffix, "lora_B" + suffix)):
                k = k[: -len(suffix)] + f".{adapter_name}{suffix}"
                break
        out[k] = v
    return out


def rename_adapter(layers: list, configs: list[dict], old: str, new: str) -> None:
    """Rename an adapter in the given peft tuner layers and in the models' `peft_config` tables.

    Private names (peft 0.20, 0.21; torch): each per-adapter `ModuleDict`'s `_modules` (its ordered
    dict, renamed in place without add_module's checks) and the layer's `_active_adapter`.
    Stands in for: peft has no public rename (delete + load is the public way).
    Fallback: none is run; `hotswap_available()` is False, so adapters are never renamed.
    """
    tables: dict[type, list[str]] = {}  # per layer class: the attributes that are per-adapter tables
    for module in layers:
        attrs = tables.get(type(module))
        if attrs is None and old in getattr(module, "r", {}):
            attrs = tables[type(module)] = _adapter_tables(module, old)
        for attr in attrs or ():
            table = getattr(module, attr)
            if isinstance(table, torch.nn.ModuleDict):  # its ordered dict: no add_module checks
                table = table._modules
            if old in table:
                table[new] = table.pop(old)
        active = module._active_adapter
        module._active_adapter = new if active == old else [new if a == old else a for a in active]
        module.merged_adapters = [new if a == old else a for a in module.merged_adapters]
    for config in configs:
        config[new] = config.pop(old)


def _adapter_tables(module, name: str) -> list[str]:
    """The attributes of a peft layer keyed by adapter name: its declared ones and any other dict."""
    declared = (*module.adapter_layer_names, *module.other_param_names)
    attrs = [a for a in declared if getattr(module, a, None) is not None]
    attrs += [
        a for a, t in vars(module).items()
        if not a.startswith("_") and a not in attrs and isinstance(t, dict) and name in t
    ]
    return attrs


# --- 5. LyCORIS files built with peft's tuners (formats/lycoris/) -------------------------------------


def lycoris_refusal() -> str | None:
    """Why LoHa/LoKr/DoRA/full files cannot be loaded here, or None when they can.

    The layers are built with peft's public tuners (`inject_adapter_in_model` with LoraConfig,
    LoHaConfig, LoKrConfig, then `set_peft_model_state_dict`), and diffusers is told about them
    through `mark_peft_loaded` below, a private flag. That was verified (tests/test_lycoris.py,
    images against the LyCORIS library's own forward pass) on diffusers 0.42 / peft 0.21; peft
    0.20's tuners take the same configs. Outside the verified versions there is no public way
    to tell diffusers a component holds adapters it did not load, so such a file is refused with
    this message (the fallback), rather than loaded half-working. `fast_paths = on` forces it.
    """
    if versions_verified() or (_mode or get_config().fast_paths) == "on":
        return None
    found = installed_versions()
    return (
        f"LyCORIS (LoHa/LoKr/DoRA/full) files need diffusers {'/'.join(VERIFIED['diffusers'])} and peft "
        f"{'/'.join(VERIFIED['peft'])}; installed are diffusers {found['diffusers']} and peft {found['peft']}"
    )


def mark_peft_loaded(model: torch.nn.Module) -> None:
    """Tell diffusers/transformers that a component holds peft adapters.

    diffusers' `set_adapters`/`delete_adapters` (and transformers' adapter methods) check the flag
    their own loaders set; peft's `inject_adapter_in_model` does not set it.
    Private name: the model's `_hf_peft_config_loaded` (diffusers 0.41, 0.42; transformers 5).
    Stands in for: what `load_lora_adapter`/`add_adapter` set after injecting layers; neither can
    take LoHa/LoKr layers or several peft configs under one adapter name.
    Fallback: none runs; outside the verified versions `lycoris_refusal` refuses the file first.
    """
    flagged: Any = model  # torch types an attribute it does not know as Tensor | Module
    flagged._hf_peft_config_loaded = True


def register_norm_layers(config: Any, layer_cls: type, norm_types: tuple[type, ...]) -> None:
    """Have a LoraConfig wrap norm layers (`norm_types`) in `layer_cls` (formats/lycoris/norms.py).

    peft has no tuner that adds a scaled diff to a norm layer's affine weight; its LoRA model takes
    custom layer types through an experimental registration, documented in peft's "custom models"
    guide. Private name: `LoraConfig._register_custom_module` (peft 0.20, 0.21).
    Stands in for: a peft tuner for `w_norm`/`b_norm` (LyCORIS `train_norm`), which peft lacks.
    Fallback: none runs; outside the verified versions `lycoris_refusal` refuses the file first.
    """
    config._register_custom_module(dict.fromkeys(norm_types, layer_cls))


def forward_conv_attributes(layer: torch.nn.Module) -> None:
    """Give a nested peft conv layer the `groups` of the conv it wraps.

    peft's LoRA conv layer reads `groups` straight off the layer it wraps; when that is a LoHa/LoKr
    conv layer (another adapter on the same conv), the attribute is not there.
    Touch (peft 0.20, 0.21): an attribute set on a peft tuner layer (no private name).
    Stands in for: peft nesting tuner layers of two families on one conv, which it does not support.
    Fallback: the same (the attribute is public torch Conv2d's); nothing version-specific.
    """
    peft_layer: Any = layer  # torch types the attributes peft adds as Tensor | Module
    base = peft_layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    if isinstance(base, torch.nn.Conv2d) and not hasattr(layer, "groups"):
        peft_layer.groups = base.groups


def move_adapter(module: Any, adapter_name: str, device: str | torch.device) -> None:
    """`set_lora_device` for any peft tuner layer (LoRA, LoHa, LoKr, DoRA magnitudes).

    diffusers' own `set_lora_device` reads `lora_A` of every tuner layer, which LoHa/LoKr lack.
    Touch (peft 0.20, 0.21): a `ParameterDict` entry of a tuner layer (its public
    `adapter_layer_names` tables) replaced by a moved Parameter, as diffusers does for `lora_A`.
    Stands in for: `pipe.set_lora_device([name], device)`.
    Fallback: the same code (public torch/peft attributes only); nothing version-specific.
    """
    for attr in (*module.adapter_layer_names, "lora_magnitude_vector"):
        table = getattr(module, attr, None)
        if table is not None and adapter_name in table:
            item = table[adapter_name]
            if isinstance(item, torch.nn.Parameter):  # a ParameterDict entry: replaced, as diffusers does
                table[adapter_name] = torch.nn.Parameter(item.data.to(device), item.requires_grad)
            else:
                item.to(device)


def sgm_module_paths(pipe: Any, names: list[str]) -> dict[str, str]:
    """{kohya SGM module name (lora_unet_input_blocks_4_1_...): diffusers UNet module path}.

    Private names (diffusers 0.41, 0.42): `lora_conversion_utils._maybe_map_sgm_blocks_to_diffusers`
    and `_convert_unet_lora_key`, the converters `StableDiffusionXLPipeline.lora_state_dict` runs.
    Stands in for: that public `lora_state_dict(state_dict, unet_config=...)`.
    Fallback: exactly that public call on a stand-in file, one LoRA module per name whose rank is
    its index (a tiny tensor), the converted keys mapped back to names by rank. Names the public
    converter cannot place are left out (reported unmatched by coverage).
    """
    unet_config = pipe.unet.config
    if fast_paths():
        try:
            from diffusers.loaders.lora_conversion_utils import (
                _convert_unet_lora_key,
                _maybe_map_sgm_blocks_to_diffusers,
            )
        except ImportError:
            pass
        else:
            carried = {f"{n}.alpha": n for n in names}  # the values carry each name through the renames
            mapped = _maybe_map_sgm_blocks_to_diffusers(dict(carried), unet_config)
            return {
                orig: _convert_unet_lora_key(k.split(".")[0]).replace(".processor", "")
                for k, orig in mapped.items()
            }
    return _sgm_paths_public(pipe, names)


def _sgm_paths_public(pipe: Any, names: list[str]) -> dict[str, str]:
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    stand_in = {}
    for i, n in enumerate(names):
        stand_in[f"{n}.lora_down.weight"] = torch.zeros(i + 1, 1)
        stand_in[f"{n}.lora_up.weight"] = torch.zeros(1, i + 1)
    try:
        out = StableDiffusionXLLoraLoaderMixin.lora_state_dict(stand_in, unet_config=pipe.unet.config)
    except Exception as e:  # the converter's refusal leaves these names unmatched
        logger.info("diffusers could not convert kohya SGM names (%s): they stay unmatched", e)
        return {}
    converted = out[0] if isinstance(out, tuple) else out
    paths = {}
    for key, t in converted.items():
        # diffusers spells the converted down matrix `<path>.lora.down.weight`, or for attention
        # projections `<block>.processor.to_k_lora.down.weight` (its old processor form)
        m = re.match(r"^unet\.(.+?)(?:\.lora_A|\.lora\.down|_lora\.down)\.weight$", key)
        if m is not None and t.ndim == 2:
            # to_out_lora: to_out.0
            path = m.group(1) + (".0" if m.group(1).endswith(".processor.to_out") else "")
            paths[names[int(t.shape[0]) - 1]] = path.replace(".processor.", ".")
    return paths


# --- 6. fusion inside peft's tuner layers -------------------------------------------------------------


def merges_by_gemm(module: Any, adapters: Sequence[str], weight: torch.Tensor) -> bool:
    """Whether fusion may merge `adapters` into `module` itself, one out-of-place GEMM each
    (`addmm(W, B, A, alpha=scaling * lora_scale)`), and record it with `record_merged`.

    That is peft's own merge for its LoRA Linear without DoRA, bias, variant or fan_in_fan_out:
    exactly W + scaling * B @ A, in a dtype/device where one GEMM is accurate: fp32, or any dtype on
    CUDA (peft itself computes CPU fp16 deltas in fp32, so those take peft's path); why out of place:
    `fusion.fuse`.
    Relies on (peft 0.20, 0.21): that formula; the layer's `use_dora`, `lora_bias`, `lora_variant`
    and `fan_in_fan_out` saying when it holds; `merged_adapters` being all the record a merge keeps
    (peft's forward runs the base layer alone for a merged adapter).
    Stands in for: `module.merge(adapter_names=adapters)`.
    Fallback: False, so fusion runs peft's `merge()` on a copy of the weight (the same sum, rounded
    the way peft rounds it).
    """
    if not fast_paths():
        return False
    from peft.tuners.lora.layer import Linear

    if type(module) is not Linear or module.fan_in_fan_out:
        return False
    if weight.dtype != torch.float32 and weight.device.type != "cuda":
        return False
    variants = getattr(module, "lora_variant", {})
    return not any(
        module.use_dora.get(a) or module.lora_bias.get(a) or variants.get(a) is not None for a in adapters
    )


def record_merged(module: Any, adapters: Sequence[str]) -> None:
    """Record `adapters` as merged into `module`, as peft's `merge()` does (after `merges_by_gemm`)."""
    module.merged_adapters.extend(adapters)


def record_unmerged(module: Any) -> None:
    """Record in peft's bookkeeping that nothing is merged into `module` any more: the exact unfuse,
    which puts the original weight tensors back. Call it before they go back.

    Fast path (peft 0.20, 0.21): `merged_adapters` emptied, the whole of peft's record of a merge.
    Stands in for: `module.unmerge()`, which subtracts the deltas again (and drifts in fp16).
    Fallback: `module.unmerge()` itself, on the fused weights about to be replaced: peft keeps its
    own record, and the originals put back after it overwrite what the subtraction left.
    """
    if not module.merged:
        return
    if fast_paths():
        module.merged_adapters = []
    else:
        module.unmerge()


# --- 7. set_adapters, layer by layer ------------------------------------------------------------------


def _plain_weights(weights: Sequence[Any]) -> bool:
    values = [x for w in weights for x in (w.values() if isinstance(w, Mapping) else [w])]
    return all(isinstance(x, (int, float)) for x in values)


def set_adapters(
    pipe: Any, layers: Callable[[str], Iterable[tuple[str, Any]]], components: Sequence[str],
    names: Sequence[str], weights: Sequence[Any], same_names: bool = False,
) -> None:
    """`pipe.set_adapters(names, weights)`, straight on the tuner layers the engine lists once per
    load (`layers(component)`), for plain weights: a number per adapter, or a number per component.

    diffusers' `set_adapters` hands every component all the names, walks every module of each and
    calls peft's `set_adapter(names)` and `set_scale(name, weight)` on every tuner layer; a
    component an adapter's dict leaves out runs at 1.0. Here the same two calls go to the listed
    layers, without the walk, and `set_adapter` is skipped when the names are those of the last call
    (`same_names`): only the scales change.
    Relies on (diffusers 0.41, 0.42; peft 0.20, 0.21): `set_adapters`' work per tuner layer being
    those two public peft calls (diffusers' `set_weights_and_activate_adapters`).
    Stands in for: `pipe.set_adapters(names, weights)`.
    Fallback: that call, for weights that are not plain (per-block ones) too, each adapter's dict
    limited to the components it has (diffusers warns about the others and runs them at 1.0).
    """
    if fast_paths() and _plain_weights(weights):
        for comp in components:
            for _, module in layers(comp):
                if not same_names:
                    module.set_adapter(list(names))
                for name, value in zip(names, weights, strict=True):
                    module.set_scale(name, value.get(comp, 1.0) if isinstance(value, Mapping) else value)
        return
    present = pipe.get_list_adapters()
    call = [
        {c: v for c, v in w.items() if name in present.get(c, ())} if isinstance(w, Mapping) else w
        for name, w in zip(names, weights, strict=True)
    ]
    pipe.set_adapters(list(names), call)
