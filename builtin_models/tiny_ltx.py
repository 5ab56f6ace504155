"""`builtin:tiny-ltx`: a tiny LTXPipeline (LTX-Video) in the shape of diffusers' LTX pipeline tests, built
offline.

A 32-wide LTXVideoTransformer3DModel with 2 blocks (the tests' 1, and one more so per-block weights
have blocks to tell apart), the built-in 2-layer T5, and the tests' LTX VAE: 8 latent channels, 4x
down in space and in time (two space-time levels). Native size 32x32, 9 frames (the first frame plus
two latent frames of four). Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, t5_encoder
from .tokenizers import t5_tokenizer

LTX_FRAMES = 9


def build_tiny_ltx() -> Any:
    """An LTXPipeline: 2 transformer blocks, 4 heads of 8; a 2-layer T5; native 32x32, 9 frames."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(BUILTIN_SEED)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4,
        attention_head_dim=8, cross_attention_dim=32, num_layers=2, caption_channels=32,
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    scaling = (True, True, False, False)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        spatio_temporal_scaling=scaling, decoder_spatio_temporal_scaling=scaling,
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1), patch_size=1,
        patch_size_t=1, encoder_causal=True, decoder_causal=False,
    ).eval()
    # Whole clips at once: frame by frame is for memory on long videos, and slower on a tiny one.
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = t5_encoder()
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                       tokenizer=t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
