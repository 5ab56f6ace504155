"""`builtin:tiny-zimage`: a tiny ZImagePipeline in the shape of diffusers' Z-Image pipeline tests, built
offline.

A 2-layer, 32-wide ZImageTransformer2DModel (one refiner layer each for the latents and the caption),
a 2-layer, 16-wide Qwen3 text encoder over the built-in Qwen tokenizer (its ChatML template is what
the pipeline wraps the prompt in), and a 2-level AutoencoderKL with 16 latent channels. Native size
32x32. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED
from .tokenizers import qwen_tokenizer


def build_tiny_zimage() -> Any:
    """A ZImagePipeline: 2 transformer layers, 32 wide; a 2-layer Qwen3 encoder; native 32x32."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(BUILTIN_SEED)
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16, dim=32, n_layers=2, n_refiner_layers=1,
        n_heads=2, n_kv_heads=2, norm_eps=1e-5, qk_norm=True, cap_feat_dim=16, rope_theta=256.0,
        t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[256, 32, 32],
    ).eval()
    # The pad tokens are made with torch.empty (the checkpoint fills them): whatever memory held, which
    # would be neither reproducible nor always finite. Ones, as diffusers' tests set them.
    with torch.no_grad():
        transformer.x_pad_token.fill_(1.0)
        transformer.cap_pad_token.fill_(1.0)
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[32, 64],
        layers_per_block=1, latent_channels=16, norm_num_groups=32, sample_size=32, scaling_factor=0.3611,
        shift_factor=0.1159,
    ).eval()
    tokenizer = qwen_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = Qwen3Model(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
    )).eval()
    pipe = ZImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
