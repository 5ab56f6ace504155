"""LyCORIS / kohya files diffusers cannot load: LoCon with Tucker `lora_mid`, LoHa, LoKr, DoRA, full diffs.

diffusers turns every file into a `peft.LoraConfig`, so `hada_*`/`lokr_*`/`diff` keys fail and
`dora_scale` is dropped. Here such a file is read per module (`lora_unet_…`, `lora_te…_…` names, as
kohya sd-scripts and the LyCORIS library write them), each module is matched to the pipeline's
layer of the same kohya name (LyCORIS's own rule: the module path with "." replaced by "_"), and
peft builds the layers: `inject_adapter_in_model` with one config per group of like modules, then
`set_peft_model_state_dict` fills them. Every module of the file lands under the one adapter name,
whatever its algorithm, so a file that mixes algorithms loads as one adapter.

Per algorithm (the numbers follow the producer's own forward pass, LyCORIS 4.1 `create_network_from
_weights` + `apply_to`; tests/test_lycoris.py checks the images):
- LoRA/LoCon: `LoraConfig` (Linear and Conv2d). A Tucker `lora_mid` (down 1x1, mid kxk, up 1x1) is
  folded into the down kernel: two stacked convolutions, the first 1x1, are one kxk convolution,
  so the result is a plain LoCon of the same rank.
- DoRA family (`dora_scale` with LoRA, LoHa or LoKr): the module's exact full delta, computed once
  at load from the producer's weight decomposition (the patched weight normalised per output row or
  per input column, times `dora_scale`) minus the layer's weight, and built as a full delta (below).
  So `strength` scales the whole delta, as SPEC says for every algorithm (peft's `use_dora` scales
  inside the norm, LyCORIS's multiplier keeps the low-rank update whole); the cost is a copy of each
  adapted layer's weight.
- LoHa: `LoHaConfig` (`use_effective_conv2d` for Tucker `hada_t1/t2`).
- LoKr: `LoKrConfig` with the file's factorisation; `lokr_w1_a/b` are multiplied out into `lokr_w1`
  (peft's `decompose_both=False`), `lokr_w2` stays full or low-rank (with `lokr_t2`) as written.
- Full `diff`/`diff_b`: a peft LoKr with a 1x1 first factor, kron([[1]], diff) = diff, at the diff's
  memory; with `diff_b`, a peft LoRA whose one factor is the identity (rank = the smaller side) and
  `lora_bias`. Exact, and every node (weights, fuse, device, delete) works on it as on any adapter.
- Norm layers (`w_norm`/`b_norm`, LyCORIS `train_norm`): diffs of a LayerNorm's or GroupNorm's affine
  weight and bias, in a LoRA-family layer peft builds through its custom-module registration
  (norms.py), since peft has no tuner for them; scaled by the adapter's weight like every delta.
Anything else (OFT, BOFT, GLoRA, IA3) is an error naming the algorithm and some keys: nothing is
skipped silently.

Flux files in Black Forest Labs' names (`lora_unet_double_blocks_0_img_attn_qkv`, ...) land through
flux_names.py: a module BFL fuses (q,k,v; single blocks' q,k,v,MLP) is split by rows across diffusers'
layers, each share a module of its own (`take_rows`), all under the one adapter.

The private diffusers/peft touches this needs are in loaders/fence.py (section 5: LyCORIS).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .. import fence
from . import flux_names, norms

logger = logging.getLogger(__name__)

# kohya/LyCORIS prefixes -> component. SD1.x/SD2.x write lora_te_, SDXL lora_te1_/lora_te2_.
PREFIXES = {
    "lora_unet_": "unet",
    "lora_te_": "text_encoder",
    "lora_te1_": "text_encoder",
    "lora_te2_": "text_encoder_2",
    "lora_transformer_": "transformer",
}
# Key suffixes of a module, per algorithm, as LyCORIS and kohya sd-scripts write them.
_LORA = {"lora_down.weight", "lora_up.weight", "lora_mid.weight"}
_LOHA = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2"}
_LOKR = {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2"}
_FULL = {"diff", "diff_b"}
_NORM = {"w_norm", "b_norm"}
_COMMON = {"alpha", "dora_scale"}
KNOWN_SUFFIXES = _LORA | _LOHA | _LOKR | _FULL | _NORM | _COMMON
# Suffixes that make a file one of ours rather than a plain kohya LoRA diffusers loads itself.
_OURS = (_LOHA | _LOKR | _FULL | _NORM | {"lora_mid.weight", "dora_scale"}) | {
    "oft_blocks", "oft_diag", "oft_R", "a1.weight", "on_input"
}
# kohya sd-scripts' own (SGM/LDM) names of SDXL UNet modules: lora_unet_input_blocks_4_1_...
_SGM = re.compile(r"^lora_unet_((input_blocks|middle_block|output_blocks|time_embed|label_emb)_|out_[02]$)")
# How many keys an error shows.
_SAMPLE = 5

ALGORITHMS = ("lora", "locon", "dora", "loha", "lokr", "doha", "dokr", "full", "norm")
# The DoRA family: a LoRA/LoHa/LoKr module with a `dora_scale` magnitude (LyCORIS `dora_wd`).
DORA = {"dora": "lora", "doha": "loha", "dokr": "lokr"}


class LycorisError(ValueError):
    """A module of the file that cannot be built; the message names the algorithm and some keys."""


@dataclasses.dataclass(frozen=True)
class Module:
    """One adapted layer of a LyCORIS/kohya file, in the file's own spelling."""

    name: str  # kohya name, e.g. lora_unet_down_blocks_0_attentions_0_proj_in
    component: str
    algorithm: str  # lora | locon | dora | loha | lokr | full | norm | an unsupported one (oft, glora, ...)
    tensors: Mapping[str, torch.Tensor] = dataclasses.field(repr=False)
    # A share of a fused module (Flux's BFL names, flux_names.py): the [start, stop) ranges of its
    # delta's rows, in order, that one layer takes; None: the whole module. See `take_rows`.
    rows: tuple[tuple[int, int], ...] | None = None

    @property
    def alpha(self) -> float | None:
        t = self.tensors.get("alpha")
        return None if t is None else float(t.float().reshape(-1)[0])

    @property
    def rank(self) -> int:
        t = self.tensors
        if "lora_down.weight" in t:
            return int(t["lora_down.weight"].shape[0])
        if "hada_w1_b" in t:
            return int(t["hada_w1_b"].shape[0])
        for k in ("lokr_t2", "lokr_w1_b", "lokr_w2_b"):
            if k in t:
                return int(t[k].shape[0])
        return 0

    @property
    def keys(self) -> list[str]:
        return [f"{self.name}.{s}" for s in self.tensors]


