"""Train the built-in demo model `builtin:shapes` and its three demo LoRAs, on a CPU, from nothing.

    python tools/train_demo.py --out assets/demo            # the shipped files (~35 min on 2 cores)
    python tools/train_demo.py --out /tmp/demo --quick      # a smoke run (~2 min)

Everything is drawn here: coloured shapes (circle, square, triangle) on plain backgrounds, captioned
"a red circle on a white background". Fixed seeds throughout, so a rerun on the same machine and
thread count rewrites the same model (bit-identity across CPUs/thread counts is not promised).

Stages (each stage's result is kept in --work, so `--resume` restarts after the last finished one):
1. vae: a tiny AutoencoderKL (32x32x3 <-> 16x16x4), trained as an autoencoder on all four styles
   (plain, sepia, outline, striped), so the decoder can draw whatever the LoRAs ask of it.
2. base: a tiny CLIP text encoder (whole-word tokenizer, shipped with the model) and a small
   UNet2DConditionModel, trained jointly on the plain style; epsilon prediction, a cosine noise
   schedule, min-SNR loss weighting, 10% caption dropout (for classifier-free guidance), EMA.
   Saved as a diffusers StableDiffusionPipeline folder with a DDIM scheduler: <out>/shapes/.
3. loras: for each style, `unet.add_adapter(LoraConfig(...))` on the frozen base, trained on the
   same captions with the styled images (no trigger word: the strength is the control). palette is
   written in kohya form (loaders/formats/kohya.py), outline and texture with diffusers' save_lora_weights:
   <out>/loras/{palette,outline,texture}.safetensors, also copied to --examples-loras.
A report (stage times, losses, the acceptance figures) goes to <out>/train_report.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
SEED = 1234
SIZE = 32
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: smooth edges
OUTLINE_PX = 2.0
STRIPE_PERIOD = 6.0
STRIPE_SHADE = 0.4
VAE_CHANNELS = [16, 32]  # 32x32x3 <-> 16x16x4
STYLES = ("plain", "palette", "outline", "texture")
# Every attention and transformer projection and every ResNet/resampler convolution (kohya readers
# map all of them, "LoCon"-style; checked: the kohya file gives the same images as the diffusers one).
# conv_in/conv_out stay untouched. The 500-step rank-8 attention-only first try plateaued at twice
# the base model's loss and lost shapes at strength 1.
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
                "conv1", "conv2", "conv", "conv_shortcut", "time_emb_proj"]

log = logging.getLogger("train_demo")


@dataclass(frozen=True)
class Config:
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_images: int = 6000
    base_steps: int = 4000
    base_batch: int = 32
    base_images: int = 12000
    base_lr: float = 6e-4
    lora_steps: int = 750
    lora_batch: int = 32
    lora_images: int = 3000
    lora_rank: int = 16
    lora_lr: float = 3e-3
    # min-SNR gamma for the LoRAs too (None: plain MSE). Tried for texture: plain MSE, and 900 steps at
    # lr 4e-3, both moved stripe energy less (+0.0046 vs +0.0056 over the 20 cases); the shipped files use 5.
    lora_snr_gamma: float | None = 5.0
    eval_every: int = 1000


QUICK = Config(
    vae_steps=40, vae_images=256, base_steps=40, base_images=512, lora_steps=10, lora_images=128,
    eval_every=20
)


# --- the synthetic data set -----------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    cx: float
    cy: float
    size: float
    jitter: tuple[int, int, int]


def sample_scene(rng: np.random.Generator) -> Scene:
    from loragraph.builtin_models.demo import BACKGROUNDS, COLOURS, SHAPES

    return Scene(
        colour=str(rng.choice(list(COLOURS))),
        shape=str(rng.choice(SHAPES)),
        background=str(rng.choice(list(BACKGROUNDS))),
        cx=float(rng.uniform(12.5, 19.5)),
        cy=float(rng.uniform(12.5, 19.5)),
        size=float(rng.uniform(13.0, 20.0)),
        jitter=tuple(int(v) for v in rng.integers(-10, 11, size=3)),
    )


_GRID = (np.arange(SIZE * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE


def _shape_field(scene: Scene) -> np.ndarray:
    """A convex 'distance' field: < 0 inside, and inside it is minus the distance to the nearest edge."""
    x, y = _GRID[None, :], _GRID[:, None]
    if scene.shape == "circle":
        return np.sqrt((x - scene.cx) ** 2 + (y - scene.cy) ** 2) - scene.size / 2
    if scene.shape == "square":
        h = scene.size * 0.44
        return np.maximum(np.abs(x - scene.cx), np.abs(y - scene.cy)) - h
    # An upright isosceles triangle: apex at the top, base at the bottom.
    half_w, half_h = scene.size / 2, scene.size * 0.45
    top, bottom = scene.cy - half_h, scene.cy + half_h
    verts = [(scene.cx, top), (scene.cx + half_w, bottom), (scene.cx - half_w, bottom)]
    field = np.full((len(_GRID), len(_GRID)), -np.inf, dtype=np.float32)
    for (ax, ay), (bx, by) in zip(verts, verts[1:] + verts[:1], strict=True):
        ex, ey = bx - ax, by - ay
        nx, ny = ey, -ex  # outward for clockwise-on-screen vertices (y grows downwards)
        norm = math.hypot(nx, ny)
        field = np.maximum(field, ((x - ax) * nx + (y - ay) * ny) / norm)
    return field


def render(scene: Scene, style: str) -> np.ndarray:
    """The scene as a 32x32x3 float image in 0..1, in one of STYLES."""
    from loragraph.builtin_models.demo import BACKGROUNDS, COLOURS, sepia

    field = _shape_field(scene)
    inside = field <= 0
    if style == "outline":
        inside &= field > -OUTLINE_PX
    bg = np.array(BACKGROUNDS[scene.background], np.float32) / 255.0
    fg = np.clip(np.array(COLOURS[scene.colour], np.float32) + scene.jitter, 0, 255) / 255.0
    big = np.broadcast_to(bg, (*inside.shape, 3)).copy()
    big[inside] = fg
    if style == "texture":
        x, y = _GRID[None, :], _GRID[:, None]
        stripe = ((x + y) % STRIPE_PERIOD) < STRIPE_PERIOD / 2
        big[inside & stripe] = fg * STRIPE_SHADE
    s = SUPERSAMPLE
    img = big.reshape(SIZE, s, SIZE, s, 3).mean(axis=(1, 3))
    if style == "palette":
        img = sepia(img)
    return img.astype(np.float32)


def make_dataset(n: int, styles: tuple[str, ...], seed: int) -> tuple[torch.Tensor, list[Scene], list[str]]:
    """n scenes, each rendered in a style drawn from `styles`: images [n,3,32,32] in -1..1."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    chosen = [str(rng.choice(styles)) for _ in range(n)]
    images = np.stack([render(sc, st) for sc, st in zip(scenes, chosen, strict=True)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous() * 2 - 1, scenes, chosen


# --- models -----------------------------------------------------------------------------------------


def make_tokenizer_files(folder: Path) -> None:
    """A CLIP BPE vocabulary with every demo word as one token, over the byte-level base vocabulary.

    For each word, every split of every substring is a merge (shorter results first), so whichever
    pair BPE merges first, it always ends at the whole word. Unknown words still tokenize (bytes).
    """
    from loragraph.builtin_models.demo import BACKGROUNDS, COLOURS, SHAPES
    from loragraph.builtin_models.tokenizers import bytes_to_unicode

    words = sorted({"a", "on", "background", *COLOURS, *SHAPES, *BACKGROUNDS})
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    splits: dict[tuple[str, str], tuple[int, str]] = {}
    for w in words:
        sym = [*w[:-1], w[-1] + "</w>"]
        for i in range(len(sym)):
            for j in range(i + 2, len(sym) + 1):
                for k in range(i + 1, j):
                    splits.setdefault(("".join(sym[i:k]), "".join(sym[k:j])), (j - i, "".join(sym[i:j])))
    merges = []
    for (a, b), (_, merged) in sorted(splits.items(), key=lambda kv: (kv[1][0], kv[0])):
        vocab.setdefault(merged, len(vocab))
        merges.append(f"{a} {b}")
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def make_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=24)
    for word in ("red", "triangle", "background"):
        assert len(tok(word).input_ids) == 3, f"{word!r} is not one token"
    return tok


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=VAE_CHANNELS,
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * len(VAE_CHANNELS),
        up_block_types=["UpDecoderBlock2D"] * len(VAE_CHANNELS),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,  # few groups: GroupNorm over 1-2 channels would erase each image's colours
        sample_size=SIZE,
    )


