"""Coverage: which of a file's LoRA modules would land on a pipeline, per component, and why the
rest would not, predicted before the pipeline is touched.

A wrong-base or half-matching file is reported here (`Coverage.require`, `coverage_message`), so
the reconciler can refuse it or warn, instead of diffusers loading nothing or raising mid-load. How
a file's modules are placed is its format family's (`Family.coverage`: diffusers' own converters for
the families diffusers loads, kohya names and delta shapes for LyCORIS); the record is records.py's.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any

from .formats import family
from .formats.keys import denoiser_name
from .records import Coverage, LoraFile, LoraFileError, UnmatchedModule, coverage_message

__all__ = ["Coverage", "UnmatchedModule", "coverage", "coverage_message"]


def coverage(pipe: Any, lora: LoraFile, target: str = "auto") -> Coverage:
    """Which of the file's LoRA modules would land on `pipe`, per component; nothing is changed.

    `target` (LoadLoRA's): a denoiser other than the first takes what the file's keys put on the
    first (Wan 2.2's low-noise expert, built as the high-noise one: the same module shapes).
    """
    cls = type(pipe)
    if not hasattr(cls, "lora_state_dict"):
        raise LoraFileError(f"{lora.path}: {cls.__name__} does not take LoRAs")
    cov = family(lora.format).coverage(pipe, lora)
    first = denoiser_name(pipe)
    if target in ("auto", first):
        return cov

    def moved(component: str) -> str:
        return target if component == first else component

    return dataclasses.replace(
        cov,
        unmatched=tuple(dataclasses.replace(u, component=moved(u.component)) for u in cov.unmatched),
        per_component=types.MappingProxyType({moved(c): v for c, v in cov.per_component.items()}),
        layout=types.MappingProxyType({moved(c): v for c, v in cov.layout.items()}),
    )
