"""`builtin:tiny-lumina2`: a tiny Lumina2Pipeline (Lumina-Image 2.0) in the shape of diffusers' Lumina 2
pipeline tests, built offline.

A 2-layer Lumina2Transformer2DModel 16 wide (one refiner layer each for latents and caption), a
2-layer, 16-wide Gemma 2 encoder over the built-in Gemma tokenizer, and a 4-level AutoencoderKL of
4 channels: the pipeline takes its VAE to downsample 8 times (its `vae_scale_factor` is fixed at 8).
Native size 64x64. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, gemma2_encoder
from .tokenizers import gemma_tokenizer


def build_tiny_lumina2() -> Any:
    """A Lumina2Pipeline: 2 transformer layers, 16 wide; a 2-layer Gemma 2; native 64x64."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        Lumina2Pipeline,
        Lumina2Transformer2DModel,
    )

    torch.manual_seed(BUILTIN_SEED)
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=16, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=2, multiple_of=16, norm_eps=1e-5, axes_dim_rope=[4, 2, 2],
        axes_lens=[300, 32, 32], cap_feat_dim=16,
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    levels = 4
    vae = AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, block_out_channels=(4,) * levels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()
    tokenizer = gemma_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = gemma2_encoder(tokenizer)
    pipe = Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
                           text_encoder=text_encoder, tokenizer=tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
