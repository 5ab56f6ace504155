"""`builtin:tiny-cogview4`: a tiny CogView4Pipeline in the shape of diffusers' CogView4 pipeline tests,
built offline.

A 2-layer CogView4Transformer2DModel (4 heads of 4), a 2-layer, 32-wide GLM encoder over the built-in
GLM tokenizer, and the tiny 2-level AutoencoderKL tiny-sd uses (4 latent channels, 2x down). Native
size 32x32. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, tiny_vae
from .tokenizers import glm_tokenizer


def build_tiny_cogview4() -> Any:
    """A CogView4Pipeline: 2 transformer layers, 16 wide; a 2-layer GLM; native 32x32."""
    from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import GlmConfig, GlmModel

    torch.manual_seed(BUILTIN_SEED)
    transformer = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=4,
        num_attention_heads=4, text_embed_dim=32, time_embed_dim=8, condition_dim=4,
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    vae = tiny_vae().eval()
    tokenizer = glm_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = GlmModel(GlmConfig(
        hidden_size=32, intermediate_size=8, num_hidden_layers=2, num_attention_heads=4, head_dim=8,
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
    )).eval()
    # CogView4's own schedule: a shift that grows with the image's token count, linearly.
    scheduler = FlowMatchEulerDiscreteScheduler(base_shift=0.25, max_shift=0.75, base_image_seq_len=256,
                                                use_dynamic_shifting=True, time_shift_type="linear")
    pipe = CogView4Pipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                            scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe
