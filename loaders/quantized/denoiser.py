"""LoadPipeline's `denoiser` and `weight_dtype`: a denoiser read from a single file (`.safetensors`,
or `.gguf` through diffusers' GGUF quantizer) in place of the model's own, and fp8 storage.

Both are diffusers' own loading: `from_single_file` (with `GGUFQuantizationConfig` for GGUF) and
`enable_layerwise_casting`. The rest of the pipeline comes from the LoadPipeline `model`; the
denoiser's config is the model's own (written to a temporary folder: offline, any model kind).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from ...base.errors import NodeInputError
from ..components import DENOISERS, denoisers
from .storage import WEIGHT_DTYPES, fp8_dtype

logger = logging.getLogger(__name__)

FROM_MODEL = "(from model)"  # LoadPipeline's `denoiser` default: the model's own denoiser
GGUF_EXTRA = "pip install 'loragraph[gguf]'"


def resolve_denoiser(name: str) -> Path | None:
    """The file a `denoiser` value names (None for `(from model)`); a clear error on the input."""
    from ... import host

    if name in ("", FROM_MODEL, None):
        return None
    if not name.lower().endswith(host.DENOISER_EXTENSIONS):
        raise NodeInputError("denoiser", f"{name!r} is not a .safetensors or .gguf file")
    try:
        path = host.resolve_denoiser(name)
    except (ValueError, FileNotFoundError) as e:
        raise NodeInputError("denoiser", str(e)) from None
    if path.suffix.lower() == ".gguf":
        try:
            import gguf  # noqa: F401
        except ImportError:
            raise NodeInputError("denoiser", f"reading {name} needs the gguf package: {GGUF_EXTRA}") from None
    return path


def check_weight_dtype(weight_dtype: str, device: str, denoiser: Path | None) -> str:
    """`weight_dtype` resolved ("default" for empty); refuses what this torch/device cannot store."""
    weight_dtype = weight_dtype or "default"
    if weight_dtype not in WEIGHT_DTYPES:
        raise NodeInputError(
            "weight_dtype", f"unknown weight_dtype {weight_dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}"
        )
    if weight_dtype == "default":
        return weight_dtype
    reason = fp8_unavailable(weight_dtype, device)
    if reason:
        raise NodeInputError("weight_dtype", reason)
    if denoiser is not None and denoiser.suffix.lower() == ".gguf":
        raise NodeInputError(
            "weight_dtype", f"{weight_dtype} applies to a plain denoiser; {denoiser.name} is GGUF-quantized "
            "already: use weight_dtype default"
        )
    return weight_dtype


def fp8_unavailable(weight_dtype: str, device: str) -> str | None:
    """Why fp8 storage cannot be used here (None if it can): torch without the dtype, or MPS
    (Apple's Metal backend has no fp8 tensors)."""
    name = weight_dtype.replace("fp8_", "float8_")
    if not hasattr(torch, name):
        return f"{weight_dtype} needs torch.{name}, which torch {torch.__version__} lacks"
    if device == "mps":
        return f"{weight_dtype} is not available on mps (no fp8 tensors there); use cpu or cuda"
    return None


def skipped_denoiser(folder: str) -> dict[str, None]:
    """`from_pretrained` keywords that leave a diffusers folder's first denoiser unread ({name: None}):
    a denoiser file takes its place, so the folder's own weights never reach memory or the device."""
    info = json.loads((Path(folder) / "model_index.json").read_text())
    for comp in DENOISERS:
        entry = info.get(comp)
        if isinstance(entry, list) and len(entry) == 2 and entry[1] is not None:
            return {comp: None}
    return {}


def replace_denoiser(pipe: Any, folder: str | None, path: str, dtype: torch.dtype, shown: str) -> str:
    """Read the file's denoiser (on the CPU, in `dtype`) into the pipeline's first denoiser slot and
    return the slot's name. `folder`: the diffusers folder whose first denoiser `skipped_denoiser`
    left unread (its class and config come from there); None: the live denoiser gives both."""
    import diffusers

    if folder is not None:
        comp = next(iter(skipped_denoiser(folder)), "")
        info = json.loads((Path(folder) / "model_index.json").read_text())
        cls = getattr(diffusers, info[comp][1], None) if comp else None
        if cls is None:
            raise NodeInputError("denoiser", f"{Path(folder).name} names no denoiser class diffusers has")
        model = _read_single_file(cls, str(Path(folder) / comp), Path(path), dtype, shown)
    else:
        from ..fence import loadable_components

        comps = [c for c in denoisers(loadable_components(pipe)) if getattr(pipe, c, None) is not None]
        if not comps:
            raise NodeInputError("denoiser", f"{type(pipe).__name__} has no denoiser to replace")
        comp, current = comps[0], getattr(pipe, comps[0])
        with tempfile.TemporaryDirectory(prefix="loragraph-denoiser-config-") as config:
            current.save_config(config)
            model = _read_single_file(type(current), config, Path(path), dtype, shown)
    pipe.register_modules(**{comp: model})
    return comp


def enable_fp8(pipe: Any, weight_dtype: str, dtype: torch.dtype) -> None:
    """fp8 storage on every denoising component, computing in `dtype` (diffusers' layerwise casting)."""
    from ..fence import loadable_components

    for comp in denoisers(loadable_components(pipe)):
        model = getattr(pipe, comp, None)
        if model is not None:
            model.enable_layerwise_casting(storage_dtype=fp8_dtype(weight_dtype), compute_dtype=dtype)


def _read_single_file(cls: type, config: str, path: Path, dtype: torch.dtype, shown: str) -> Any:
    """diffusers' `from_single_file` of the denoiser's class with a local config folder, offline."""
    if not hasattr(cls, "from_single_file"):
        raise NodeInputError("denoiser", f"diffusers cannot read a {cls.__name__} from a single file")
    kwargs: dict[str, Any] = {"torch_dtype": dtype, "local_files_only": True}
    if path.suffix.lower() == ".gguf":
        from diffusers import GGUFQuantizationConfig

        kwargs["quantization_config"] = GGUFQuantizationConfig(compute_dtype=dtype)
        _check_gguf_types(path, shown)
    try:
        return cls.from_single_file(str(path), config=config, **kwargs)
    except Exception as e:  # diffusers raises many types here; the user needs the file named
        raise NodeInputError(
            "denoiser", f"{shown}: its tensors do not fit the model's {cls.__name__}: {e}"
        ) from e


def _check_gguf_types(path: Path, shown: str) -> None:
    """Every tensor's quant type must be one the installed gguf knows and diffusers can dequantize."""
    import gguf
    from diffusers.quantizers.gguf.utils import SUPPORTED_GGUF_QUANT_TYPES

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/KeyError on a type number or layout it does not know
        raise NodeInputError(
            "denoiser", f"{shown}: the installed gguf {_gguf_version()} cannot read it: {e!r}"
        ) from e
    plain = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}
    bad = sorted({t.tensor_type.name for t in reader.tensors
                  if t.tensor_type not in plain and t.tensor_type not in SUPPORTED_GGUF_QUANT_TYPES})
    if bad:
        readable = ", ".join(sorted(t.name for t in SUPPORTED_GGUF_QUANT_TYPES))
        raise NodeInputError(
            "denoiser", f"{shown}: quant type {', '.join(bad)} cannot be read by diffusers' GGUF loader "
            f"(it reads {readable})"
        )


def _gguf_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("gguf")
    except importlib.metadata.PackageNotFoundError:
        return "(unknown version)"
