"""The `builtin:` models LoadPipeline offers: name -> builder and native size, made in code so that
nothing is downloaded. tiny-*: random weights, for tests; shapes: trained, for people (demo.py).
"""

from __future__ import annotations

from .tiny_flux import build_tiny_flux
from .tiny_sd import build_tiny_sd, build_tiny_sdxl


def build_shapes():
    """The trained demo model (coloured shapes, 32x32), loaded from the package's assets: see demo.py."""
    from .demo import build_shapes as build

    return build()


# name -> (builder, native size). tiny-*: random weights, for tests; shapes: trained, for people.
BUILTIN_MODELS = {
    "tiny-sd": (build_tiny_sd, 64),
    "tiny-sdxl": (build_tiny_sdxl, 64),
    "tiny-flux": (build_tiny_flux, 32),
    "shapes": (build_shapes, 32),
}
# The components each built-in pipeline can carry LoRA layers on (LoadPipeline's source, before building).
BUILTIN_COMPONENTS = {
    "tiny-sd": ("unet", "text_encoder"),
    "tiny-sdxl": ("unet", "text_encoder", "text_encoder_2"),
    "tiny-flux": ("transformer", "text_encoder"),  # FluxLoraLoaderMixin loads no LoRA on T5
    "shapes": ("unet", "text_encoder"),
}
DEFAULT_BUILTIN = "shapes"  # the first choice a newcomer sees: real images (tiny-sd is random noise)
