"""The LoRA nodes. Each turns widget values into a new PIPELINE handle and realizes it.

Realizing right away runs the loading and fusion work inside the node that asked for it, so a bad
file or a failed safe fusion is reported on that node, and the pipeline is rolled back.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, ClassVar

from ..loaders import transitions
from ..loaders.components import DENOISERS, OTHER_COMPONENTS, TEXT_ENCODERS
from ..loaders.state import PipelineHandle
from . import widget_text
from .common import ADAPTER_WEIGHTS, CATEGORY, PIPELINE, NodeResult, engine, origin_of, realize_with_ui


def _lora_names() -> list[str]:
    from .. import host

    return host.list_loras()


class LoadLoRA:
    DESCRIPTION = (
        "Load a LoRA file onto the pipeline (diffusers' load_lora_weights). Every loaded adapter is "
        "active afterwards, this one at `strength`."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("The pipeline with this LoRA loaded and active.",)
    FUNCTION = "run"
    SETS: ClassVar = MappingProxyType({"strength": ADAPTER_WEIGHTS})

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "The pipeline to add the LoRA to."}),
                "lora_name": (
                    _lora_names(),
                    {
                        "tooltip": "A file in the loras folder (.safetensors; .ckpt/.pt/.bin load "
                        "weights-only)."
                    },
                ),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -100.0,
                        "max": 100.0,
                        "step": 0.01,
                        "tooltip": "The adapter's weight until a SetAdapterWeights changes it.",
                    },
                ),
                "adapter_name": (
                    "STRING",
                    {"default": "", "tooltip": "Name for the adapter; empty: derived from the file name."},
                ),
            },
            "optional": {
                "target": (
                    # the denoising components diffusers' mixins name; the run checks the pipeline's own
                    ["auto", *DENOISERS],
                    {
                        "default": "auto",
                        "tooltip": "Where the file goes. auto: where its keys say (diffusers' default). A "
                        "denoiser: a single-expert file on it (Wan 2.2's low-noise LoRA on transformer_2).",
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, lora_name: str = "", **_: Any) -> str:
        # The file's content enters the cache key: a LoRA rewritten on disk is loaded again.
        from .. import host
        from ..loaders import store

        try:
            return store.file_sha256(host.resolve_in("loras", lora_name))
        except Exception:  # validation reports the bad name; the cache key just must not crash
            return ""

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, lora_name: str, strength: float = 1.0,
                  adapter_name: str = "", target: str = "auto", unique_id: Any = None) -> tuple[Any]:
        from ..loaders import preflight

        spec = preflight.lora_spec(pipeline, lora_name, strength, adapter_name or "", target,
                                   origin_of("LoadLoRA", unique_id))
        return (transitions.add_adapter(pipeline, spec) if pipeline is not None else None,)

    @classmethod
    def DESCRIBE_CHOICES(cls, input_name: str) -> str | None:
        from .. import host

        return f"LoRA files, {host.describe_folders('loras')}" if input_name == "lora_name" else None

    def run(
        self,
        pipeline: PipelineHandle,
        lora_name: str,
        strength: float,
        adapter_name: str = "",
        unique_id: Any = None,
        target: str = "auto",
    ) -> NodeResult:
        origin = origin_of("LoadLoRA", unique_id)
        spec = engine().lora_spec(pipeline, lora_name, strength, adapter_name, origin, target)
        return realize_with_ui(transitions.add_adapter(pipeline, spec))


class SetAdapterWeights:
    DESCRIPTION = (
        "Choose the active adapters and their weights (diffusers' set_adapters). Adapters not named stay "
        "loaded but inactive. Per-component and per-block weights are supported."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"
    # set_adapters replaces the whole active set: every earlier strength or weight stops mattering.
    SETS: ClassVar = MappingProxyType({"adapter_names": ADAPTER_WEIGHTS, "weights": ADAPTER_WEIGHTS,
                                       "text_encoder_weights": ADAPTER_WEIGHTS,
                                       "block_weights": ADAPTER_WEIGHTS})
    OVERRIDES: ClassVar = MappingProxyType({ADAPTER_WEIGHTS: "weights"})

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "adapter_names": (
                    "STRING",
                    {"default": "", "tooltip": "Comma-separated adapter names; empty: every loaded adapter."},
                ),
                "weights": (
                    "STRING",
                    {"default": "1.0", "tooltip": "One number for all, or one per adapter name."},
                ),
                "text_encoder_weights": (
                    "STRING",
                    {"default": "", "tooltip": "Weights for the text encoders; empty: the same as weights."},
                ),
                "block_weights": (
                    "STRING",
                    {
                        "default": "",
                        "multiline": True,
                        "tooltip": 'Optional JSON, diffusers\' per-block form, e.g. {"unet": {"down": 0.5, '
                        '"mid": 1, "up": 0}}, or {adapter_name: {...}} per adapter; or a LoRA Block Weight '
                        'vector (1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1 on SD 1.x) or preset (MIDD, OUTALL, ...).',
                    },
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, weights: Any = None, text_encoder_weights: Any = None) -> bool | str:
        # Numbers only, finite ("nan" parses as a float and would draw black images). The count
        # against adapter_names is checked when the node runs: which adapters are loaded is known then.
        for name, value in (("weights", weights), ("text_encoder_weights", text_encoder_weights)):
            if value is None or not str(value).strip():  # linked, or empty (the default): checked when run
                continue
            try:
                numbers = [float(p) for p in str(value).split(",") if p.strip()]
            except ValueError:
                return f"{name}: expected numbers separated by commas, got {str(value)[:80]!r}"
            refusal = widget_text.weight_refusal(numbers, value)  # not finite, or past what pipelines survive
            if refusal is not None:
                return f"{name}: {refusal}"
        return True

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, adapter_names: str = "", weights: str = "1.0",
                  text_encoder_weights: str = "", block_weights: str = "") -> tuple[Any]:
        if pipeline is None:  # the text still has to parse
            widget_text.parse_names(adapter_names, "adapter_names")
            widget_text.parse_block_weights(block_weights)
            return (None,)
        new = widget_text.set_weights(pipeline, adapter_names, weights, text_encoder_weights, block_weights)
        return (new,)

    def run(
        self,
        pipeline: PipelineHandle,
        adapter_names: str,
        weights: str,
        text_encoder_weights: str = "",
        block_weights: str = "",
        unique_id: Any = None,
    ) -> NodeResult:
        return realize_with_ui(
            widget_text.set_weights(pipeline, adapter_names, weights, text_encoder_weights, block_weights)
        )


class FuseLoRA:
    DESCRIPTION = (
        "Merge the LoRA weights into the base weights (diffusers' fuse_lora) for faster sampling. "
        "The original weights are kept, so UnfuseLoRA restores them bit for bit."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"
    READS = (ADAPTER_WEIGHTS,)  # fuses at the weights active now

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "fuse_unet": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Fuse into the denoiser (unet or transformer)."},
                ),
                "fuse_text_encoder": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Fuse into the text encoder(s)."},
                ),
                "lora_scale": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -100.0,
                        "max": 100.0,
                        "step": 0.01,
                        "tooltip": "Scales the fused delta.",
                    },
                ),
                "safe_fusing": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Check the fused weights for NaN and refuse to fuse a broken LoRA.",
                    },
                ),
                "adapter_names": (
                    "STRING",
                    {"default": "", "tooltip": "Comma-separated adapters to fuse; empty: the active ones."},
                ),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, fuse_unet: bool = True,
                  fuse_text_encoder: bool = True,
                  lora_scale: float = 1.0, safe_fusing: bool = False, adapter_names: str = "") -> tuple[Any]:
        if pipeline is None:
            widget_text.parse_names(adapter_names, "adapter_names")
            return (None,)
        new = widget_text.fuse(pipeline, fuse_unet, fuse_text_encoder, lora_scale, safe_fusing, adapter_names)
        return (new,)

    def run(
        self,
        pipeline: PipelineHandle,
        fuse_unet: bool,
        fuse_text_encoder: bool,
        lora_scale: float,
        safe_fusing: bool,
        adapter_names: str = "",
        unique_id: Any = None,
    ) -> NodeResult:
        origin = origin_of("FuseLoRA", unique_id)
        new = widget_text.fuse(
            pipeline, fuse_unet, fuse_text_encoder, lora_scale, safe_fusing, adapter_names, origin
        )
        # a fusion that would hide a scheduled adapter fails here (loaders/weight_schedule.py)
        if new.state.schedules:
            engine().check_schedules(new)
        return realize_with_ui(new)


class UnfuseLoRA:
    DESCRIPTION = "Undo FuseLoRA (diffusers' unfuse_lora), restoring the original weights bit for bit."
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "unfuse_unet": ("BOOLEAN", {"default": True, "tooltip": "Unfuse the denoiser."}),
                "unfuse_text_encoder": (
                    "BOOLEAN",
                    {"default": True, "tooltip": "Unfuse the text encoder(s)."},
                ),
            }
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, unfuse_unet: bool = True,
                  unfuse_text_encoder: bool = True) -> tuple[Any]:
        return (transitions.unfuse(pipeline, unfuse_unet, unfuse_text_encoder) if pipeline else None,)

    def run(self, pipeline: PipelineHandle, unfuse_unet: bool, unfuse_text_encoder: bool) -> NodeResult:
        return realize_with_ui(transitions.unfuse(pipeline, unfuse_unet, unfuse_text_encoder))


class TextEncoderLoRAToggle:
    DESCRIPTION = (
        "Switch the LoRA layers of the text encoder(s) on or off (enable/disable_lora_for_text_encoder)."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "enabled": ("BOOLEAN", {"default": True, "tooltip": "On: LoRA applies to the text encoder."}),
                "text_encoder": (
                    # Every non-denoising adapter component of diffusers' mixins (text_encoder_3, SD3's
                    # T5, is in none); the run checks the name against the pipeline's own.
                    ["all", *(te for te in TEXT_ENCODERS if te != "text_encoder_3"), *OTHER_COMPONENTS],
                    {"default": "all", "tooltip": "Which text encoder (any non-denoising LoRA component); "
                     "SDXL has two."},
                ),
            }
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, enabled: bool = True,
                  text_encoder: str = "all") -> tuple[Any]:
        return (transitions.toggle_text_encoder(pipeline, enabled, text_encoder) if pipeline else None,)

    def run(self, pipeline: PipelineHandle, enabled: bool, text_encoder: str = "all") -> NodeResult:
        return realize_with_ui(transitions.toggle_text_encoder(pipeline, enabled, text_encoder))


class DeleteAdapters:
    DESCRIPTION = "Remove adapters from the pipeline (diffusers' delete_adapters)."
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "adapter_names": (
                    "STRING",
                    {"default": "", "tooltip": "Comma-separated adapter names to delete."},
                ),
            }
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, adapter_names: str = "") -> tuple[Any]:
        if pipeline is None:
            widget_text.parse_names(adapter_names, "adapter_names")
            return (None,)
        return (widget_text.delete(pipeline, adapter_names),)

    def run(self, pipeline: PipelineHandle, adapter_names: str) -> NodeResult:
        return realize_with_ui(widget_text.delete(pipeline, adapter_names))


class UnloadLoRA:
    DESCRIPTION = (
        "Remove every LoRA, fused ones included (diffusers' unload_lora_weights): the base pipeline."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pipeline": (PIPELINE, {})}}

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None) -> tuple[Any]:
        return (transitions.unload(pipeline) if pipeline else None,)

    def run(self, pipeline: PipelineHandle) -> NodeResult:
        return realize_with_ui(transitions.unload(pipeline))


class SetLoRADevice:
    DESCRIPTION = (
        "Move adapters to another device (diffusers' set_lora_device), e.g. park unused ones on the CPU. "
        "An adapter must be on the pipeline's device to be used for sampling."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "adapter_names": (
                    "STRING",
                    {"default": "", "tooltip": "Comma-separated; empty: every adapter."},
                ),
                "device": (
                    ["cpu", "cuda", "mps", "auto"],
                    {"default": "cpu", "tooltip": "auto: the pipeline's device."},
                ),
            }
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, adapter_names: str = "",
                  device: str = "cpu") -> tuple[Any]:
        if device not in ("cpu", "auto"):
            from ..loaders.pipelines import resolve_device

            resolve_device(device)
        if pipeline is None:
            widget_text.parse_names(adapter_names, "adapter_names")
            return (None,)
        return (widget_text.set_device(pipeline, adapter_names, device),)

    def run(self, pipeline: PipelineHandle, adapter_names: str, device: str) -> NodeResult:
        if device not in ("cpu", "auto"):
            from ..loaders.pipelines import resolve_device

            resolve_device(device)  # raises on the `device` input if it is not there
        return realize_with_ui(widget_text.set_device(pipeline, adapter_names, device))
