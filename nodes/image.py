"""SaveImage and PreviewImage for headless runs (inside ComfyUI, ComfyUI's own nodes are used).

Same inputs, file naming and PNG text chunks as ComfyUI's (``prompt``, and each ``extra_pnginfo``
entry such as ``workflow``), so one workflow file runs in both and the PNGs open in ComfyUI's
editor. When the images come straight from a Sampler, two more chunks say which LoRAs made them:
``loras`` (JSON) and an A1111-style ``parameters`` text with its ``Lora hashes`` (nodes/lora_credits.py).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lora_credits
from .output_names import NumberedNames

if TYPE_CHECKING:
    import torch
    from PIL.PngImagePlugin import PngInfo


def _png_info(prompt: Any, extra_pnginfo: Mapping[str, Any] | None, image_credits: Any = None) -> PngInfo:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    if image_credits is not None:
        for key, text in lora_credits.png_chunks(image_credits).items():
            if key not in (extra_pnginfo or {}):
                info.add_text(key, text)
    return info


def _save(images: torch.Tensor, folder: Path, prefix: str, kind: str, prompt: Any,
          extra_pnginfo: Mapping[str, Any] | None) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    names = NumberedNames(folder, prefix, ".png")
    image_credits = lora_credits.lookup(images)
    results = []
    for tensor in images:
        array = np.clip(255.0 * tensor.cpu().numpy(), 0, 255).astype(np.uint8)
        img = Image.fromarray(array)
        info = _png_info(prompt, extra_pnginfo, image_credits)
        # compress_level 4: ComfyUI's choice, a fair size/speed trade.
        path = names.save(
            lambda tmp, img=img, info=info: img.save(tmp, format="PNG", pnginfo=info, compress_level=4))
        results.append({"filename": path.name, "subfolder": names.subfolder, "type": kind})
    return {"ui": {"images": results}}


class SaveImage:
    DESCRIPTION = "Save images as PNG to the output folder, with the workflow in the PNG (as ComfyUI does)."
    CATEGORY = "image"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to save."}),
                "filename_prefix": ("STRING", {"default": "ComfyUI", "tooltip": "File name prefix."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images: torch.Tensor, filename_prefix: str = "ComfyUI", prompt: Any = None,
                    extra_pnginfo: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from .. import host

        return _save(images, host.output_dir(), filename_prefix, "output", prompt, extra_pnginfo)


class PreviewImage:
    DESCRIPTION = "Show images without keeping them: saved to a temporary folder."
    CATEGORY = "image"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_images"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"images": ("IMAGE", {})},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    def save_images(self, images: torch.Tensor, prompt: Any = None,
                    extra_pnginfo: Mapping[str, Any] | None = None) -> dict[str, Any]:
        from .. import host

        # ComfyUI's temp prefix: a random suffix so previews of concurrent prompts do not collide.
        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstupvxyz") for _ in range(5))
        return _save(images, host.temp_dir(), prefix, "temp", prompt, extra_pnginfo)
