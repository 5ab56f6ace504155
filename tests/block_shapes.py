"""Tiny pipelines with the block layout of real SD 1.x and SDXL UNets, for block-weight vectors.

The packs' vectors have 17 values on SD 1.x and 12 on SDXL: one per attention block of those UNets.
The built-in tiny models have fewer blocks, so these keep the real models' down/up block types and
layers per block (SD 1.x: three cross-attention down blocks, then a plain one; SDXL: a plain one,
then two) at tiny widths. Shared by tests/test_habits_blocks.py and tools/lbw_crosscheck.py (which
runs in ComfyUI's venv and imports this file by path).
"""

from __future__ import annotations

from pathlib import Path

import torch

SEED = 7


def build(kind: str):
    """A StableDiffusionPipeline ("sd15") or StableDiffusionXLPipeline ("sdxl") of the real block layout,
    text encoders, VAE and scheduler from the built-in tiny models."""
    from diffusers import UNet2DConditionModel
    from loragraph.builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl

    if kind == "sd15":
        pipe = build_tiny_sd()
        torch.manual_seed(SEED)
        pipe.unet = UNet2DConditionModel(
            block_out_channels=(32, 32, 64, 64), layers_per_block=2, sample_size=8, in_channels=4,
            out_channels=4, cross_attention_dim=32, norm_num_groups=32, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )
    elif kind == "sdxl":
        pipe = build_tiny_sdxl()
        torch.manual_seed(SEED)
        pipe.unet = UNet2DConditionModel(
            block_out_channels=(32, 32, 64), layers_per_block=2, sample_size=8, in_channels=4,
            out_channels=4, attention_head_dim=(2, 4, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            transformer_layers_per_block=(1, 1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        )
    else:
        raise ValueError(kind)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_models(root: Path) -> dict[str, Path]:
    """DIR/diffusers/{sd15-layout,sdxl-layout}/ and one seeded LoRA per layout in DIR/loras/:
    `lbw_sd15` (kohya, alpha 2 at rank 4) and `lbw_sdxl` (kohya, alpha 8 at rank 4)."""
    from loragraph.testing import write_lora_file

    paths = {}
    for kind, seed, alpha in (("sd15", 61, 2.0), ("sdxl", 62, 8.0)):
        pipe = build(kind)
        folder = root / "diffusers" / f"{kind}-layout"
        if not (folder / "model_index.json").is_file():
            pipe.save_pretrained(folder)
        lora = root / "loras" / f"lbw_{kind}.safetensors"
        if not lora.is_file():
            write_lora_file(lora, "sd" if kind == "sd15" else "sdxl", "kohya", rank=4, alpha=alpha, seed=seed,
                            pipe=pipe)
        paths[kind], paths[f"{kind}_lora"] = folder, lora
    return paths
