"""The pieces the tiny built-in pipelines share: the seed, the scheduler, the VAE, the CLIP config, the T5
and Gemma 2 encoders."""

from __future__ import annotations

from typing import Any

# A fixed seed: the built-in pipelines must be bit-identical on every machine and every run.
BUILTIN_SEED = 0


def ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # diffusers warns on 0 and SD's own config uses 1
    )


def tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=64,
    )


def clip_config(**extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=514,
        max_position_embeddings=77,
        hidden_act="gelu",
        **extra,
    )


def t5_encoder() -> Any:
    """A 2-layer, 32-wide T5 encoder over the built-in T5 tokenizer's 65 tokens (Flux, Chroma, LTX), in eval
    mode as from_pretrained leaves it: T5's dropout (0.1) would otherwise draw at random."""
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=65, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0,
                                   eos_token_id=1)).eval()


def gemma2_encoder(tokenizer: Any, width: int = 16) -> Any:
    """A 2-layer Gemma2Model over `tokenizer`'s vocabulary (Lumina 2's and Sana's encoder, tiny)."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(
        head_dim=8, hidden_size=width, intermediate_size=32, num_attention_heads=2, num_hidden_layers=2,
        num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )).eval()
