"""Base pipelines: where they come from, and the live ones kept in memory.

A `PipelineSource` says how to build a pipeline (built-in, diffusers folder, single file) and is
the key of an LRU of live pipelines, bounded by the bytes of their parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import torch

from ..base.disk import stat_identity
from ..base.errors import NodeInputError
from ..builtin_models.catalog import BUILTIN_MODELS, BUILTINS
from . import fence, quantized
from .components import COMPONENTS
from .config import get_config
from .state import PipelineSource

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BUILTIN_PREFIX = "builtin:"
# Bump when a built-in model's code changes, so cached outputs made with the old one are not reused.
BUILTIN_VERSION = "1"


class BuiltinComponents(Mapping[str, tuple[str, ...]]):
    """name -> the components a built-in pipeline can carry LoRA layers on (a source's, before building):
    its pipeline class's LoRA mixin's list, read through the fence, less those its builder leaves None."""

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return BUILTINS[name].lora_components(fence.loadable_names)

    def __iter__(self) -> Iterator[str]:
        return iter(BUILTINS)

    def __len__(self) -> int:
        return len(BUILTINS)


BUILTIN_COMPONENTS: Mapping[str, tuple[str, ...]] = BuiltinComponents()


def resolve_device(device: str) -> str:
    """`auto`: cuda, else mps, else cpu. An unavailable device is a clear error on the input."""
    if device in ("auto", "", None):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise NodeInputError("device", "cuda was asked for but torch sees no CUDA device here")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise NodeInputError("device", "mps was asked for but it is not available here")
    if device not in ("cpu", "cuda", "mps"):
        raise NodeInputError("device", f"unknown device {device!r}")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: fp16 on CUDA (half the memory, tensor cores), fp32 elsewhere (CPU fp16 is slow and lossy)."""
    if dtype in ("auto", "", None):
        return "float16" if device == "cuda" else "float32"
    if dtype not in DTYPES:
        raise NodeInputError("dtype", f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return dtype


def _folder_fingerprint(path: Path) -> str:
    """Every file's identity (base/disk.stat_identity): cheap, and changes whenever the weights on
    disk change, a same-size rewrite that keeps the mtime included."""
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{stat_identity(st)}\n".encode())
    return h.hexdigest()[:16]


def make_source(model: str, dtype: str = "auto", device: str = "auto", denoiser: str = quantized.FROM_MODEL,
                weight_dtype: str = "default") -> PipelineSource:
    """Resolve the LoadPipeline inputs to a source; raises NodeInputError naming the input."""
    source = _model_source(model, dtype, device)
    denoiser_path = quantized.resolve_denoiser(denoiser)
    weight_dtype = quantized.check_weight_dtype(weight_dtype, source.device, denoiser_path)
    if denoiser_path is None and weight_dtype == "default":
        return source
    identity = ""
    if denoiser_path is not None:
        st = denoiser_path.stat()
        identity = f"{denoiser_path}:{stat_identity(st)}"
    return replace(source, fingerprint=f"{source.fingerprint}|{identity}|{weight_dtype}",
                   denoiser_file=str(denoiser_path or ""), weight_dtype=weight_dtype)


def _model_source(model: str, dtype: str, device: str) -> PipelineSource:
    from .. import host

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX):]
        if name not in BUILTIN_MODELS:
            raise NodeInputError(
                "model", f"no built-in model {name!r}; built-in: {', '.join(BUILTIN_MODELS)}"
            )
        comps = BUILTIN_COMPONENTS[name]
        return PipelineSource(model, "builtin", name, dt, dev, f"builtin:{name}:{BUILTIN_VERSION}", comps)
    if model.lower().endswith((".safetensors", ".ckpt")):
        try:
            path = host.resolve_in("checkpoints", model)
        except (ValueError, FileNotFoundError) as e:
            raise NodeInputError("model", str(e)) from None
        st = path.stat()
        return PipelineSource(model, "single_file", str(path), dt, dev, stat_identity(st), ())
    try:
        path = host.resolve_in("diffusers", model)
    except (ValueError, FileNotFoundError) as e:
        raise NodeInputError("model", str(e)) from None
    index = path / "model_index.json"
    if not index.is_file():
        raise NodeInputError("model", f"{model!r} is not a diffusers folder (no model_index.json)")
    info = json.loads(index.read_text())
    comps = tuple(
        c for c in COMPONENTS if _saved(info.get(c))
    )
    return PipelineSource(model, "diffusers", str(path), dt, dev, _folder_fingerprint(path), comps)


