"""Checkpoints in the original single-file layouts, written from diffusers modules (meta tensors work):
SD 1.x's LDM names, SDXL's (OpenCLIP bigG with fused `in_proj`), SD3's MMDiT names and Flux's BFL
names in ComfyUI's all-in-one file. Each writer is the inverse of diffusers' converter for that family,
so diffusers reading the result back is the check. Also the tiny SDXL and SD3 pipelines diffusers can
read back from a single file (their two CLIP encoders of different widths).
"""

from __future__ import annotations

import re

import torch
from loragraph.testing import _ldm_unet, _ldm_vae

LDM_RESNET = {"norm1.": "in_layers.0.", "conv1.": "in_layers.2.", "time_emb_proj.": "emb_layers.1.",
              "norm2.": "out_layers.0.", "conv2.": "out_layers.3.", "conv_shortcut.": "skip_connection."}
RESNET_SLOT = re.compile(
    r"(model\.diffusion_model\.(?:(?:input|output)_blocks\.\d+\.0|middle_block\.[02])\.)(.*)")


def ldm_resnet_names(tensors: dict) -> dict:
    """testing's UNet writer keeps diffusers' resnet names inside a block (conv1, norm1, ...); real
    checkpoints spell them in_layers/out_layers/emb_layers/skip_connection, which detection reads."""
    out = {}
    for key, value in tensors.items():
        m = RESNET_SLOT.match(key)
        if m:
            for ours, theirs in LDM_RESNET.items():
                if m.group(2).startswith(ours):
                    key = m.group(1) + theirs + m.group(2)[len(ours):]
                    break
        out[key] = value
    return out


class Tagged:
    """A module stand-in whose tensors are numbered, so a layout's keys map back to diffusers' names."""

    def __init__(self, module, component: str):
        self.config = getattr(module, "config", None)
        self.names = [f"{component}.{k}" for k in module.state_dict()]
        self.shapes = [v.shape for v in module.state_dict().values()]

    def state_dict(self) -> dict:
        return {name.split(".", 1)[1]: torch.full((1,), float(i)) for i, name in enumerate(self.names)}


def sd1_layout(unet, vae, text_encoder) -> dict[str, tuple[str, torch.Size]]:
    """original key -> (component.diffusers key, shape) for an SD 1.x pipeline's modules (meta is fine)."""
    layout: dict[str, tuple[str, torch.Size]] = {}
    for module, component, writer in ((unet, "unet", lambda m: ldm_resnet_names(_ldm_unet(m))),
                                      (vae, "vae", _ldm_vae)):
        tagged = Tagged(module, component)
        for key, value in writer(tagged).items():
            i = int(value.flatten()[0])
            layout[key] = (tagged.names[i], tagged.shapes[i] if value.dim() == 1 else
                           torch.Size([*tagged.shapes[i], 1, 1]))
    for key, value in text_encoder.state_dict().items():
        original = key if key.startswith("text_model.") else "text_model." + key
        layout["cond_stage_model.transformer." + original] = ("text_encoder." + key, value.shape)
    return layout


