"""`builtin:tiny-hunyuanvideo`: a tiny HunyuanVideoPipeline in the shape of diffusers' HunyuanVideo
pipeline tests, built offline.

A HunyuanVideoTransformer3DModel with 2 double- and 2 single-stream blocks (2 heads of 10), a 2-layer,
16-wide Llama encoder over the built-in Llama 3 tokenizer (whose whole-word tokens keep the
pipeline's `crop_start` on the end of its prompt template), the built-in CLIP for the pooled
projection, and the tests' HunyuanVideo VAE (8x down in space, 4x in time). Native size 32x32,
9 frames. Random weights, for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny_parts import BUILTIN_SEED, clip_config
from .tokenizers import llama3_tokenizer, make_tokenizer

HUNYUAN_FRAMES = 9


def build_tiny_hunyuanvideo() -> Any:
    """A HunyuanVideoPipeline: 2 double-, 2 single-stream blocks; a 2-layer Llama; native 32x32, 9 frames."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from transformers import CLIPTextModel, LlamaConfig, LlamaModel

    clip = clip_config()
    torch.manual_seed(BUILTIN_SEED)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=clip.hidden_size, rope_axes_dim=(2, 4, 4),
    ).eval()
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        act_fn="silu", norm_num_groups=4, scaling_factor=0.476986, spatial_compression_ratio=8,
        temporal_compression_ratio=4, mid_block_add_attention=True,
    ).eval()
    tokenizer = llama3_tokenizer(DEFAULT_PROMPT_TEMPLATE["template"])
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = LlamaModel(LlamaConfig(
        hidden_size=16, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, hidden_act="gelu",
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )).eval()
    torch.manual_seed(BUILTIN_SEED + 1)
    text_encoder_2 = CLIPTextModel(clip).eval()
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2,
        tokenizer_2=make_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