def make_text_encoder(vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=24,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
            hidden_act="gelu",
        )
    )


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIZE // 2 ** (len(VAE_CHANNELS) - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        # attention at 8x8 only: at 16x16 it cost 3-4x the whole rest of the step on a CPU
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False)


def sample_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# --- training ---------------------------------------------------------------------------------------


def cosine_lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def vae_psnr(vae, x: torch.Tensor) -> float:
    y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    return 10 * math.log10(1 / F.mse_loss((y + 1) / 2, (x + 1) / 2).item())


def train_vae(cfg: Config, work: Path) -> tuple[object, dict]:
    torch.manual_seed(SEED)
    images, _, _ = make_dataset(cfg.vae_images, STYLES, SEED + 1)
    held_out, _, _ = make_dataset(64, STYLES, SEED + 3)
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(SEED + 2)
    t0 = time.perf_counter()
    losses = []
    for step in range(cfg.vae_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vae_steps, 1e-3, warmup=50)
        x = images[torch.randint(0, len(images), (cfg.vae_batch,), generator=gen)]
        # Trained as a plain autoencoder on the posterior mean (the pipeline only ever decodes):
        # sampling with the initial std ~1 drowns the signal and slows training several times over.
        # A little noise on the latent keeps the decoder tolerant of imperfect diffusion samples.
        z = vae.encode(x).latent_dist.mean
        z = z + 0.05 * z.detach().std() * torch.randn(z.shape, generator=gen)
        y = vae.decode(z).sample
        rec = F.l1_loss(y, x) + F.mse_loss(y, x)
        loss = rec + 1e-4 * z.pow(2).mean()  # keeps the latent scale bounded
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(rec.item())
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log.info("vae step %d/%d rec %.4f held-out PSNR %.1f dB (%.0f s)", step, cfg.vae_steps,
                     np.mean(losses[-100:]), vae_psnr(vae, held_out), time.perf_counter() - t0)
    vae.eval()
    psnr = vae_psnr(vae, held_out)
    log.info("vae done: held-out PSNR %.1f dB, %.0f s", psnr, time.perf_counter() - t0)
    vae.save_pretrained(work / "vae")
    return vae, {"seconds": time.perf_counter() - t0, "psnr_db": psnr,
                 "final_loss": float(np.mean(losses[-100:]))}


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    out = [vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)]
    return torch.cat(out)