def split_key(key: str) -> tuple[str, str, str] | None:
    """(component, module name, suffix) of a kohya/LyCORIS key, or None."""
    for prefix, comp in PREFIXES.items():
        if key.startswith(prefix):
            module, _, suffix = key.partition(".")
            return comp, module, suffix
    return None


# Plain kohya LoRA modules that diffusers' kohya Flux converter drops without a word (0.41/0.42: it
# names them `norm_out.linear`/`proj_out` without the `transformer.` prefix, so no layer takes them,
# and ignores their alpha): a file with them is loaded here, where they land.
_DIFFUSERS_DROPS = ("lora_unet_final_layer_",)


def is_lycoris(keys: Iterable[str]) -> bool:
    """Whether the file needs this loader: kohya-prefixed keys with a suffix beyond plain LoRA, or
    plain LoRA modules diffusers' converter would drop (`_DIFFUSERS_DROPS`)."""
    for k in keys:
        parts = split_key(k)
        if parts is not None and (parts[2] in _OURS or k.startswith(_DIFFUSERS_DROPS)):
            return True
    return False


def _algorithm(suffixes: set[str]) -> str:
    if suffixes & _LOHA:
        return "doha" if "dora_scale" in suffixes else "loha"
    if suffixes & _LOKR:
        return "dokr" if "dora_scale" in suffixes else "lokr"
    if suffixes & _FULL:
        return "full"
    if {"lora_down.weight", "lora_up.weight"} <= suffixes:
        if "dora_scale" in suffixes:
            return "dora"
        return "locon" if "lora_mid.weight" in suffixes else "lora"
    if suffixes & _NORM:
        return "norm"
    if suffixes & {"oft_blocks", "oft_diag"}:
        return "oft"
    if "oft_R" in suffixes or any(s.startswith("boft") for s in suffixes):
        return "boft"
    if "a1.weight" in suffixes:
        return "glora"
    if "on_input" in suffixes or suffixes == {"weight"}:
        return "ia3"
    return "unknown"


def parse(state_dict: Mapping[str, torch.Tensor]) -> tuple[Module, ...]:
    """The file's modules with their algorithm (LoCon = LoRA on a conv or with a Tucker mid)."""
    grouped: dict[tuple[str, str], dict[str, torch.Tensor]] = collections.defaultdict(dict)
    for key, tensor in state_dict.items():
        parts = split_key(key)
        if parts is None:
            continue
        comp, module, suffix = parts
        grouped[(comp, module)][suffix] = tensor
    out = []
    for (comp, module), tensors in grouped.items():
        algo = _algorithm(set(tensors))
        if algo == "lora" and tensors["lora_down.weight"].ndim == 4:
            algo = "locon"
        if algo == "oft" and "oft_blocks" in tensors and tensors["oft_blocks"].ndim == 4:
            algo = "boft"  # LyCORIS's own test: BOFT's oft_blocks are (m, blocks, size, size), diag-OFT's 3-D
        out.append(Module(module, comp, algo, dict(tensors)))
    return tuple(out)


