"""`builtin:tiny-sd` and `builtin:tiny-sdxl`: UNet pipelines in the shape of diffusers' LoRA tests.

UNet block_out_channels (32, 64), a 5-layer, 32-wide CLIP text encoder, weights drawn from a fixed
seed, so every machine builds the same bits. Random weights: for tests, not for pictures.
"""

from __future__ import annotations

import torch

from .tiny_parts import BUILTIN_SEED, clip_config, ddim_scheduler, tiny_vae
from .tokenizers import make_tokenizer


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
    vae = tiny_vae()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModel(clip_config())
    pipe = StableDiffusionPipeline(
        unet=unet,
        scheduler=ddim_scheduler(),
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
    vae = tiny_vae()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModel(clip_config())
    torch.manual_seed(BUILTIN_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(projection_dim=32))
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        scheduler=ddim_scheduler(),
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=make_tokenizer(),
        tokenizer_2=make_tokenizer(),
        force_zeros_for_empty_prompt=False,
    )
    return pipe
