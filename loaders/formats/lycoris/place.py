"""Where a LyCORIS/kohya file's modules land on a pipeline, and why the others don't.

Each module is matched to the pipeline's layer of the same kohya name (LyCORIS's own rule: the module
path with "." replaced by "_"); kohya's SDXL (SGM) UNet names through diffusers' converter (fence);
Flux in Black Forest Labs' names through flux_names.py, a fused module split by rows across
diffusers' layers; Wan in its original names through wan_names.py. A module lands when its delta's
shape is the layer's (a norm diff: the norm's).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
from collections.abc import Iterable
from typing import Any

import torch

from ... import fence, quantized
from ...records import Coverage, LoraFile, LoraFileError, UnmatchedModule
from .deltas import delta_shape
from .flux_names import Target, targets
from .module import PREFIXES, BaseLayer, Module, base_layer
from .norms import NORM_TYPES, fits
from .parse import parse, unsupported, unsupported_message
from .wan_names import targets as wan_targets

# kohya sd-scripts' own (SGM/LDM) names of SDXL UNet modules: lora_unet_input_blocks_4_1_...
_SGM = re.compile(r"^lora_unet_((input_blocks|middle_block|output_blocks|time_embed|label_emb)_|out_[02]$)")


def kohya_names(model: torch.nn.Module, component: str) -> dict[str, str]:
    """{kohya module name (without prefix): module path} for the model's Linear/Conv2d layers.

    Text encoders get both spellings, with and without `text_model_`: kohya files carry it,
    transformers >= 5 flattens CLIPTextModel so LyCORIS run on it writes names without it.
    Norm layers (LayerNorm, GroupNorm) are named too: `train_norm` files adapt them.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    kinds = (torch.nn.Linear, torch.nn.Conv2d, *NORM_TYPES)
    names: dict[str, str] = {}
    for path, module in model.named_modules():
        if not path or ".base_layer" in path or not isinstance(module, (*kinds, BaseTunerLayer)):
            continue
        if isinstance(module, BaseTunerLayer) and not isinstance(module.get_base_layer(), kinds):
            continue
        flat = path.replace(".", "_")
        names.setdefault(flat, path)
        if component.startswith("text_encoder"):
            if flat.startswith("text_model_"):
                names.setdefault(flat.removeprefix("text_model_"), path)
            else:
                names.setdefault("text_model_" + flat, path)
    return names


@dataclasses.dataclass
class Placement:
    """Where each module of a file lands on a pipeline, and why the others don't."""

    landed: dict[str, list[tuple[Module, str]]]  # component -> [(module, model path)]
    unmatched: list[tuple[str, str, str]]  # (component, module name, reason)


def place(pipe: Any, modules: Iterable[Module]) -> Placement:
    """Each module on the layer its kohya, SGM or BFL name finds, when its delta fits that layer."""
    landed: dict[str, list[tuple[Module, str]]] = {}
    unmatched: list[tuple[str, str, str]] = []
    lookups: dict[str, dict[str, str]] = {}
    modules = list(modules)
    # kohya sd-scripts trains SDXL on its own (SGM/LDM) UNet: lora_unet_input_blocks_4_1_... names
    sgm = [m.name for m in modules if m.component == "unet" and _SGM.match(m.name)]
    has_unet = getattr(pipe, "unet", None) is not None
    sgm_paths = _sgm_paths(pipe, sgm) if sgm and has_unet else {}
    for m in modules:
        if m.component == "unet" and not has_unet and getattr(pipe, "transformer", None) is not None:
            # LyCORIS names a transformer denoiser lora_unet_ too (its `unet` argument)
            m = dataclasses.replace(m, component="transformer")
        model = getattr(pipe, m.component, None)
        if model is None:
            missing = f"no such component: {type(pipe).__name__} has no {m.component}"
            unmatched.append((m.component, m.name, missing))
            continue
        if m.component not in lookups:
            lookups[m.component] = kohya_names(model, m.component)
        prefix = next(p for p in PREFIXES if m.name.startswith(p))
        path = lookups[m.component].get(m.name[len(prefix) :])
        if path is None and m.name in sgm_paths:
            path = lookups[m.component].get(sgm_paths[m.name].replace(".", "_"))
        if path is None and m.component == "transformer":
            # Flux in BFL's names (fused qkv, ...), Wan in the original repository's (self_attn_q, ...)
            bare = m.name[len(prefix) :]
            shares = targets(bare, model) or wan_targets(bare, model)
            if shares is not None:
                reason = _shares_misfit(m, model, shares)
                if reason is not None:
                    unmatched.append((m.component, m.name, reason))
                else:
                    landed.setdefault(m.component, []).extend(
                        (dataclasses.replace(m, rows=t.rows), t.path) for t in shares
                    )
                continue
        if path is None:
            unmatched.append((m.component, m.name, "no such module"))
            continue
        base = base_layer(model.get_submodule(path))
        reason = _misfit(m, base)
        if reason is not None:
            unmatched.append((m.component, m.name, reason))
            continue
        landed.setdefault(m.component, []).append((m, path))
    return Placement(landed, unmatched)


# SGM norm layers (train_norm files), which diffusers' SGM converter does not name (no diffusers LoRA
# adapts a norm): a resnet's GroupNorms by the conv beside them (`in_layers` = norm, SiLU, conv1;
# `out_layers` = norm, SiLU, dropout, conv2), and the UNet's last GroupNorm (`out` = norm, SiLU,
# conv_out).
_SGM_NORMS = (
    ("_in_layers_0", "_in_layers_2", ".conv1", ".norm1"),
    ("_out_layers_0", "_out_layers_3", ".conv2", ".norm2"),
)


_SGM_OUT_NORM = ("lora_unet_out_0", "conv_norm_out")