def _missing(m: Module) -> list[str]:
    """The keys an algorithm needs that the module lacks."""
    t = m.tensors
    algorithm = DORA.get(m.algorithm, m.algorithm)
    if algorithm in ("lora", "locon"):
        need = ["lora_down.weight", "lora_up.weight"]
    elif algorithm == "loha":
        need = ["hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"] + (
            ["hada_t1", "hada_t2"] if ("hada_t1" in t or "hada_t2" in t) else []
        )
    elif algorithm == "lokr":
        need = (["lokr_w1"] if "lokr_w1" in t or "lokr_w1_a" not in t else ["lokr_w1_a", "lokr_w1_b"]) + (
            ["lokr_w2"] if "lokr_w2" in t or "lokr_w2_a" not in t else ["lokr_w2_a", "lokr_w2_b"]
        )
    elif m.algorithm == "full":
        need = ["diff"]
    elif m.algorithm == "norm":
        need = ["w_norm"]
    else:
        return []
    return [k for k in need if k not in t]


def unsupported(modules: Iterable[Module]) -> dict[str, list[str]]:
    """{algorithm: sample keys} of the modules this loader cannot build."""
    bad: dict[str, list[str]] = {}
    for m in modules:
        # norm diffs stand alone (LyCORIS writes a norm layer's module with w_norm/b_norm only)
        extra = set(m.tensors) - (_NORM if m.algorithm == "norm" else KNOWN_SUFFIXES - _NORM)
        algo = m.algorithm if m.algorithm not in ALGORITHMS else ("unknown" if extra else None)
        if m.algorithm in ALGORITHMS and extra:
            algo = f"{m.algorithm} with {', '.join(sorted(extra))}"
        missing = _missing(m) if algo is None else []
        if missing:
            algo = f"{m.algorithm} without {', '.join(missing)}"
        if algo is None and m.algorithm in DORA and _dora_axis(m) is None:
            shape = tuple(m.tensors["dora_scale"].shape)
            algo = f"{m.algorithm} with a dora_scale of shape {shape} that fits neither axis of its layer"
        if algo is not None:
            bad.setdefault(algo, [])
            bad[algo] += m.keys[: _SAMPLE - len(bad[algo])]
    return bad


_ALGO_NAMES = {
    "oft": "OFT (diag-OFT)",
    "boft": "BOFT",
    "glora": "GLoRA",
    "ia3": "IA3",
    "unknown": "an unknown algorithm",
}


def unsupported_message(bad: Mapping[str, list[str]]) -> str:
    parts = [f"{_ALGO_NAMES.get(a, a)} (e.g. {', '.join(keys)})" for a, keys in bad.items()]
    return "holds modules loragraph cannot load: " + "; ".join(parts)


def _dora_axis(m: Module) -> str | None:
    """Which axis the module's `dora_scale` normalises along, told apart as LyCORIS writes them.

    'out': one magnitude per output row, shape (out, 1[, 1, 1]) (LyCORIS `wd_on_out`, its default,
    and peft's axis); 'in': one per input column, shape (1, in[, 1, 1]) (older LyCORIS files);
    None when the shape is neither, or does not fit the module's delta.
    """
    scale = m.tensors["dora_scale"]
    out, inner = delta_shape(m)
    if scale.ndim >= 1 and scale.shape[0] == out and scale.numel() == out:
        return "out"
    if scale.ndim >= 2 and scale.shape[0] == 1 and scale.numel() == scale.shape[1] and inner % scale.shape[1] == 0:
        return "in"
    return None


# --------------------------------------------------------------------------------------------------
# Where modules land


def kohya_names(model: torch.nn.Module, component: str) -> dict[str, str]:
    """{kohya module name (without prefix): module path} for the model's Linear/Conv2d layers.

    Text encoders get both spellings, with and without `text_model_`: kohya files carry it,
    transformers >= 5 flattens CLIPTextModel so LyCORIS run on it writes names without it.
    Norm layers (LayerNorm, GroupNorm) are named too: `train_norm` files adapt them.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    kinds = (torch.nn.Linear, torch.nn.Conv2d, *norms.NORM_TYPES)
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


def _base_of(layer: torch.nn.Module) -> torch.nn.Module:
    return layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer


def delta_shape(m: Module) -> tuple[int, int]:
    """(out features, in features x kernel) of the module's weight delta."""
    t = m.tensors
    if m.algorithm in ("lora", "locon", "dora"):
        down, up = t["lora_down.weight"], t["lora_up.weight"]
        k = math.prod(t["lora_mid.weight"].shape[2:]) if "lora_mid.weight" in t else math.prod(down.shape[2:])
        return int(up.shape[0]), int(down.shape[1]) * k
    if m.algorithm in ("loha", "doha"):
        if "hada_t1" in t:
            return int(t["hada_w1_a"].shape[1]), int(t["hada_w1_b"].shape[1]) * math.prod(t["hada_t1"].shape[2:])
        return int(t["hada_w1_a"].shape[0]), int(t["hada_w1_b"].shape[1])
    if m.algorithm in ("lokr", "dokr"):
        w1 = _lokr_w1(t)
        w2o, w2i = _lokr_w2_dims(t)
        return int(w1.shape[0]) * w2o, int(w1.shape[1]) * w2i
    if m.algorithm == "full":
        d = t["diff"]
        return int(d.shape[0]), int(d[0].numel())
    if m.algorithm == "norm":  # a norm layer's 1-D affine weight: (channels, 1) as place() measures it
        return int(t["w_norm"].numel()), 1
    raise LycorisError(f"{m.name}: {m.algorithm} has no delta shape")