def caption_ids(tokenizer, scenes: list, rng: np.random.Generator) -> torch.Tensor:
    """Token ids per scene; one caption in five leaves out the background ("a red circle")."""
    from loragraph.builtin_models.demo import caption

    texts = [caption(s.colour, s.shape, None if rng.random() < 0.2 else s.background) for s in scenes]
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """min-SNR-gamma weighting for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR."""
    ac = scheduler.alphas_cumprod[timesteps]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=gamma) / snr


def build_pipeline(unet, vae, text_encoder, tokenizer):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def evaluate_base(pipe, cfg_scale: float = 7.0) -> dict:
    """The acceptance figures: dominant colour and shape over builtin_models.demo.EVAL_CASES."""
    from loragraph.builtin_models.demo import EVAL_CASES, caption, classify_shape, dominant_colour

    colour_ok = shape_ok = 0
    misses = []
    for colour, shape, background, seed in EVAL_CASES:
        img = pipe(caption(colour, shape, background), num_inference_steps=20, guidance_scale=cfg_scale,
                   width=SIZE, height=SIZE, generator=torch.Generator("cpu").manual_seed(seed),
                   output_type="np").images[0]
        got_c, got_s = dominant_colour(img), classify_shape(img)
        colour_ok += got_c == colour
        shape_ok += got_s == shape
        if got_c != colour or got_s != shape:
            misses.append(f"{colour} {shape} on {background} (seed {seed}) -> {got_c} {got_s}")
    n = len(EVAL_CASES)
    return {"colour_accuracy": colour_ok / n, "shape_accuracy": shape_ok / n, "misses": misses}


