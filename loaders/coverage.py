"""Coverage: which of a file's LoRA modules would land on a pipeline, per component, and why the
rest would not, predicted before the pipeline is touched.

A wrong-base or half-matching file is reported here (`Coverage.require`, `coverage_message`), so
the reconciler can refuse it or warn, instead of diffusers loading nothing or raising mid-load. How
a file's modules are placed is its format family's (`Family.coverage`: diffusers' own converters for
the families diffusers loads, kohya names and delta shapes for LyCORIS); the record is records.py's.
"""

from __future__ import annotations

from typing import Any

from .formats import family
from .records import Coverage, LoraFile, LoraFileError, UnmatchedModule, coverage_message

__all__ = ["Coverage", "UnmatchedModule", "coverage", "coverage_message"]


def coverage(pipe: Any, lora: LoraFile) -> Coverage:
    """Which of the file's LoRA modules would land on `pipe`, per component; nothing is changed."""
    cls = type(pipe)
    if not hasattr(cls, "lora_state_dict"):
        raise LoraFileError(f"{lora.path}: {cls.__name__} does not take LoRAs")
    return family(lora.format).coverage(pipe, lora)
