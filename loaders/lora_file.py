"""LoRA files: read one from disk, check it, and describe what it holds.

`load` reads the tensors (safetensors, or a pickle loaded with `weights_only`) and the header
metadata; `build` makes them a `LoraFile`, with the key format and the modules formats/ finds. A
truncated, damaged or non-LoRA file is a `LoraFileError` with a sentence naming the file. Hashing
and the shared cache of parsed files are store.py's (`read_lora`); the human summary is summary.py's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..base import limits
from .formats import LoraFormat, detect_format, modules_of
from .formats.keys import is_adapter_key

logger = logging.getLogger(__name__)

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
LORA_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# A1111's "Lora hashes" PNG field uses the first 12 hex digits of the hash (its `shorthash`).
_A1111_SHORT_HASH_LEN = 12
# How many example keys an error message shows: enough to recognise the file, short enough to read.
_EXAMPLE_KEYS = 5
# A LoRA value beyond the largest half-precision number cannot be run in fp16, where LoRAs are made
# and used; trained LoRA weights are of order 1, so such a value (1e30 in the probe) is damage.
MAX_LORA_MAGNITUDE = 65504.0


class LoraFileError(ValueError):
    """A LoRA file that cannot be used; the message names the file and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """One adapted layer as the file spells it: enough to count, rank and place it without a model."""

    component: str  # "unet", "text_encoder", ... or "unknown"
    name: str  # the module path in the file's own spelling (kohya: lora_unet_..., else dotted)
    rank: int
    alpha: float | None  # None: the file carries no alpha for it (diffusers then uses alpha = rank)
    down_shape: tuple[int, ...]
    up_shape: tuple[int, ...] | None
    algorithm: str = "lora"  # lora | locon | dora | loha | lokr | full (LyCORIS files), or an unsupported one


