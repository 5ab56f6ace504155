"""`builtin:tiny-flux2`: a tiny Flux2KleinPipeline (FLUX.2 [klein]) in the shape of diffusers' Klein
pipeline tests, built offline.

Klein encodes the prompt with a Qwen3 model and feeds the transformer the hidden states of its layers
9, 18 and 27 side by side (the pipeline's default `text_encoder_out_layers`), so the tiny encoder has
27 layers, each 16 wide: depth the default call needs, at a width that keeps it tiny (~60k weights).
The transformer: 2 double- and 2 single-stream blocks, 32 wide; the VAE: one level, 1 latent
channel. Native size 32x32. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED
from .tokenizers import qwen_tokenizer

# Flux2KleinPipeline's default text_encoder_out_layers: hidden_states[27] needs 27 layers.
KLEIN_OUT_LAYERS = (9, 18, 27)
QWEN3_WIDTH = 16


def build_tiny_flux2() -> Any:
    """A Flux2KleinPipeline: 2 double- and 2 single-stream blocks; a 27-layer, 16-wide Qwen3; native 32x32."""
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(BUILTIN_SEED)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=QWEN3_WIDTH * len(KLEIN_OUT_LAYERS),
        timestep_guidance_channels=256, axes_dims_rope=[4, 4, 4, 4], guidance_embeds=False,
    ).eval()
    tokenizer = qwen_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=QWEN3_WIDTH, intermediate_size=16, num_hidden_layers=max(KLEIN_OUT_LAYERS),
        num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=512,
    )).eval()
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKLFlux2(
        sample_size=32, in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",), block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False,
    ).eval()
    pipe = Flux2KleinPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                              tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
