"""SaveImage, PreviewImage and SaveAnimation for headless runs (inside ComfyUI, ComfyUI's own
SaveImage, PreviewImage and SaveAnimatedWEBP are used). SaveAnimation writes a video's frames as one
animated WebP, in the file layout and ui shape of ComfyUI's SaveAnimatedWEBP.

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
from .common import check_output_folder
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

    @classmethod
    def PREFLIGHT(cls, images: Any = None, filename_prefix: str = "ComfyUI") -> tuple[Any, ...]:
        from .. import host

        check_output_folder(host.output_dir(), filename_prefix)
        return ()

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


# EXIF tags ComfyUI's SaveAnimatedWEBP writes the prompt and each extra_pnginfo entry into
# (0x0110 Model, then 0x010F Make counting down), so its editor reads our files' workflows too.
_EXIF_PROMPT_TAG = 0x0110
_EXIF_FIRST_EXTRA_TAG = 0x010F


def _webp_exif(first: Any, prompt: Any, extra_pnginfo: Mapping[str, Any] | None) -> Any:
    exif = first.getexif()
    if prompt is not None:
        exif[_EXIF_PROMPT_TAG] = f"prompt:{json.dumps(prompt)}"
    for offset, (key, value) in enumerate((extra_pnginfo or {}).items()):
        exif[_EXIF_FIRST_EXTRA_TAG - offset] = f"{key}:{json.dumps(value)}"
    return exif


class SaveAnimation:
    DESCRIPTION = (
        "Save an IMAGE batch (e.g. a video Sampler's frames) as ONE animated WebP, lossless, looping, "
        "with the workflow in its EXIF as ComfyUI's SaveAnimatedWEBP writes it."
    )
    CATEGORY = "image"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save_animation"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The frames, in order."}),
                "filename_prefix": ("STRING", {"default": "loragraph", "tooltip": "File name prefix."}),
                "fps": ("INT", {"default": 16, "min": 1, "max": 1000, "tooltip": "Frames per second."}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    @classmethod
    def PREFLIGHT(cls, images: Any = None, filename_prefix: str = "loragraph",
                  fps: int = 16) -> tuple[Any, ...]:
        from .. import host

        check_output_folder(host.output_dir(), filename_prefix)
        return ()

    def save_animation(self, images: torch.Tensor, filename_prefix: str = "loragraph", fps: int = 16,
                       prompt: Any = None, extra_pnginfo: Mapping[str, Any] | None = None) -> dict[str, Any]:
        import numpy as np
        from PIL import Image

        from .. import host
        from ..base.errors import NodeInputError

        if not 1 <= fps <= 1000:
            raise NodeInputError("fps", f"must be between 1 and 1000, got {fps}")
        frames = [Image.fromarray(np.clip(255.0 * t.cpu().numpy(), 0, 255).astype(np.uint8)) for t in images]
        if not frames:
            raise NodeInputError("images", "no frames to save")
        names = NumberedNames(host.output_dir(), filename_prefix, ".webp")
        exif = _webp_exif(frames[0], prompt, extra_pnginfo)

        def write(tmp: str) -> None:
            # duration in whole ms, as ComfyUI's; loop 0: forever
            frames[0].save(tmp, format="WEBP", save_all=True, append_images=frames[1:],
                           duration=int(1000 / fps), loop=0, lossless=True, exif=exif)

        path = names.save(write)
        result = {"filename": path.name, "subfolder": names.subfolder, "type": "output"}
        return {"ui": {"images": [result], "animated": (len(frames) != 1,)}}
