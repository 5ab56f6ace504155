"""Loading a LoRA file onto a live pipeline: check where its keys land, then diffusers loads it.

`load_adapter` reads the file through the store, predicts its coverage (refusing a file made for
another base model), and either hot-swaps it into a parked adapter (hotswap.py) or loads it with
diffusers' `load_lora_weights`, keeping the file's adapter metadata (`load_lora_file`).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any

from . import fence, hotswap
from .coverage import coverage
from .formats import pipeline_state_dict
from .live import LivePipeline, LoraOperationError, timed
from .lora_file import LoraFile
from .state import AdapterSpec

logger = logging.getLogger(__name__)


def load_lora_file(pipe: Any, lora: LoraFile, adapter_name: str, hotswap: bool = False) -> None:
    """Load a cached LoraFile with diffusers exactly as `load_lora_weights(path)` would.

    Without re-reading the file where the fence allows (fence.load_lora_weights): diffusers only
    reads `lora_adapter_metadata` (alpha != rank) from a file path; with an in-memory dict it is lost.
    Everything else is diffusers' own code path, for every pipeline class that has `load_lora_weights`.
    Not transactional: callers roll back on error.
    """
    if lora.format == "lycoris":  # --- #15: peft's LoRA/LoHa/LoKr tuners, built per module
        from .formats import lycoris
        from .lora_file import LoraFileError

        try:
            lycoris.load(pipe, lycoris.parse(lora.state_dict), adapter_name)
        except lycoris.LycorisError as e:
            raise LoraFileError(f"{lora.path}: {e}") from e
        return
    # A hotswap copies into the existing adapter's tensors (never adopts ours): no clone needed.
    state_dict, metadata = pipeline_state_dict(pipe, lora, copy=not hotswap)
    fence.load_lora_weights(pipe, state_dict, metadata, adapter_name, hotswap=hotswap)


def load_adapter(live: LivePipeline, spec: AdapterSpec, lora_reader, slots: list[str] | None = None) -> None:
    """`load_lora_weights` from the cached, already-parsed file, after checking where its keys land.

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
    key = (lf.sha256, lf.path)
    cov = live.coverage_cache.get(key)
    if cov is None:
        cov = live.coverage_cache[key] = coverage(live.pipe, lf)
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
    slot = None if lf.sha256 in live.swapped_out else hotswap.slot_for(live, cov, slots or [])
    try:
        if slot is not None:
            hotswap.swap(live, lf, slot, spec.name, tuple(cov.layout))
            slots.remove(slot)
        else:
            live.layer_cache.clear()  # peft adds layers (a swap keeps them)
            with timed(live, "load_lora_weights", spec.name), quiet_loading():
                load_lora_file(pipe, lf, spec.name)
    except Exception as e:
        raise LoraOperationError(f"diffusers could not load {lf.name}: {e}", "lora_name", spec.origin) from e
    if not any(spec.name in names for names in pipe.get_list_adapters().values()):
        raise LoraOperationError("diffusers loaded no layer from this file", "lora_name", spec.origin)
    live.swapped_out.pop(lf.sha256, None)


@contextmanager
def quiet_loading():
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

