"""The contract every format family follows (`Family`), and `DiffusersFamily`: the plain families,
whose files diffusers converts and loads itself, given by one module of key rules each.

The engine never asks which family a file is: it calls the family's hooks. A family diffusers can
load needs only its key rules (kohya.py, diffusers_native.py, ...); one it cannot (lycoris/) builds
its layers itself and answers every hook on its own.
"""

from __future__ import annotations

import abc
import inspect
import re
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, cast

import torch

from .. import fence
from ..components import COMPONENTS, is_denoiser, placement
from ..live import LoraOperationError
from ..records import Coverage, LoraFile, LoraFileError, LoraModule, UnmatchedModule
from .keys import denoiser_name as first_denoiser
from .keys import is_adapter_key, list_modules, module_of
from .kohya import save_kohya

# Writes one file at the temporary path it is given (base/disk.py renames it into place).
Writer = Callable[[str], None]


class Family(abc.ABC):
    """A family of LoRA key names: how its files are recognised, described, placed, loaded and saved."""

    NAME: str  # the `LoraFile.format` it stands for

    @abc.abstractmethod
    def detect(self, keys: list[str]) -> bool:
        """Whether a file with these tensor names (all of them, adapter keys or not) is this family's."""

    @abc.abstractmethod
    def modules(self, tensors: Mapping[str, torch.Tensor]) -> tuple[LoraModule, ...]:
        """The file's adapted modules, each in its component, for summaries and coverage."""

    @abc.abstractmethod
    def coverage(self, pipe: Any, lora: LoraFile) -> Coverage:
        """Which of the file's modules would land on `pipe`, and why the others would not; changes nothing."""

    @abc.abstractmethod
    def load(
        self, pipe: Any, lora: LoraFile, adapter_name: str, *, hotswap: bool = False, target: str = "auto"
    ) -> None:
        """Load the file onto `pipe` as adapter `adapter_name` (`hotswap`: into that adapter's layers;
        `target`: LoadLoRA's, "auto" or the denoiser a single-expert file goes on).
        Not transactional: the caller rolls back."""

    def algorithm(self, lora: LoraFile) -> str:
        """The adapter's algorithm in one word, for LoRAInfo: `lora` unless the family knows better."""
        return "lora"

    def save_refusal(self, lora: LoraFile, adapter_name: str, fmt: str) -> str | None:
        """Why SaveLoRA cannot write this adapter as `fmt` ("kohya" | "diffusers"), or None when it can.
        Asked before the pipeline is touched."""
        return None

    @abc.abstractmethod
    def export(
        self, pipe: Any, lora: LoraFile, adapter_name: str, fmt: str, components: tuple[str, ...]
    ) -> Writer:
        """The writer of the loaded adapter at strength 1 in `fmt`, read off `pipe` now (under the
        engine's lock); `components`: the pipeline's, which name the kohya form's text encoders."""


