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

This module holds the diff, the order and the rollback; the steps are their own modules: live.py
(the record), loading.py and hotswap.py (2), activation.py (4, 5), fusion.py (1, 6).
"""

from __future__ import annotations

import logging
import os
import time

from . import activation, fence, fusion
from .live import LivePipeline, LoraOperationError, has_lora, timed, tuner_layers
from .loading import load_adapter
from .state import ActiveSet, AdapterSpec, AdapterState

__all__ = ["LivePipeline", "LoraOperationError", "realize"]

logger = logging.getLogger(__name__)


def _same_file(a: AdapterSpec, b: AdapterSpec | None) -> bool:
    return b is not None and a.path == b.path and a.sha256 == b.sha256 and a.target == b.target


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
    fusion.restore(live, restore)
    fused_now = {c: (() if c in restore else current.fuse_ops_for(c)) for c in live.components}

    # 2. adapters out (parked or deleted), adapters in (unparked or loaded)
    changed = bool(to_park or to_delete or to_load or to_unpark)
    for a in to_park:
        live.parked[a.name] = a
    for t in to_unpark:
        del live.parked[t.name]
    if not live.backups:  # evicting is a delete: only with nothing fused (see above)
        budget, used = live.parked_bytes, sum(_size_of(p) for p in live.parked.values())
        for name in list(live.parked):
            if used <= budget:
                break
            used -= _size_of(live.parked[name])
            to_delete.append(name)
    if to_delete:
        live.layer_cache.clear()  # peft drops layers
    if to_delete:
        with timed(live, "delete_adapters", ",".join(sorted(set(to_delete)))):
            pipe.delete_adapters(sorted(set(to_delete)))
        for n in to_delete:
            live.live_devices.pop(n, None)
            if current.adapter(n) is None or target.adapter(n) is None:
                live.parked.pop(n, None)
    # parked adapters a load may hot-swap into (the ones staying parked; oldest first)
    slots = [n for n in live.parked if n not in to_delete]
    for spec in to_load:
        load_adapter(live, spec, lora_reader, slots)
        live.live_devices[spec.name] = None
    if to_delete or to_load:
        # peft changes the layers' active adapters behind our back: deleting an active adapter
        # activates another (the alphabetically first remaining one), a load activates the new one
        # alone. The last set_adapters call no longer describes the layers: step 4 sets them in full.
        live.live_active = None

    # 3. devices
    for spec in target.adapters:
        if live.live_devices.get(spec.name) != spec.device:
            device = spec.device or str(live.device)
            with timed(live, "set_lora_device", f"{spec.name}->{device}"):
                activation.set_lora_device(live, spec.name, device)  # LoHa/LoKr layers too
            live.live_devices[spec.name] = spec.device

    # 4-6. activation, text-encoder switch, fusion
    pending = {c: target.fuse_ops_for(c)[len(fused_now[c]) :] for c in live.components}
    for comp in live.components:
        for op in pending[comp]:
            if live.live_active != op.active or changed:
                activation.set_active(live, op.active)
                changed = False
            fusion.fuse(live, comp, op)
    if live.live_active != target.active or changed:
        activation.set_active(live, target.active)
    if live.live_te_disabled != target.te_disabled:
        activation.apply_text_encoder_switch(live, target.te_disabled)
    if any(pending.values()):
        fusion.sync_merged_bookkeeping(live)


def _reset(live: LivePipeline) -> None:
    """Back to the bare base pipeline, whatever state it is in: restore fused weights, unload all."""
    fusion.restore(live, list(live.backups))
    if any(has_lora(getattr(live.pipe, c)) for c in live.components) or any(
        True for c in live.components for _ in tuner_layers(getattr(live.pipe, c))
    ):
        with timed(live, "unload_lora_weights", "(reset)"):
            live.pipe.unload_lora_weights()
    fence.set_fused_record(live.pipe, set())
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
    finally:
        fusion.drop_spares(live)  # kept only from an unfuse to the fuse of the same transition
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
