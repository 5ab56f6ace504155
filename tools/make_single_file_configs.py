"""Write the offline configs single-file checkpoints load with, into loaders/single_file_configs/.

    python tools/make_single_file_configs.py --comfyui GITDIR --sgm GITDIR [--out DIR]

GITDIR: bare git directories of github.com/Comfy-Org/ComfyUI and github.com/Stability-AI/generative-models
(their HEAD is read with `git show`, nothing is checked out). Data files are taken from them, never
code: the CLIP BPE vocabulary and merges, the T5 tokenizer, the CLIP-L / OpenCLIP bigG / T5-XXL
configs, and the original LDM yaml configs that diffusers' own helpers
(`create_unet_diffusers_config_from_ldm`, `create_vae_diffusers_config_from_ldm`) turn into UNet and
VAE configs. The MMDiT (SD3) and Flux transformer, their VAE and the flow-matching scheduler configs
have no such source file; their values are written below, the public ones of the diffusers repos
diffusers' `from_single_file` would fetch (tests/test_single_files.py checks them against the
published parameter counts and diffusers' own checkpoint-type detection).

The output is committed; this script documents where it comes from and rebuilds it. One folder per
diffusers model type (the names `infer_diffusers_model_type` returns): model_index.json and each
component's config, no weights. Tokenizers are stored once, under tokenizers/, and a family's
tokenizers.json says which one each tokenizer component gets (and its pad token).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "loaders" / "single_file_configs"

CLIP_FILES = ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json")
T5_FILES = ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json")

# Stable Diffusion's DDPM betas (LDM yaml: linear_start 0.00085, linear_end 0.012, 1000 steps).
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000}
PNDM = {"_class_name": "PNDMScheduler", **SD_BETAS, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "prediction_type": "epsilon", "trained_betas": None}
EULER_XL = {"_class_name": "EulerDiscreteScheduler", **SD_BETAS, "interpolation_type": "linear",
            "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False,
            "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None,
            "use_karras_sigmas": False, "clip_sample": False}
FLOW_SD3 = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}
FLOW_FLUX_DEV = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
                 "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                 "base_image_seq_len": 256, "max_image_seq_len": 4096}
FLOW_FLUX_SCHNELL = {**FLOW_FLUX_DEV, "shift": 1.0, "use_dynamic_shifting": False}


def vae16(scaling_factor: float, shift_factor: float) -> dict:
    """The 16-channel KL autoencoder of SD3 and Flux (no quant convs); only its latent scaling differs."""
    return {"_class_name": "AutoencoderKL", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "force_upcast": True, "in_channels": 3, "out_channels": 3, "latent_channels": 16,
            "latents_mean": None, "latents_std": None, "layers_per_block": 2, "norm_num_groups": 32,
            "sample_size": 1024, "scaling_factor": scaling_factor, "shift_factor": shift_factor,
            "use_quant_conv": False, "use_post_quant_conv": False, "mid_block_add_attention": True}


def sd3_transformer(num_layers: int, caption_projection_dim: int, pos_embed_max_size: int, **extra) -> dict:
    """SD3's MMDiT: 64-wide heads, one head per layer (diffusers' configs: heads = layers)."""
    return {"_class_name": "SD3Transformer2DModel", "sample_size": 128, "patch_size": 2, "in_channels": 16,
            "num_layers": num_layers, "attention_head_dim": 64, "num_attention_heads": num_layers,
            "joint_attention_dim": 4096, "caption_projection_dim": caption_projection_dim,
            "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": pos_embed_max_size,
            **extra}


def flux_transformer(guidance_embeds: bool) -> dict:
    return {"_class_name": "FluxTransformer2DModel", "patch_size": 1, "in_channels": 64, "out_channels": None,
            "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128, "num_attention_heads": 24,
            "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": guidance_embeds,
            "axes_dims_rope": [16, 56, 56]}


def git_show(gitdir: str, path: str) -> bytes:
    return subprocess.run(["git", "--git-dir", gitdir, "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def text_config(raw: bytes, architecture: str) -> dict:
    config = json.loads(raw)
    config["architectures"] = [architecture]
    config.pop("_name_or_path", None)
    config.pop("transformers_version", None)
    return config


def t5_xxl_config(raw: bytes) -> dict:
    """T5 v1.1 XXL's encoder. transformers derives the activation from `feed_forward_proj` (its
    default, relu, would override the file's `is_gated_act`), so it is written the way HF's is."""
    config = json.loads(raw)
    config["architectures"] = ["T5EncoderModel"]
    config["feed_forward_proj"] = "gated-gelu"
    for derived in ("dense_act_fn", "is_gated_act"):
        config.pop(derived, None)
    return config


def ldm_configs(yaml_text: bytes) -> tuple[dict, dict]:
    """UNet and VAE configs from an original LDM/SGM yaml, by diffusers' own conversion helpers."""
    from diffusers.loaders.single_file_utils import (
        create_unet_diffusers_config_from_ldm,
        create_vae_diffusers_config_from_ldm,
    )

    original = yaml.safe_load(yaml_text)
    unet = create_unet_diffusers_config_from_ldm(original, {})
    vae = create_vae_diffusers_config_from_ldm(original, {})
    return ({"_class_name": "UNet2DConditionModel", **unet}, {"_class_name": "AutoencoderKL", **vae})


