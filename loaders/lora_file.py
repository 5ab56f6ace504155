"""LoRA files: read one from disk, check it, and describe what it holds.

`load` reads the tensors (safetensors, or a pickle loaded with `weights_only`) and the header
metadata; `build` makes them a `LoraFile` (records.py), with the key format and the modules its
family (formats/) reads. A truncated, damaged or non-LoRA file is a `LoraFileError` with a sentence
naming the file. Hashing and the shared cache of parsed files are store.py's (`read_lora`); the
human summary is summary.py's.
"""

from __future__ import annotations

import os
import re
import types

import torch

from ..base import limits
from .formats import detect_format, modules_of
from .records import MAX_LORA_MAGNITUDE, LoraFile, LoraFileError, LoraModule

# The records are records.py's; readers of a file import them from here as well.
__all__ = [
    "LORA_SUFFIXES",
    "MAX_LORA_MAGNITUDE",
    "PICKLE_SUFFIXES",
    "SAFETENSORS_SUFFIXES",
    "LoraFile",
    "LoraFileError",
    "LoraModule",
    "all_finite",
    "build",
    "load",
]

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")
LORA_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES

# How many example keys an error message shows: enough to recognise the file, short enough to read.
_EXAMPLE_KEYS = 5


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
            # n is not shown: when the file is no safetensors those are its first 8 bytes (text)
            raise LoraFileError(
                f"{shown}: truncated or not a safetensors file: the header length in its first 8 "
                f"bytes runs past the end of the file ({size} bytes)"
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
            f"{shown}: refused: the pickle holds objects other than tensors and plain values"
            f"{_what_was_refused(e)}, and pickled LoRAs are only loaded as data (torch.load with "
            "weights_only=True), because unpickling anything else can run code; ask for a .safetensors "
            "version of the file"
        ) from None
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


# Terminal colour codes torch puts into its messages.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _what_was_refused(error: Exception) -> str:
    """The one line of torch's refusal that says which object it met ("unsupported GLOBAL
    posix.getcwd"), without its colour codes and without its advice to turn the safety off."""
    for line in _ANSI.sub("", str(error)).splitlines():
        line = line.strip()
        if "GLOBAL" in line or line.lower().startswith("unsupported"):
            return f" ({line.rstrip('.')})"
    return ""


def build(
    path: str,
    sha: str,
    addnet: str | None,
    size: int,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, str],
) -> LoraFile:
    """The parsed file: its format family (formats.detect_format) and the modules that family reads."""
    keys = list(tensors)
    fmt = detect_format(keys)
    if fmt is None:
        shown = ", ".join(keys[:_EXAMPLE_KEYS]) or "(the file holds no tensors)"
        raise LoraFileError(
            f"{path}: no LoRA keys (lora_A/lora_B, lora_down/lora_up, ...) among its {len(keys)} tensors; "
            f"is it a model rather than a LoRA? Example keys: {shown}"
        )
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

