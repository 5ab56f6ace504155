"""Reading a LyCORIS/kohya file: its keys grouped into modules, each module's algorithm, and what
this package cannot build (an error naming the algorithm and some keys: nothing is skipped silently).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

import torch

from ...records import LoraModule
from .deltas import delta_shape, dora_axis
from .module import ALGORITHMS, DORA, KEYS_SHOWN, PREFIXES, LycorisError, Module

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
        if algo is None and m.algorithm in DORA and dora_axis(m) is None:
            shape = tuple(m.tensors["dora_scale"].shape)
            algo = f"{m.algorithm} with a dora_scale of shape {shape} that fits neither axis of its layer"
        if algo is not None:
            bad.setdefault(algo, [])
            bad[algo] += m.keys[: KEYS_SHOWN - len(bad[algo])]
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


def file_algorithm(modules: Iterable[Module]) -> str:
    """One word for LoRAInfo/inspect: the algorithm, or `mixed (a, b)`."""
    found = {m.algorithm for m in modules}
    if "locon" in found:  # LoRA on linear layers plus conv layers is what LoCon means
        found.discard("lora")
    algos = sorted(found)
    if len(algos) == 1:
        return algos[0]
    return "mixed (" + ", ".join(algos) + ")"


def lora_modules(tensors: Mapping[str, torch.Tensor]) -> tuple[LoraModule, ...]:
    """The file's modules as `LoraModule`s, each with its algorithm; an unsupported one gets no shape
    here (it is reported when the file is placed or loaded)."""
    modules = []
    for m in parse(tensors):
        try:
            out, inner = delta_shape(m)
        except (KeyError, LycorisError):
            out, inner = 0, 0
        modules.append(
            LoraModule(
                component=m.component, name=m.name, rank=m.rank, alpha=m.alpha, down_shape=(m.rank, inner),
                up_shape=(out, m.rank), algorithm=m.algorithm,
            )
        )
    return tuple(modules)
