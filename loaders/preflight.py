"""What can be checked before any weights are read: the nodes' PREFLIGHT stand-ins (graph/input_checks.py).

A pipeline's stand-in is a `PipelineHandle` whose source comes from the model's config alone
(model_index.json, the built-in catalog); a LoRA file is read up to its safetensors header (names,
shapes, metadata; the few scalar alphas), never its weights. From those, the LoRA nodes' own
transitions run on the stand-in handle, so the checks are the very ones the run makes: adapter names
known upstream, duplicates, weight counts, keyframes. What needs the weights (which modules of a
file land, schedules on fused layers, memory) is checked when the node runs.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..base.disk import stat_identity
from ..base.errors import NodeInputError
from . import fence
from .formats import detect_format, modules_of
from .lora_file import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, LoraFile, LoraFileError
from .lora_file import _check_safetensors_layout as check_safetensors_layout
from .state import AdapterSpec, PipelineHandle, PipelineSource
from .summary import guess_base_model

logger = logging.getLogger(__name__)

# safetensors' dtype names -> torch's, for the shape-only stand-in tensors of a header.
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
# An SD/SDXL UNet's cross-attention width says which base it is (summary.py reads LoRAs the same way).
_CONTEXT_FAMILY = {768: "SD1.x", 1024: "SD2.x", 2048: "SDXL"}


def pipeline_source(model: str, dtype: str = "auto", device: str = "auto", denoiser: str | None = None,
                    weight_dtype: str = "default") -> PipelineSource | None:
    """LoadPipeline's source without building it: components from the pipeline class the config
    names. A single-file checkpoint that cannot load offline is refused here from its header; one
    of a shipped family stands in as that family's pipeline; None when only its loader can tell."""
    from .pipelines import make_source

    extra = {"denoiser": denoiser} if denoiser is not None else {}
    source = make_source(model, dtype, device, weight_dtype=weight_dtype, **extra)
    if source.kind == "builtin":
        return source
    if source.kind == "single_file":
        return _single_file_source(source, model)
    if source.kind != "diffusers":
        return None
    cls = pipeline_class(source)
    if cls is None:
        return None
    return replace(source, components=tuple(c for c in fence.loadable_names(cls) if c in source.components))


def _single_file_source(source: PipelineSource, model: str) -> PipelineSource | None:
    import diffusers

    from .single_file import checkpoint_pipeline_class, config_problem

    path = Path(source.path)
    problem = config_problem(path, model)
    if problem is not None:
        raise NodeInputError("model", problem)
    if path.with_suffix(path.suffix + ".config").is_dir() or path.with_suffix(".yaml").is_file():
        return None  # its own config decides which components it has: the run tells
    name = checkpoint_pipeline_class(path)
    cls = getattr(diffusers, name, None) if name else None
    return replace(source, components=fence.loadable_names(cls)) if cls is not None else None


