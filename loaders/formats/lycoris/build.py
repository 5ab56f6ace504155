"""Building a LyCORIS/kohya file's modules as peft tuner layers under one adapter name.

peft builds the layers: `inject_adapter_in_model` with one config per group of like modules, then
`set_peft_model_state_dict` fills them, in chunks. Every module of the file lands under the one
adapter name, whatever its algorithm, so a file that mixes algorithms loads as one adapter.
"""

from __future__ import annotations

import collections
import logging
import math
import re
from collections.abc import Iterable
from typing import Any, TypeAlias, cast

import torch

from ... import fence, quantized
from .deltas import (
    Deferred,
    LastDelta,
    dora_delta,
    fold_mid,
    fused_weight,
    lokr_delta,
    lokr_scale,
    lokr_w1,
    lokr_w2_full,
    rank_scale,
    take_rows,
)
from .module import DORA, KEYS_SHOWN, BaseLayer, LycorisError, Module, base_layer
from .norms import NORM_TYPES
from .parse import unsupported, unsupported_message
from .place import place

logger = logging.getLogger(__name__)


# One module's peft tensors by parameter name; a Deferred is made when its chunk loads (`load`).
Entries: TypeAlias = dict[str, torch.Tensor | Deferred]


def _entries(m: Module, base: BaseLayer) -> tuple[str, dict[str, Any], Entries]:
    """(config family, config options for this module, peft tensors by parameter name)."""
    t = m.tensors
    if m.algorithm in DORA:
        # computed when its chunk is loaded (load()), so a file's deltas never all exist at once
        delta = Deferred(tuple(base.weight.shape), base.weight.dtype, lambda: dora_delta(m, base))
        return _full_entries(delta, None)
    if m.algorithm in ("lora", "locon"):
        down = fold_mid(t) if "lora_mid.weight" in t else t["lora_down.weight"]
        r = int(down.shape[0])
        tensors: Entries = {"lora_A.weight": down, "lora_B.weight": t["lora_up.weight"]}
        return "lora", {"r": r, "alpha": rank_scale(m) * r, "use_dora": False}, tensors
    if m.algorithm == "full":
        return _full_entries(t["diff"], t.get("diff_b"))
    if m.algorithm == "loha":
        r = int(t["hada_w1_b"].shape[0])
        opts = {"r": r, "alpha": rank_scale(m) * r, "use_effective_conv2d": "hada_t1" in t}
        return "loha", opts, {k: v for k, v in t.items() if k.startswith("hada_")}
    if m.algorithm == "lokr":
        return _lokr_entries(m, base)
    if m.algorithm == "norm":  # norm_layer.NormDelta: filled with set_diffs, not a peft state dict
        return "norm", {"r": 1, "alpha": 1.0}, {k: t[k] for k in ("w_norm", "b_norm") if k in t}
    raise LycorisError(f"{m.name}: {m.algorithm} cannot be built")


def _full_entries(
    diff: torch.Tensor | Deferred, diff_b: torch.Tensor | None
) -> tuple[str, dict[str, Any], Entries]:
    """A full delta as a peft tuner whose weight delta is exactly `diff` (and bias delta `diff_b`).

    Without a bias: a LoKr with a 1x1 first factor, kron([[1]], diff) = diff, at the memory of the
    diff alone. With one: a LoRA with an identity factor (rank = the smaller side) and `lora_bias`,
    since peft's LoKr has no bias. Both scale linearly with the adapter weight, so every node works.
    """
    out = int(diff.shape[0])
    inner = math.prod(diff.shape[1:])
    conv = len(diff.shape) == 4
    if diff_b is None:
        ins = int(diff.shape[1])
        r = max(1, math.ceil(max(out, ins) / 2))  # peft keeps lokr_w2 one full matrix exactly when r >= this
        opts = {"r": r, "alpha": float(r), "decompose_factor": 1, "use_effective_conv2d": False}
        return "lokr", opts, {"lokr_w1": torch.ones(1, 1, dtype=diff.dtype), "lokr_w2": diff}
    if conv or out <= inner:  # A = diff (rank out), B = identity
        eye = torch.eye(out, dtype=diff.dtype)
        tensors = {"lora_A.weight": diff, "lora_B.weight": eye.reshape(out, out, 1, 1) if conv else eye}
        r = out
    else:  # A = identity (rank in), B = diff
        tensors = {"lora_A.weight": torch.eye(inner, dtype=diff.dtype), "lora_B.weight": diff}
        r = inner
    tensors["lora_B.bias"] = diff_b
    return "lora", {"r": r, "alpha": float(r), "use_dora": False, "lora_bias": True}, tensors