def _saved(entry) -> bool:
    """A model_index.json entry names a saved component: [library, class], not absent or [null, null]."""
    return isinstance(entry, list) and len(entry) == 2 and entry[0] is not None and entry[1] is not None


def _absent_components(folder: str) -> dict[str, None]:
    """Components a folder was saved without ([null, null], e.g. SD3 without its T5 encoder).

    from_pretrained refuses such a folder unless each is passed as None; passing them is what the
    folder says, so a pipeline saved without its optional encoder loads back as it was saved.
    """
    info = json.loads((Path(folder) / "model_index.json").read_text())
    return {
        k: None for k, v in info.items() if not k.startswith("_") and isinstance(v, list) and not _saved(v)
    }


def build_pipeline(source: PipelineSource):
    """Build the diffusers pipeline a source names, offline, in its dtype and on its device."""
    t0 = time.perf_counter()
    torch_dtype = DTYPES[source.dtype]
    replaced = ""
    with quiet_loading():
        pipe = _build(source, torch_dtype)
        if source.denoiser_file:  # before anything moves: the model's own denoiser never reaches the device
            folder = source.path if source.kind == "diffusers" else None
            replaced = quantized.replace_denoiser(pipe, folder, source.denoiser_file, torch_dtype,
                                                  Path(source.denoiser_file).name)
    # diffusers warns on every .to(dtype=...), even a no-op: cast only when a component differs.
    modules = {n: c for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    if replaced:  # a quantized model refuses any dtype cast: it was read in the dtype already
        for name, module in modules.items():
            same = name == replaced or module.dtype == torch_dtype
            module.to(source.device) if same else module.to(device=source.device, dtype=torch_dtype)
    elif any(m.dtype != torch_dtype for m in modules.values()):
        pipe.to(device=source.device, dtype=torch_dtype)
    else:
        pipe.to(source.device)
    if source.weight_dtype != "default":  # after the cast, which would undo the fp8 storage
        quantized.enable_fp8(pipe, source.weight_dtype, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    if not hasattr(pipe, "load_lora_weights"):
        raise NodeInputError("model", f"{type(pipe).__name__} does not support LoRA in diffusers")
    logger.debug("built pipeline %s in %.3f s", source.model, time.perf_counter() - t0)
    return pipe


def _build(source: PipelineSource, torch_dtype: torch.dtype):
    if source.kind == "builtin":
        return BUILTIN_MODELS[source.path][0]()
    if source.kind == "diffusers":
        from diffusers import DiffusionPipeline

        skipped = quantized.skipped_denoiser(source.path) if source.denoiser_file else {}
        return DiffusionPipeline.from_pretrained(
            source.path, local_files_only=True, dtype=torch_dtype, **_absent_components(source.path),
            **skipped,
        )
    return _from_single_file(source)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No "Loading pipeline components" / "Loading weights" bars: the node's own line says it ran,
    and a server's console shows one bar only, the Sampler's (as ComfyUI's)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    was = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            diffusers_logging.enable_progress_bar()
        if was[1]:
            transformers_logging.enable_progress_bar()


def _from_single_file(source: PipelineSource):
    """A single-file checkpoint, offline: its config is, first found, a diffusers folder without weights
    at `<checkpoint>.config/`, an original `.yaml` with the same stem, or the package's own config for
    the family its keys show (loaders/single_file.py; docs/single-files.md).
    """
    from . import single_file

    path = Path(source.path)
    sidecar = path.with_suffix(path.suffix + ".config")
    yaml = path.with_suffix(".yaml")
    kwargs: dict = {"local_files_only": True, "dtype": DTYPES[source.dtype]}
    if sidecar.is_dir() or yaml.is_file():
        cls = _sidecar_pipeline_class(path, sidecar)
        if sidecar.is_dir():
            kwargs["config"] = str(sidecar)
            if (sidecar / "model_index.json").is_file():  # saved without e.g. SD3's T5: pass it as None
                kwargs.update(_absent_components(str(sidecar)))
        else:
            kwargs["original_config"] = str(yaml)
        family, advice = "its own config", ""
    else:
        import diffusers

        try:
            family, header = single_file.shipped_family(path, source.model)
        except single_file.SingleFileError as e:
            raise NodeInputError("model", str(e)) from None
        cls = getattr(diffusers, single_file.pipeline_class_name(family))
        kwargs.update(single_file.load_kwargs(family, header))
        family = single_file.FAMILIES[family]
        logger.info("%s: a %s checkpoint, read with the package's offline config", source.model, family)
        advice = f"; a model of other shapes needs its own config: {single_file.own_config_advice(path)}"
        family = f"{family}'s config"
    try:
        return cls.from_single_file(str(path), **kwargs)
    except Exception as e:  # diffusers raises many types here; the user needs the file named
        raise NodeInputError(
            "model", f"{source.model}: could not load the checkpoint with {family}: {e}{advice}"
        ) from e


def _sidecar_pipeline_class(path: Path, sidecar: Path):
    """The class a sidecar's model_index.json names; without one, a guess from the file name."""
    import diffusers

    xl = "xl" in path.name.lower()
    cls = diffusers.StableDiffusionXLPipeline if xl else diffusers.StableDiffusionPipeline
    index = sidecar / "model_index.json"
    if index.is_file():  # the sidecar says which pipeline it describes; the file name is only a guess
        named = getattr(diffusers, str(json.loads(index.read_text()).get("_class_name")), None)
        if named is not None and hasattr(named, "from_single_file"):
            cls = named
    return cls


def param_bytes(pipe) -> int:
    total = 0
    for name in getattr(pipe, "components", {}):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            total += sum(p.numel() * p.element_size() for p in module.parameters())
    return total


def default_memory_budget() -> int:
    """Half the machine's RAM: room for one pipeline being built while others stay cached."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 8 << 30


class PipelineCache:
    """LRU of live pipelines by source, bounded by the bytes of their parameters.

    The entry type is opaque here (the reconciler's `LivePipeline`); the cache only needs its size.
    """

    def __init__(self, budget_bytes: int | None = None):
        """`budget_bytes`: None takes the engine configuration's, else half the machine's RAM."""
        if budget_bytes is None:
            budget_bytes = get_config().pipeline_cache_bytes
        self.budget = budget_bytes if budget_bytes is not None else default_memory_budget()
        self._entries: OrderedDict[PipelineSource, tuple[object, int]] = OrderedDict()

    def get(self, source: PipelineSource):
        hit = self._entries.get(source)
        if hit is None:
            return None
        self._entries.move_to_end(source)
        return hit[0]

    def put(self, source: PipelineSource, entry: object, size: int) -> None:
        self._entries[source] = (entry, size)
        self._entries.move_to_end(source)
        while len(self._entries) > 1 and sum(s for _, s in self._entries.values()) > self.budget:
            old, _ = self._entries.popitem(last=False)
            logger.info("evicted pipeline %s from memory (LRU)", old.model)

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> list[object]:
        """The live entries, least recently used first (for reports; does not touch the LRU order)."""
        return [entry for entry, _ in self._entries.values()]

    def __len__(self) -> int:
        return len(self._entries)