def random_fp16(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp16 weights for a layout, fast: slices of one 4M-value normal pool at moving offsets
    (drawing a billion normals one by one takes most of a minute on one core)."""
    pool = torch.randn(1 << 22, generator=torch.Generator().manual_seed(seed)).mul_(0.02).half()
    out, offset = {}, 0
    for key, (_, shape) in layout.items():
        n = shape.numel()
        flat = torch.empty(n, dtype=torch.float16)
        done = 0
        while done < n:
            take = min(n - done, pool.numel() - offset)
            flat[done:done + take] = pool[offset:offset + take]
            done += take
            offset = (offset + take + 7919) % pool.numel()  # 7919: a prime stride, so tensors differ
        out[key] = flat.view(shape)
    return out


class StateOf:
    """What testing's LDM writers read of a module: its config and a state dict (meta tensors are fine)."""

    def __init__(self, config, state: dict):
        self.config, self.state = config, state

    def state_dict(self) -> dict:
        return self.state


def open_clip_layout(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModelWithProjection in OpenCLIP's names: fused q/k/v `in_proj`, `ln_1`,
    `c_fc`, the projection as a matrix applied on the right (the transpose of the Linear's weight)."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           prefix + "text_projection": state.pop("text_projection.weight").T.contiguous()}
    for part in ("weight", "bias"):
        out[prefix + f"ln_final.{part}"] = state.pop(f"final_layer_norm.{part}")
    names = {"self_attn.out_proj.": "attn.out_proj.", "layer_norm1.": "ln_1.", "layer_norm2.": "ln_2.",
             "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}
    for i in range(encoder.config.num_hidden_layers):
        layer, block = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[block + f"attn.in_proj_{part}"] = torch.cat(
                [state.pop(f"{layer}self_attn.{x}_proj.{part}") for x in "qkv"])
        for ours, theirs in names.items():
            for part in ("weight", "bias"):
                out[block + theirs + part] = state.pop(layer + ours + part)
    assert not state, sorted(state)  # every tensor placed
    return out


def sdxl_checkpoint(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """An SDXL pipeline's modules in the layout of sd_xl_base_1.0.safetensors."""
    state = dict(unet.state_dict())
    label = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
    out = {}
    for ours, theirs in label.items():
        for part in ("weight", "bias"):
            out[f"model.diffusion_model.{theirs}{part}"] = state.pop(ours + part)
    out.update(ldm_resnet_names(_ldm_unet(StateOf(unet.config, state))))
    out.update(_ldm_vae(vae))
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key
        out["conditioner.embedders.0.transformer." + key] = value
    out.update(open_clip_layout(text_encoder_2, "conditioner.embedders.1.model."))
    return out


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def build_tiny_sdxl_two_widths():
    """builtin tiny-sdxl's shape, but its second text encoder 64 wide: diffusers tells a single file's
    two CLIP encoders apart by width, so the built-in one (both 32) cannot round-trip."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from loragraph.builtin_models.tiny_parts import BUILTIN_SEED, clip_config, ddim_scheduler, tiny_vae
    from loragraph.builtin_models.tokenizers import make_tokenizer
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(BUILTIN_SEED)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids * 8 + the 32-wide pooled projection
        cross_attention_dim=96, norm_num_groups=32)  # the two encoders' hidden states side by side: 32 + 64
    torch.manual_seed(BUILTIN_SEED)
    vae = tiny_vae()
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModel(clip_config())
    torch.manual_seed(BUILTIN_SEED + 1)
    wide = clip_config(projection_dim=32)
    wide.hidden_size = 64
    text_encoder_2 = CLIPTextModelWithProjection(wide)
    return StableDiffusionXLPipeline(
        unet=unet, scheduler=ddim_scheduler(), vae=vae, text_encoder=text_encoder,
        text_encoder_2=text_encoder_2, tokenizer=make_tokenizer(), tokenizer_2=make_tokenizer(),
        force_zeros_for_empty_prompt=False)


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): SD3's final modulations are stored the other way round."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first])


def mmdit_layout(transformer, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel in the original MMDiT names (sd3_medium.safetensors): fused q/k/v per
    stream, `adaLN_modulation.1`, the last block's context modulation and the final layer's halves
    swapped. The inverse of diffusers' convert_sd3_transformer_checkpoint_to_diffusers."""
    s = dict(transformer.state_dict())
    out: dict[str, torch.Tensor] = {}

    def move(ours: str, theirs: str, swap: bool = False) -> None:
        for part in ("weight", "bias"):
            if f"{ours}.{part}" in s:
                value = s.pop(f"{ours}.{part}")
                out[f"{prefix}{theirs}.{part}"] = swap_halves(value) if swap else value

    def fuse(ours: str, names: tuple[str, ...], theirs: str) -> None:
        for part in ("weight", "bias"):
            out[f"{prefix}{theirs}.{part}"] = torch.cat([s.pop(f"{ours}.{n}.{part}") for n in names])

    out[prefix + "pos_embed"] = s.pop("pos_embed.pos_embed")
    move("pos_embed.proj", "x_embedder.proj")
    move("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")
    move("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")
    move("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")
    move("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")
    move("context_embedder", "context_embedder")
    last = transformer.config.num_layers - 1
    for i in range(transformer.config.num_layers):
        b, j = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        fuse(f"{b}.attn", ("to_q", "to_k", "to_v"), f"{j}.x_block.attn.qkv")
        fuse(f"{b}.attn", ("add_q_proj", "add_k_proj", "add_v_proj"), f"{j}.context_block.attn.qkv")
        for ours, theirs in (("attn.norm_q", "x_block.attn.ln_q"), ("attn.norm_k", "x_block.attn.ln_k"),
                             ("attn.norm_added_q", "context_block.attn.ln_q"),
                             ("attn.norm_added_k", "context_block.attn.ln_k"),
                             ("attn2.norm_q", "x_block.attn2.ln_q"), ("attn2.norm_k", "x_block.attn2.ln_k"),
                             ("attn.to_out.0", "x_block.attn.proj"),
                             ("attn.to_add_out", "context_block.attn.proj"),
                             ("attn2.to_out.0", "x_block.attn2.proj"),
                             ("norm1.linear", "x_block.adaLN_modulation.1"),
                             ("ff.net.0.proj", "x_block.mlp.fc1"), ("ff.net.2", "x_block.mlp.fc2"),
                             ("ff_context.net.0.proj", "context_block.mlp.fc1"),
                             ("ff_context.net.2", "context_block.mlp.fc2")):
            move(f"{b}.{ours}", f"{j}.{theirs}")
        if f"{b}.attn2.to_q.weight" in s:
            fuse(f"{b}.attn2", ("to_q", "to_k", "to_v"), f"{j}.x_block.attn2.qkv")
        move(f"{b}.norm1_context.linear", f"{j}.context_block.adaLN_modulation.1", swap=i == last)
    move("proj_out", "final_layer.linear")
    move("norm_out.linear", "final_layer.adaLN_modulation.1", swap=True)
    assert not s, sorted(s)  # every tensor placed
    return out


def sd3_checkpoint(transformer, vae, text_encoder, text_encoder_2, text_encoder_3=None) -> dict:
    """An SD3 pipeline in the layout of sd3_medium_incl_clips(_t5xxlfp8).safetensors."""
    out = {**mmdit_layout(transformer), **_ldm_vae(vae)}
    encoders = {"clip_l": text_encoder, "clip_g": text_encoder_2, "t5xxl": text_encoder_3}
    for name, encoder in encoders.items():
        if encoder is None:
            continue
        for key, value in encoder.state_dict().items():
            if name == "clip_l" and key == "text_projection.weight":
                continue  # SD3 files carry no CLIP-L projection (diffusers puts the identity there)
            if name == "t5xxl" and key == "encoder.embed_tokens.weight":
                continue  # tied to `shared`
            out[f"text_encoders.{name}.transformer.{key}"] = value
    return out


def build_tiny_sd3_for_single_files():
    """builtin tiny-sd3's shape, fit for SD3's single-file reader: CLIP-L's projection the identity
    (SD3 files carry none), the two CLIP encoders of different widths (32, 64: diffusers tells them
    apart by width), so the transformer's context is 96 wide (both encoders' states side by side)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from loragraph.builtin_models.tiny_parts import BUILTIN_SEED, clip_config
    from loragraph.builtin_models.tokenizers import make_tokenizer
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(BUILTIN_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=96, pooled_projection_dim=64, out_channels=4)
    torch.manual_seed(BUILTIN_SEED)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,),
                        layers_per_block=1, latent_channels=4, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    torch.manual_seed(BUILTIN_SEED)
    text_encoder = CLIPTextModelWithProjection(clip_config(projection_dim=32))
    with torch.no_grad():
        text_encoder.text_projection.weight.copy_(torch.eye(32))
    torch.manual_seed(BUILTIN_SEED + 1)
    wide = clip_config(projection_dim=32)
    wide.hidden_size = 64
    text_encoder_2 = CLIPTextModelWithProjection(wide)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae,
        text_encoder=text_encoder, tokenizer=make_tokenizer(), text_encoder_2=text_encoder_2,
        tokenizer_2=make_tokenizer(), text_encoder_3=None, tokenizer_3=None)


def flux_layout(transformer, prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel in BFL's names (flux1-dev.safetensors): fused q/k/v per stream, the
    single blocks' q/k/v/MLP fused into linear1, the final modulation's halves swapped. The inverse of
    diffusers' convert_flux_transformer_checkpoint_to_diffusers."""
    s = dict(transformer.state_dict())
    out: dict[str, torch.Tensor] = {}

    def move(ours: str, theirs: str, swap: bool = False) -> None:
        for part in ("weight", "bias"):
            value = s.pop(f"{ours}.{part}")
            out[f"{prefix}{theirs}.{part}"] = swap_halves(value) if swap else value

    def move_norm(ours: str, theirs: str) -> None:  # BFL's RMSNorm calls its weight `scale`
        out[f"{prefix}{theirs}.scale"] = s.pop(f"{ours}.weight")

    def fuse(ours: str, names: tuple[str, ...], theirs: str) -> None:
        for part in ("weight", "bias"):
            out[f"{prefix}{theirs}.{part}"] = torch.cat([s.pop(f"{ours}.{n}.{part}") for n in names])

    for ours, theirs in (("time_text_embed.timestep_embedder", "time_in"),
                         ("time_text_embed.text_embedder", "vector_in"),
                         ("time_text_embed.guidance_embedder", "guidance_in")):
        if f"{ours}.linear_1.weight" in s:
            move(f"{ours}.linear_1", f"{theirs}.in_layer")
            move(f"{ours}.linear_2", f"{theirs}.out_layer")
    move("context_embedder", "txt_in")
    move("x_embedder", "img_in")
    for i in range(transformer.config.num_layers):
        b, d = f"transformer_blocks.{i}", f"double_blocks.{i}"
        move(f"{b}.norm1.linear", f"{d}.img_mod.lin")
        move(f"{b}.norm1_context.linear", f"{d}.txt_mod.lin")
        fuse(f"{b}.attn", ("to_q", "to_k", "to_v"), f"{d}.img_attn.qkv")
        fuse(f"{b}.attn", ("add_q_proj", "add_k_proj", "add_v_proj"), f"{d}.txt_attn.qkv")
        for ours, theirs in (("norm_q", "img_attn.norm.query_norm"), ("norm_k", "img_attn.norm.key_norm"),
                             ("norm_added_q", "txt_attn.norm.query_norm"),
                             ("norm_added_k", "txt_attn.norm.key_norm")):
            move_norm(f"{b}.attn.{ours}", f"{d}.{theirs}")
        move(f"{b}.ff.net.0.proj", f"{d}.img_mlp.0")
        move(f"{b}.ff.net.2", f"{d}.img_mlp.2")
        move(f"{b}.ff_context.net.0.proj", f"{d}.txt_mlp.0")
        move(f"{b}.ff_context.net.2", f"{d}.txt_mlp.2")
        move(f"{b}.attn.to_out.0", f"{d}.img_attn.proj")
        move(f"{b}.attn.to_add_out", f"{d}.txt_attn.proj")
    for i in range(transformer.config.num_single_layers):
        b, g = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        move(f"{b}.norm.linear", f"{g}.modulation.lin")
        for part in ("weight", "bias"):
            out[f"{prefix}{g}.linear1.{part}"] = torch.cat(
                [s.pop(f"{b}.attn.to_{x}.{part}") for x in "qkv"] + [s.pop(f"{b}.proj_mlp.{part}")])
        move_norm(f"{b}.attn.norm_q", f"{g}.norm.query_norm")
        move_norm(f"{b}.attn.norm_k", f"{g}.norm.key_norm")
        move(f"{b}.proj_out", f"{g}.linear2")
    move("proj_out", "final_layer.linear")
    move("norm_out.linear", "final_layer.adaLN_modulation.1", swap=True)
    assert not s, sorted(s)  # every tensor placed
    return out


def flux_checkpoint(transformer, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """A Flux pipeline as ComfyUI's all-in-one checkpoints hold it (flux1-dev-fp8.safetensors)."""
    out = {**flux_layout(transformer), **{"vae." + k.removeprefix("first_stage_model."): v
                                          for k, v in _ldm_vae(vae).items()}}
    for name, encoder in (("clip_l", text_encoder), ("t5xxl", text_encoder_2)):
        for key, value in encoder.state_dict().items():
            if key != "encoder.embed_tokens.weight":  # tied to T5's `shared`
                out[f"text_encoders.{name}.transformer.{key}"] = value
    return out


def sd1_checkpoint(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """An SD 1.x pipeline in the layout of v1-5-pruned-emaonly.safetensors."""
    out = {**ldm_resnet_names(_ldm_unet(unet)), **_ldm_vae(vae)}
    for key, value in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key  # transformers 5 drops it
        out["cond_stage_model.transformer." + key] = value
    return out