def train_base(cfg: Config, vae, work: Path) -> tuple[object, object, object, dict]:
    tok_dir = work / "tokenizer"
    make_tokenizer_files(tok_dir)
    tokenizer = make_tokenizer(tok_dir)
    torch.manual_seed(SEED + 10)
    text_encoder = make_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    torch.manual_seed(SEED + 11)
    unet = make_unet()

    t0 = time.perf_counter()
    images, scenes, _ = make_dataset(cfg.base_images, ("plain",), SEED + 20)
    latents = encode_latents(vae, images)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = latents * scaling
    rng = np.random.default_rng(SEED + 21)
    ids = caption_ids(tokenizer, scenes, rng)
    empty = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length,
                      return_tensors="pt").input_ids[0]
    log.info("base data: %d latents %s, scaling factor %.3f (%.0f s)", len(latents), tuple(latents.shape[1:]),
             scaling, time.perf_counter() - t0)

    noise_sched = train_scheduler()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.base_lr, weight_decay=0.01)
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_te = copy.deepcopy(text_encoder).requires_grad_(False)
    gen = torch.Generator().manual_seed(SEED + 22)
    losses, evals = [], []
    for step in range(cfg.base_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.base_steps, cfg.base_lr)
        idx = torch.randint(0, len(latents), (cfg.base_batch,), generator=gen)
        x0 = latents[idx]
        batch_ids = ids[idx].clone()
        drop = torch.rand(cfg.base_batch, generator=gen) < 0.1
        batch_ids[drop] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.base_batch,), generator=gen)
        xt = noise_sched.add_noise(x0, noise, t)
        cond = text_encoder(batch_ids)[0]
        pred = unet(xt, t, cond).sample
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weights(noise_sched, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(0.998, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in ((ema_unet, unet), (ema_te, text_encoder)):
                for pe, pl in zip(ema.parameters(), live.parameters(), strict=True):
                    pe.lerp_(pl, 1 - decay)
        losses.append(per_sample.mean().item())
        if step % 100 == 0 or step == cfg.base_steps - 1:
            log.info("base step %d/%d loss %.4f lr %.2e (%.0f s)", step, cfg.base_steps,
                     np.mean(losses[-100:]), opt.param_groups[0]["lr"], time.perf_counter() - t0)
        if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.base_steps:
            figures = evaluate_base(build_pipeline(ema_unet, vae, ema_te, tokenizer))
            evals.append({"step": step + 1, "seconds": time.perf_counter() - t0, **figures})
            log.info("eval at step %d: colour %.2f shape %.2f", step + 1, figures["colour_accuracy"],
                     figures["shape_accuracy"])
    seconds = time.perf_counter() - t0
    ema_unet.eval()
    ema_te.eval()
    pipe = build_pipeline(ema_unet, vae, ema_te, tokenizer)
    pipe.save_pretrained(work / "base")
    report = {"seconds": seconds, "final_loss": float(np.mean(losses[-100:])), "evals": evals,
              "scaling_factor": scaling}
    return pipe, report


def peft_state(unet) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(unet).items()}


def train_lora(cfg: Config, pipe, name: str, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    """One LoRA on the frozen base: `unet.add_adapter(LoraConfig(...))`, as diffusers' training scripts."""
    from peft import LoraConfig

    t0 = time.perf_counter()
    images, scenes, _ = make_dataset(cfg.lora_images, (name,), seed)
    latents = encode_latents(pipe.vae, images) * pipe.vae.config.scaling_factor
    rng = np.random.default_rng(seed + 1)
    ids = caption_ids(pipe.tokenizer, scenes, rng)
    with torch.no_grad():
        embeds = torch.cat([pipe.text_encoder(ids[i : i + 256])[0] for i in range(0, len(ids), 256)])
        empty_ids = pipe.tokenizer("", padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                   return_tensors="pt").input_ids
        empty = pipe.text_encoder(empty_ids)[0][0]

    unet = copy.deepcopy(pipe.unet)
    unet.requires_grad_(False)
    torch.manual_seed(seed + 2)
    unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_rank, init_lora_weights="gaussian",
                                target_modules=LORA_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lora_lr, weight_decay=0.0)
    noise_sched = train_scheduler()
    gen = torch.Generator().manual_seed(seed + 3)
    losses = []
    unet.train()
    for step in range(cfg.lora_steps):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.lora_steps, cfg.lora_lr, warmup=30)
        idx = torch.randint(0, len(latents), (cfg.lora_batch,), generator=gen)
        x0 = latents[idx]
        cond = embeds[idx].clone()
        cond[torch.rand(cfg.lora_batch, generator=gen) < 0.1] = empty
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (cfg.lora_batch,), generator=gen)
        pred = unet(noise_sched.add_noise(x0, noise, t), t, cond).sample
        per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        weights = 1.0 if cfg.lora_snr_gamma is None else snr_weights(noise_sched, t, cfg.lora_snr_gamma)
        loss = (per_sample * weights).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(per_sample.mean().item())
        if step % 50 == 0 or step == cfg.lora_steps - 1:
            log.info("lora %s step %d/%d loss %.4f (%.0f s)", name, step, cfg.lora_steps,
                     np.mean(losses[-50:]), time.perf_counter() - t0)
    state = peft_state(unet)
    return state, {"seconds": time.perf_counter() - t0, "final_loss": float(np.mean(losses[-50:])),
                   "rank": cfg.lora_rank, "targets": LORA_TARGETS, "tensors": len(state)}


