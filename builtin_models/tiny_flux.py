"""`builtin:tiny-flux`: a tiny FluxPipeline built offline (diffusers' Flux LoRA-test shape), T5
tokenizer included. Random weights, for tests, like tiny-sd/tiny-sdxl.

The T5 tokenizer is a Unigram model over a generated vocabulary (`tokenizers`), wrapped as
`T5TokenizerFast`: nothing is downloaded. Two double-stream and two single-stream blocks, so
per-block weights have blocks of both kinds to address. Native size 32x32 (latent channels 1).
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import clip_config, t5_encoder
from .tokenizers import make_tokenizer, t5_tokenizer


def flux_vae() -> Any:
    """One level, 4 channels, 1 latent channel: no downsampling, so a 32x32 image is 32x32 latents."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def build_tiny_flux():
    """A FluxPipeline: 2 double- and 2 single-stream blocks, 32 wide; CLIP and a 2-layer T5; native 32x32."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(clip_config()).eval()
    t5 = t5_encoder()
    torch.manual_seed(2)
    vae = flux_vae()
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                        tokenizer=make_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(),
                        transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
