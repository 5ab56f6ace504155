"""The `builtin:` models LoadPipeline offers, made in code so that nothing is downloaded. tiny-*: random
weights, for tests, one per model family diffusers puts LoRAs on; shapes: trained, for people (demo.py).

Each entry names the diffusers pipeline class its builder returns. Which components take LoRA layers
is that class's LoRA mixin's business, so it is read from the class, not written down here: reading it
names a private diffusers attribute, which only loaders/fence/ may do, so loaders/pipelines.py asks
the fence and holds the result (`BUILTIN_COMPONENTS`); `Builtin.lora_components` is the rule it applies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .tiny_chroma import build_tiny_chroma
from .tiny_cogview4 import build_tiny_cogview4
from .tiny_flux import build_tiny_flux
from .tiny_flux2 import build_tiny_flux2
from .tiny_hunyuanvideo import HUNYUAN_FRAMES, build_tiny_hunyuanvideo
from .tiny_kontext import KONTEXT_SIZE, build_tiny_kontext
from .tiny_ltx import LTX_FRAMES, build_tiny_ltx
from .tiny_lumina2 import build_tiny_lumina2
from .tiny_qwenimage import build_tiny_qwenimage
from .tiny_sana import SANA_SIZE, build_tiny_sana
from .tiny_sd import build_tiny_sd, build_tiny_sdxl
from .tiny_wan import WAN_FRAMES, build_tiny_wan, build_tiny_wan22
from .tiny_zimage import build_tiny_zimage


def build_shapes():
    """The trained demo model (coloured shapes, 32x32), loaded from the package's assets: see demo.py."""
    from .demo import build_shapes as build

    return build()


@dataclass(frozen=True)
class Builtin:
    """One built-in model: how to build it and what it is, known without building it."""

    builder: Callable[[], Any]
    native_size: int  # width and height it renders at
    pipeline_class: str  # the diffusers class `builder` returns: its LoRA mixin names the LoRA components
    frames: int | None = None  # video families: the native frame count (one the VAE's time stride allows)
    absent: tuple[str, ...] = ()  # components the mixin lists that `builder` leaves None

    def pipeline_type(self) -> type:
        import diffusers

        return getattr(diffusers, self.pipeline_class)

    def lora_components(self, loadable_names: Callable[[type], Iterable[str]]) -> tuple[str, ...]:
        """The components the built pipeline can carry LoRA layers on: those `loadable_names` reads from
        the pipeline class's LoRA mixin, in its order, less the ones the builder leaves None."""
        return tuple(c for c in loadable_names(self.pipeline_type()) if c not in self.absent)


BUILTINS: dict[str, Builtin] = {
    "tiny-sd": Builtin(build_tiny_sd, 64, "StableDiffusionPipeline"),
    "tiny-sdxl": Builtin(build_tiny_sdxl, 64, "StableDiffusionXLPipeline"),
    "tiny-flux": Builtin(build_tiny_flux, 32, "FluxPipeline"),  # FluxLoraLoaderMixin loads no LoRA on T5
    "shapes": Builtin(build_shapes, 32, "StableDiffusionPipeline"),
    "tiny-wan": Builtin(build_tiny_wan, 32, "WanPipeline", frames=WAN_FRAMES, absent=("transformer_2",)),
    "tiny-wan22": Builtin(build_tiny_wan22, 32, "WanPipeline", frames=WAN_FRAMES),
    "tiny-qwenimage": Builtin(build_tiny_qwenimage, 32, "QwenImagePipeline"),
    "tiny-zimage": Builtin(build_tiny_zimage, 32, "ZImagePipeline"),
    "tiny-chroma": Builtin(build_tiny_chroma, 32, "ChromaPipeline"),  # its text_encoder is a T5
    # Kontext renders at its max_area (1024**2 by default) whatever size is asked for
    "tiny-kontext": Builtin(build_tiny_kontext, KONTEXT_SIZE, "FluxKontextPipeline"),
    "tiny-ltx": Builtin(build_tiny_ltx, 32, "LTXPipeline", frames=LTX_FRAMES),
    "tiny-flux2": Builtin(build_tiny_flux2, 32, "Flux2KleinPipeline"),
    "tiny-lumina2": Builtin(build_tiny_lumina2, 64, "Lumina2Pipeline"),
    # Sana computes at its resolution bin nearest the size asked for (512 px bins for this transformer)
    "tiny-sana": Builtin(build_tiny_sana, SANA_SIZE, "SanaPipeline"),
    "tiny-cogview4": Builtin(build_tiny_cogview4, 32, "CogView4Pipeline"),
    "tiny-hunyuanvideo": Builtin(build_tiny_hunyuanvideo, 32, "HunyuanVideoPipeline", frames=HUNYUAN_FRAMES),
}
# name -> (builder, native size), the shape LoadPipeline, `inspect` and the benchmarks read.
BUILTIN_MODELS = {name: (b.builder, b.native_size) for name, b in BUILTINS.items()}
DEFAULT_BUILTIN = "shapes"  # the first choice a newcomer sees: real images (tiny-sd is random noise)
