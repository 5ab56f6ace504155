"""The reconciler: bring a live diffusers pipeline to the LoRA state a PIPELINE handle describes.

`realize(live, target)` diffs the state the live pipeline is in against the target and runs the
fewest diffusers/peft operations, in a safe order:

1. restore the fused components whose fusion changes (from a copy of the original weights, so the
   restore is bit-exact; diffusers' `unfuse_lora` subtracts a delta, drifts in fp16 and corrupts the
   weights when adapters or weights changed while fused);
2. delete or unload adapters that go, load the ones that come (`load_lora_weights`);
3. move adapters between devices (`set_lora_device`);
4. `set_adapters` explicitly (diffusers leaves only the newest adapter active after a load);
5. switch text-encoder LoRA on/off;
6. fuse last (`fuse_lora`), with the weights each fusion was made with, then set the current
   weights again (`fuse_lora(lora_scale != 1)` rescales peft's layers permanently).

Any exception on the way rolls the pipeline back to the state it was in: fused weights restored
from the copies, every LoRA layer unloaded, the previous state replayed. The caller sees one error.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from .formats.lycoris import adapter_in_layer, is_lora_layer, move_adapter
from .state import TEXT_ENCODERS, ActiveSet, AdapterSpec, AdapterState, FuseOp

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
    # sha256 of the files whose adapters a hotswap overwrote, most recent last (see _load_adapter)
    swapped_out: dict[str, None] = field(default_factory=dict)
    # (file sha256, path) -> {component: (state dict, LoraConfig)} diffusers handed peft's hotswap
    swap_inputs: OrderedDict = field(default_factory=OrderedDict)

    @property
    def components(self) -> tuple[str, ...]:
        mods = getattr(self.pipe, "_lora_loadable_modules", ())
        return tuple(c for c in mods if getattr(self.pipe, c, None) is not None)

    @property
    def device(self) -> torch.device:
        return self.pipe.device


# ----------------------------------------------------------------------------------------------


@contextmanager
def _op(live: LivePipeline, name: str, detail: str = ""):
    t0 = time.perf_counter()
    yield
    live.ops.append(name)
    logger.debug("%s %s took %.1f ms", name, detail, (time.perf_counter() - t0) * 1e3)


def _tuner_layers(model: torch.nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            yield name, module


def _layers(live: LivePipeline, comp: str) -> list:
    cached = live.layer_cache.get(comp)
    if cached is None:
        cached = live.layer_cache[comp] = list(_tuner_layers(getattr(live.pipe, comp)))
    return cached


def _has_lora(model: torch.nn.Module) -> bool:
    return getattr(model, "peft_config", None) is not None and bool(model.peft_config)


# --- loading --------------------------------------------------------------------------------------


def _load_adapter(live: LivePipeline, spec: AdapterSpec, lora_reader, slots: list[str] | None = None) -> None:
    """`load_lora_weights` from the cached, already-parsed file, after checking where its keys land.

    `slots`: parked adapters this one may take the place of. When one has the same layers and ranks,
    the file is hot-swapped into it (peft's hotswap: copying weights instead of peft building
    layers) and the slot is renamed; the slot leaves `slots` and the parking.

    A file whose adapter a hotswap overwrote is not hot-swapped when it comes back, but loaded: a
    switch back means the two are used in turn (A/B comparisons, two branches of one graph), and
    with both loaded every later switch is one set_adapters (~5 ms) instead of a swap (~60 ms).
    """
    from . import lora_file

    try:
        lf = lora_reader(spec.path)
    except Exception as e:
        raise LoraOperationError(str(e), "lora_name", spec.origin) from e
    key = (lf.sha256, lf.path)
    cov = live.coverage_cache.get(key)
    if cov is None:
        cov = live.coverage_cache[key] = lora_file.coverage(live.pipe, lf)
    mismatched = cov.shape_mismatches
    if mismatched:
        shown = "; ".join(f"{m.module}: {m.reason}" for m in mismatched[:3])
        raise LoraOperationError(
            f"{len(mismatched)} of the LoRA's layers have the wrong shape for this pipeline ({shown}) "
            "— it is made for another base model",
            "lora_name",
            spec.origin,
        )
    if cov.matched == 0:
        raise LoraOperationError(cov.message(), "lora_name", spec.origin)  # the message says why
    if cov.unmatched:
        msg = f"{spec.name}: {cov.message()}"
        live.warnings.append(msg)
        logger.warning(msg)

    pipe = live.pipe
    slot = None if lf.sha256 in live.swapped_out else _hotswap_slot(live, cov, slots or [])
    try:
        if slot is not None:
            _hotswap(live, lf, slot, spec.name, tuple(cov.layout))
            slots.remove(slot)
        else:
            live.layer_cache.clear()  # peft adds layers (a swap keeps them)
            with _op(live, "load_lora_weights", spec.name), _quiet_loading():
                lora_file.load_lora_file(pipe, lf, spec.name)
    except Exception as e:
        raise LoraOperationError(f"diffusers could not load {lf.name}: {e}", "lora_name", spec.origin) from e
    if not any(spec.name in names for names in pipe.get_list_adapters().values()):
        raise LoraOperationError("diffusers loaded no layer from this file", "lora_name", spec.origin)
    live.swapped_out.pop(lf.sha256, None)


# --- hotswap ---------------------------------------------------------------------------------------


def _hotswap_slot(live: LivePipeline, cov, slots: list[str]) -> str | None:
    """A parked adapter the file can be hot-swapped into, or None.

    peft's hotswap copies weights into existing tensors, so: a file of plain LoRA weights that lands
    completely, and a parked, plain, unmerged adapter on the pipeline's device with exactly the same
    modules and ranks in exactly the same components (denoiser and text encoders alike).
    """
    if not slots or not cov.plain or not cov.complete or not cov.layout:
        return None
    comps = live.components
    if any(c not in comps for c in cov.layout):
        return None
    models = {c: getattr(live.pipe, c) for c in comps}
    for slot in slots:  # the oldest parked first: the most recent is the likeliest to be toggled back to
        if live.live_devices.get(slot) is not None:
            continue
        if {c for c, m in models.items() if slot in (getattr(m, "peft_config", None) or {})} != set(cov.layout):
            continue
        if all(_slot_fits(live, c, slot, cov.layout[c]) for c in cov.layout):
            return slot
    return None


def _slot_fits(live: LivePipeline, comp: str, slot: str, wanted) -> bool:
    config = getattr(live.pipe, comp).peft_config[slot]
    if config.use_dora or config.use_rslora or getattr(config, "lora_bias", False):
        return False
    have = {}
    for name, m in _layers(live, comp):
        if slot in getattr(m, "r", {}):
            if slot in m.merged_adapters or not is_lora_layer(m):  # #15: peft hot-swaps LoRA layers only
                return False
            have[name] = int(m.r[slot])
    return have == wanted


# A name no module path or other adapter's key contains: peft's hotswap finds the slot's keys by
# substring (`adapter_name in key`) and zeroes the ones the new file lacks, so swapping into a slot
# named "d" would zero every other adapter's "down_blocks..." weights.
_SWAP_NAME = "loragraph_hotswap_slot_5f1c"


def _hotswap(live: LivePipeline, lf, slot: str, name: str, comps) -> None:
    """Load `lf` into the layers of parked adapter `slot` (peft's hotswap), then call it `name`.

    The first swap of a file goes through diffusers' own loader, so its key conversion and
    LoraConfig are the ones a load would use: the denoiser with `hotswap=True` (diffusers calls
    peft's `hotswap_adapter_from_state_dict`); the text encoders, which diffusers refuses to
    hot-swap, with `hotswap=False` but their `load_adapter` (transformers' inject + load) replaced,
    for this call, by the same peft function on the same converted state dict. What diffusers hands
    peft is kept per file (`swap_inputs`), so a later swap of the same file calls peft directly with
    it, skipping diffusers' conversions and its per-load walks over every module (~15 ms at SD1.5
    size). The slot is renamed to `_SWAP_NAME` for the swap (see there). peft's hotswap updates
    each layer's `scaling` but not `lora_alpha`, from which `set_adapters` recomputes it, nor the
    adapter's config, from which SaveLoRA reads alphas: both are set here from diffusers' config.
    """
    import peft.utils.hotswap as peft_hotswap

    pipe = live.pipe
    key = (lf.sha256, lf.path)
    inputs = live.swap_inputs.get(key)
    _rename_adapter(live, slot, _SWAP_NAME, comps)
    if inputs is not None and set(inputs) == set(comps):
        live.swap_inputs.move_to_end(key)
        with _op(live, "hotswap", f"{name} into {slot} (peft, diffusers' inputs kept)"):
            for comp in comps:
                model, (state_dict, config) = getattr(pipe, comp), inputs[comp]
                peft_hotswap.check_hotswap_configs_compatible(model.peft_config[_SWAP_NAME], config)
                peft_hotswap.hotswap_adapter_from_state_dict(
                    model=model, state_dict=state_dict, adapter_name=_SWAP_NAME, config=config
                )
    else:
        inputs = _hotswap_through_diffusers(live, lf, comps, f"{name} into {slot}")
        live.swap_inputs[key] = inputs
        while len(live.swap_inputs) > _SWAP_INPUTS_KEPT:
            live.swap_inputs.popitem(last=False)
    for comp in comps:
        for _, module in _layers(live, comp):
            if _SWAP_NAME in getattr(module, "scaling", {}):  # scaling = the file's alpha / r now
                module.lora_alpha[_SWAP_NAME] = module.scaling[_SWAP_NAME] * module.r[_SWAP_NAME]
        config = inputs[comp][1]
        getattr(pipe, comp).peft_config[_SWAP_NAME] = copy.deepcopy(config)  # the kept one stays as built
    _rename_adapter(live, _SWAP_NAME, name, comps)
    gone = live.parked.pop(slot, None)
    live.live_devices.pop(slot, None)
    if gone is not None:
        live.swapped_out[gone.sha256] = None
        while len(live.swapped_out) > _SWAPPED_OUT_KEPT:
            live.swapped_out.pop(next(iter(live.swapped_out)))


# How many overwritten files are remembered: more than a graph switches between, a few bytes each.
_SWAPPED_OUT_KEPT = 256
# Files whose swap inputs are kept per pipeline: their tensors are mostly the parsed file's own
# (conversions rename keys), so a few cost little; kohya files' rescaled ones cost one LoRA each.
_SWAP_INPUTS_KEPT = 8


def _hotswap_through_diffusers(live: LivePipeline, lf, comps, detail: str) -> dict[str, tuple[dict, Any]]:
    """Hot-swap `lf` into adapter `_SWAP_NAME` through diffusers' loader (see `_hotswap`); returns
    {component: (state dict, LoraConfig)} as diffusers handed them to peft."""
    import peft.utils.hotswap as peft_hotswap

    from . import lora_file

    pipe = live.pipe
    models = {id(getattr(pipe, c)): c for c in comps}
    captured: dict[str, tuple[dict, Any]] = {}

    def recording(model, state_dict, adapter_name, config, **kwargs):
        captured[models[id(model)]] = (state_dict, config)
        return original(model=model, state_dict=state_dict, adapter_name=adapter_name, config=config, **kwargs)

    def te_swapper(te):
        def load_adapter(adapter_name=None, adapter_state_dict=None, peft_config=None, **_):
            peft_hotswap.check_hotswap_configs_compatible(te.peft_config[adapter_name], peft_config)
            recording(te, _with_adapter_name(adapter_state_dict, adapter_name), adapter_name, peft_config)

        return load_adapter

    te_loader = type(pipe).load_lora_into_text_encoder if hasattr(pipe, "load_lora_into_text_encoder") else None

    def load_te(*args, **kwargs):
        te = kwargs["text_encoder"]
        kwargs["hotswap"] = False
        te.load_adapter = te_swapper(te)
        try:
            return te_loader(*args, **kwargs)
        finally:
            del te.load_adapter

    with lora_file.DIFFUSERS_PATCH_LOCK:
        original = peft_hotswap.hotswap_adapter_from_state_dict  # what `recording` calls
        peft_hotswap.hotswap_adapter_from_state_dict = recording  # diffusers imports it at call time
        if te_loader is not None:
            pipe.load_lora_into_text_encoder = load_te
        try:
            with _op(live, "hotswap", detail), _quiet_loading():
                lora_file.load_lora_file(pipe, lf, _SWAP_NAME, hotswap=True)
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


def _rename_adapter(live: LivePipeline, old: str, new: str, comps) -> None:
    """Rename an adapter in every peft layer and in the models' peft_config (peft has no rename)."""
    tables: dict[type, list[str]] = {}  # per layer class: the attributes that are per-adapter tables
    for comp in comps:
        for _, module in _layers(live, comp):  # the same layers before and after a hotswap
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
        config = getattr(live.pipe, comp).peft_config
        config[new] = config.pop(old)


def _adapter_tables(module, name: str) -> list[str]:
    """The attributes of a peft layer keyed by adapter name: its declared ones and any other dict."""
    attrs = [a for a in (*module.adapter_layer_names, *module.other_param_names) if getattr(module, a, None) is not None]
    attrs += [
        a for a, t in vars(module).items()
        if not a.startswith("_") and a not in attrs and isinstance(t, dict) and name in t
    ]
    return attrs


@contextmanager
def _quiet_loading():
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


# --- activation -------------------------------------------------------------------------------


def _adapter_weights_for_call(live: LivePipeline, active: ActiveSet) -> list[Any]:
    """Per-adapter weights in set_adapters' form, with components the adapter lacks left out."""
    present = live.pipe.get_list_adapters()
    out = []
    for name, value in zip(active.names, active.weight_values()):
        if isinstance(value, dict):
            value = {c: v for c, v in value.items() if name in present.get(c, ())}
        out.append(value)
    return out


def _set_active(live: LivePipeline, active: ActiveSet) -> None:
    pipe = live.pipe
    values = active.weight_values()
    flat = all(
        isinstance(v, (int, float)) or (isinstance(v, dict) and all(isinstance(x, (int, float)) for x in v.values()))
        for v in values
    )
    if active.names and flat:
        # Plain numbers (no block-wise dicts): the per-layer part of diffusers' set_adapters, which
        # hands every component all names and calls peft's set_adapter + set_scale on each tuner
        # layer, without re-walking every module. Components a dict leaves out get 1.0, as in diffusers.
        same_names = live.live_active is not None and live.live_active.names == active.names
        with _op(live, "set_adapters", ("scales " if same_names else "") + ",".join(active.names)):
            for comp in live.components:
                for _, module in _layers(live, comp):
                    if not same_names:
                        module.set_adapter(list(active.names))
                    for name, value in zip(active.names, values):
                        module.set_scale(name, value.get(comp, 1.0) if isinstance(value, dict) else value)
    elif active.names:
        weights = _adapter_weights_for_call(live, active)
        _check_block_layers(live, active.names, weights)
        # #15: transformer block weights (SD3/Flux), which diffusers refuses: 1.0 to diffusers, then
        # each transformer layer's scale set from its block (loaders/blocks.py)
        per_block = {
            n: w["transformer"] for n, w in zip(active.names, weights)
            if isinstance(w, dict) and isinstance(w.get("transformer"), dict)
        }
        weights = [{**w, "transformer": 1.0} if n in per_block else w for n, w in zip(active.names, weights)]
        with _op(live, "set_adapters", ",".join(active.names)):
            pipe.set_adapters(list(active.names), weights)
            if per_block:
                from .blocks import weight_for

                for layer_name, module in _layers(live, "transformer"):
                    for n, block_dict in per_block.items():
                        module.set_scale(n, weight_for(block_dict, layer_name))
    else:
        # No active adapter: peft layers run the base layer only. diffusers' set_adapters refuses an
        # empty list, so each tuner layer is told directly.
        with _op(live, "set_adapters", "(none)"):
            for comp in live.components:
                for _, module in _layers(live, comp):
                    module.set_adapter([])
    live.live_active = active
    # set_adapters re-creates nothing, but layers made by a load start enabled: re-assert the switch.
    _apply_text_encoder_switch(live, live.state_te_target, force=True)


def _check_block_layers(live: LivePipeline, names, weights) -> None:
    """diffusers' per-block UNet weights index every adapter layer as `<blocks>.<i>.<kind>.<j>` and
    fail (IndexError) on layers outside the down/mid/up blocks (conv_in, time_embedding, conv_out),
    which LoCon/LyCORIS files adapt: say so, naming the input, instead of a bare IndexError."""
    for name, value in zip(names, weights):
        blocks = value.get("unet") if isinstance(value, dict) else None
        if not isinstance(blocks, dict) or getattr(live.pipe, "unet", None) is None:
            continue
        outside = [
            n for n, m in _layers(live, "unet")
            if len(n.split(".")) < 4 and adapter_in_layer(m, name)
        ]
        if outside:
            raise LoraOperationError(
                f"adapter {name!r} adapts UNet layers outside the down/mid/up blocks ({', '.join(outside[:3])}), "
                "which diffusers' per-block weights cannot scale; give it a plain weight instead",
                "block_weights",
            )


def _apply_text_encoder_switch(live: LivePipeline, disabled: tuple[str, ...], force: bool = False) -> None:
    from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder

    for te in live.components:
        if te not in TEXT_ENCODERS:
            continue
        model = getattr(live.pipe, te)
        if not _has_lora(model):
            continue
        want_off = te in disabled
        was_off = te in live.live_te_disabled
        if want_off == was_off and not (force and want_off):
            continue
        with _op(live, "disable_lora_for_text_encoder" if want_off else "enable_lora_for_text_encoder", te):
            (disable_lora_for_text_encoder if want_off else enable_lora_for_text_encoder)(model)
    live.live_te_disabled = tuple(sorted(disabled))


# --- fusing -----------------------------------------------------------------------------------


def _restore(live: LivePipeline, comps: list[str]) -> None:
    """Exact unfuse: put the original weight tensors back and mark the layers unmerged.

    On the CPU the saved tensor *is* the original (fusion wrote a new one), so this is a pointer
    swap: bit-exact and free. On an accelerator the original was copied to the CPU and is copied back.
    """
    pipe = live.pipe
    comps = [c for c in comps if c in live.backups]
    if not comps:
        return
    for comp in comps:
        saved = live.backups.pop(comp)
        model = getattr(pipe, comp)
        with _op(live, "unfuse_lora(exact)", comp):
            # newest first: two tuner layers nested on one base layer (adapters of two peft types on
            # one layer) each saved the weight as they found it
            for name, (w, b) in reversed(saved.items()):
                module = model.get_submodule(name)
                base = module.get_base_layer()
                if w.device == base.weight.device:
                    base.weight.data = w
                else:
                    base.weight.data.copy_(w)
                if b is not None:
                    if b.device == base.bias.device:
                        base.bias.data = b
                    else:
                        base.bias.data.copy_(b)
                module.merged_adapters = []
    _sync_merged_bookkeeping(live)


def _sync_merged_bookkeeping(live: LivePipeline) -> None:
    merged: set[str] = set()
    for comp in live.components:
        for _, module in _layers(live, comp):
            merged.update(module.merged_adapters)
    live.pipe._merged_adapters = merged


def _plain_linear(module, adapters: list[str], weight: torch.Tensor) -> bool:
    """Layers whose merge is exactly W + scaling * B @ A (peft's LoRA Linear without DoRA, bias or
    fan_in_fan_out), in a dtype/device where one GEMM is accurate: fp32, or any dtype on CUDA
    (peft itself computes CPU fp16 deltas in fp32, so those take peft's path)."""
    from peft.tuners.lora.layer import Linear

    if type(module) is not Linear or module.fan_in_fan_out:
        return False
    if weight.dtype != torch.float32 and weight.device.type != "cuda":
        return False
    variants = getattr(module, "lora_variant", {})
    return not any(
        module.use_dora.get(a) or module.lora_bias.get(a) or variants.get(a) is not None for a in adapters
    )


def _fuse(live: LivePipeline, comp: str, op: FuseOp) -> None:
    """`fuse_lora` for one component, keeping the original weights for an exact unfuse.

    peft decides what merges (adapters present and not yet merged in each layer, their `scaling`
    from set_adapters) and its bookkeeping (`merged_adapters`) is kept, so peft's forward runs the
    fused base layer. The arithmetic of plain Linear layers is one out-of-place GEMM
    (`addmm(W, B, A, alpha=scaling * lora_scale)`): the result goes to a new tensor and the original
    stays untouched as the backup, which makes fusing ~3x faster than diffusers' `fuse_lora` and
    unfusing a pointer swap. Every other layer type goes through peft's own `merge()`.
    """
    saved = live.backups.setdefault(comp, {})
    with _op(live, "fuse_lora", f"{comp} scale={op.lora_scale}"):
        for name, module in _layers(live, comp):
            todo = [a for a in op.adapter_names if adapter_in_layer(module, a) and a not in module.merged_adapters]
            if not todo:
                continue
            base = module.get_base_layer()
            weight = base.weight.data
            first = name not in saved
            if first:
                keep_bias = getattr(base, "bias", None) is not None and any(
                    getattr(module, "lora_bias", {}).get(a) for a in todo
                )
                on_cpu = weight.device.type == "cpu"
                bias = base.bias.data if keep_bias else None
                saved[name] = (
                    weight if on_cpu else weight.to("cpu", copy=True),
                    None if bias is None else (bias if on_cpu else bias.to("cpu", copy=True)),
                )
                # on the CPU the original must not be written to: fusion works on a new tensor
                writable = not on_cpu
            else:
                writable = True  # already a tensor of ours
            if _plain_linear(module, todo, weight):
                new = weight if writable else None
                for a in todo:
                    up = module.lora_B[a].weight.to(weight.dtype)
                    down = module.lora_A[a].weight.to(weight.dtype)
                    alpha = module.scaling[a] * op.lora_scale
                    if new is None:
                        with torch.no_grad():  # peft's active adapters require grad: no graph to keep
                            new = torch.addmm(weight, up, down, alpha=alpha)
                    else:
                        with torch.no_grad():
                            new.addmm_(up, down, alpha=alpha)
                if op.safe_fusing and not torch.isfinite(new).all():
                    raise LoraOperationError(
                        f"safe_fusing found NaN/inf in {comp}.{name} after merging {', '.join(todo)}: the "
                        "adapter is broken. Nothing was fused.",
                        "safe_fusing",
                        op.origin,
                    )
                base.weight.data = new
                module.merged_adapters.extend(todo)
            else:
                if not writable:
                    base.weight.data = weight.clone()
                    if saved[name][1] is not None:
                        base.bias.data = base.bias.data.clone()
                if op.lora_scale != 1.0:
                    module.scale_layer(op.lora_scale)
                try:
                    module.merge(safe_merge=op.safe_fusing, adapter_names=todo)
                except ValueError as e:
                    raise LoraOperationError(
                        f"safe_fusing stopped the fusion of {comp}.{name}: {e}. Nothing was fused.",
                        "safe_fusing",
                        op.origin,
                    ) from e
                finally:
                    if op.lora_scale != 1.0:
                        module.unscale_layer(op.lora_scale)


# --- the diff ---------------------------------------------------------------------------------


def _same_file(a: AdapterSpec, b: AdapterSpec | None) -> bool:
    return b is not None and a.path == b.path and a.sha256 == b.sha256


def _parked_budget() -> int:
    """Bytes of inactive adapters kept loaded: ~20 SD1.5 rank-32 LoRAs, a small share of a GPU."""
    return int(os.environ.get("LORAGRAPH_PARKED_BYTES", str(1 << 30)))


def _size_of(spec: AdapterSpec) -> int:
    try:
        return os.path.getsize(spec.path)
    except OSError:
        return 0


def _transition(live: LivePipeline, target: AdapterState, lora_reader) -> None:
    current = live.state or AdapterState()
    pipe = live.pipe
    live.state_te_target = target.te_disabled

    # What goes where. Adapters that no state needs any more are *parked*: left loaded in peft but
    # inactive (peft skips inactive adapters in the forward pass), so coming back to them is one
    # set_adapters call instead of a load. Same name, other file: deleted and loaded again.
    to_park = [a for a in current.adapters if target.adapter(a.name) is None]
    to_delete: list[str] = []
    to_load: list[AdapterSpec] = []
    to_unpark: list[AdapterSpec] = []
    for a in current.adapters:
        t = target.adapter(a.name)
        if t is not None and not _same_file(a, t):
            to_delete.append(a.name)
            to_load.append(t)
    for t in target.adapters:
        if current.adapter(t.name) is None:
            parked = live.parked.get(t.name)
            if parked is not None and _same_file(parked, t):
                to_unpark.append(t)
            else:
                if parked is not None:
                    to_delete.append(t.name)
                to_load.append(t)
    leaving = {a.name for a in to_park} | set(to_delete)

    # 1. fused components whose fusion history is not a prefix of the target's, or that involve an
    #    adapter that leaves, go back to their original weights.
    restore = []
    for comp in current.fused_components:
        if to_load or to_delete:
            # peft unmerges merged layers *by subtraction* when a load re-activates adapters on
            # them: everything goes back to its exact original weights first.
            restore.append(comp)
            continue
        cur_ops, tgt_ops = current.fuse_ops_for(comp), target.fuse_ops_for(comp)
        involved = {n for op in cur_ops for n in op.adapter_names}
        if tgt_ops[: len(cur_ops)] != cur_ops or involved & leaving or comp in target.te_disabled:
            restore.append(comp)
    _restore(live, restore)
    fused_now = {c: (() if c in restore else current.fuse_ops_for(c)) for c in live.components}

    # 2. adapters out (parked or deleted), adapters in (unparked or loaded)
    changed = bool(to_park or to_delete or to_load or to_unpark)
    for a in to_park:
        live.parked[a.name] = a
    for t in to_unpark:
        del live.parked[t.name]
    if not live.backups:  # evicting is a delete: only with nothing fused (see above)
        budget, used = _parked_budget(), sum(_size_of(p) for p in live.parked.values())
        for name in list(live.parked):
            if used <= budget:
                break
            used -= _size_of(live.parked[name])
            to_delete.append(name)
    if to_delete:
        live.layer_cache.clear()  # peft drops layers
    if to_delete:
        with _op(live, "delete_adapters", ",".join(sorted(set(to_delete)))):
            pipe.delete_adapters(sorted(set(to_delete)))
        for n in to_delete:
            live.live_devices.pop(n, None)
            if current.adapter(n) is None or target.adapter(n) is None:
                live.parked.pop(n, None)
    # parked adapters a load may hot-swap into (the ones staying parked; oldest first)
    slots = [n for n in live.parked if n not in to_delete]
    for spec in to_load:
        _load_adapter(live, spec, lora_reader, slots)
        live.live_devices[spec.name] = None

    # 3. devices
    for spec in target.adapters:
        if live.live_devices.get(spec.name) != spec.device:
            device = spec.device or str(live.device)
            with _op(live, "set_lora_device", f"{spec.name}->{device}"):
                if any(not is_lora_layer(m) for c in live.components for _, m in _layers(live, c)):
                    # #15: diffusers' set_lora_device reads `lora_A` of every tuner layer (LoHa/LoKr have none)
                    for comp in live.components:
                        for _, module in _layers(live, comp):
                            move_adapter(module, spec.name, device)
                else:
                    pipe.set_lora_device([spec.name], device)
            live.live_devices[spec.name] = spec.device

    # 4-6. activation, text-encoder switch, fusion
    pending = {c: target.fuse_ops_for(c)[len(fused_now[c]) :] for c in live.components}
    for comp in live.components:
        for op in pending[comp]:
            if live.live_active != op.active or changed:
                _set_active(live, op.active)
                changed = False
            _fuse(live, comp, op)
    if live.live_active != target.active or changed:
        _set_active(live, target.active)
    if live.live_te_disabled != target.te_disabled:
        _apply_text_encoder_switch(live, target.te_disabled)
    if any(pending.values()):
        _sync_merged_bookkeeping(live)


def _reset(live: LivePipeline) -> None:
    """Back to the bare base pipeline, whatever state it is in: restore fused weights, unload all."""
    _restore(live, list(live.backups))
    if any(_has_lora(getattr(live.pipe, c)) for c in live.components) or any(
        True for c in live.components for _ in _tuner_layers(getattr(live.pipe, c))
    ):
        with _op(live, "unload_lora_weights", "(reset)"):
            live.pipe.unload_lora_weights()
    live.pipe._merged_adapters = set()
    live.state = AdapterState()
    live.live_active = ActiveSet()
    live.live_te_disabled = ()
    live.live_devices = {}
    live.parked = {}
    live.layer_cache.clear()
    live.swapped_out.clear()


def realize(live: LivePipeline, target: AdapterState, lora_reader) -> list[str]:
    """Bring `live` to `target`; on failure roll back to the state it had and re-raise.

    Returns the user-facing warnings raised on the way (e.g. keys of a LoRA that did not land).
    """
    if live.state == target:
        return []
    previous = live.state
    live.warnings = []
    t0 = time.perf_counter()
    try:
        if previous is None:
            _reset(live)
        _transition(live, target, lora_reader)
        live.state = target
    except BaseException:
        logger.debug("realize failed; rolling back", exc_info=True)
        _rollback(live, previous, lora_reader)
        raise
    logger.debug("realize took %.1f ms", (time.perf_counter() - t0) * 1e3)
    return list(live.warnings)


def _rollback(live: LivePipeline, previous: AdapterState | None, lora_reader) -> None:
    warnings = live.warnings
    try:
        _reset(live)
        if previous is not None and previous != AdapterState():
            _transition(live, previous, lora_reader)
            live.state = previous
    except BaseException:
        logger.exception("rolling back the LoRA state failed; the pipeline will be reset before next use")
        live.state = None
    finally:
        live.warnings = warnings
