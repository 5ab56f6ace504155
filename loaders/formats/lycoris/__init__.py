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
  So `strength` scales the whole delta, as docs/CONTRACT.md says for every algorithm (peft's `use_dora` scales
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
  (norms.py, norm_layer.py), since peft has no tuner for them; scaled by the adapter's weight like
  every delta.
Anything else (OFT, BOFT, GLoRA, IA3) is an error naming the algorithm and some keys: nothing is
skipped silently.

Flux files in Black Forest Labs' names (`lora_unet_double_blocks_0_img_attn_qkv`, ...) land through
flux_names.py: a module BFL fuses (q,k,v; single blocks' q,k,v,MLP) is split by rows across diffusers'
layers, each share a module of its own (`take_rows`), all under the one adapter.

One job per module: module.py (the `Module` record), parse.py (keys -> modules, algorithms, what
cannot be built), place.py (where modules land), deltas.py (per-algorithm delta math), build.py (peft
configs and state dicts, loaded in chunks), export.py (SaveLoRA's kohya keys); `Lycoris` below is the
format family (formats/family.py) they answer for. The private diffusers/peft touches this needs are
in loaders/fence/lycoris.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...records import Coverage, LoraFile, LoraFileError, LoraModule
from ..family import Family, Writer
from ..keys import denoiser_name
from . import build, export, parse, place
from .module import LycorisError, Module


class Lycoris(Family):
    """The LyCORIS family: files diffusers cannot load, built by peft per module (build.py)."""

    NAME = "lycoris"

    def detect(self, keys: list[str]) -> bool:
        return parse.is_lycoris(keys)

    def modules(self, tensors: Mapping[str, torch.Tensor]) -> tuple[LoraModule, ...]:
        return parse.lora_modules(tensors)

    def coverage(self, pipe: Any, lora: LoraFile) -> Coverage:
        return place.coverage(pipe, lora)

    def load(
        self, pipe: Any, lora: LoraFile, adapter_name: str, *, hotswap: bool = False, target: str = "auto"
    ) -> None:
        """peft's LoRA/LoHa/LoKr tuners, built per module. Never a hotswap: its coverage is not `plain`.
        Placed where the kohya names say: a `target` other than the first denoiser is refused."""
        if target not in ("auto", denoiser_name(pipe)):
            raise LoraFileError(
                f"{lora.path}: a LyCORIS file goes where its keys say; it cannot target {target}"
            )
        try:
            build.load(pipe, parse.parse(lora.state_dict), adapter_name)
        except LycorisError as e:
            raise LoraFileError(f"{lora.path}: {e}") from e

    def algorithm(self, lora: LoraFile) -> str:
        return parse.file_algorithm(parse.parse(lora.state_dict))

    def save_refusal(self, lora: LoraFile, adapter_name: str, fmt: str) -> str | None:
        return export.save_refusal(lora, adapter_name, fmt)

    def export(
        self, pipe: Any, lora: LoraFile, adapter_name: str, fmt: str, components: tuple[str, ...]
    ) -> Writer:
        return export.writer(pipe, lora)


FAMILY = Lycoris()

__all__ = ["FAMILY", "Lycoris", "LycorisError", "Module"]