class DiffusersFamily(Family):
    """A family diffusers converts and loads itself (`load_lora_weights`), given by its key rules.

    `rules` is the family's module: NAME, `detect(adapter keys)`, `component_of(key)` and
    `to_pipeline(pipe, lora, source, meta) -> (source, meta)`, which fixes what diffusers 0.42 gets
    wrong from an in-memory dict, in a private copy of the tensors.
    """

    def __init__(self, rules: types.ModuleType | Any) -> None:
        self.rules = rules
        self.NAME = rules.NAME

    def __repr__(self) -> str:
        return f"DiffusersFamily({self.NAME!r})"

    def detect(self, keys: list[str]) -> bool:
        return self.rules.detect([k for k in keys if is_adapter_key(k)])

    def component_of(self, key: str) -> str:
        return self.rules.component_of(key)

    def modules(self, tensors: Mapping[str, torch.Tensor]) -> tuple[LoraModule, ...]:
        return list_modules(tensors, self.rules.component_of)

    def pipeline_state_dict(
        self, pipe: Any, lora: LoraFile, *, copy: bool = True
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
        """See formats.pipeline_state_dict. A file the pipeline's own LoRA mixin converts as it is (Wan's
        original and musubi keys, LTX's, ...), which the family's fixes would make unreadable to it,
        goes to diffusers unchanged, as from its path (`_read_by_mixin`), and always as a copy: those
        converters scale some tensors in place (Wan's cross-attention and FFN alphas)."""
        if _read_by_mixin(pipe, lora, self.rules):
            return lora.state_dict_copy(), lora.adapter_metadata
        source = lora.state_dict_copy() if copy else dict(lora.state_dict)
        return self.rules.to_pipeline(pipe, lora, source, lora.adapter_metadata)

    def load(
        self, pipe: Any, lora: LoraFile, adapter_name: str, *, hotswap: bool = False, target: str = "auto"
    ) -> None:
        """diffusers' `load_lora_weights`, as from the file's path, without re-reading the file where the
        fence allows (fence.load_lora_weights): diffusers reads `lora_adapter_metadata` (alpha != rank)
        only from a path; with an in-memory dict it is lost. Everything else is diffusers' own code
        path, for every pipeline class that has `load_lora_weights`; a `target` other than the first
        denoiser is the mixin's own keyword (`load_into_transformer_2`)."""
        try:
            where = placement(target, first_denoiser(pipe))
        except ValueError as e:
            raise LoraFileError(f"{lora.path}: {e}") from None
        # A hotswap copies into the existing adapter's tensors (never adopts ours): no clone needed.
        state_dict, metadata = self.pipeline_state_dict(pipe, lora, copy=not hotswap)
        fence.load_lora_weights(pipe, state_dict, metadata, adapter_name, hotswap=hotswap, placement=where)

    def coverage(self, pipe: Any, lora: LoraFile) -> Coverage:
        """Predicted with diffusers' own `lora_state_dict` (kohya and old-format conversion) and the
        same key converters as `load_lora_into_unet` / `_load_lora_into_text_encoder`; then each
        `<module>.lora_A.weight` is checked against the live module and its shapes."""
        cls = type(pipe)
        source, _ = self.pipeline_state_dict(pipe, lora, copy=False)
        try:
            converted = _mixin_state_dict(pipe, source)
        except Exception as e:  # diffusers raises ValueError/KeyError/... on keys it cannot convert
            raise LoraFileError(
                f"{lora.path}: diffusers cannot convert this {lora.format} LoRA for {cls.__name__} "
                f"({type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else e!r})"
            ) from e
        loadable = fence.loadable_components(pipe)

        unmatched: list[UnmatchedModule] = []
        per: dict[str, dict[str, int]] = {}
        layout: dict[str, dict[str, int]] = {}
        plain = True
        matched = 0
        claimed: set[str] = set()
        for component in loadable:
            part = {k[len(component) + 1 :]: v for k, v in converted.items() if k.startswith(f"{component}.")}
            claimed |= {f"{component}.{k}" for k in part}
            if not part:
                continue
            counts = per.setdefault(component, {"matched": 0, "unmatched": 0})
            try:
                peft_keys = _converted_for_component(pipe, component, part)
            except ValueError as e:
                cannot = f"keys diffusers cannot convert: {e}"
                for module in sorted({module_of(k) for k in part}):
                    unmatched.append(UnmatchedModule(component, module, cannot))
                    counts["unmatched"] += 1
                continue
            model = getattr(pipe, component)
            for key, a in peft_keys.items():
                m = re.match(r"^(.+)\.lora_A(?:\.[^.]+)?\.weight$", key)
                if m is None:
                    plain = plain and bool(re.search(r"\.lora_B(?:\.[^.]+)?\.weight$", key))
                    continue
                module = m.group(1)
                b = peft_keys.get(key.replace(".lora_A", ".lora_B"))
                try:
                    layer = model.get_submodule(module)
                    reason = _layer_fits(layer, a, b)
                except AttributeError:
                    reason = "no such module"
                if reason is None:
                    matched += 1
                    counts["matched"] += 1
                    layout.setdefault(component, {})[module] = int(a.shape[0])
                else:
                    unmatched.append(UnmatchedModule(component, module, reason))
                    counts["unmatched"] += 1
        leftover = [k for k in converted if k not in claimed]
        for module in sorted({module_of(k) for k in leftover}):
            component = module.split(".", 1)[0]
            reason = (
                f"no such component: {cls.__name__} has no {component}"
                if component in COMPONENTS
                else "no component prefix this pipeline loads (diffusers ignores it)"
            )
            per.setdefault(component, {"matched": 0, "unmatched": 0})["unmatched"] += 1
            unmatched.append(UnmatchedModule(component, module, reason))
        return Coverage(
            file=lora.path,
            pipeline=cls.__name__,
            matched=matched,
            unmatched=tuple(unmatched),
            per_component=types.MappingProxyType(per),
            layout=types.MappingProxyType({c: types.MappingProxyType(v) for c, v in layout.items()}),
            plain=plain,
        )

    def export(
        self, pipe: Any, lora: LoraFile, adapter_name: str, fmt: str, components: tuple[str, ...]
    ) -> Writer:
        """The adapter's peft layers (what diffusers built from the file), in kohya form or through
        diffusers' own `save_lora_weights`."""
        from peft.utils import get_peft_model_state_dict

        layers: dict[str, dict[str, torch.Tensor]] = {}
        configs: dict[str, Any] = {}
        for comp, names in pipe.get_list_adapters().items():
            if adapter_name in names:
                model = getattr(pipe, comp)
                sd = get_peft_model_state_dict(model, adapter_name=adapter_name)
                layers[comp] = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
                configs[comp] = model.peft_config[adapter_name]

        def write(tmp: str) -> None:
            if fmt == "kohya":
                save_kohya(layers, configs, tmp, sdxl="text_encoder_2" in components)
            else:
                _save_diffusers(type(pipe), layers, configs, Path(tmp))

        return write


def _mixin_state_dict(pipe: Any, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The pipeline mixin's own `lora_state_dict` of `source`: the keys its loader places, each
    prefixed with its component (diffusers' converters for kohya, old and per-family layouts)."""
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    kwargs = {}
    if isinstance(pipe, StableDiffusionXLLoraLoaderMixin):
        # as its load_lora_weights does; cast: the mixin declares no `unet`, its pipelines have one
        kwargs["unet_config"] = cast(Any, pipe).unet.config
    out = type(pipe).lora_state_dict(source, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def _lands(pipe: Any, source: dict[str, torch.Tensor]) -> bool:
    """Whether the mixin converts `source` to some LoRA module the pipeline has."""
    try:
        converted = _mixin_state_dict(pipe, source)
        for component in fence.loadable_components(pipe):
            part = {k[len(component) + 1 :]: v for k, v in converted.items() if k.startswith(f"{component}.")}
            model = getattr(pipe, component)
            for key in _converted_for_component(pipe, component, part):
                m = re.match(r"^(.+)\.lora_A(?:\.[^.]+)?\.weight$", key)
                if m is not None and _has_submodule(model, m.group(1)):
                    return True
    except Exception:  # diffusers raises ValueError/KeyError/... on keys it cannot convert
        return False
    return False


def _has_submodule(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
    except AttributeError:
        return False
    return True


# (pipeline class, file sha256, path) -> whether the mixin reads the file as it is (`_read_by_mixin`)
_READ_BY_MIXIN: dict[tuple[str, str, str], bool] = {}


def _read_by_mixin(pipe: Any, lora: LoraFile, rules: Any) -> bool:
    """Whether the file goes to diffusers unchanged: the family's fixes (`to_pipeline`) leave nothing
    the pipeline's mixin places, while the file as it is converts (the family's own layouts, which
    the engine's key rules do not know: Wan's `diffusion_model.` keys read as old attention-processor
    keys get a `unet.` prefix). Never true for a file the fixed keys place, so what loaded before
    loads exactly as before."""
    key = (f"{type(pipe).__module__}.{type(pipe).__qualname__}", lora.sha256, lora.path)
    if key not in _READ_BY_MIXIN:
        fixed, _ = rules.to_pipeline(pipe, lora, dict(lora.state_dict), lora.adapter_metadata)
        # a copy: the family's converter may scale the file's tensors in place
        _READ_BY_MIXIN[key] = not _lands(pipe, fixed) and _lands(pipe, lora.state_dict_copy())
        while len(_READ_BY_MIXIN) > 1024:
            _READ_BY_MIXIN.pop(next(iter(_READ_BY_MIXIN)))
    return _READ_BY_MIXIN[key]


def _converted_for_component(
    pipe: Any, component: str, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The component's keys converted exactly as diffusers' loader would, to PEFT names."""
    from diffusers.utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if not state_dict:
        return state_dict
    if is_denoiser(component):
        # As ModelMixin.load_lora_adapter: convert unless the first key is already PEFT.
        first = next(iter(state_dict))
        return state_dict if "lora_A" in first else convert_unet_state_dict_to_peft(state_dict)
    # As lora_base._load_lora_into_text_encoder.
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(state_dict))
    if not hasattr(getattr(pipe, component), "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    return converted


def _layer_fits(layer: torch.nn.Module, a: torch.Tensor, b: torch.Tensor | None) -> str | None:
    """None when lora_A/lora_B fit the layer, else the reason they don't."""
    peft_layer: Any = layer  # torch types the attributes peft adds as Tensor | Module
    base = peft_layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    n_in = getattr(base, "in_features", None) or getattr(base, "in_channels", None)
    n_out = getattr(base, "out_features", None) or getattr(base, "out_channels", None)
    if n_in is None or n_out is None:
        return f"not a layer LoRA can adapt: {type(base).__name__}"
    lora_in = int(a.shape[1]) if a.ndim >= 2 else None
    lora_out = int(b.shape[0]) if b is not None and b.ndim >= 1 else None
    if b is None:
        return "lora_B (up) matrix missing"
    if b.ndim >= 2 and a.ndim >= 1 and b.shape[1] != a.shape[0]:
        return f"lora_A/lora_B ranks differ ({a.shape[0]} vs {b.shape[1]})"
    if lora_in != n_in or lora_out != n_out:
        return f"shape mismatch: lora expects (in,out)=({lora_in},{lora_out}), layer has ({n_in},{n_out})"
    return None


def _save_diffusers(pipe_cls: type[Any], layers: dict, configs: dict, path: Path) -> None:
    """diffusers' own `save_lora_weights`, with `lora_adapter_metadata` so alpha != rank survives."""
    params = inspect.signature(pipe_cls.save_lora_weights).parameters
    kwargs: dict[str, Any] = {}
    for comp, sd in layers.items():
        key = f"{comp}_lora_layers"
        if key not in params:
            raise LoraOperationError(f"{pipe_cls.__name__}.save_lora_weights cannot save {comp} layers")
        kwargs[key] = sd
        meta_key = f"{comp}_lora_adapter_metadata"
        if meta_key in params:
            kwargs[meta_key] = configs[comp].to_dict()
    pipe_cls.save_lora_weights(
        save_directory=str(path.parent), weight_name=path.name, safe_serialization=True, **kwargs
    )
