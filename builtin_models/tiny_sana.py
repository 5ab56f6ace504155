"""`builtin:tiny-sana`: a tiny SanaPipeline in the shape of diffusers' Sana pipeline tests, built offline.

Sana renders at the resolution bin nearest the size asked for, from a table its transformer's
`sample_size` picks (16: the 512-pixel bins), and scales the picture back after: so the native size
is 512x512 (a square lands on its own bin, nothing rescaled), and the deep-compression VAE has six
8-channel levels, 32x down, which makes that 16x16 latents. A 2-layer, 8-wide SanaTransformer2DModel,
a 2-layer, 16-wide Gemma 2 encoder over the built-in Gemma tokenizer. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, gemma2_encoder
from .tokenizers import gemma_tokenizer

SANA_SIZE = 512
SANA_LEVELS = 6  # 2**(6 - 1) = 32x down


def build_tiny_sana() -> Any:
    """A SanaPipeline: 2 transformer layers, 8 wide; a 2-layer Gemma 2; a 32x DC-AE; native 512x512."""
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel

    text_width = 16
    torch.manual_seed(BUILTIN_SEED)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4, cross_attention_dim=8,
        caption_channels=text_width, sample_size=SANA_SIZE // 32,
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    blocks = ("ResBlock",) * (SANA_LEVELS - 1) + ("EfficientViTBlock",)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=blocks,
        decoder_block_types=blocks, encoder_block_out_channels=(8,) * SANA_LEVELS,
        decoder_block_out_channels=(8,) * SANA_LEVELS,
        encoder_qkv_multiscales=((),) * (SANA_LEVELS - 1) + ((5,),),
        decoder_qkv_multiscales=((),) * (SANA_LEVELS - 1) + ((5,),),
        encoder_layers_per_block=(1,) * SANA_LEVELS, decoder_layers_per_block=(1,) * SANA_LEVELS,
        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
        decoder_act_fns="silu", scaling_factor=0.41407,
    ).eval()
    tokenizer = gemma_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = gemma2_encoder(tokenizer, width=text_width)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe
