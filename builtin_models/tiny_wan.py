"""`builtin:tiny-wan` (Wan 2.1 text-to-video) and `builtin:tiny-wan22` (Wan 2.2 A14B: a high-noise and
a low-noise expert), tiny WanPipelines in the shape of diffusers' Wan pipeline tests, built offline.

A 2-layer, 24-wide WanTransformer3DModel, a 2-layer, 32-wide UMT5 encoder with the built-in T5
tokenizer, and the tests' 3-channel Wan VAE (spatial /8, temporal /4). Native size 32x32, 5 frames
(the VAE keeps the first frame and packs every 4 after it into one latent frame). Random weights.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED
from .tokenizers import t5_tokenizer

WAN_FRAMES = 5
# Wan 2.2 A14B's own split: the high-noise expert takes timesteps >= 875 of 1000, the low-noise one the rest.
WAN22_BOUNDARY_RATIO = 0.875


def wan_transformer(seed: int) -> Any:
    """The denoiser of diffusers' Wan tests: 2 blocks, 2 heads of 12, patches of 1x2x2 latent pixels."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    ).eval()


def wan_parts() -> dict[str, Any]:
    """The VAE, text encoder and tokenizer both Wan builtins share (Wan 2.1 and 2.2 A14B use the same)."""
    from diffusers import AutoencoderKLWan
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=65, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )).eval()  # eval: T5's dropout (0.1) would otherwise draw at random
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": t5_tokenizer()}


def build_tiny_wan() -> Any:
    """A WanPipeline as Wan 2.1 T2V: one transformer, no second expert; native 32x32, 5 frames."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    transformer = wan_transformer(BUILTIN_SEED)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = WanPipeline(transformer=transformer, scheduler=scheduler, **wan_parts())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan22() -> Any:
    """A WanPipeline as Wan 2.2 A14B: `transformer` (high noise) and `transformer_2` (low noise).

    The experts are drawn from different seeds, so a LoRA or a render that reaches only one of them
    shows; with 4 steps the flow-shifted schedule puts steps on both sides of the boundary.
    """
    from diffusers import UniPCMultistepScheduler, WanPipeline

    high_noise = wan_transformer(BUILTIN_SEED)
    low_noise = wan_transformer(BUILTIN_SEED + 1)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        flow_shift=3.0)
    pipe = WanPipeline(transformer=high_noise, transformer_2=low_noise, boundary_ratio=WAN22_BOUNDARY_RATIO,
                       scheduler=scheduler, **wan_parts())
    pipe.set_progress_bar_config(disable=True)
    return pipe
