"""Sampler: renders images from a PIPELINE with the LoRA state its handle describes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..base import limits
from ..loaders.noise_schedulers import SCHEDULERS
from ..loaders.state import PipelineHandle
from . import lora_credits
from .common import ADAPTER_WEIGHTS, CATEGORY, PIPELINE, NodeResult, engine

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


class Sampler:
    DESCRIPTION = (
        "Render images: the pipeline's own __call__ with a CPU generator seeded by `seed`, so the same "
        "seed gives the same image on any device. Shows progress per step and stops between steps on cancel. "
        "Applies ScheduleAdapterWeights' per-step strengths and restores the static ones after."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    READS = (ADAPTER_WEIGHTS,)
    OUTPUT_TOOLTIPS = (
        "Images as ComfyUI's IMAGE: float32 [batch, height, width, 3] in 0..1; a video pipeline's "
        "videos as [videos x frames, height, width, 3], each video's frames in order.",
    )
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What to draw."}),
                "negative_prompt": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "What to avoid."},
                ),
                "seed": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 0xFFFFFFFFFFFFFFFF,
                        "control_after_generate": True,
                        "tooltip": "Seed of the CPU generator.",
                    },
                ),
                "steps": ("INT", {"default": 20, "min": 1, "max": 1000, "tooltip": "Denoising steps."}),
                "cfg": (
                    "FLOAT",
                    {
                        "default": 7.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "Guidance scale.",
                    },
                ),
                "width": (
                    "INT",
                    {"default": 512, "min": 8, "max": 16384, "step": 8, "tooltip": "A multiple of 8."},
                ),
                "height": (
                    "INT",
                    {"default": 512, "min": 8, "max": 16384, "step": 8, "tooltip": "A multiple of 8."},
                ),
                "scheduler": (
                    list(SCHEDULERS),
                    {"default": "default", "tooltip": "default keeps the pipeline's own."},
                ),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per prompt."}),
            },
            # Optional, so workflows saved before them load unchanged; a pipeline whose __call__
            # does not take one of them never receives it.
            "optional": {
                "true_cfg": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "True classifier-free guidance (Qwen-Image, Flux): above 1 with a "
                                   "negative prompt. Pipelines without it ignore it.",
                    },
                ),
                "frames": (
                    "INT",
                    {"default": 1, "min": 1, "max": 4096,
                     "tooltip": "Frames per video (video pipelines; image pipelines ignore it)."},
                ),
                "image": (
                    "IMAGE",
                    {"tooltip": "Input image for pipelines that take one (e.g. Flux Kontext): the "
                                "batch's first image."},
                ),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width: Any = None, height: Any = None, prompt: Any = None,
                        negative_prompt: Any = None) -> bool | str:
        # ComfyUI's step is only a widget hint; a saved workflow can still hold 500: refuse it here.
        # No **kwargs on purpose: ComfyUI skips its own type/range/combo checks for every input that
        # VALIDATE_INPUTS takes, so this takes only the ones it checks, and checks their range too.
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if (refusal := limits.check_prompt_length(text, name)) is not None:
                return refusal
        for name, value in (("width", width), ("height", height)):
            if isinstance(value, int) and not isinstance(value, bool):
                if not 8 <= value <= 16384:
                    return f"{name} must be between 8 and 16384, got {value}"
                if value % 8:
                    return f"{name} must be a multiple of 8, got {value}"
        return True

    def run(self, pipeline: PipelineHandle, prompt: str, negative_prompt: str, seed: int, steps: int,
            cfg: float, width: int, height: int, scheduler: str = "default",
            batch_size: int = 1, true_cfg: float = 1.0, frames: int = 1,
            image: torch.Tensor | None = None) -> NodeResult:
        from .. import host

        images = engine().sample(
            pipeline,
            prompt,
            negative_prompt,
            seed,
            steps,
            cfg,
            width,
            height,
            scheduler,
            batch_size,
            progress=host.progress_reporter(steps),
            check_interrupted=host.check_interrupted,
            true_cfg=true_cfg,
            frames=frames,
            image=image,
        )
        # SaveImage writes the LoRAs used into the PNG; the IMAGE stays a plain tensor
        # (nodes/lora_credits.py).
        try:
            lora_credits.register(images, lora_credits.credits_for(pipeline, prompt, negative_prompt, seed,
                                                                   steps, cfg, width, height, scheduler))
        except Exception:  # credits are a courtesy: never fail a render over them
            logger.warning("could not record the LoRAs used by this Sampler", exc_info=True)
        warning = engine().size_warning(pipeline, width, height)
        if warning:  # shown on the node, as LoRA nodes show keys that did not land
            return {"ui": {"text": [warning]}, "result": (images,)}
        return (images,)
