"""ScheduleAdapterWeights: an adapter's denoiser strength as a curve over the sampling steps."""

from __future__ import annotations

from typing import Any

from ..loaders.state import INTERPOLATIONS, PipelineHandle
from . import widget_text
from .common import CATEGORY, PIPELINE, NodeResult, engine, origin_of


class ScheduleAdapterWeights:
    DESCRIPTION = (
        "Give an adapter a strength that changes over the sampling steps: step i of N runs the denoiser "
        "at strength(i / N), from keyframes. Acts on the denoiser only: text encoders run once per prompt, "
        "so their weight stays what LoadLoRA/SetAdapterWeights set. A scheduled adapter samples unfused. A "
        "later SetAdapterWeights naming the adapter removes the schedule; a later schedule replaces it."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = (
        "The pipeline with this adapter's strength scheduled; the Sampler applies it per step.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "A pipeline with the adapter loaded and active."}),
                "adapter_name": (
                    "STRING",
                    {"default": "", "tooltip": "The loaded, active adapter to schedule."},
                ),
                "keyframes": (
                    "STRING",
                    {
                        "default": "0:1.0",
                        "multiline": True,  # a text box: the editor redraws the curve at every keystroke
                        "tooltip": "progress:strength pairs, comma-separated, progress in 0..1 and "
                        "increasing, e.g. 0:1.0, 0.4:1.0, 0.6:0.0. Before the first keyframe its strength "
                        "holds, after the last the last. Denoiser only: text encoders run once per prompt.",
                    },
                ),
                "interpolation": (
                    list(INTERPOLATIONS),
                    {
                        "default": "linear",
                        "tooltip": "Between keyframes: linear; hold (a keyframe's strength until the next); "
                        "ease (smoothstep).",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, adapter_name: str = "", keyframes: str = "0:1.0",
                  interpolation: str = "linear") -> tuple[Any]:
        widget_text.parse_keyframes(keyframes)
        if pipeline is None:
            return (None,)
        return (widget_text.schedule_weights(pipeline, adapter_name, keyframes, interpolation),)

    def run(
        self,
        pipeline: PipelineHandle,
        adapter_name: str,
        keyframes: str,
        interpolation: str = "linear",
        unique_id: Any = None,
    ) -> NodeResult:
        origin = origin_of("ScheduleAdapterWeights", unique_id)
        new = widget_text.schedule_weights(pipeline, adapter_name, keyframes, interpolation, origin)
        warnings = engine().check_schedules(new)  # a schedule that cannot hold fails here, not at the Sampler
        if warnings:
            return {"ui": {"text": warnings}, "result": (new,)}
        return (new,)
