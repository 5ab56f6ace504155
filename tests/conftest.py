"""Shared fixtures: a models folder with real LoRA files, and raw-diffusers oracles."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

# Keep the CPU work predictable on CI's 2 cores, and never reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One thread: the tiny models gain nothing from two, and tests stay steady when the cores are shared.
torch.set_num_threads(1)
logging.getLogger("loragraph").setLevel(logging.DEBUG)

PROMPT = "a red circle on a white background"
STEPS = 3  # three DDIM steps: enough to carry a LoRA's effect into the image, fast on a CPU
SIZE = 64  # the tiny pipelines' native size


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """DIR/loras holds: sd_a (diffusers), sd_b (kohya, alpha 2 at rank 4), sd_c (PEFT, unet only),
    sd_old (old attn-processor keys), sd_u1/sd_u2 (unet only, rank 4: diffusers alpha 2, kohya
    alpha 8), xl_a (SDXL diffusers), xl_k (SDXL kohya), and bad files."""
    from loragraph.testing import write_bad_files, write_lora_file

    root = tmp_path_factory.mktemp("models")
    loras = root / "loras"
    loras.mkdir()
    write_lora_file(loras / "sd_a.safetensors", "sd", "diffusers", rank=4, seed=11)
    write_lora_file(loras / "sd_b.safetensors", "sd", "kohya", rank=4, alpha=2, seed=12)
    write_lora_file(loras / "sd_c.safetensors", "sd", "peft", rank=8, seed=13, components=("unet",))
    write_lora_file(loras / "sd_old.safetensors", "sd", "diffusers-old", rank=4, seed=14)
    write_lora_file(loras / "sub" / "sd_d.safetensors", "sd", "diffusers", rank=2, alpha=1, seed=15)
    # UNet-only, same layers and rank, other alphas and formats: one can be hot-swapped into the other
    write_lora_file(loras / "sd_u1.safetensors", "sd", "diffusers", rank=4, alpha=2, seed=16,
                    components=("unet",))
    write_lora_file(loras / "sd_u2.safetensors", "sd", "kohya", rank=4, alpha=8, seed=17,
                    components=("unet",))
    write_lora_file(loras / "xl_a.safetensors", "sdxl", "diffusers", rank=4, seed=21)
    write_lora_file(loras / "xl_k.safetensors", "sdxl", "kohya", rank=4, alpha=8, seed=22)
    write_bad_files(loras / "bad")
    return root


@pytest.fixture()
def configured(models_dir, tmp_path):
    from loragraph import host

    host.configure(models_dir=models_dir, output_dir=tmp_path / "output")
    return models_dir


def render(pipe, prompt: str = PROMPT, seed: int = 1) -> torch.Tensor:
    """The raw diffusers call the Sampler stands for (CONTRACT: Sampler semantics), as an image tensor."""
    out = pipe(
        prompt,
        negative_prompt="",
        num_inference_steps=STEPS,
        guidance_scale=7.0,
        width=SIZE,
        height=SIZE,
        num_images_per_prompt=1,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
    )
    return torch.from_numpy(out.images).float()


def raw_pipeline(kind: str = "sd"):
    from loragraph.builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl

    pipe = build_tiny_sd() if kind == "sd" else build_tiny_sdxl()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_load(pipe, models_dir: Path, name: str, adapter: str) -> None:
    """Raw diffusers loading a file of DIR/loras the way its format asks: a bare PEFT adapter file
    (one model's adapter) through that model's own `load_lora_adapter`, anything else through the
    pipeline's `load_lora_weights`."""
    from loragraph.loaders.store import read_lora

    path = models_dir / "loras" / name
    if read_lora(path).format == "peft":
        denoiser = pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer
        denoiser.load_lora_adapter(str(path), prefix=None, adapter_name=adapter)
    else:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()
