"""Loading a LoRA file onto a live pipeline: check where its keys land, then its family loads it.

`load_adapter` reads the file through the store, predicts its coverage (refusing a file made for
another base model), and either hot-swaps it into a parked adapter (hotswap.py) or loads it as its
format family does (`formats.load_lora_file`: diffusers' `load_lora_weights` with the file's adapter
metadata, or peft's tuners built per module for LyCORIS).
"""

from __future__ import annotations

import contextlib
import logging

from . import fence, hotswap, quantized
from .components import denoisers
from .coverage import coverage
from .formats import load_lora_file
from .live import LivePipeline, LoraOperationError, quiet_loading, timed
from .records import LoraFile, LoraFileError
from .state import AdapterSpec
from .summary import guess_base_model

logger = logging.getLogger(__name__)


def load_adapter(live: LivePipeline, spec: AdapterSpec, lora_reader, slots: list[str] | None = None) -> None:
    """Load the cached, already-parsed file as its family does, after checking where its keys land.

    `slots`: parked adapters this one may take the place of. When one has the same layers and ranks,
    the file is hot-swapped into it (peft's hotswap: copying weights instead of peft building
    layers) and the slot is renamed; the slot leaves `slots` and the parking.

    A file whose adapter a hotswap overwrote is not hot-swapped when it comes back, but loaded: a
    switch back means the two are used in turn (A/B comparisons, two branches of one graph), and
    with both loaded every later switch is one set_adapters (~5 ms) instead of a swap (~60 ms).
    """
    try:
        lf = lora_reader(spec.path)
    except Exception as e:
        raise LoraOperationError(str(e), "lora_name", spec.origin) from e
    key = (lf.sha256, lf.path, spec.target)
    cov = live.coverage_cache.get(key)
    if cov is None:
        try:
            cov = live.coverage_cache[key] = coverage(live.pipe, lf, spec.target)
        except LoraFileError as e:  # the file cannot go on this pipeline at all: nothing was loaded
            raise LoraOperationError(str(e), "lora_name", spec.origin) from e
    mismatched = cov.shape_mismatches
    if mismatched:
        shown = "; ".join(f"{m.module}: {m.reason}" for m in mismatched[:3])
        raise LoraOperationError(
            f"{len(mismatched)} of the LoRA's layers have the wrong shape for this pipeline ({shown}) "
            f"— it is made for another base model{_which_base(lf)}",
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
    slot = None if lf.sha256 in live.swapped_out else hotswap.slot_for(live, cov, slots or [])
    models = [getattr(pipe, c) for c in denoisers(live.components) if getattr(pipe, c, None) is not None]
    # a fresh load sees no other adapter's layers, so its cost does not grow with the stack
    others_aside = (
        contextlib.nullcontext() if slot is not None
        else fence.others_set_aside([getattr(pipe, c) for c in fence.loadable_components(pipe)], spec.name)
    )
    try:
        with others_aside:
            # on an fp8 denoiser, adapters keep the file's values in the compute dtype (quantized/storage.py);
            # a hotswap copies into the slot's tensors, already in it, so it skips that walk over every module
            as_bytes: contextlib.AbstractContextManager[list] = (
                quantized.fp8_weights_as_bytes(models) if slot is None else contextlib.nullcontext([])
            )
            with as_bytes as fp8_models:
                if slot is not None:
                    hotswap.swap(live, lf, slot, spec.name, tuple(cov.layout), spec.target)
                    assert slots is not None  # the slot was picked from them
                    slots.remove(slot)
                else:
                    live.layer_cache.clear()  # peft adds layers (a swap keeps them)
                    with timed(live, "load_lora_weights", spec.name), quiet_loading():
                        load_lora_file(pipe, lf, spec.name, target=spec.target)
            for model in fp8_models:
                quantized.adapters_to_compute_dtype(model)
    except Exception as e:
        raise LoraOperationError(f"diffusers could not load {lf.name}: {e}", "lora_name", spec.origin) from e
    if not any(spec.name in names for names in pipe.get_list_adapters().values()):
        raise LoraOperationError("diffusers loaded no layer from this file", "lora_name", spec.origin)
    live.swapped_out.pop(lf.sha256, None)


def _which_base(lf: LoraFile) -> str:
    """The base the file's keys or metadata name, as inspect says: " (SDXL: has a second text encoder)"."""
    base, why = guess_base_model(lf)
    return f" ({base}: {why})" if base != "other" else ""
