"""Node classes. NODE_CLASS_MAPPINGS is what ComfyUI loads; headless runs add SaveImage/PreviewImage
and SaveAnimation (inside ComfyUI its own SaveAnimatedWEBP writes the same file)."""

from .image import PreviewImage, SaveAnimation, SaveImage
from .inspect_save import LoRAInfo, SaveLoRA
from .lora import (
    DeleteAdapters,
    FuseLoRA,
    LoadLoRA,
    SetAdapterWeights,
    SetLoRADevice,
    TextEncoderLoRAToggle,
    UnfuseLoRA,
    UnloadLoRA,
)
from .pipeline import LoadPipeline
from .sampler import Sampler
from .schedule import ScheduleAdapterWeights
from .stack import LoRAStack, PromptLoRAs

NODE_CLASS_MAPPINGS = {
    "LoadPipeline": LoadPipeline,
    "LoadLoRA": LoadLoRA,
    "SetAdapterWeights": SetAdapterWeights,
    "ScheduleAdapterWeights": ScheduleAdapterWeights,
    "FuseLoRA": FuseLoRA,
    "UnfuseLoRA": UnfuseLoRA,
    "TextEncoderLoRAToggle": TextEncoderLoRAToggle,
    "DeleteAdapters": DeleteAdapters,
    "UnloadLoRA": UnloadLoRA,
    "SetLoRADevice": SetLoRADevice,
    "SaveLoRA": SaveLoRA,
    "LoRAInfo": LoRAInfo,
    "LoRAStack": LoRAStack,
    "PromptLoRAs": PromptLoRAs,
    "Sampler": Sampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "LoadPipeline": "Load Pipeline (diffusers)",
    "LoadLoRA": "Load LoRA (diffusers)",
    "SetAdapterWeights": "Set Adapter Weights",
    "ScheduleAdapterWeights": "Schedule Adapter Weights",
    "FuseLoRA": "Fuse LoRA",
    "UnfuseLoRA": "Unfuse LoRA",
    "TextEncoderLoRAToggle": "Text Encoder LoRA On/Off",
    "DeleteAdapters": "Delete Adapters",
    "UnloadLoRA": "Unload LoRA",
    "SetLoRADevice": "Set LoRA Device",
    "SaveLoRA": "Save LoRA",
    "LoRAInfo": "LoRA Info",
    "LoRAStack": "LoRA Stack",
    "PromptLoRAs": "Prompt LoRAs (<lora:name:w>)",
    "Sampler": "Sampler (diffusers)",
}

# Headless only: inside ComfyUI its own SaveImage/PreviewImage are used, and SaveAnimatedWEBP for
# SaveAnimation (every node the pack adds there is in the loragraph category; this one is an image
# output like SaveImage, so it stays with them).
HEADLESS_NODE_CLASS_MAPPINGS = {**NODE_CLASS_MAPPINGS, "SaveImage": SaveImage, "PreviewImage": PreviewImage,
                                "SaveAnimation": SaveAnimation}

__all__ = ["HEADLESS_NODE_CLASS_MAPPINGS", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
