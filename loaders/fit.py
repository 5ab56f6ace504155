"""Which built-in model a LoRA file fits, and so its family, for `loragraph inspect` without
`--model` and the editor's LoadLoRA summary (`family_fit`: one answer for both).

`guess_base_model` reads shapes against SD1/SD2/SDXL; a file made for one of the built-in tiny
models (the demo LoRAs, tests, anything trained on them) matches none of those. So the built-in
models are tried too: a model fits when every module of the file lands on it (same check as
LoadLoRA's coverage). Building a tiny model takes ~0.1 s; each is built once per process.
"""

from __future__ import annotations

import logging
from typing import Any

from .coverage import coverage
from .lora_file import LoraFile, LoraFileError

logger = logging.getLogger(__name__)

_BUILT: dict[str, Any] = {}


def _pipe(name: str) -> Any:
    from ..builtin_models.catalog import BUILTIN_MODELS

    if name not in _BUILT:
        _BUILT[name] = BUILTIN_MODELS[name][0]()
    return _BUILT[name]


def builtin_fits(lora: LoraFile, first: str = "tiny-sd") -> list[str]:
    """`builtin:<name>` of the first built-in model (`first` tried first) on which all of the file's
    modules land, or []; one model is built per try, so a file for the default model costs one build."""
    from ..builtin_models.catalog import BUILTIN_MODELS

    for name in sorted(BUILTIN_MODELS, key=lambda n: n != first):
        try:
            cov = coverage(_pipe(name), lora)
        except LoraFileError as e:
            logger.debug("%s on builtin:%s: %s", lora.path, name, e)
            continue
        if cov.complete:
            return [f"builtin:{name}"]
    return []


# Files whose fit is remembered: the editor asks again each time a LoadLoRA shows the same file.
_FITS_KEPT = 256
_FITS: dict[tuple[str, str], dict[str, Any]] = {}


def family_fit(lora: LoraFile, base_model: str | None = None) -> dict[str, Any]:
    """What `loragraph inspect` (no `--model`) and the editor's LoadLoRA summary say a file fits:
    `fits` (["builtin:<name>"] or []) and, when one fits, `family` (that pipeline's class: every
    module lands there, after the pipeline's own converters). When `base_model` (the summary's guess
    from shapes and metadata) is "other", a fitting built-in model replaces it, with its reason."""
    key = (lora.sha256, lora.path)
    found = _FITS.get(key)
    if found is None:
        found = {"fits": builtin_fits(lora)}
        if found["fits"]:
            found["family"] = type(_pipe(found["fits"][0].removeprefix("builtin:"))).__name__
        _FITS[key] = found
        while len(_FITS) > _FITS_KEPT:
            _FITS.pop(next(iter(_FITS)))
    out = dict(found)
    if found["fits"] and base_model == "other":
        out["base_model"] = found["fits"][0]
        out["base_model_reason"] = f"all {len(lora.modules)} modules land on it"
    return out


def built(model: str) -> Any | None:
    """The pipeline `builtin_fits` built for `model`, if it did."""
    return _BUILT.get(model.removeprefix("builtin:"))


def module_algorithms(lora: LoraFile) -> dict[str, str]:
    """{module name in the file: algorithm} (lora, locon, dora, loha, lokr, full, ...)."""
    return {m.name: m.algorithm for m in lora.modules}
