"""The shipped demo model `builtin:shapes`, and the simple image measures that check it.

`shapes` is a tiny StableDiffusionPipeline (32x32 RGB, 16x16x4 latents) trained by
`tools/train_demo.py` on coloured shapes it draws itself ("a red circle on a white background"), so
a newcomer sees real images offline in about a second on a CPU. Three demo LoRAs, trained with peft
on top of it, each change one visible property:

- `palette` (kohya format): the whole image turns sepia (brown/cream duotone);
- `outline`: shapes are drawn as a 2-pixel outline instead of filled;
- `texture`: shapes get diagonal stripes in a darker shade of their colour.

The measures below are deliberately plain (fill ratio, colour distance, high-frequency energy), so
a reader can check by eye what the acceptance tests and the training report claim.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "demo"
MODEL_DIR = ASSETS / "shapes"  # a diffusers StableDiffusionPipeline folder
LORA_DIR = ASSETS / "loras"  # palette (kohya), outline, texture (diffusers)
NATIVE_SIZE = 32
LORA_NAMES = ("palette", "outline", "texture")

# The words the model knows. RGB 0..255; chosen far apart, and far from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 50, 200),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
# The palette LoRA's target: luminance mapped onto a dark-brown -> cream ramp.
SEPIA_DARK = (50, 30, 15)
SEPIA_LIGHT = (250, 230, 190)

# The acceptance set: 20 (prompt, seed) pairs naming a colour and a shape (colour, shape, background).
EVAL_CASES: tuple[tuple[str, str, str, int], ...] = tuple(
    (c, s, b, seed)
    for seed, (c, s, b) in enumerate(
        [
            ("red", "circle", "white"),
            ("green", "square", "white"),
            ("blue", "triangle", "white"),
            ("yellow", "circle", "black"),
            ("purple", "square", "white"),
            ("orange", "triangle", "black"),
            ("red", "square", "gray"),
            ("green", "triangle", "black"),
            ("blue", "circle", "gray"),
            ("yellow", "triangle", "gray"),
            ("purple", "circle", "black"),
            ("orange", "square", "white"),
            ("red", "triangle", "white"),
            ("green", "circle", "gray"),
            ("blue", "square", "black"),
            ("yellow", "square", "white"),
            ("purple", "triangle", "gray"),
            ("orange", "circle", "gray"),
            ("blue", "circle", "white"),
            ("red", "circle", "black"),
        ],
        start=100,
    )
)


def caption(colour: str, shape: str, background: str | None = None) -> str:
    """The caption form the model was trained on."""
    return f"a {colour} {shape}" + (f" on a {background} background" if background else "")


def build_shapes():
    """The shipped demo pipeline, loaded offline from the package's assets (float32, CPU)."""
    from diffusers import StableDiffusionPipeline

    if not (MODEL_DIR / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the demo model is missing from {MODEL_DIR}; rebuild it with `python tools/train_demo.py`"
        )
    return StableDiffusionPipeline.from_pretrained(
        str(MODEL_DIR), local_files_only=True, dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False,
    )


# --- measures --------------------------------------------------------------------------------------


def as_array(image: Any) -> np.ndarray:
    """An HxWx3 float array in 0..1 from an IMAGE tensor ([1,H,W,3] or [H,W,3]), a PIL image or an array."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    arr = np.asarray(image)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    if arr.ndim == 4:
        arr = arr[0]
    return arr.astype(np.float32)


def background_colour(img: np.ndarray) -> np.ndarray:
    """Median colour of the outermost ring of pixels (shapes stay off the border)."""
    ring = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])
    return np.median(ring, axis=0)


def foreground_mask(img: np.ndarray, threshold: float = 0.3) -> np.ndarray:
    """Pixels further than `threshold` (RGB distance, 0..1 units) from the background colour."""
    return np.linalg.norm(img - background_colour(img), axis=-1) > threshold


def nearest(rgb: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.linalg.norm(rgb * 255.0 - np.array(palette[name]))))


def dominant_colour(image: Any) -> str | None:
    """The palette colour nearest to the median foreground pixel; None when nothing stands out."""
    img = as_array(image)
    mask = foreground_mask(img)
    if mask.sum() < 4:
        return None
    return nearest(np.median(img[mask], axis=0), COLOURS)


def classify_shape(image: Any) -> str | None:
    """circle / square / triangle from the foreground mask: where its mass sits, how it fills its box.

    An upright triangle holds only a quarter of its area in the top half of its bounding box (a
    circle or square: half); a square fills its box (~1), a circle pi/4 of it.
    """
    mask = foreground_mask(as_array(image))
    if mask.sum() < 4:
        return None
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    fill = mask.sum() / float((y1 - y0) * (x1 - x0))
    top = (ys < (y0 + y1) / 2.0).sum() / float(len(ys))
    if top < 0.38:
        return "triangle"
    return "square" if fill >= 0.88 else "circle"


def fill_ratio(image: Any) -> float:
    """Foreground pixels / bounding-box area: ~0.5..1 for filled shapes, much less for outlines."""
    mask = foreground_mask(as_array(image))
    if mask.sum() == 0:
        return 0.0
    ys, xs = np.nonzero(mask)
    return float(mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)))


def sepia(img: np.ndarray) -> np.ndarray:
    """The palette LoRA's target: each pixel's luminance placed on the brown -> cream ramp."""
    lum = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    dark, light = np.array(SEPIA_DARK) / 255.0, np.array(SEPIA_LIGHT) / 255.0
    return (dark + lum[..., None] * (light - dark)).astype(np.float32)


def sepia_distance(image: Any) -> float:
    """Mean RGB distance of the image from its own sepia version (0 = already sepia)."""
    img = as_array(image)
    return float(np.linalg.norm(img - sepia(img), axis=-1).mean())


def stripe_energy(image: Any) -> float:
    """Mean distance of each pixel from its 3x3 neighbourhood mean: edges and texture."""
    img = as_array(image)
    padded = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = img.shape[:2]
    blur = sum(padded[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return float(np.abs(img - blur).mean())


# Each LoRA's property and the direction strength 1 moves it in (+1 up, -1 down).
LORA_PROPERTIES = {
    "palette": (sepia_distance, -1),
    "outline": (fill_ratio, -1),
    "texture": (stripe_energy, +1),
}
