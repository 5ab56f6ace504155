"""A tiny StableDiffusion3Pipeline (diffusers' SD3 LoRA-test shape): the transformer-denoiser
pipeline the tests build in code. Not offered as `builtin:` (random weights, tests only).
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, clip_config
from .tokenizers import make_tokenizer


def build_tiny_sd3() -> Any:
    """A StableDiffusion3Pipeline in the shape of diffusers' SD3 LoRA tests: a transformer denoiser.

    Built offline: two 32-wide CLIP encoders with the built-in tokenizer and no T5 (SD3 then feeds
    zeros in its place, as with `text_encoder_3=None` on the real model). Native size 32x32.
    """
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(BUILTIN_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=4,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModelWithProjection(clip_config(projection_dim=32))
    torch.manual_seed(BUILTIN_SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(clip_config(projection_dim=32))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=text_encoder, tokenizer=make_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=make_tokenizer(), text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
