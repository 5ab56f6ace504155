"""The human summary of a LoRA file: what `loragraph inspect`, LoRAInfo and the server show.

Format, ranks, alphas, components, the base model it was most likely made for (and why), trigger
words and kohya's training metadata; all from the parsed file, without a pipeline.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .trigger_words import tag_frequency, trigger_words


class ParsedFile(Protocol):
    """What a summary reads of a parsed file (records.LoraFile). Named here, not imported: the record's
    own `summary()` calls this module, which therefore sits below it. Read-only, as the frozen record
    is."""

    @property
    def path(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def format(self) -> str: ...

    @property
    def metadata(self) -> Mapping[str, str]: ...

    @property
    def modules(self) -> Sequence[Any]: ...  # records.LoraModule

    @property
    def nonfinite_keys(self) -> Sequence[str]: ...

    @property
    def name(self) -> str: ...

    @property
    def short_hash(self) -> str: ...

    @property
    def adapter_metadata(self) -> dict[str, Any] | None: ...


# Summary: how many tag frequencies to list.
_TOP_TAGS = 20


def summary(lora: ParsedFile) -> dict[str, Any]:
    md = lora.metadata
    ranks = sorted({m.rank for m in lora.modules if m.rank})  # full-weight and norm diffs have no rank
    alphas = _alphas(lora)
    components = dict(collections.Counter(m.component for m in lora.modules))
    base, reason = guess_base_model(lora)
    tags = tag_frequency(md.get("ss_tag_frequency"), lora.path)
    training = {
        k: md[k]
        for k in (
            "ss_base_model_version",
            "ss_sd_model_name",
            "ss_network_module",
            "ss_network_dim",
            "ss_network_alpha",
            "ss_output_name",
            "modelspec.title",
            "modelspec.architecture",
        )
        if k in md
    }
    return {
        "file": lora.name,
        "path": lora.path,
        "format": lora.format,
        "size": lora.size,
        "sha256": lora.sha256,
        "short_hash": lora.short_hash,
        "modules": len(lora.modules),
        "algorithms": dict(collections.Counter(m.algorithm for m in lora.modules)),
        "ranks": ranks,
        "alphas": alphas,
        # What peft uses (a module without a stored alpha gets alpha = rank) and whether the file
        # stores one: the editor's LoadLoRA summary and LoRAInfo show the same numbers.
        "effective_alphas": effective_alphas(lora),
        "alpha_in_file": None not in alphas,
        "components": components,
        "base_model": base,
        "base_model_reason": reason,
        "title": md.get("modelspec.title") or md.get("ss_output_name") or Path(lora.path).stem,
        "trigger_words": trigger_words(lora.path, md),
        "tag_frequency": dict(tags[:_TOP_TAGS]),
        "training": training,
        "nonfinite_keys": list(lora.nonfinite_keys),
        "metadata_keys": sorted(md),
    }


def _alphas(lora: ParsedFile) -> list[float | None]:
    """Distinct alphas; from `.alpha` tensors (kohya) or diffusers' adapter metadata; None = absent."""
    found: set[float | None] = {m.alpha for m in lora.modules}
    meta = lora.adapter_metadata
    if meta and None in found:
        meta_alphas = {float(v) for k, v in meta.items() if k.endswith("lora_alpha") and v is not None}
        for k, v in meta.items():
            if k.endswith("alpha_pattern") and isinstance(v, dict):
                meta_alphas |= {float(a) for a in v.values()}
        if meta_alphas:
            found = (found - {None}) | meta_alphas
    return sorted(a for a in found if a is not None) + ([None] if None in found else [])


def effective_alphas(lora: ParsedFile) -> list[float]:
    """Distinct alphas as loaded: a module with no alpha in the file (nor in its metadata) has
    alpha = rank."""
    stored = _alphas(lora)
    found = {a for a in stored if a is not None}
    if None in stored:
        found |= {float(m.rank) for m in lora.modules if m.alpha is None and m.rank}
    return sorted(found)


# Cross-attention context width (attn2.to_k/to_v input) and text-encoder width per base model.
_CONTEXT_DIM = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL", 1280: "SDXL"}
_TEXT_WIDTH = {768: "SD1.x", 1024: "SD2.x", 1280: "SDXL"}


def guess_base_model(lora: ParsedFile) -> tuple[str, str]:
    """("SD1.x" | "SD2.x" | "SDXL" | "other", why) from key names, tensor shapes, then metadata."""
    comps = {m.component for m in lora.modules}
    if "transformer" in comps:
        return "other", "targets a transformer denoiser (not an SD1/SD2/SDXL UNet)"
    if "text_encoder_2" in comps:
        return "SDXL", "has a second text encoder (lora_te2_ / text_encoder_2)"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if m.component == "unet" and "attn2" in n and n.endswith(("to.k", "to.v")) and len(m.down_shape) >= 2:
            width = m.down_shape[1]
            if width in _CONTEXT_DIM:
                return _CONTEXT_DIM[width], f"cross-attention context width {width} ({m.name})"
            return "other", f"cross-attention context width {width} matches no SD1/SD2/SDXL model"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if m.component == "unet" and re.search(r"\.\d+\.transformer.blocks\.[1-9]", n):
            # SD1.x/SD2.x UNets have one transformer layer per attention block; SDXL has 2 or 10.
            # Inside a block (`attentions.0.`, SGM's `input_blocks.4.1.`): a top-level
            # `transformer_blocks.N` is a transformer denoiser's (Flux's kohya names), not SDXL's.
            return "SDXL", f"UNet attention blocks with several transformer layers ({m.name})"
    for m in lora.modules:
        n = m.name.replace("_", ".")
        if (
            m.component == "text_encoder"
            and n.endswith(("q.proj", "k.proj", "v.proj"))
            and len(m.down_shape) >= 2
        ):
            width = m.down_shape[1]
            if width in _TEXT_WIDTH:
                return _TEXT_WIDTH[width], f"text-encoder width {width} ({m.name})"
    if any(
        m.component == "unet" and re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)", m.name)
        for m in lora.modules
    ):
        return "SDXL", "kohya SGM-style UNet names (input_blocks/output_blocks), as kohya-ss writes for SDXL"
    md = lora.metadata
    version = md.get("ss_base_model_version", "").lower()
    arch = md.get("modelspec.architecture", "").lower()
    if version.startswith("sdxl") or arch.startswith("stable-diffusion-xl"):
        return "SDXL", "training metadata (ss_base_model_version / modelspec.architecture)"
    if version.startswith("sd_v2") or md.get("ss_v2") == "True" or arch.startswith("stable-diffusion-v2"):
        return "SD2.x", "training metadata (ss_v2 / ss_base_model_version / modelspec.architecture)"
    if version.startswith("sd_v1") or arch.startswith("stable-diffusion-v1"):
        return "SD1.x", "training metadata (ss_base_model_version / modelspec.architecture)"
    return "other", "no key name, tensor shape or metadata matches SD1/SD2/SDXL"