def save_lora(name: str, state: dict[str, torch.Tensor], rank: int, path: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from loragraph.loaders.formats.kohya import save_kohya

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"loragraph_demo": name, "base_model": "builtin:shapes"}
    if name == "palette":
        alphas = {"unet": {k.removesuffix(".lora_A.weight"): float(rank) for k in state if ".lora_A." in k}}
        save_kohya({"unet": state}, alphas, path, sdxl=False, metadata=meta)
    else:
        StableDiffusionPipeline.save_lora_weights(str(path.parent), unet_lora_layers=state,
                                                  weight_name=path.name)


@torch.no_grad()
def evaluate_lora(out: Path, name: str) -> dict:
    """Through the engine, as the tests do: the property at strengths 0..1, mean over the 20 cases.

    The model and LoRAs in `out` are reached through a throwaway models folder of symlinks, so
    this works for any --out (the engine's `builtin:shapes` always reads the package's assets).
    """
    import tempfile

    from loragraph import host
    from loragraph.builtin_models.demo import EVAL_CASES, LORA_PROPERTIES, caption
    from loragraph.loaders import transitions as tr
    from loragraph.loaders.engine import Engine

    measure, _ = LORA_PROPERTIES[name]
    curve = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "diffusers").mkdir()
        (Path(tmp) / "loras").mkdir()
        os.symlink(out / "shapes", Path(tmp) / "diffusers" / "shapes")
        os.symlink(out / "loras", Path(tmp) / "loras" / "shapes")
        host.configure(models_dir=tmp)
        engine = Engine()
        base = engine.load_pipeline("shapes")
        for strength in (0.0, 0.25, 0.5, 0.75, 1.0):
            h = tr.add_adapter(base, engine.lora_spec(base, f"shapes/{name}.safetensors", strength, ""))
            values = []
            for colour, shape, background, seed in EVAL_CASES:  # as tests/test_demo_model.py
                img = engine.sample(h, caption(colour, shape, background), "", seed, 20, 7.0, SIZE, SIZE)
                values.append(measure(img))
            curve.append(float(np.mean(values)))
    return {"property": measure.__name__, "curve_0_to_1": curve}


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "assets" / "demo")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "loragraph-train-demo",
                        help="intermediate results, outside the package (default: %(default)s)")
    parser.add_argument("--examples-loras", type=Path,
                        default=REPO / "examples" / "models" / "loras" / "shapes")
    parser.add_argument("--quick", action="store_true", help="a smoke run: a few steps of every stage")
    parser.add_argument("--resume", action="store_true", help="reuse the stages already finished in --work")
    parser.add_argument("--stop-after", choices=("vae", "base"), help="stop after this stage (experiments)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="measure the LoRAs in --out again (curves into its report); train nothing")
    parser.add_argument("--loras",
                        help="retrain only these LoRAs (comma-separated) on the base already in --out; "
                        "the other LoRA files and their report entries are kept")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on 2 shared cores, 2 threads ran 5-10x slower "
                        "when busy)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    for noisy in ("diffusers", "transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = QUICK if args.quick else Config()
    out = args.out.resolve()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {"config": cfg.__dict__, "threads": args.threads, "quick": args.quick}
    previous = out / "train_report.json"
    if args.resume and previous.is_file():  # keep the figures of the stages that are reused
        old = json.loads(previous.read_text())
        report.update({k: old[k] for k in ("vae", "base") if k in old})
    t_all = time.perf_counter()

    from diffusers import AutoencoderKL, StableDiffusionPipeline

    if args.evaluate_only:
        report = json.loads((out / "train_report.json").read_text())
        for name in LORA_NAMES:
            report["loras"].setdefault(name, {}).update(evaluate_lora(out, name))
            log.info("lora %s: %s", name, report["loras"][name]["curve_0_to_1"])
        (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    if args.loras:
        return retrain_loras(cfg, args, out, report, t_all)
    if args.resume and (work / "vae" / "config.json").is_file():
        vae = AutoencoderKL.from_pretrained(work / "vae")
        log.info("vae: reused from %s", work / "vae")
    else:
        vae, report["vae"] = train_vae(cfg, work)
    if args.stop_after == "vae":
        return 0
    if args.resume and (work / "base" / "model_index.json").is_file():
        pipe = StableDiffusionPipeline.from_pretrained(work / "base", safety_checker=None)
        log.info("base: reused from %s", work / "base")
    else:
        _, report["base"] = train_base(cfg, vae, work)
        pipe = StableDiffusionPipeline.from_pretrained(work / "base", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    if args.stop_after == "base":
        return 0

    model_dir = out / "shapes"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    pipe.save_pretrained(model_dir, safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):  # transformers 4's slow CLIPTokenizer reads only these
        shutil.copyfile(work / "tokenizer" / name, model_dir / "tokenizer" / name)
    t0 = time.perf_counter()
    report["base_eval"] = evaluate_base(pipe)
    report["base_eval"]["seconds_for_20_images"] = time.perf_counter() - t0
    log.info("base: %s", report["base_eval"])

    report["loras"] = {}
    train_and_write_loras(cfg, args, pipe, out, report, LORA_NAMES)
    return finish(out, report, t_all)


LORA_NAMES = ("palette", "outline", "texture")


def train_and_write_loras(cfg: Config, args, pipe, out: Path, report: dict, names) -> None:
    for name in names:
        state, info = train_lora(cfg, pipe, name, SEED + 100 * (LORA_NAMES.index(name) + 1))
        path = out / "loras" / f"{name}.safetensors"
        save_lora(name, state, cfg.lora_rank, path)
        args.examples_loras.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, args.examples_loras / path.name)
        report["loras"][name] = info
    for name in names:
        report["loras"][name].update(evaluate_lora(out, name))
        log.info("lora %s: %s", name, report["loras"][name])


def retrain_loras(cfg: Config, args, out: Path, report: dict, t_all: float) -> int:
    """--loras: train the named LoRAs again on the shipped base in <out>/shapes; keep the rest."""
    from diffusers import StableDiffusionPipeline

    names = [n.strip() for n in args.loras.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LORA_NAMES))
    if unknown:
        raise SystemExit(f"--loras: unknown LoRA(s) {unknown}; known: {', '.join(LORA_NAMES)}")
    previous = out / "train_report.json"
    old = json.loads(previous.read_text()) if previous.is_file() else {}
    report.update({k: v for k, v in old.items() if k not in ("config", "threads", "quick")})
    report.setdefault("loras", {})
    report["retrained"] = {"loras": names, "config": cfg.__dict__}
    report["config"] = old.get("config", cfg.__dict__)
    pipe = StableDiffusionPipeline.from_pretrained(out / "shapes", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    train_and_write_loras(cfg, args, pipe, out, report, names)
    return finish(out, report, t_all)


def finish(out: Path, report: dict, t_all: float) -> int:
    report["total_seconds"] = time.perf_counter() - t_all
    report["shipped_bytes"] = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    (out / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("done in %.0f s; %s holds %.2f MB", report["total_seconds"], out, report["shipped_bytes"] / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