def _lokr_w1(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    if "lokr_w1" in t:
        return t["lokr_w1"]
    return t["lokr_w1_a"].float() @ t["lokr_w1_b"].float()


def _lokr_w2_dims(t: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(out rows, in columns x kernel) of lokr_w2."""
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
        return int(w2.shape[0]), int(w2[0].numel())
    if "lokr_t2" in t:
        return int(t["lokr_w2_a"].shape[1]), int(t["lokr_w2_b"].shape[1]) * math.prod(t["lokr_t2"].shape[2:])
    return int(t["lokr_w2_a"].shape[0]), int(t["lokr_w2_b"].shape[1])


@dataclasses.dataclass
class Placement:
    """Where each module of a file lands on a pipeline, and why the others don't."""

    landed: dict[str, list[tuple[Module, str]]]  # component -> [(module, model path)]
    unmatched: list[tuple[str, str, str]]  # (component, module name, reason)


def place(pipe: Any, modules: Iterable[Module]) -> Placement:
    landed: dict[str, list[tuple[Module, str]]] = {}
    unmatched: list[tuple[str, str, str]] = []
    lookups: dict[str, dict[str, str]] = {}
    modules = list(modules)
    # kohya sd-scripts trains SDXL on its own (SGM/LDM) UNet: lora_unet_input_blocks_4_1_... names
    sgm = [m.name for m in modules if m.component == "unet" and _SGM.match(m.name)]
    has_unet = getattr(pipe, "unet", None) is not None
    sgm_paths = _sgm_paths(pipe, sgm) if sgm and has_unet else {}
    for m in modules:
        if m.component == "unet" and getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
            # LyCORIS names a transformer denoiser lora_unet_ too (its `unet` argument)
            m = dataclasses.replace(m, component="transformer")
        model = getattr(pipe, m.component, None)
        if model is None:
            unmatched.append((m.component, m.name, f"no such component: {type(pipe).__name__} has no {m.component}"))
            continue
        if m.component not in lookups:
            lookups[m.component] = kohya_names(model, m.component)
        prefix = next(p for p in PREFIXES if m.name.startswith(p))
        path = lookups[m.component].get(m.name[len(prefix) :])
        if path is None and m.name in sgm_paths:
            path = lookups[m.component].get(sgm_paths[m.name].replace(".", "_"))
        if path is None and m.component == "transformer":
            shares = flux_names.targets(m.name[len(prefix) :], model)  # Flux in BFL's names (fused qkv, ...)
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
        base = _base_of(model.get_submodule(path))
        reason = _misfit(m, base)
        if reason is not None:
            unmatched.append((m.component, m.name, reason))
            continue
        landed.setdefault(m.component, []).append((m, path))
    return Placement(landed, unmatched)


# SGM norm layers (train_norm files), which diffusers' SGM converter does not name (no diffusers LoRA
# adapts a norm): a resnet's GroupNorms by the conv beside them (`in_layers` = norm, SiLU, conv1;
# `out_layers` = norm, SiLU, dropout, conv2), and the UNet's last GroupNorm (`out` = norm, SiLU, conv_out).
_SGM_NORMS = (("_in_layers_0", "_in_layers_2", ".conv1", ".norm1"), ("_out_layers_0", "_out_layers_3", ".conv2", ".norm2"))
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


def _misfit(m: Module, base: torch.nn.Module) -> str | None:
    """None when the module fits the layer its name found, else why not (coverage's unmatched list)."""
    if m.algorithm == "norm":
        return norms.fits(base, m.tensors["w_norm"], m.tensors.get("b_norm"))
    if isinstance(base, norms.NORM_TYPES):
        return f"a {m.algorithm} module on a {type(base).__name__}, which only w_norm/b_norm adapt"
    out, inner = delta_shape(m)
    have = (int(base.weight.shape[0]), int(base.weight[0].numel()))
    if (out, inner) != have:
        return f"shape mismatch: {m.algorithm} delta ({out}, {inner}), layer has {have}"
    return None


_TUCKER = {"lora_mid.weight", "hada_t1", "hada_t2", "lokr_t2"}


def _shares_misfit(m: Module, model: torch.nn.Module, shares: list[flux_names.Target]) -> str | None:
    """None when a BFL module's delta covers its diffusers layers exactly (rows summed, same inputs)."""
    out, inner = delta_shape(m)
    bases = [_base_of(model.get_submodule(t.path)).weight for t in shares]
    want = (sum(int(w.shape[0]) for w in bases), int(bases[0][0].numel()))
    if (out, inner) != want or any(int(w[0].numel()) != inner for w in bases):
        layers = " + ".join(t.path for t in shares)
        return f"shape mismatch: {m.algorithm} delta ({out}, {inner}), {layers} take {want}"
    if any(t.rows is not None for t in shares) and set(m.tensors) & _TUCKER:  # Tucker cores are convs'
        return f"a {m.algorithm} with a Tucker core on Flux's linear layers"
    return None


class _LastDelta:
    """The last fused module's full delta, so its 3-4 shares compute it once, not once each; one slot,
    since a module's shares load one after another (memory: one fused delta)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.delta: torch.Tensor | None = None

    def get(self, name: str, compute: Any) -> torch.Tensor:
        if self.name != name:
            self.name, self.delta = None, None  # the previous one goes before the next is made
            self.delta, self.name = compute(), name
        return self.delta


def take_rows(m: Module, fused: Any = None, memo: _LastDelta | None = None) -> tuple[Module, bool]:
    """The share `m.rows` of a fused module's delta, as a module of its own (#15, Flux BFL names), and
    whether it holds a LoKr share's full delta. `fused`: () -> the fused layer's weight (DoRA family);
    `memo`: where a full fused delta is kept for the module's other shares.

    Exact in every case, and linear in the adapter's weight, since each share is a slice of the delta:
    - LoRA/LoCon: the rows of lora_up; stays low-rank at the file's rank;
    - LoHa: (w1_a w1_b) * (w2_a w2_b) elementwise, so a row of the delta takes that row of w1_a and w2_a;
    - full: the rows of diff (and diff_b);
    - LoKr: kron(w1, w2) repeats w2 per row of w1, so ranges on whole multiples of w2's rows are
      ranges of w1's rows; other ranges (the usual case) take the exact delta's rows as w2 under a 1x1
      w1 = 1: peft's LoKr then holds the full delta itself, without the identity factor of a `diff`
      (`_full_entries`), so it costs the delta's memory once.
    - DoRA family: normalised over the fused layer's patched weight (per output row or, by its
      dora_scale's shape, per input column, which spans every share), so its exact full delta is
      computed on the fused weight, put back together from the layers (`fused`), and split.
    """
    if m.rows is None:
        return m, False
    t = dict(m.tensors)
    index = _rows_index(m.rows)
    memo = memo or _LastDelta()
    if m.algorithm in DORA:
        shape = (len(index), delta_shape(m)[1])

        def make() -> torch.Tensor:  # when its chunk loads (load()), as every DoRA delta
            return memo.get(m.name, lambda: _dora_delta(m, _FusedLayer(fused())))[index]

        diff = Deferred(shape, next(iter(t.values())).dtype, make)
        return dataclasses.replace(m, algorithm="full", tensors={"diff": diff}, rows=None), False

    def pick(x: torch.Tensor, unit: int = 1) -> torch.Tensor:
        return torch.cat([x[a // unit : b // unit] for a, b in m.rows])

    if m.algorithm in ("lora", "locon"):
        t["lora_up.weight"] = pick(t["lora_up.weight"])
    elif m.algorithm == "loha":
        t["hada_w1_a"], t["hada_w2_a"] = pick(t["hada_w1_a"]), pick(t["hada_w2_a"])
    elif m.algorithm == "full":
        t["diff"] = pick(t["diff"])
        if "diff_b" in t:
            t["diff_b"] = pick(t["diff_b"])
    elif m.algorithm == "lokr":
        unit = _lokr_w2_dims(t)[0]
        if all(a % unit == 0 and b % unit == 0 for a, b in m.rows):
            w1 = "lokr_w1" if "lokr_w1" in t else "lokr_w1_a"
            t[w1] = pick(t[w1], unit)
        else:
            out, inner = delta_shape(m)
            dtype = next(iter(t.values())).dtype

            def make() -> torch.Tensor:  # when its chunk loads (load()): a full-size Flux file's shares
                stand_in = _FusedLayer(torch.empty(out, inner, device="meta"))
                return pick(memo.get(m.name, lambda: _lokr_delta(m, stand_in)))  # never all at once

            w2 = Deferred((len(index), inner), dtype, make)
            whole = {"lokr_w1": torch.ones(1, 1, dtype=dtype), "lokr_w2": w2}  # no alpha: scale 1
            return dataclasses.replace(m, tensors=whole, rows=None), True
    else:
        raise LycorisError(f"{m.name}: {m.algorithm} cannot be split across fused layers")
    return dataclasses.replace(m, tensors=t, rows=None), False


@dataclasses.dataclass(frozen=True)
class _FusedLayer:
    """Stand-in for the one layer BFL has where diffusers has several: a weight of the fused shape."""

    weight: torch.Tensor


def _rows_index(rows: tuple[tuple[int, int], ...]) -> torch.Tensor:
    return torch.cat([torch.arange(a, b) for a, b in rows])


def fused_weight(model: torch.nn.Module, shares: list[tuple[tuple[tuple[int, int], ...], str]]) -> torch.Tensor:
    """The weight of the fused layer whose rows `shares` [(rows, diffusers path)] put in diffusers' layers."""
    weights = [(_rows_index(rows), _base_of(model.get_submodule(p)).weight.detach()) for rows, p in shares]
    w0 = weights[0][1]
    fused = torch.empty(sum(len(i) for i, _ in weights), *w0.shape[1:], dtype=w0.dtype, device=w0.device)
    for index, w in weights:
        fused[index.to(w.device)] = w
    return fused


# --------------------------------------------------------------------------------------------------
# Building peft layers


def _lycoris_lokr_scale(t: Mapping[str, torch.Tensor], alpha: float | None) -> float:
    """LyCORIS's scale for a LoKr module rebuilt from weights: alpha / the rank of its low-rank half,
    1 when both halves are full matrices (LyCORIS then ignores alpha)."""
    if "lokr_w1_a" in t:
        rank = int(t["lokr_w1_a"].shape[1])
    elif "lokr_w2_a" in t:
        rank = int(t["lokr_t2"].shape[0]) if "lokr_t2" in t else int(t["lokr_w2_a"].shape[1])
    else:
        return 1.0
    a = rank if not alpha else alpha
    return a / rank


def _rank_scale(m: Module) -> float:
    """alpha / rank; LyCORIS and kohya take a missing (or 0) alpha as alpha = rank."""
    alpha = m.alpha
    return 1.0 if not alpha else alpha / m.rank


def _fold_mid(t: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The down kernel of a Tucker LoCon (down 1x1, mid kxk): one kxk conv from in to rank."""
    down, mid = t["lora_down.weight"], t["lora_mid.weight"]
    return torch.einsum("jkhw,ki->jihw", mid.float(), down.float().flatten(1)).to(down.dtype)


def _entries(m: Module, base: torch.nn.Module) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """(config family, config options for this module, peft tensors by parameter name)."""
    t = m.tensors
    if m.algorithm in DORA:
        # computed when its chunk is loaded (load()), so a file's deltas never all exist at once
        return _full_entries(Deferred(tuple(base.weight.shape), base.weight.dtype, lambda: _dora_delta(m, base)), None)
    if m.algorithm in ("lora", "locon"):
        down = _fold_mid(t) if "lora_mid.weight" in t else t["lora_down.weight"]
        r = int(down.shape[0])
        tensors = {"lora_A.weight": down, "lora_B.weight": t["lora_up.weight"]}
        return "lora", {"r": r, "alpha": _rank_scale(m) * r, "use_dora": False}, tensors
    if m.algorithm == "full":
        return _full_entries(t["diff"], t.get("diff_b"))
    if m.algorithm == "loha":
        r = int(t["hada_w1_b"].shape[0])
        opts = {"r": r, "alpha": _rank_scale(m) * r, "use_effective_conv2d": "hada_t1" in t}
        return "loha", opts, {k: v for k, v in t.items() if k.startswith("hada_")}
    if m.algorithm == "lokr":
        return _lokr_entries(m, base)
    if m.algorithm == "norm":  # norms.NormDelta: filled with set_diffs, not a peft state dict
        return "norm", {"r": 1, "alpha": 1.0}, {k: t[k] for k in ("w_norm", "b_norm") if k in t}
    raise LycorisError(f"{m.name}: {m.algorithm} cannot be built")


def _low_rank_delta(m: Module, base: torch.nn.Module) -> torch.Tensor:
    """The module's exact weight delta at multiplier 1 (alpha/rank applied), float32, the layer's shape.

    The producer's arithmetic (LyCORIS 4.1 `make_weight`/`get_diff_weight`): LoRA up @ down (a Tucker
    mid folded into down), LoHa (w1a @ w1b) * (w2a @ w2b) (Tucker: each factor through its core),
    LoKr kron(w1, w2). Only the DoRA family needs it: its normalisation is over the patched weight.
    """
    t = {k: v.float() for k, v in m.tensors.items()}
    shape = base.weight.shape
    algorithm = DORA.get(m.algorithm, m.algorithm)
    if algorithm == "lora":
        down = _fold_mid(t) if "lora_mid.weight" in t else t["lora_down.weight"]
        delta = t["lora_up.weight"].flatten(1) @ down.flatten(1)
        return (delta * _rank_scale(m)).reshape(shape)
    if algorithm == "loha":
        if "hada_t1" in t:
            w1 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t1"], t["hada_w1_b"], t["hada_w1_a"])
            w2 = torch.einsum("ijkl,jr,ip->prkl", t["hada_t2"], t["hada_w2_b"], t["hada_w2_a"])
        else:
            w1, w2 = t["hada_w1_a"] @ t["hada_w1_b"], t["hada_w2_a"] @ t["hada_w2_b"]
        return (w1 * w2 * _rank_scale(m)).reshape(shape)
    if algorithm == "lokr":
        return _lokr_delta(m, base)
    raise LycorisError(f"{m.name}: {m.algorithm} has no low-rank delta")


def _dora_delta(m: Module, base: torch.nn.Module) -> torch.Tensor:
    """A DoRA-family module as one full delta: W0 + strength * (W_dora - W0) is SPEC's "scale the whole
    delta" at every strength (peft's DoRA rescales inside the norm instead, so it cannot).

    W_dora is the producer's (LyCORIS `weight_decompose`): the patched weight W0 + dW, normalised per
    output row (or per input column, by the file's `dora_scale` shape) plus float eps, times
    `dora_scale`. W0 is the layer's weight at load time: the engine loads only onto unfused weights.
    """
    w0 = base.weight.detach().float()
    patched = w0 + _low_rank_delta(m, base).to(w0.device)
    magnitude = m.tensors["dora_scale"].detach().float().to(w0.device)
    rest = [1] * (patched.dim() - 1)
    if _dora_axis(m) == "out":
        norm = patched.reshape(patched.shape[0], -1).norm(dim=1).reshape(patched.shape[0], *rest)
    else:
        norm = patched.transpose(0, 1).reshape(patched.shape[1], -1).norm(dim=1).reshape(patched.shape[1], *rest)
        norm = norm.transpose(0, 1)
    norm = norm + torch.finfo(patched.dtype).eps
    return (patched * (magnitude.reshape(norm.shape) / norm) - w0).to(base.weight.dtype)


@dataclasses.dataclass(frozen=True)
class Deferred:
    """A tensor made only when its chunk is loaded: a DoRA module's full delta (layer-sized)."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    make: Any  # () -> torch.Tensor

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def _full_entries(
    diff: torch.Tensor | Deferred, diff_b: torch.Tensor | None
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor | Deferred]]:
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


def _lokr_entries(m: Module, base: torch.nn.Module) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    from peft.tuners.lokr.layer import factorization

    t = m.tensors
    w1 = _lokr_w1(t).to(next(iter(t.values())).dtype)
    conv = isinstance(base, torch.nn.Conv2d)
    in_dim = base.in_channels // base.groups if conv else base.in_features
    out_dim = base.out_channels if conv else base.out_features
    factor = None
    for f in dict.fromkeys((-1, *w1.shape, out_dim // w1.shape[0], in_dim // w1.shape[1])):
        if factorization(out_dim, f)[0] == w1.shape[0] and factorization(in_dim, f)[0] == w1.shape[1]:
            factor = int(f)
            break
    out_k, in_n = out_dim // w1.shape[0], in_dim // w1.shape[1]
    scale = _lycoris_lokr_scale(t, m.alpha)
    if factor is None:
        # peft's LoKr takes one factor for both sides and does not order an exact divisor's pair
        # (factorization(4, 4) = (4, 1)), so some LyCORIS layouts have no peft twin: such a module
        # becomes its exact delta, kron(w1, w2) * scale, through the full-weight route.
        logger.info("LoKr module %s: factors %s have no peft LoKr layout; loaded as its full delta",
                    m.name, tuple(w1.shape))
        return _full_entries(_lokr_delta(m, base).to(w1.dtype), None)
    tensors = {"lokr_w1": w1}
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
            tensors["lokr_w2"] = _lokr_w2_full(t, out_k, in_n, base).to(w1.dtype)
            tucker = False
    opts = {"r": r, "alpha": scale * r, "decompose_factor": factor, "use_effective_conv2d": tucker}
    return "lokr", opts, tensors


def _lokr_delta(m: Module, base: torch.nn.Module) -> torch.Tensor:
    """kron(w1, w2) * LyCORIS's LoKr scale, float32, in the layer's weight shape."""
    t = m.tensors
    w1 = _lokr_w1(t).float()
    shape = base.weight.shape
    w2 = _lokr_w2_full(t, int(shape[0]) // w1.shape[0], int(shape[1]) // w1.shape[1], base).float()
    w1_nd = w1.reshape(*w1.shape, *[1] * (w2.ndim - w1.ndim))  # kron pairs axes from the left
    return (torch.kron(w1_nd, w2) * _lycoris_lokr_scale(t, m.alpha)).reshape(shape)


def _lokr_w2_full(t: Mapping[str, torch.Tensor], out_k: int, in_n: int, base: torch.nn.Module) -> torch.Tensor:
    if "lokr_w2" in t:
        return t["lokr_w2"]
    a, b = t["lokr_w2_a"].float(), t["lokr_w2_b"].float()
    if "lokr_t2" in t:
        return torch.einsum("ijkl,jr,ip->prkl", t["lokr_t2"].float(), b, a)
    w2 = a @ b
    return w2.reshape(out_k, in_n, *base.weight.shape[2:]) if base.weight.ndim == 4 else w2


def _config(family: str, shared: dict[str, Any], group: list[tuple[str, dict[str, Any]]]):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

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
        fence.register_norm_layers(config, norms.layer_class(), norms.NORM_TYPES)
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
    chunk, size = [], 0
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
        groups: dict[tuple, list[tuple[str, dict[str, Any], dict[str, torch.Tensor]]]] = collections.defaultdict(list)
        shares: dict[str, list] = collections.defaultdict(list)  # module -> [(rows, path)] (Flux BFL names)
        for m, path in items:
            if m.rows is not None:
                shares[m.name].append((m.rows, path))
        memo = _LastDelta()
        for m, path in items:
            share, whole = take_rows(m, lambda m=m, model=model, shares=shares: fused_weight(model, shares[m.name]),
                                     memo)
            if whole:
                as_full.add(m.name)
            family, opts, tensors = _entries(share, _base_of(model.get_submodule(path)))
            key = (family, *(opts.get(o, False) for o in _SHARED[family]))
            groups[key].append((path, opts, tensors))
        for key, group in groups.items():
            family = key[0]
            shared = dict(zip(_SHARED[family], key[1:]))
            config = _config(family, shared, [(p, o) for p, o, _ in group])
            dtype = _base_of(model.get_submodule(group[0][0])).weight.dtype
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
            if family == "norm":
                for path, _, tensors in group:
                    model.get_submodule(path).set_diffs(adapter_name, tensors["w_norm"], tensors.get("b_norm"))
                continue
            items_ = [(f"{path}.{name}", v) for path, _, tensors in group for name, v in tensors.items()]
            for chunk in _chunks(items_):
                state = {k: (v.make() if isinstance(v, Deferred) else v).to(dtype) for k, v in chunk}
                result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
                del state
                unexpected = [k for k in getattr(result, "unexpected_keys", ()) if adapter_name in k]
                if unexpected:
                    raise LycorisError(f"peft did not take {len(unexpected)} tensors, e.g. {unexpected[:_SAMPLE]}")
            if family != "lora":
                for path, _, _ in group:
                    fence.forward_conv_attributes(model.get_submodule(path))
        fence.mark_peft_loaded(model)
        counts[comp] = len({m.name for m, _ in items})  # a module split across fused layers counts once
    if as_full:
        logger.info("%d LoKr module(s) on fused Flux layers (e.g. %s) loaded as full deltas: their rows do not "
                    "split into LoKr factors per layer", len(as_full), ", ".join(sorted(as_full)[:3]))
    dora = [(m, path, comp) for comp, items in placement.landed.items() for m, path in items if m.algorithm in DORA]
    if dora:
        size = sum(_base_of(getattr(pipe, c).get_submodule(p)).weight.nbytes for _, p, c in dora)
        logger.info("adapter %s: %d DoRA-family modules loaded as full deltas (%.1f MiB; README: DoRA at "
                    "strength != 1)", adapter_name, len({m.name for m, _, _ in dora}), size / 2**20)
    return counts


def summary_algorithms(modules: Iterable[Module]) -> dict[str, int]:
    return dict(collections.Counter(m.algorithm for m in modules))


def file_algorithm(modules: Iterable[Module]) -> str:
    """One word for LoRAInfo/inspect: the algorithm, or `mixed (a, b)`."""
    found = {m.algorithm for m in modules}
    if "locon" in found:  # LoRA on linear layers plus conv layers is what LoCon means
        found.discard("lora")
    algos = sorted(found)
    if len(algos) == 1:
        return algos[0]
    return "mixed (" + ", ".join(algos) + ")"


def kohya_tensors(modules: Iterable[Module], keep: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The modules' tensors under their own family's kohya keys (`name.suffix`), for SaveLoRA."""
    out = {}
    for m in modules:
        if keep is not None and m.name not in keep:
            continue
        for suffix, v in m.tensors.items():
            out[f"{m.name}.{suffix}"] = v.detach().cpu().contiguous()
    return out


# --------------------------------------------------------------------------------------------------
# Peft tuner layers of any family (public peft attributes: `adapter_layer_names`)


def is_lora_layer(module: Any) -> bool:
    """A peft LoRA layer proper (lora_A/lora_B), not LoHa/LoKr nor a norm layer's diffs (norms.py)."""
    return tuple(getattr(module, "adapter_layer_names", ()))[:1] == ("lora_A",)


def adapter_in_layer(module: Any, adapter_name: str) -> bool:
    """Whether a peft tuner layer (LoRA, LoHa, LoKr) holds `adapter_name`."""
    table = getattr(module, module.adapter_layer_names[0], None)
    return table is not None and adapter_name in table


# --------------------------------------------------------------------------------------------------
# The format family (loaders/formats registry)

NAME = "lycoris"
detect = is_lycoris


def component_of(key: str) -> str:
    parts = split_key(key)
    return parts[0] if parts is not None else "unknown"


def to_pipeline(pipe: Any, lora: Any, source: dict, meta: dict | None) -> tuple[dict, dict | None]:
    """Never used: diffusers cannot load these modules; `loading.load_lora_file` builds them with `load`."""
    raise LycorisError(f"{lora.path}: a LyCORIS file is built by peft per module, not loaded by diffusers")