def _model_index(source: PipelineSource) -> dict[str, Any]:
    try:
        data = json.loads((Path(source.path) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def pipeline_class(source: PipelineSource) -> type | None:
    """The diffusers class a built-in model or a diffusers folder is (importing it is not loading it)."""
    import diffusers

    if source.kind == "builtin":
        from ..builtin_models.catalog import BUILTINS

        return BUILTINS[source.path].pipeline_type()
    if source.kind == "single_file":
        from .single_file import checkpoint_pipeline_class

        name = checkpoint_pipeline_class(Path(source.path))
    else:
        name = _model_index(source).get("_class_name")
    return getattr(diffusers, name, None) if isinstance(name, str) else None


def pipeline_family(source: PipelineSource) -> str | None:
    """"SD1.x", "SD2.x", "SDXL", "SD1.x/SD2.x" (a UNet of another width), or the class name of
    another family ("FluxPipeline"); None when unknown."""
    cls = pipeline_class(source)
    if cls is None:
        return None
    name = cls.__name__
    if name.startswith("StableDiffusionXL"):
        return "SDXL"
    if name.startswith("StableDiffusion") and not name.startswith("StableDiffusion3"):
        width = None
        if source.kind == "diffusers":
            try:
                config = json.loads((Path(source.path) / "unet" / "config.json").read_text())
                width = config.get("cross_attention_dim")
            except (OSError, ValueError, AttributeError):
                width = None
        return _CONTEXT_FAMILY.get(width, "SD1.x/SD2.x") if isinstance(width, int) else "SD1.x/SD2.x"
    return name


def read_lora_header(path: Path, shown: str) -> LoraFile:
    """The file as far as its header tells: format, modules (with shape-only tensors) and metadata.

    Pickles (.ckpt/.pt/.bin) have no header: they are read whole, with weights_only, through the
    store's cache, so the run reuses the read. Headers are cached by the file's identity (size, mtime,
    ctime, inode), so validating the same workflow again (every run, every queued prompt) reads nothing.
    """
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        from . import store

        return store.read_lora(path)
    if not path.name.lower().endswith(SAFETENSORS_SUFFIXES):
        raise LoraFileError(f"{shown}: unsupported file type {path.suffix or '(no suffix)'!r}")
    st = os.stat(path)
    return _cached_header(str(path), shown, stat_identity(st))


# Parsed headers kept: a workflow's LoRAs and then some; each is a few KB of names and shapes.
@functools.lru_cache(maxsize=256)
def _cached_header(real: str, shown: str, identity: str) -> LoraFile:
    path = Path(real)
    metadata = check_safetensors_layout(str(path), shown)
    header = _header(path)
    keys = [k for k in header if k != "__metadata__"]
    fmt = detect_format(keys)
    if fmt is None:
        shown_keys = ", ".join(keys[:5]) or "(the file holds no tensors)"
        raise LoraFileError(f"{shown}: no LoRA keys (lora_A/lora_B, lora_down/lora_up, ...) among its "
                            f"{len(keys)} tensors; is it a model rather than a LoRA? "
                            f"Example keys: {shown_keys}")
    tensors = _stand_in_tensors(path, header, keys)
    try:
        modules = modules_of(tensors, fmt)
    except Exception as e:  # a family that reads values beyond the alphas: no modules before the run
        logger.debug("%s: modules need the weights (%s)", shown, e)
        modules = ()
    return LoraFile(path=str(path), sha256="", size=os.path.getsize(path), format=fmt, state_dict=tensors,
                    metadata=metadata, modules=modules)


def _header(path: Path) -> dict[str, Any]:
    from ..base import limits

    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return limits.loads(f.read(n))


def _stand_in_tensors(path: Path, header: dict[str, Any], keys: list[str]) -> dict[str, torch.Tensor]:
    """Shape-only (meta) tensors, except the scalar alphas, which are read: the modules need them."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    alphas = [k for k in keys if k.endswith(("alpha", ".alpha"))]
    if alphas:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in alphas:
                tensors[k] = f.get_tensor(k)
    for k in keys:
        if k not in tensors:
            info = header[k]
            tensors[k] = torch.empty(info["shape"], dtype=_DTYPES.get(info["dtype"], torch.float32),
                                     device="meta")
    return tensors


def check_family(lora: LoraFile, source: PipelineSource, shown: str) -> None:
    """Refuse a file whose keys, shapes or metadata say SD1.x/SD2.x/SDXL on a pipeline of another family;
    anything less certain is left to the run, which places the file's keys on the real pipeline."""
    if not lora.modules and not lora.metadata:
        return
    base, why = guess_base_model(lora)
    if base not in ("SD1.x", "SD2.x", "SDXL"):
        return
    family = pipeline_family(source)
    if family is None or base in family.split("/"):
        return
    raise NodeInputError(
        "lora_name",
        f"{shown} was made for {base} ({why}), but {source.model} is {_article(family)}: "
        f"choose a LoRA made for it, or a {base} model",
    )


def _article(family: str) -> str:
    if family.endswith("Pipeline"):
        return f"a {family}"
    return f"an {family} model" if family[0] in "S" else f"a {family} model"


def lora_spec(handle: PipelineHandle | None, lora_name: str, strength: float, adapter_name: str,
              target: str, origin: str) -> AdapterSpec:
    """LoadLoRA's AdapterSpec as the engine would make it (engine.lora_spec), from the header only."""
    from .. import host
    from .transitions import derive_adapter_name

    try:
        path = host.resolve_in("loras", lora_name)
    except (ValueError, FileNotFoundError) as e:
        raise NodeInputError("lora_name", str(e)) from None
    try:
        lora = read_lora_header(path, lora_name)
    except LoraFileError as e:
        raise NodeInputError("lora_name", str(e)) from None
    except OSError as e:
        raise NodeInputError("lora_name", f"{lora_name}: cannot be read ({e.strerror or e})") from None
    if handle is not None:
        check_family(lora, handle.source, lora_name)
        denoisers = handle.source.denoisers
        if target != "auto" and target not in denoisers:
            raise NodeInputError(
                "target", f"this pipeline has no {target} (its denoising components: {', '.join(denoisers)})")
    taken = handle.state.names if handle is not None else ()
    name = adapter_name.strip() or derive_adapter_name(lora_name, taken)
    if "." in name or "/" in name:
        raise NodeInputError("adapter_name", f"{name!r}: adapter names cannot hold '.' or '/' (peft keys)")
    return AdapterSpec(name, str(path), f"preflight:{path}", float(strength), None, origin, target)
