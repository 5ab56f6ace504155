"""LoadPipeline: the source of every PIPELINE edge."""

from __future__ import annotations

from typing import Any

from .common import CATEGORY, PIPELINE, NodeResult, engine

# LoadPipeline's optional inputs (docs/CONTRACT.md, Quantized denoisers); spelled here, not imported
# from loaders/quantized, so that importing the pack loads no torch (loaders.quantized checks them).
FROM_MODEL = "(from model)"
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e5m2")


def model_choices() -> list[str]:
    """Built-in models first (the default needs no files), then diffusers folders, then single files."""
    from .. import host
    from ..builtin_models.catalog import BUILTIN_MODELS, DEFAULT_BUILTIN

    builtin = [f"builtin:{DEFAULT_BUILTIN}"] + [f"builtin:{n}" for n in BUILTIN_MODELS
                                                if n != DEFAULT_BUILTIN]
    return builtin + host.list_diffusers_folders() + host.list_checkpoints()


class LoadPipeline:
    DESCRIPTION = (
        "Load a diffusers pipeline: a built-in model (no download), a diffusers folder from the "
        "`diffusers` models folder, or a single-file checkpoint from `checkpoints`."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The base pipeline, with no LoRA.",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        from .. import host

        return {
            "required": {
                "model": (
                    model_choices(),
                    {"tooltip": "builtin:<name>, a diffusers folder, or a checkpoint file."},
                ),
                "dtype": (
                    ["auto", "float32", "float16", "bfloat16"],
                    {"default": "auto", "tooltip": "auto: float16 on CUDA, float32 elsewhere."},
                ),
                "device": (
                    ["auto", "cpu", "cuda", "mps"],
                    {"default": "auto", "tooltip": "auto: cuda, else mps, else cpu."},
                ),
            },
            "optional": {
                "denoiser": (
                    [FROM_MODEL, *host.list_denoisers()],
                    {"default": FROM_MODEL,
                     "tooltip": "A denoiser file from diffusion_models/ or unet/ (.safetensors, or "
                                ".gguf quantized) in place of the model's own."},
                ),
                "weight_dtype": (
                    list(WEIGHT_DTYPES),
                    {"default": "default",
                     "tooltip": "fp8: the denoiser's weights stored in fp8, computed in dtype."},
                ),
            },
        }

    @classmethod
    def IS_CHANGED(cls, model: str = "", dtype: str = "auto", device: str = "auto",
                   denoiser: str = FROM_MODEL, weight_dtype: str = "default", **_: Any) -> str:
        # The weights' identity enters the cache key: a diffusers folder changed on disk is reloaded.
        from ..loaders.pipelines import make_source

        try:
            return make_source(model, dtype, device, denoiser, weight_dtype).fingerprint
        except Exception:  # validation reports the bad value; the cache key just must not crash
            return ""

    @classmethod
    def PREFLIGHT(cls, model: str, dtype: str = "auto", device: str = "auto", denoiser: str = FROM_MODEL,
                  weight_dtype: str = "default", **_: Any) -> tuple[Any]:
        # The stand-in handle, from the model's config alone (graph/input_checks.py, loaders/preflight.py);
        # the denoiser file and fp8 storage are checked as the run checks them, without reading weights.
        from ..loaders.preflight import pipeline_source
        from ..loaders.state import PipelineHandle

        source = pipeline_source(model, dtype, device, denoiser, weight_dtype)
        return (PipelineHandle(source) if source is not None else None,)

    @classmethod
    def DESCRIBE_CHOICES(cls, input_name: str) -> str | None:
        from .. import host

        if input_name != "model":
            return None
        return (f"built-in models, diffusers folders ({host.describe_folders('diffusers')}) and checkpoints "
                f"({host.describe_folders('checkpoints')}); --models-dir sets the root")

    def run(self, model: str, dtype: str = "auto", device: str = "auto",
            denoiser: str = FROM_MODEL, weight_dtype: str = "default") -> NodeResult:
        return (engine().load_pipeline(model, dtype, device, denoiser, weight_dtype),)