@dataclasses.dataclass(frozen=True)
class LoraFile:
    """A parsed LoRA file. Shared through the cache: treat `state_dict` as read-only.

    `state_dict` is a read-only mapping of CPU tensors. Tensors themselves cannot be frozen, so
    anything that hands them to diffusers (which may adopt them as parameters) must go through
    `state_dict_copy()` or `pipeline_state_dict()`, never pass these tensors on directly.
    """

    path: str
    sha256: str
    size: int
    format: LoraFormat
    state_dict: Mapping[str, torch.Tensor] = dataclasses.field(compare=False, repr=False)
    metadata: Mapping[str, str] = dataclasses.field(compare=False, repr=False)
    addnet_hash: str | None = dataclasses.field(default=None, compare=False)
    modules: tuple[LoraModule, ...] = dataclasses.field(default=(), compare=False, repr=False)
    nonfinite_keys: tuple[str, ...] = dataclasses.field(default=(), compare=False, repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def short_hash(self) -> str:
        """The hash A1111 writes into "Lora hashes" (and Civitai indexes), so images can be traced.

        A1111 takes the file's `sshs_model_hash` metadata when present, else the kohya/"addnet" hash
        (sha256 of the safetensors tensor data after the header), else the whole file's sha256; and
        keeps the first 12 hex digits.
        """
        declared = self.metadata.get("sshs_model_hash", "")
        if re.fullmatch(r"[0-9a-fA-F]{12,64}", declared or ""):
            return declared[:_A1111_SHORT_HASH_LEN].lower()
        return (self.addnet_hash or self.sha256)[:_A1111_SHORT_HASH_LEN]

    @property
    def adapter_metadata(self) -> dict[str, Any] | None:
        """diffusers' `lora_adapter_metadata` (the LoraConfig the file was saved with), parsed.

        It is the only place a diffusers/PEFT file keeps alpha != rank. diffusers reads it only when
        `load_lora_weights` gets a *path*; with an in-memory dict it is lost, so callers pass it on
        as `metadata=` (see `pipeline_state_dict`).
        """
        raw = self.metadata.get("lora_adapter_metadata")
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            logger.warning("%s: ignoring lora_adapter_metadata that is not valid JSON", self.path)
            return None
        return value if isinstance(value, dict) else None

    def state_dict_copy(self) -> dict[str, torch.Tensor]:
        """A fresh dict of cloned tensors: safe to hand to diffusers, which may adopt the tensors."""
        return {k: v.clone() for k, v in self.state_dict.items()}

    def check_finite(self) -> None:
        """Raise if any tensor holds NaN, inf or a magnitude above MAX_LORA_MAGNITUDE: such a LoRA turns
        every image black. LoadLoRA calls it (engine.lora_spec); reading alone does not, so
        `loragraph inspect` can still describe a broken file.
        """
        if self.nonfinite_keys:
            raise LoraFileError(
                f"{self.path}: tensor {self.nonfinite_keys[0]!r} holds NaN, inf or values beyond "
                f"±{MAX_LORA_MAGNITUDE:g} ({len(self.nonfinite_keys)} bad tensor(s) in all); "
                "the LoRA would produce black or broken images"
            )

    def summary(self) -> dict[str, Any]:
        """A JSON-able description for LoRAInfo, the server's metadata route and `loragraph inspect`."""
        from .summary import summary

        return summary(self)


def load(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of the file at `real` (`shown`: the name errors give), checked."""
    if real.lower().endswith(SAFETENSORS_SUFFIXES) or shown.lower().endswith(SAFETENSORS_SUFFIXES):
        return _load_safetensors(real, shown)
    return _load_pickle(real, shown)


def _load_safetensors(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import safetensors.torch

    metadata = _check_safetensors_layout(real, shown)
    try:
        tensors = safetensors.torch.load_file(real, device="cpu")
    except Exception as e:  # safetensors raises its own SafetensorError or OSError
        raise LoraFileError(f"{shown}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    return tensors, metadata


def _check_safetensors_layout(real: str, shown: str) -> dict[str, str]:
    """Check the header against the file size, so a truncated file gets a sentence, not a traceback."""
    size = os.path.getsize(real)
    with open(real, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoraFileError(f"{shown}: not a safetensors file: it is only {size} bytes long")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise LoraFileError(
                f"{shown}: truncated or not a safetensors file: its header claims {n} bytes, "
                f"but the file is only {size} bytes long"
            )
        raw = f.read(n)
    try:
        header = limits.loads(raw)  # limits: a 5,000-deep header is an error, not a RecursionError
    except (UnicodeDecodeError, ValueError) as e:
        raise LoraFileError(f"{shown}: not a safetensors file: its header is not valid JSON ({e})") from e
    if not isinstance(header, dict):
        raise LoraFileError(f"{shown}: not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    try:
        end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise LoraFileError(f"{shown}: damaged safetensors header (bad data_offsets)") from e
    if 8 + n + end > size:
        raise LoraFileError(
            f"{shown}: truncated: its tensors need {8 + n + end} bytes but the file has only {size} "
            "(an interrupted download or copy?)"
        )
    if not isinstance(metadata, dict):
        raise LoraFileError(f"{shown}: damaged safetensors header (__metadata__ is not an object)")
    return {str(k): str(v) for k, v in metadata.items()}


def _load_pickle(real: str, shown: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import pickle

    try:
        # Never unpickle arbitrary objects: a .ckpt/.pt can run code when fully unpickled.
        obj = torch.load(real, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise LoraFileError(
            f"{shown}: refused: the pickle holds objects other than tensors and plain values, and "
            f"pickled LoRAs are only loaded with torch.load(weights_only=True) ({str(e).splitlines()[0]})"
        ) from e
    except Exception as e:  # torch raises RuntimeError/EOFError/zipfile errors for damaged files
        raise LoraFileError(f"{shown}: not a readable PyTorch file ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # Lightning-style checkpoints nest the weights
    if not isinstance(obj, dict):
        raise LoraFileError(f"{shown}: holds a {type(obj).__name__}, not a dict of tensors")
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            tensors[str(k)] = v
        elif isinstance(v, (str, int, float, bool)):
            metadata[str(k)] = str(v)
        else:
            raise LoraFileError(f"{shown}: entry {k!r} is a {type(v).__name__}, not a tensor")
    return tensors, metadata


def build(
    path: str,
    sha: str,
    addnet: str | None,
    size: int,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
) -> LoraFile:
    keys = list(tensors)
    # --- #15: LyCORIS families (LoHa, LoKr, DoRA, full diffs, Tucker LoCon) ---
    from .formats import lycoris

    if lycoris.is_lycoris(keys):
        return _build_lycoris(path, sha, addnet, size, tensors, metadata)
    # --- end #15 ---
    if not any(is_adapter_key(k) for k in keys):
        shown = ", ".join(keys[:_EXAMPLE_KEYS]) or "(the file holds no tensors)"
        raise LoraFileError(
            f"{path}: no LoRA keys (lora_A/lora_B, lora_down/lora_up, ...) among its {len(keys)} tensors; "
            f"is it a model rather than a LoRA? Example keys: {shown}"
        )
    fmt = detect_format(keys)
    modules = modules_of(tensors, fmt)
    nonfinite = tuple(k for k, v in tensors.items() if v.is_floating_point() and not _all_sane(v))
    return LoraFile(
        path=path,
        sha256=sha,
        size=size,
        format=fmt,
        state_dict=types.MappingProxyType(tensors),
        metadata=types.MappingProxyType(metadata),
        addnet_hash=addnet,
        modules=modules,
        nonfinite_keys=nonfinite,
    )


def _build_lycoris(
    path: str, sha: str, addnet: str | None, size: int, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> LoraFile:
    """A LyCORIS/kohya file with modules diffusers cannot load; its modules carry their algorithm (#15)."""
    from .formats import lycoris

    modules = []
    for m in lycoris.parse(tensors):
        try:
            out, inner = lycoris.delta_shape(m)
        except (KeyError, lycoris.LycorisError):  # an unsupported algorithm: reported on load
            out, inner = 0, 0
        modules.append(
            LoraModule(
                component=m.component, name=m.name, rank=m.rank, alpha=m.alpha, down_shape=(m.rank, inner),
                up_shape=(out, m.rank), algorithm=m.algorithm,
            )
        )
    nonfinite = tuple(k for k, v in tensors.items() if v.is_floating_point() and not _all_sane(v))
    return LoraFile(
        path=path, sha256=sha, size=size, format=lycoris.NAME, state_dict=types.MappingProxyType(tensors),
        metadata=types.MappingProxyType(metadata), addnet_hash=addnet, modules=tuple(modules),
        nonfinite_keys=nonfinite,
    )


def _all_sane(t: torch.Tensor) -> bool:
    """Every element finite and within ±MAX_LORA_MAGNITUDE (one min/max pass; NaN fails both bounds)."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(lo >= -MAX_LORA_MAGNITUDE) and bool(hi <= MAX_LORA_MAGNITUDE)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element is finite, in one pass for 16/32-bit floats (4x faster than isfinite().all()).

    Their sum in float64 cannot overflow (n * 3.4e38 stays far below 1.8e308), so it is non-finite
    exactly when some element is NaN or inf (inf - inf gives NaN).
    """
    if t.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return bool(torch.isfinite(t.sum(dtype=torch.float64)))
    return bool(torch.isfinite(t).all())