def _lokr_entries(m: Module, base: BaseLayer) -> tuple[str, dict[str, Any], Entries]:
    from peft.tuners.lokr.layer import factorization

    t = m.tensors
    w1 = lokr_w1(t).to(next(iter(t.values())).dtype)
    if isinstance(base, torch.nn.Conv2d):
        in_dim, out_dim = base.in_channels // base.groups, base.out_channels
    else:  # cast: a LoKr module lands on a Linear or a Conv2d only (place._misfit refuses norms)
        linear = cast(torch.nn.Linear, base)
        in_dim, out_dim = linear.in_features, linear.out_features
    factor = None
    for f in dict.fromkeys((-1, *w1.shape, out_dim // w1.shape[0], in_dim // w1.shape[1])):
        if factorization(out_dim, f)[0] == w1.shape[0] and factorization(in_dim, f)[0] == w1.shape[1]:
            factor = int(f)
            break
    out_k, in_n = out_dim // w1.shape[0], in_dim // w1.shape[1]
    scale = lokr_scale(t, m.alpha)
    if factor is None:
        # peft's LoKr takes one factor for both sides and does not order an exact divisor's pair
        # (factorization(4, 4) = (4, 1)), so some LyCORIS layouts have no peft twin: such a module
        # becomes its exact delta, kron(w1, w2) * scale, through the full-weight route.
        logger.info("LoKr module %s: factors %s have no peft LoKr layout; loaded as its full delta",
                    m.name, tuple(w1.shape))
        return _full_entries(lokr_delta(m, base).to(w1.dtype), None)
    tensors: Entries = {"lokr_w1": w1}
    tucker = "lokr_t2" in t
    low = max(out_k, in_n) / 2  # peft keeps lokr_w2 low-rank exactly when r < this
    if "lokr_w2" in t:
        r = max(1, math.ceil(low))
        tensors["lokr_w2"] = t["lokr_w2"]
    else:
        r = int(t["lokr_t2"].shape[0]) if tucker else int(t["lokr_w2_b"].shape[0])
        if r < low:
            tensors.update({k: t[k] for k in ("lokr_w2_a", "lokr_w2_b", "lokr_t2") if k in t})
        else:  # peft would build a full lokr_w2 at this rank: multiply the halves out
            tensors["lokr_w2"] = lokr_w2_full(t, out_k, in_n, base).to(w1.dtype)
            tucker = False
    opts = {"r": r, "alpha": scale * r, "decompose_factor": factor, "use_effective_conv2d": tucker}
    return "lokr", opts, tensors


def _config(family: str, shared: dict[str, Any], group: list[tuple[str, dict[str, Any]]]):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    from .norm_layer import NormDelta  # subclasses peft's LoraLayer: imported with peft, on first use

    # Exact paths: peft matches a list of targets, and pattern keys, by suffix, so Flux's top-level
    # `proj_out` would also take `single_transformer_blocks.0.proj_out`; a regex string is full-matched,
    # and a pattern key anchored with ^ matches its own path only.
    exact = "(?:" + "|".join(re.escape(p) for p, _ in group) + ")"
    ranks = {"^" + re.escape(p): o["r"] for p, o in group}
    alphas = {"^" + re.escape(p): o["alpha"] for p, o in group}
    r0, a0 = group[0][1]["r"], group[0][1]["alpha"]
    common = {"target_modules": exact, "rank_pattern": ranks, "r": r0}
    if family == "norm":
        config = LoraConfig(lora_alpha=1, init_lora_weights=True, **common)
        fence.register_norm_layers(config, NormDelta, NORM_TYPES)
        return config
    if family == "lora":
        return LoraConfig(
            lora_alpha=a0, alpha_pattern=alphas, use_dora=shared["use_dora"],
            lora_bias=shared.get("lora_bias", False), init_lora_weights=True, **common,
        )
    if family == "loha":
        return LoHaConfig(alpha=a0, alpha_pattern=alphas, use_effective_conv2d=shared["use_effective_conv2d"],
                          init_weights=True, **common)
    return LoKrConfig(
        alpha=a0, alpha_pattern=alphas, decompose_both=False, decompose_factor=shared["decompose_factor"],
        use_effective_conv2d=shared["use_effective_conv2d"], init_weights=True, **common,
    )


_SHARED = {"lora": ("use_dora", "lora_bias"), "loha": ("use_effective_conv2d",),
           "lokr": ("decompose_factor", "use_effective_conv2d"), "norm": ()}


# Deferred deltas made per load call at most this many bytes: the peak of a DoRA load stays its
# adapter's size plus this, not twice the adapter (~8 peft calls for a DoRA on SD1.5's attention).
_CHUNK_BYTES = 64 * 2**20


def _chunks(items: list[tuple[str, Any]]) -> Iterable[list[tuple[str, Any]]]:
    """The (key, tensor) list in runs whose deferred tensors add up to at most _CHUNK_BYTES."""
    chunk: list[tuple[str, Any]] = []
    size = 0
    for key, value in items:
        cost = value.nbytes if isinstance(value, Deferred) else 0
        if chunk and size + cost > _CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append((key, value))
        size += cost
    if chunk:
        yield chunk


def load(pipe: Any, modules: Iterable[Module], adapter_name: str) -> dict[str, int]:
    """Build `adapter_name` from the file's modules on `pipe`; returns {component: modules loaded}.

    Not transactional: the caller rolls back (the reconciler unloads everything on error).
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    modules = list(modules)
    bad = unsupported(modules)
    if bad:
        raise LycorisError(unsupported_message(bad))
    refused = fence.lycoris_refusal()
    if refused:
        raise LycorisError(refused)
    placement = place(pipe, modules)
    counts: dict[str, int] = {}
    as_full: set[str] = set()
    for comp, items in placement.landed.items():
        model = getattr(pipe, comp)
        groups: dict[tuple, list[tuple[str, dict[str, Any], Entries]]] = collections.defaultdict(list)
        shares: dict[str, list] = collections.defaultdict(list)  # module -> [(rows, path)] (Flux BFL names)
        for m, path in items:
            if m.rows is not None:
                shares[m.name].append((m.rows, path))
        memo = LastDelta()
        for m, path in items:
            share, whole = take_rows(
                m, lambda m=m, model=model, shares=shares: fused_weight(model, shares[m.name]), memo
            )
            if whole:
                as_full.add(m.name)
            family, opts, tensors = _entries(share, base_layer(model.get_submodule(path)))
            key = (family, *(opts.get(o, False) for o in _SHARED[family]))
            groups[key].append((path, opts, tensors))
        for key, group in groups.items():
            family = key[0]
            shared = dict(zip(_SHARED[family], key[1:], strict=True))  # the key holds one value per option
            config = _config(family, shared, [(p, o) for p, o, _ in group])
            # the compute dtype on a quantized base: fp8 weights are viewed as bytes while this runs
            dtype = quantized.adapter_dtype(model, base_layer(model.get_submodule(group[0][0])))
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
            if family == "norm":
                for path, _, tensors in group:
                    layer = model.get_submodule(path)
                    layer.set_diffs(adapter_name, tensors["w_norm"], tensors.get("b_norm"))
                continue
            items_ = [(f"{path}.{name}", v) for path, _, tensors in group for name, v in tensors.items()]
            for chunk in _chunks(items_):
                state = {k: (v.make() if isinstance(v, Deferred) else v).to(dtype) for k, v in chunk}
                result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
                del state
                unexpected = [k for k in getattr(result, "unexpected_keys", ()) if adapter_name in k]
                if unexpected:
                    raise LycorisError(
                        f"peft did not take {len(unexpected)} tensors, e.g. {unexpected[:KEYS_SHOWN]}"
                    )
            if family != "lora":
                for path, _, _ in group:
                    fence.forward_conv_attributes(model.get_submodule(path))
        fence.mark_peft_loaded(model)
        counts[comp] = len({m.name for m, _ in items})  # a module split across fused layers counts once
    if as_full:
        logger.info("%d LoKr module(s) on fused Flux layers (e.g. %s) loaded as full deltas: their rows do "
                    "not split into LoKr factors per layer", len(as_full), ", ".join(sorted(as_full)[:3]))
    dora = [
        (m, path, comp)
        for comp, items in placement.landed.items()
        for m, path in items
        if m.algorithm in DORA
    ]
    if dora:
        size = sum(base_layer(getattr(pipe, c).get_submodule(p)).weight.nbytes for _, p, c in dora)
        logger.info("adapter %s: %d DoRA-family modules loaded as full deltas (%.1f MiB; docs/formats.md: "
                    "DoRA at strength != 1)", adapter_name, len({m.name for m, _, _ in dora}), size / 2**20)
    return counts
