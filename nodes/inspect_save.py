"""SaveLoRA and LoRAInfo: the nodes that look at real weights without sampling."""

from __future__ import annotations

import json
from typing import Any

from ..loaders.state import PipelineHandle
from .common import CATEGORY, PIPELINE, NodeResult, check_output_folder, engine


class SaveLoRA:
    DESCRIPTION = (
        "Write one adapter to {output}/loras/{prefix}_{counter:05}_.safetensors at strength 1. kohya form "
        "(true alphas) loads in ComfyUI, A1111 and diffusers; diffusers form keeps diffusers' metadata."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "pipeline": (PIPELINE, {}),
                "adapter_name": ("STRING", {"default": "", "tooltip": "The adapter to save."}),
                "filename_prefix": (
                    "STRING",
                    {"default": "loragraph", "tooltip": "File name prefix, may hold subfolders."},
                ),
                "format": (
                    ["kohya", "diffusers"],
                    {
                        "default": "kohya",
                        "tooltip": "kohya: loads in ComfyUI/A1111/diffusers. diffusers: PEFT keys.",
                    },
                ),
            }
        }

    @classmethod
    def PREFLIGHT(cls, pipeline: PipelineHandle | None, adapter_name: str = "",
                  filename_prefix: str = "loragraph", format: str = "kohya") -> tuple[Any, ...]:
        from .. import host
        from ..loaders.transitions import check_known

        if pipeline is not None and adapter_name.strip():
            check_known(pipeline.state, [adapter_name.strip()], "adapter_name")
        check_output_folder(host.output_dir() / "loras", filename_prefix)
        return ()

    def run(self, pipeline: PipelineHandle, adapter_name: str, filename_prefix: str = "loragraph",
            format: str = "kohya") -> NodeResult:
        from .. import host
        from .output_names import NumberedNames

        names = NumberedNames(host.output_dir() / "loras", filename_prefix, ".safetensors", "filename_prefix")
        path = engine().save_lora(pipeline, adapter_name.strip(), names.save, format)
        return {"ui": {"text": [str(path)],
                       "loras": [{"filename": path.name, "subfolder": names.subfolder, "type": "output"}]}}


class LoRAInfo:
    DESCRIPTION = (
        "Report the LoRA state as JSON: adapters per component, active weights, fused, text-encoder switch."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("info",)
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"pipeline": (PIPELINE, {})}}

    def run(self, pipeline: PipelineHandle) -> NodeResult:
        text = json.dumps(engine().info(pipeline), indent=2, sort_keys=False)
        return {"ui": {"text": [text]}, "result": (text,)}
