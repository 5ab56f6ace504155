"""`builtin:tiny-qwenimage`: a tiny QwenImagePipeline in the shape of diffusers' Qwen-Image pipeline
tests, built offline.

A 2-block QwenImageTransformer2DModel (3 heads of 16), a 2-layer, 16-wide Qwen2.5-VL text encoder over
the built-in Qwen tokenizer (its vision tower 2 blocks, 16 wide; unused for text), and the tests'
Qwen-Image VAE (spatial /8). Native size 32x32. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED
from .tokenizers import qwen_tokenizer


def qwen25_vl_encoder(tokenizer: Any) -> Any:
    """A Qwen2_5_VLForConditionalGeneration as diffusers' tests size it, over `tokenizer`'s vocabulary
    (its vision token ids pointed at that vocabulary's vision tokens)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "vocab_size": len(tokenizer), "rope_theta": 1000000.0,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        },
        vision_config={
            "depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16,
        },
        hidden_size=16, vocab_size=len(tokenizer),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def build_tiny_qwenimage() -> Any:
    """A QwenImagePipeline: 2 transformer blocks, 48 wide; a 2-layer Qwen2.5-VL encoder; native 32x32."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    torch.manual_seed(BUILTIN_SEED)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
        num_attention_heads=3, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()
    tokenizer = qwen_tokenizer()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = qwen25_vl_encoder(tokenizer)
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
                             tokenizer=tokenizer, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe
