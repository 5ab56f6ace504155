"""`builtin:tiny-kontext`: a tiny FluxKontextPipeline (Flux.1 Kontext: Flux that edits an input image),
built offline.

Kontext renders at `max_area` (1024x1024 unless the call says otherwise) and scales its input image
to a resolution it was trained on, whatever the width and height asked for: so the native size is
1024x1024, and the VAE downsamples 32 times (six 4-channel levels, 1 latent channel) to keep that
cheap: 32x32 latents, 16x16 packed tokens for the picture and as many for the input image. The
transformer and encoders are tiny-flux's shapes (2 double-, 2 single-stream blocks; CLIP and a 2-layer
T5), drawn from other seeds. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import clip_config, t5_encoder
from .tokenizers import make_tokenizer, t5_tokenizer

KONTEXT_SIZE = 1024  # FluxKontextPipeline's default max_area is 1024**2
KONTEXT_SEED = 10  # tiny-flux draws from 0..2: Kontext's weights are its own


def kontext_vae() -> Any:
    from diffusers import AutoencoderKL

    levels = 6
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(4,) * levels, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=1, norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
        sample_size=KONTEXT_SIZE, shift_factor=0.0609, scaling_factor=1.5035,
    ).eval()


def build_tiny_kontext() -> Any:
    """A FluxKontextPipeline: tiny-flux's shapes, a 32x-downsampling VAE; native 1024x1024, 1.2 s a render."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(KONTEXT_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()
    torch.manual_seed(KONTEXT_SEED + 1)
    text_encoder = CLIPTextModel(clip_config()).eval()
    t5 = t5_encoder()
    torch.manual_seed(KONTEXT_SEED + 2)
    vae = kontext_vae()
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=make_tokenizer(), text_encoder_2=t5, tokenizer_2=t5_tokenizer(), transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