def _sgm_paths(pipe: Any, names: list[str]) -> dict[str, str]:
    """{kohya SGM module name: diffusers UNet path}: diffusers' converter (fence), plus the norm layers."""
    via: dict[str, tuple[str, str, str]] = {}  # norm name -> (its conv's name, conv suffix, norm suffix)
    for n in names:
        for norm, conv, conv_path, norm_path in _SGM_NORMS:
            if n.endswith(norm):
                via[n] = (n[: -len(norm)] + conv, conv_path, norm_path)
    plain = [n for n in names if n not in via and n != _SGM_OUT_NORM[0]]
    paths = fence.sgm_module_paths(pipe, sorted({*plain, *(c for c, _, _ in via.values())}))
    out = {n: paths[n] for n in plain if n in paths}
    for n, (conv, conv_path, norm_path) in via.items():
        if paths.get(conv, "").endswith(conv_path):
            out[n] = paths[conv][: -len(conv_path)] + norm_path
    if _SGM_OUT_NORM[0] in names:
        out[_SGM_OUT_NORM[0]] = _SGM_OUT_NORM[1]
    return out


def _rows_by_inputs(weight: torch.Tensor) -> tuple[int, int]:
    """(output rows, inputs per row) of a layer's weight as it computes (a GGUF weight's real shape)."""
    shape = quantized.logical_shape(weight)
    return shape[0], math.prod(shape[1:])


# the algorithms peft builds as plain LoRA layers, which run on a GGUF weight; the others (LoKr,
# LoHa, full diffs, DoRA) rebuild or read the whole weight in its stored shape
_ON_GGUF = ("lora", "locon")


def _gguf_refusal(pipe: Any, lora: LoraFile, landed: dict[str, list[tuple[Module, str]]]) -> str | None:
    """Why the file's modules cannot run on the GGUF layers they land on (None: they can)."""
    algos: dict[str, str] = {}
    for comp, items in landed.items():
        model = getattr(pipe, comp)
        for m, path in items:
            weight = base_layer(model.get_submodule(path)).weight
            if m.algorithm not in _ON_GGUF and quantized.gguf_type(weight) is not None:
                algos.setdefault(m.algorithm, f"{comp}.{path}")
    if not algos:
        return None
    shown = ", ".join(f"{a} (e.g. on {where})" for a, where in sorted(algos.items()))
    return (f"{lora.path}: its {shown} modules cannot run on a GGUF denoiser: peft builds their "
            "delta in the weight's stored shape, and a GGUF weight is stored as quantized bytes. Load "
            "the denoiser from safetensors or with an fp8 weight_dtype; plain LoRA files work on GGUF")


def _misfit(m: Module, base: BaseLayer) -> str | None:
    """None when the module fits the layer its name found, else why not (coverage's unmatched list)."""
    if m.algorithm == "norm":
        return fits(base, m.tensors["w_norm"], m.tensors.get("b_norm"))
    if isinstance(base, NORM_TYPES):
        return f"a {m.algorithm} module on a {type(base).__name__}, which only w_norm/b_norm adapt"
    out, inner = delta_shape(m)
    have = _rows_by_inputs(base.weight)
    if (out, inner) != have:
        return f"shape mismatch: {m.algorithm} delta ({out}, {inner}), layer has {have}"
    return None


_TUCKER = {"lora_mid.weight", "hada_t1", "hada_t2", "lokr_t2"}


def _shares_misfit(m: Module, model: torch.nn.Module, shares: list[Target]) -> str | None:
    """None when a BFL module's delta covers its diffusers layers exactly (rows summed, same inputs)."""
    out, inner = delta_shape(m)
    shapes = [_rows_by_inputs(base_layer(model.get_submodule(t.path)).weight) for t in shares]
    want = (sum(rows for rows, _ in shapes), shapes[0][1])
    if (out, inner) != want or any(inputs != inner for _, inputs in shapes):
        layers = " + ".join(t.path for t in shares)
        return f"shape mismatch: {m.algorithm} delta ({out}, {inner}), {layers} take {want}"
    if any(t.rows is not None for t in shares) and set(m.tensors) & _TUCKER:  # Tucker cores are convs'
        return f"a {m.algorithm} with a Tucker core on Flux's linear layers"
    return None


def coverage(pipe: Any, lora: LoraFile) -> Coverage:
    """`coverage` for a LyCORIS file: its modules matched by kohya name and delta shape."""
    modules = parse(lora.state_dict)
    bad = unsupported(modules)
    if bad:
        raise LoraFileError(f"{lora.path}: {unsupported_message(bad)}")
    placement = place(pipe, modules)
    if (refusal := _gguf_refusal(pipe, lora, placement.landed)) is not None:
        raise LoraFileError(refusal)
    per: dict[str, dict[str, int]] = {}
    layout: dict[str, dict[str, int]] = {}
    for comp, items in placement.landed.items():
        # a module of the file counts once, also where it is split across layers (Flux's fused qkv)
        per.setdefault(comp, {"matched": 0, "unmatched": 0})["matched"] += len({m.name for m, _ in items})
        layout[comp] = {path: m.rank for m, path in items}
    unmatched = [UnmatchedModule(c, n, r) for c, n, r in placement.unmatched]
    for u in unmatched:
        per.setdefault(u.component, {"matched": 0, "unmatched": 0})["unmatched"] += 1
    return Coverage(
        file=lora.path,
        pipeline=type(pipe).__name__,
        matched=sum(v["matched"] for v in per.values()),
        unmatched=tuple(unmatched),
        per_component=types.MappingProxyType(per),
        layout=types.MappingProxyType({c: types.MappingProxyType(v) for c, v in layout.items()}),
        plain=False,  # peft's hotswap takes plain LoRA layers only
    )