def model_index(pipeline: str, components: dict[str, tuple[str | None, str | None]], **extra) -> dict:
    return {"_class_name": pipeline, **{k: list(v) for k, v in components.items()}, **extra}


def families(comfyui: str, sgm: str) -> dict[str, dict[str, dict]]:
    """model type -> {relative file: JSON}."""
    clip_l = text_config(git_show(comfyui, "comfy/sd1_clip_config.json"), "CLIPTextModel")
    clip_l_proj = {**clip_l, "architectures": ["CLIPTextModelWithProjection"]}
    clip_g = text_config(git_show(comfyui, "comfy/clip_config_bigg.json"), "CLIPTextModelWithProjection")
    t5 = t5_xxl_config(git_show(comfyui, "comfy/text_encoders/t5_config_xxl.json"))
    sd1_unet, sd1_vae = ldm_configs(git_show(comfyui, "models/configs/v1-inference.yaml"))
    xl_unet, xl_vae = ldm_configs(git_show(sgm, "configs/inference/sd_xl_base.yaml"))
    xl_vae["force_upcast"] = True  # SDXL's VAE overflows in fp16 (diffusers' repo config says so too)
    # diffusers reads the native size from the checkpoint, absent here: SDXL renders at 1024 px
    xl_unet["sample_size"], xl_vae["sample_size"] = 128, 1024

    # ComfyUI's tokenizer_config says 8192 (it chunks prompts itself); diffusers pads and truncates to
    # model_max_length, and CLIP has 77 positions
    clip_tok = {"files": "clip", "model_max_length": 77}
    clip_tok_bang = {**clip_tok, "pad_token": "!"}  # OpenCLIP pads with "!" (id 0), not end-of-text
    t5_tok = {"files": "t5"}
    absent = (None, None)
    out: dict[str, dict[str, dict]] = {}
    out["v1"] = {
        "model_index.json": model_index("StableDiffusionPipeline", {
            "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"), "tokenizer": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "PNDMScheduler"), "safety_checker": absent,
            "feature_extractor": absent, "image_encoder": absent}, requires_safety_checker=False),
        "unet/config.json": sd1_unet, "vae/config.json": sd1_vae, "text_encoder/config.json": clip_l,
        "scheduler/scheduler_config.json": PNDM, "tokenizers.json": {"tokenizer": clip_tok},
    }
    out["xl_base"] = {
        "model_index.json": model_index("StableDiffusionXLPipeline", {
            "unet": ("diffusers", "UNet2DConditionModel"), "vae": ("diffusers", "AutoencoderKL"),
            "text_encoder": ("transformers", "CLIPTextModel"),
            "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
            "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer"),
            "scheduler": ("diffusers", "EulerDiscreteScheduler"), "feature_extractor": absent,
            "image_encoder": absent}, force_zeros_for_empty_prompt=True),
        "unet/config.json": xl_unet, "vae/config.json": xl_vae, "text_encoder/config.json": clip_l,
        "text_encoder_2/config.json": clip_g, "scheduler/scheduler_config.json": EULER_XL,
        "tokenizers.json": {"tokenizer": clip_tok, "tokenizer_2": clip_tok_bang},
    }
    sd3_parts = {
        "transformer": ("diffusers", "SD3Transformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModelWithProjection"),
        "text_encoder_2": ("transformers", "CLIPTextModelWithProjection"),
        "text_encoder_3": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "CLIPTokenizer"),
        "tokenizer_3": ("transformers", "T5TokenizerFast"),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        "image_encoder": absent, "feature_extractor": absent}
    sd3_common = {
        "vae/config.json": vae16(1.5305, 0.0609), "text_encoder/config.json": clip_l_proj,
        "text_encoder_2/config.json": clip_g, "text_encoder_3/config.json": t5,
        "scheduler/scheduler_config.json": FLOW_SD3,
        "tokenizers.json": {"tokenizer": clip_tok, "tokenizer_2": clip_tok_bang, "tokenizer_3": t5_tok},
    }
    for name, transformer in (
        ("sd3", sd3_transformer(24, 1536, 192)),
        ("sd35_medium",
         sd3_transformer(24, 1536, 384, qk_norm="rms_norm", dual_attention_layers=list(range(13)))),
        ("sd35_large", sd3_transformer(38, 2432, 192, qk_norm="rms_norm")),
    ):
        out[name] = {"model_index.json": model_index("StableDiffusion3Pipeline", sd3_parts),
                     "transformer/config.json": transformer, **sd3_common}
    flux_parts = {
        "transformer": ("diffusers", "FluxTransformer2DModel"), "vae": ("diffusers", "AutoencoderKL"),
        "text_encoder": ("transformers", "CLIPTextModel"),
        "text_encoder_2": ("transformers", "T5EncoderModel"),
        "tokenizer": ("transformers", "CLIPTokenizer"), "tokenizer_2": ("transformers", "T5TokenizerFast"),
        "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
        "image_encoder": absent, "feature_extractor": absent}
    flux_kinds = (("flux-dev", True, FLOW_FLUX_DEV), ("flux-schnell", False, FLOW_FLUX_SCHNELL))
    for name, guidance, scheduler in flux_kinds:
        out[name] = {
            "model_index.json": model_index("FluxPipeline", flux_parts),
            "transformer/config.json": flux_transformer(guidance), "vae/config.json": vae16(0.3611, 0.1159),
            "text_encoder/config.json": clip_l, "text_encoder_2/config.json": t5,
            "scheduler/scheduler_config.json": scheduler,
            "tokenizers.json": {"tokenizer": clip_tok, "tokenizer_2": t5_tok},
        }
    return out


def write(out: Path, comfyui: str, sgm: str) -> None:
    for family, files in families(comfyui, sgm).items():
        for rel, data in files.items():
            path = out / family / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for folder, source, names in (("clip", "comfy/sd1_tokenizer", CLIP_FILES),
                                  ("t5", "comfy/text_encoders/t5_tokenizer", T5_FILES)):
        dest = out / "tokenizers" / folder
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            (dest / name).write_bytes(git_show(comfyui, f"{source}/{name}"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--comfyui", required=True, help="bare git dir of Comfy-Org/ComfyUI")
    parser.add_argument("--sgm", required=True, help="bare git dir of Stability-AI/generative-models")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    write(args.out, args.comfyui, args.sgm)
    return 0


if __name__ == "__main__":
    sys.exit(main())
