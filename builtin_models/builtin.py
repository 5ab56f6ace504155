"""Built-in pipelines, made in code so that nothing is downloaded.

They have the shapes diffusers' own LoRA tests use (UNet block_out_channels (32, 64), a 5-layer,
32-wide CLIP text encoder), with weights drawn from a fixed seed, so every machine builds the same
bits. The tokenizer is a byte-level CLIP tokenizer with no merges, written to a temporary folder:
it needs no vocabulary download and still tokenizes any prompt.
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .. import disk

# A fixed seed: the built-in pipelines must be bit-identical on every machine and every run.
BUILTIN_SEED = 0


def _bytes_to_unicode() -> dict[int, str]:
    # The mapping CLIP's byte-level BPE uses (GPT-2's), copied so we depend on no private helper.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@lru_cache(maxsize=1)
def tokenizer_folder() -> str:
    """A folder holding vocab.json and merges.txt of the byte-level tokenizer (514 tokens).

    One fixed folder per user (not a fresh temp dir per process, which would pile up); written
    whole (loragraph/disk.py), so concurrent processes never read half a file.
    """
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    files = {"vocab.json": json.dumps(vocab), "merges.txt": "#version: 0.2\n"}
    folder = Path(tempfile.gettempdir()) / f"loragraph-byte-tokenizer-{os.getuid() if hasattr(os, 'getuid') else 0}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text() != text:
            disk.write_file(path, text.encode())
    return str(folder)


def make_tokenizer():
    from transformers import CLIPTokenizer

    folder = tokenizer_folder()
    return CLIPTokenizer(f"{folder}/vocab.json", f"{folder}/merges.txt", model_max_length=77)


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # diffusers warns on 0 and SD's own config uses 1
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )


def _clip_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=514,
        max_position_embeddings=77,
        hidden_act="gelu",
        **extra,
    )


def build_tiny_sd():
    """A StableDiffusionPipeline in the shape of diffusers' LoRA tests; native size 64x64."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(BUILTIN_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=32,
    )
    torch.manual_seed(BUILTIN_SEED)
    vae = _vae()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModel(_clip_config())
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=make_tokenizer(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    return pipe


def build_tiny_sdxl():
    """A StableDiffusionXLPipeline in the shape of diffusers' SDXL LoRA tests; native size 64x64."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(BUILTIN_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=32,
    )
    torch.manual_seed(BUILTIN_SEED)
    vae = _vae()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModel(_clip_config())
    torch.manual_seed(BUILTIN_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(projection_dim=32))
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=make_tokenizer(),
        tokenizer_2=make_tokenizer(),
        force_zeros_for_empty_prompt=False,
    )
    return pipe


def build_shapes():
    """The trained demo model (coloured shapes, 32x32), loaded from the package's assets: see demo.py."""
    from .demo import build_shapes as build

    return build()


def build_tiny_flux():
    """A FluxPipeline in the shape of diffusers' Flux LoRA tests (random weights); see flux.py."""
    from .flux import build_tiny_flux as build

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
