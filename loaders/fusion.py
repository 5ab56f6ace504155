"""Fusion: merge adapters into the base weights (`fuse_lora`), keeping the originals so that an
unfuse restores them bit-exactly.
"""

from __future__ import annotations

import torch

from . import fence, quantized
from .formats.lycoris.norms import is_norm_layer
from .live import LivePipeline, LoraOperationError, adapter_in_layer, layers, timed
from .state import FuseOp


def restore(live: LivePipeline, comps: list[str]) -> None:
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
        # the names fusion saved under are the cached layer list's; `get_submodule` resolves a path
        # through diffusers' `__getattr__`, ~50 us a layer (half an unfuse of 270 narrow layers)
        by_name = dict(layers(live, comp))
        with timed(live, "unfuse_lora(exact)", comp):
            # newest first: two tuner layers nested on one base layer (adapters of two peft types,
            # e.g. LoRA and LoHa, on one layer) each saved the weight as they found it
            for name, (w, b) in reversed(saved.items()):
                module = by_name.get(name) or model.get_submodule(name)
                fence.record_unmerged(module)  # before the originals go back (its fallback unmerges)
                base = module.get_base_layer()
                if w.device == base.weight.device:
                    fused = base.weight.data
                    base.weight.data = w
                    if fused.data_ptr() != w.data_ptr():  # ours: a later fuse may write into it
                        live.fusion_spares[(comp, name)] = fused
                else:
                    base.weight.data.copy_(w)
                if b is not None:
                    if b.device == base.bias.device:
                        base.bias.data = b
                    else:
                        base.bias.data.copy_(b)
    sync_merged_bookkeeping(live)


def _spare_copy(live: LivePipeline, comp: str, name: str, weight: torch.Tensor) -> torch.Tensor | None:
    """``weight`` copied into the fused tensor an unfuse of this layer set aside, or None when there is
    none that fits. Re-fusing (a weight change on fused adapters: unfuse, fuse) then writes into
    memory it already owns, a copy plus ``addmm_``, instead of a new tensor each time: fresh pages
    cost as much as the arithmetic and made the time swing from run to run."""
    spare = live.fusion_spares.pop((comp, name), None)
    if (spare is None or spare.shape != weight.shape or spare.dtype != weight.dtype
            or spare.device != weight.device or not spare.is_contiguous()):
        return None
    return spare.copy_(weight)  # under fuse's no_grad


def drop_spares(live: LivePipeline) -> None:
    """Free the fused tensors no fuse of this transition took (called when a transition ends)."""
    live.fusion_spares.clear()


def sync_merged_bookkeeping(live: LivePipeline) -> None:
    merged: set[str] = set()
    for comp in live.components:
        for _, module in layers(live, comp):
            merged.update(module.merged_adapters)
    fence.set_fused_record(live.pipe, merged)


def fuse(live: LivePipeline, comp: str, op: FuseOp) -> None:
    """`fuse_lora` for one component, keeping the original weights for an exact unfuse.

    peft decides what merges (adapters present and not yet merged in each layer, their `scaling`
    from set_adapters) and its bookkeeping (`merged_adapters`) is kept, so peft's forward runs the
    fused base layer. The arithmetic of plain Linear layers is one out-of-place GEMM
    (`addmm(W, B, A, alpha=scaling * lora_scale)`, where the fence allows it: `merges_by_gemm`): the
    result goes to a new tensor and the original stays untouched as the backup, which makes fusing
    ~3x faster than diffusers' `fuse_lora` and unfusing a pointer swap. Every other layer goes
    through peft's own `merge()`; a quantized layer (GGUF, fp8) through quantized.fused_weight.
    """
    _refuse_unwritable(live, comp, op)
    saved = live.backups.setdefault(comp, {})
    # one no_grad for the whole walk (not two per layer): peft's active adapters require grad, and
    # no merge here keeps a graph
    with timed(live, "fuse_lora", f"{comp} scale={op.lora_scale}"), torch.no_grad():
        for name, module in layers(live, comp):
            # any peft tuner layer (LoRA, LoHa, LoKr, norm diff) holding the adapter
            todo = [
                a for a in op.adapter_names if adapter_in_layer(module, a) and a not in module.merged_adapters
            ]
            if not todo:
                continue
            base = module.get_base_layer()
            weight = base.weight.data
            storage = quantized.layer_storage(base.weight)
            first = name not in saved
            if first:
                keep_bias = getattr(base, "bias", None) is not None and (
                    any(getattr(module, "lora_bias", {}).get(a) for a in todo) or is_norm_layer(module)
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
            if storage is not None:
                fused = quantized.fused_weight(module, todo, op.lora_scale, op.safe_fusing)
                if fused is None:
                    raise LoraOperationError(
                        f"safe_fusing found NaN/inf in {comp}.{name} after merging {', '.join(todo)}: the "
                        "adapter is broken. Nothing was fused.",
                        "safe_fusing",
                        op.origin,
                    )
                base.weight.data = fused  # a new tensor: the original quantized one stays the backup
                fence.record_merged(module, todo)
            elif fence.merges_by_gemm(module, todo, weight):
                new = weight if writable else _spare_copy(live, comp, name, weight)
                for a in todo:
                    up = module.lora_B[a].weight.to(weight.dtype)
                    down = module.lora_A[a].weight.to(weight.dtype)
                    alpha = module.scaling[a] * op.lora_scale
                    if new is None:
                        new = torch.addmm(weight, up, down, alpha=alpha)
                    else:
                        new.addmm_(up, down, alpha=alpha)
                assert new is not None  # `todo` is not empty: the loop made it
                if op.safe_fusing and not torch.isfinite(new).all():
                    raise LoraOperationError(
                        f"safe_fusing found NaN/inf in {comp}.{name} after merging {', '.join(todo)}: the "
                        "adapter is broken. Nothing was fused.",
                        "safe_fusing",
                        op.origin,
                    )
                base.weight.data = new
                fence.record_merged(module, todo)
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



def _refuse_unwritable(live: LivePipeline, comp: str, op: FuseOp) -> None:
    """Before anything is fused: every quantized layer holding the adapters must take a requantized
    weight back; otherwise FuseLoRA is an error naming the format, and the LoRA stays unfused."""
    for name, module in layers(live, comp):
        if quantized.layer_storage(module.get_base_layer().weight) is None:
            continue  # a plain weight: always writable (the common case, checked first: it is cheap)
        todo = [a for a in op.adapter_names
                if adapter_in_layer(module, a) and a not in module.merged_adapters]
        reason = quantized.refusal(module, todo) if todo else None
        if reason:
            raise LoraOperationError(f"cannot fuse into {comp}.{name}: {reason}", "fuse_unet", op.origin)
