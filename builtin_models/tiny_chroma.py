"""`builtin:tiny-chroma`: a tiny ChromaPipeline (diffusers' Chroma pipeline-test shape), built offline.

Chroma is Flux without CLIP: a T5 encoder only, and a small approximator network that makes the
blocks' modulation from the timestep instead of per-block projections. Two double-stream and two
single-stream blocks (as tiny-flux), tiny-flux's T5 shape and VAE. Native size 32x32. Random weights.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_flux import flux_vae
from .tiny_parts import BUILTIN_SEED, t5_encoder
from .tokenizers import t5_tokenizer


def build_tiny_chroma() -> Any:
    """A ChromaPipeline: 2 double- and 2 single-stream blocks, 32 wide; a 2-layer T5; native 32x32."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    torch.manual_seed(BUILTIN_SEED)
    transformer = ChromaTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8], approximator_hidden_dim=32,
        approximator_layers=1, approximator_num_channels=16,
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = t5_encoder()
    torch.manual_seed(BUILTIN_SEED)
    vae = flux_vae()
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                          tokenizer=t5_tokenizer(), transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
