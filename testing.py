"""Real LoRA files for tests and examples, made deterministically from the built-in tiny pipelines.

The adapters are laid out by peft itself (`LoraConfig` + `add_adapter` + `get_peft_model_state_dict`
on a throwaway copy of the model), so their keys and shapes are exactly what diffusers produces and
consumes. Their matrices are then drawn from a seeded generator with lora_B non-zero (peft would
start B at zero, i.e. a LoRA that changes nothing), so a loaded LoRA visibly changes the image.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from .builtin_models.tiny_sd3 import build_tiny_sd3
from .loaders.components import is_denoiser
from .loaders.formats.kohya import peft_to_kohya
from .loaders.lora_file import PICKLE_SUFFIXES

logger = logging.getLogger(__name__)

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
# Size of the LoRA delta relative to a layer's own weights (~0.9 of their spread at alpha = rank):
# large enough that the tiny pipelines' images change visibly, small enough to stay finite.
DEFAULT_SCALE = 0.5

PipeKind = Literal["sd", "sdxl", "sd3"]
FileFormat = Literal[
    "diffusers", "peft", "kohya", "diffusers-old", "wan-original", "wan-musubi", "diffusion-model"
]

_PIPES: dict[str, Any] = {}


def tiny_pipeline(kind: PipeKind) -> Any:
    """The built-in tiny pipeline of that kind, built once per process. Read-only: never load into it."""
    from .builtin_models.tiny_sd import build_tiny_sd, build_tiny_sdxl

    if kind not in _PIPES:
        builders = {"sd": build_tiny_sd, "sdxl": build_tiny_sdxl, "sd3": build_tiny_sd3}
        if kind not in builders:
            raise ValueError(f"pipe_kind must be one of {sorted(builders)}, not {kind!r}")
        _PIPES[kind] = builders[kind]()
    return _PIPES[kind]


def _make_adapters(
    pipe: Any,
    rank: int,
    alpha: float | None,
    components: Sequence[str],
    targets: Sequence[str],
    text_encoder_targets: Sequence[str],
    seed: int,
    scale: float,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """({component: PEFT state dict}, {component: LoraConfig}) for a fresh, seeded adapter."""
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    generator = torch.Generator().manual_seed(seed)
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    configs: dict[str, Any] = {}
    for component in components:
        model = getattr(pipe, component, None)
        if model is None:
            raise ValueError(f"{type(pipe).__name__} has no {component!r} to make a LoRA for")
        config = LoraConfig(
            r=rank,
            lora_alpha=rank if alpha is None else alpha,
            target_modules=list(targets if is_denoiser(component) else text_encoder_targets),
        )
        throwaway = copy.deepcopy(model)  # the caller's pipeline must stay untouched
        throwaway.add_adapter(config)
        layout = get_peft_model_state_dict(throwaway)
        del throwaway
        sd = {}
        for key in sorted(layout):
            shape = layout[key].shape
            t = torch.randn(shape, generator=generator, dtype=torch.float32)
            if ".lora_A." in key:
                sd[key] = t / math.sqrt(shape[1])  # unit-variance output per input row
            else:
                sd[key] = t * (scale / math.sqrt(rank))
        state_dicts[component] = sd
        configs[component] = config
    return state_dicts, configs


def _default_components(pipe: Any, fmt: str) -> tuple[str, ...]:
    denoiser = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    if fmt == "peft":
        return (denoiser,)  # a PEFT adapter file holds one model
    extra = ("text_encoder_2",) if getattr(pipe, "text_encoder_2", None) is not None else ()
    return (denoiser, "text_encoder", *extra)


def make_lora_state_dict(
    pipe: Any,
    rank: int = 4,
    alpha: float | None = None,
    components: Sequence[str] = ("unet", "text_encoder"),
    targets: Sequence[str] = UNET_TARGETS,
    text_encoder_targets: Sequence[str] = TEXT_ENCODER_TARGETS,
    seed: int = 0,
    scale: float = DEFAULT_SCALE,
) -> dict[str, dict[str, torch.Tensor]]:
    """{component: PEFT state dict ("<module>.lora_A.weight", ...)} shaped for `pipe`, seeded.

    `alpha` is not baked into the numbers (pass it to whatever writes or loads the adapter); the
    caller's pipeline is only read (the adapter is laid out on a deep copy).
    """
    return _make_adapters(pipe, rank, alpha, components, targets, text_encoder_targets, seed, scale)[0]


def _config_dict(config: Any) -> dict[str, Any]:
    d = config.to_dict()
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in d.items()}


def _fold_alpha(sd: Mapping[str, torch.Tensor], rank: int, alpha: float | None) -> dict[str, torch.Tensor]:
    """Formats without an alpha keep the effect by scaling lora_B by alpha / rank."""
    if alpha is None or alpha == rank:
        return dict(sd)
    return {k: (v * (alpha / rank) if ".lora_B." in k else v) for k, v in sd.items()}


def _old_module_name(component: str, module: str) -> str:
    """A PEFT module path in the pre-PEFT attention-processor spelling (diffusers <= 0.20)."""
    if is_denoiser(component):
        for proj, old in (("to_q", "to_q"), ("to_k", "to_k"), ("to_v", "to_v"), ("to_out.0", "to_out")):
            if module.endswith("." + proj):
                return f"{module[: -len(proj) - 1]}.processor.{old}_lora"
    else:
        for proj, old in (("q_proj", "to_q"), ("k_proj", "to_k"), ("v_proj", "to_v"), ("out_proj", "to_out")):
            if module.endswith("." + proj):
                stem = module[: -len(proj) - 1]
                stem = stem if stem.startswith("text_model.") else "text_model." + stem
                return f"{stem}.{old}_lora"
    raise ValueError(f"the diffusers-old format only holds attention projections, not {component}.{module}")


# Wan's own module names (the original checkpoint's, which musubi-tuner keeps) for diffusers' ones.
_WAN_MODULES = {
    "attn1.to_q": "self_attn.q", "attn1.to_k": "self_attn.k", "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o", "attn2.to_q": "cross_attn.q", "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v", "attn2.to_out.0": "cross_attn.o", "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}
# Every module both Wan converters read per block (musubi's requires all of them).
WAN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


def _wan_layout(sd: Mapping[str, torch.Tensor], alpha: float, fmt: str) -> dict[str, torch.Tensor]:
    """A transformer's PEFT keys as the families' trainers write them, with `.alpha` per module:
    wan-original `diffusion_model.blocks.N.self_attn.q.lora_down.weight` (the Wan repository's
    names), wan-musubi `lora_unet_blocks_N_self_attn_q.lora_down.weight` (musubi-tuner's),
    diffusion-model `diffusion_model.<diffusers module>.lora_down.weight` (ComfyUI-style trainers
    for Qwen-Image and others whose models keep diffusers' module names)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, which = key.rsplit(".", 2)[0], key.rsplit(".", 2)[1]
        if fmt == "diffusion-model":
            stem = f"diffusion_model.{module}"
        else:
            block, rest = module.split(".", 2)[1], module.split(".", 2)[2]
            name = f"blocks.{block}.{_WAN_MODULES[rest]}"
            musubi = "lora_unet_" + name.replace(".", "_")
            stem = f"diffusion_model.{name}" if fmt == "wan-original" else musubi
        out[f"{stem}.{'lora_down' if which == 'lora_A' else 'lora_up'}.weight"] = value
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


def _save(path: Path, tensors: dict[str, torch.Tensor], metadata: Mapping[str, str] | None) -> None:
    if path.name.lower().endswith(PICKLE_SUFFIXES):
        torch.save(tensors, path)
        return
    import safetensors.torch

    safetensors.torch.save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})


def write_lora_file(
    path: str | os.PathLike,
    pipe_kind: PipeKind = "sd",
    fmt: FileFormat = "diffusers",
    rank: int = 4,
    alpha: float | None = None,
    seed: int = 0,
    *,
    components: Sequence[str] | None = None,
    targets: Sequence[str] = UNET_TARGETS,
    text_encoder_targets: Sequence[str] = TEXT_ENCODER_TARGETS,
    scale: float = DEFAULT_SCALE,
    metadata: Mapping[str, str] | None = None,
    pipe: Any = None,
) -> Path:
    """Write a seeded LoRA for the tiny `pipe_kind` pipeline (or `pipe`) in the given format.

    diffusers: `<Pipeline>.save_lora_weights` with `*_lora_adapter_metadata` (keeps alpha != rank).
    peft: one model's bare PEFT keys plus `lora_adapter_metadata`, as `unet.save_lora_adapter` writes.
    kohya: `peft_to_kohya`, with `.alpha` per module (the SDXL kind gets lora_te1_/lora_te2_).
    diffusers-old: attention-processor keys (`...processor.to_q_lora.down.weight`); alpha folded in.
    A .pt/.bin/.ckpt/.pth path is written with torch.save (no header: alpha is folded into lora_B
    where the format would have kept it in metadata). `metadata` adds safetensors header entries.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipe = pipe if pipe is not None else tiny_pipeline(pipe_kind)
    components = tuple(components) if components is not None else _default_components(pipe, fmt)
    sds, configs = _make_adapters(pipe, rank, alpha, components, targets, text_encoder_targets, seed, scale)
    pickled = path.name.lower().endswith(PICKLE_SUFFIXES)
    extra = dict(metadata or {})

    if fmt == "diffusers":
        if pickled:
            tensors = {
                f"{c}.{k}": v for c, sd in sds.items() for k, v in _fold_alpha(sd, rank, alpha).items()
            }
            _save(path, tensors, None)
        else:
            kwargs: dict[str, Any] = {}
            for c, sd in sds.items():
                kwargs[f"{c}_lora_layers"] = sd
                kwargs[f"{c}_lora_adapter_metadata"] = _config_dict(configs[c])
            type(pipe).save_lora_weights(str(path.parent), weight_name=path.name, **kwargs)
            if extra:
                _add_metadata(path, extra)
    elif fmt == "peft":
        if len(sds) != 1:
            raise ValueError(f"a PEFT adapter file holds one model; got components {sorted(sds)}")
        ((component, sd),) = sds.items()
        if pickled:
            _save(path, _fold_alpha(sd, rank, alpha), None)
        else:
            header = {
                "lora_adapter_metadata": json.dumps(
                    _config_dict(configs[component]), indent=2, sort_keys=True
                )
            }
            _save(path, dict(sd), {**header, **extra})
    elif fmt == "kohya":
        alphas = {
            c: {
                k.removesuffix(".lora_A.weight"): float(rank if alpha is None else alpha)
                for k in sd
                if k.endswith(".lora_A.weight")
            }
            for c, sd in sds.items()
        }
        _save(path, peft_to_kohya(sds, alphas, sdxl=pipe_kind == "sdxl" or "text_encoder_2" in sds), extra)
    elif fmt == "diffusers-old":
        tensors = {}
        for c, sd in sds.items():
            for k, v in _fold_alpha(sd, rank, alpha).items():
                module, which = k.rsplit(".", 2)[0], k.rsplit(".", 2)[1]
                direction = "down" if which == "lora_A" else "up"
                tensors[f"{c}.{_old_module_name(c, module)}.{direction}.weight"] = v
        _save(path, tensors, extra)
    elif fmt in ("wan-original", "wan-musubi", "diffusion-model"):
        if set(sds) != {"transformer"}:
            raise ValueError(f"a {fmt} file holds the transformer only; got components {sorted(sds)}")
        _save(path, _wan_layout(sds["transformer"], float(rank if alpha is None else alpha), fmt), extra)
    else:
        raise ValueError(f"unknown LoRA file format {fmt!r}")
    logger.debug("wrote %s LoRA %s (rank %d, alpha %s, seed %d)", fmt, path, rank, alpha, seed)
    return path


def _add_metadata(path: Path, extra: Mapping[str, str]) -> None:
    import safetensors.torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        old = dict(f.metadata() or {})
    tensors = safetensors.torch.load_file(str(path))
    safetensors.torch.save_file(tensors, str(path), metadata={**old, **extra})


class NotATensor:
    """A harmless object that torch.load(weights_only=True) must still refuse to unpickle."""

    def __init__(self) -> None:
        self.payload = "pickled objects can run code when loaded"


def write_bad_files(folder: str | os.PathLike) -> dict[str, Path]:
    """Files every LoRA reader must refuse or flag, written into `folder`; returns {kind: path}.

    truncated: a diffusers LoRA cut short; unrelated: a small conv net's weights (no LoRA keys);
    wrong_base: an SDXL-shaped LoRA, meant for the SD pipeline; nan: one lora_B holding NaN;
    pt: a valid LoRA pickled with torch.save (loads through weights_only); unsafe_pt: a pickle
    holding a non-tensor object; wrong_suffix: a LoRA under a .txt name; empty: a 0-byte file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    good = write_lora_file(folder / "truncated.safetensors", "sd", "diffusers", seed=1)
    data = good.read_bytes()
    good.write_bytes(data[: len(data) * 3 // 5])  # cut inside the tensor data, as an interrupted copy would
    out["truncated"] = good

    torch.manual_seed(0)  # fixed weights for the conv net: the file's bytes stay the same every run
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3))
    import safetensors.torch

    unrelated = folder / "unrelated_model.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(unrelated))
    out["unrelated"] = unrelated

    out["wrong_base"] = write_lora_file(folder / "sdxl_lora_for_sd.safetensors", "sdxl", "diffusers", seed=2)

    nan = write_lora_file(folder / "nan_lora.safetensors", "sd", "diffusers", seed=3)
    from safetensors import safe_open

    with safe_open(str(nan), framework="pt") as f:
        header = dict(f.metadata() or {})
    tensors = safetensors.torch.load_file(str(nan))
    first_b = min(k for k in tensors if ".lora_B." in k)
    tensors[first_b][0, 0] = float("nan")
    safetensors.torch.save_file(tensors, str(nan), metadata=header)
    out["nan"] = nan

    out["pt"] = write_lora_file(folder / "pickled_lora.pt", "sd", "diffusers", seed=4)

    unsafe = folder / "unsafe_pickle.pt"
    torch.save({"unet.x.lora_A.weight": torch.zeros(1, 1), "object": NotATensor()}, unsafe)
    out["unsafe_pt"] = unsafe

    wrong_suffix = folder / "lora.txt"
    wrong_suffix.write_bytes(good.read_bytes())
    out["wrong_suffix"] = wrong_suffix

    empty = folder / "empty.safetensors"
    empty.write_bytes(b"")
    out["empty"] = empty
    return out


# --- single-file checkpoints ------------------------------------------------------------------------


def _ldm_unet_names(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) pairs for an SD1-style UNet, from its block layout.

    The original (CompVis LDM) UNet numbers its layers in one flat sequence: `input_blocks.N` holds
    conv_in, then per down block `layers` ResNets (each with its attention at `.1`) and a downsampler;
    `output_blocks.N` holds per up block `layers + 1` ResNets (+ attention) and the upsampler after
    the last of them; the middle block is ResNet, attention, ResNet.
    """
    layers = config["layers_per_block"]
    n = len(config["block_out_channels"])
    pairs = [("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."),
             ("time_embedding.linear_2.", "time_embed.2."), ("conv_norm_out.", "out.0."),
             ("conv_out.", "out.2."),
             ("mid_block.resnets.0.", "middle_block.0."), ("mid_block.attentions.0.", "middle_block.1."),
             ("mid_block.resnets.1.", "middle_block.2.")]
    for i in range(n):
        for j in range(layers):
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{(layers + 1) * i + j + 1}.0."))
            pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{(layers + 1) * i + j + 1}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.",
                          f"input_blocks.{(layers + 1) * (i + 1)}.0.op."))
        has_attention = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(layers + 1):
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{(layers + 1) * i + j}.0."))
            pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{(layers + 1) * i + j}.1."))
        if i < n - 1:
            slot = 2 if has_attention else 1
            pairs.append((f"up_blocks.{i}.upsamplers.0.",
                          f"output_blocks.{(layers + 1) * i + layers}.{slot}."))
    return pairs


_LDM_RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
               ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."),
               ("conv_shortcut.", "skip_connection."))


def _rename(key: str, pairs: Sequence[tuple[str, str]]) -> str:
    for ours, theirs in pairs:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def _ldm_unet(unet: Any) -> dict[str, torch.Tensor]:
    pairs = sorted(_ldm_unet_names(unet.config), key=lambda p: -len(p[0]))
    out = {}
    for key, value in unet.state_dict().items():
        new = _rename(key, pairs)
        if ".resnets." in key or key.startswith("mid_block.resnets"):
            head, tail = new.split(".", 2)[:2], new.split(".", 2)[2]
            for ours, theirs in _LDM_RESNET:
                if tail.startswith(ours):
                    tail = theirs + tail[len(ours):]
                    break
            new = ".".join(head) + "." + tail
        out["model.diffusion_model." + new] = value
    return out


def _ldm_vae(vae: Any) -> dict[str, torch.Tensor]:
    """AutoencoderKL in the LDM layout: encoder.down.{i}.block.{j}, decoder.up numbered bottom-up,
    mid.block_1/attn_1/block_2 with 1x1-conv attention weights, nin_shortcut."""
    n = len(vae.config.block_out_channels)
    pairs = [("encoder.mid_block.resnets.0.", "encoder.mid.block_1."),
             ("encoder.mid_block.resnets.1.", "encoder.mid.block_2."),
             ("decoder.mid_block.resnets.0.", "decoder.mid.block_1."),
             ("decoder.mid_block.resnets.1.", "decoder.mid.block_2."),
             ("encoder.mid_block.attentions.0.", "encoder.mid.attn_1."),
             ("decoder.mid_block.attentions.0.", "decoder.mid.attn_1."),
             ("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for i in range(n):
        pairs.append((f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."))
        pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        pairs.append((f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n - 1 - i}.block."))
        pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    pairs.sort(key=lambda p: -len(p[0]))
    attention = {"group_norm.": "norm.", "to_q.": "q.", "to_k.": "k.", "to_v.": "v.",
                 "to_out.0.": "proj_out."}
    out = {}
    for key, value in vae.state_dict().items():
        try:
            new = _rename(key, pairs)
        except KeyError:
            new = key  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".attn_1." in new:
            head, tail = new.split(".attn_1.")
            for ours, theirs in attention.items():
                if tail.startswith(ours):
                    tail = theirs + tail[len(ours):]
            new = f"{head}.attn_1.{tail}"
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
                value = value.reshape(*value.shape, 1, 1)  # LDM uses 1x1 convolutions there
        out["first_stage_model." + new] = value
    return out


def write_single_file_checkpoint(pipe: Any, path: str | os.PathLike) -> Path:
    """An SD1-style pipeline as one original-layout (LDM) `.safetensors` checkpoint, plus the offline
    config diffusers needs to read it: `<checkpoint>.config/`, the pipeline's folder without weights.

    The layout is the one A1111 and ComfyUI checkpoints use (`model.diffusion_model.*`,
    `first_stage_model.*`, `cond_stage_model.transformer.text_model.*`).
    """
    import safetensors.torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {**_ldm_unet(pipe.unet), **_ldm_vae(pipe.vae)}
    for key, value in pipe.text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else "text_model." + key  # transformers 5 drops it
        tensors["cond_stage_model.transformer." + key] = value
    safetensors.torch.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    sidecar = path.with_name(path.name + ".config")
    pipe.save_pretrained(sidecar)
    for weights in sidecar.rglob("*"):
        if weights.suffix in (".safetensors", ".bin"):
            weights.unlink()
    return path


# --- quantized denoiser files ------------------------------------------------------------------------


def write_gguf_denoiser(model: torch.nn.Module, path: str | os.PathLike, quant_type: str = "Q8_0",
                        per_tensor: Mapping[str, str] | None = None, seed: int = 0) -> Path:
    """A model's state dict as a GGUF single file in diffusers' key layout, as city96's converter
    quantizes: 1-D tensors, tensors of <= 1024 elements and rows not made of whole blocks stay F32,
    every other matrix in `quant_type` (convolutions stay F32 too: diffusers quantizes Linear layers).

    `per_tensor`: {key suffix: type} for some tensors. A type gguf-py cannot quantize (the K-quants)
    gets seeded random blocks with small valid scales instead of the model's values: a real file
    of that type, for what needs one (diffusers reads and dequantizes them).
    """
    import gguf
    import numpy as np

    qtypes = gguf.GGMLQuantizationType
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch="loragraph-test")
    rng = np.random.default_rng(seed)
    for key, tensor in model.state_dict().items():
        values = tensor.detach().float().cpu().numpy()
        wanted = next((t for suffix, t in (per_tensor or {}).items() if key.endswith(suffix)), quant_type)
        qtype = qtypes[wanted]
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        # matrices only (diffusers quantizes Linear layers), in whole blocks per row
        if values.ndim != 2 or values.size <= 1024 or values.shape[-1] % block_size:
            writer.add_tensor(key, values.astype(np.float32))
            continue
        try:
            data = gguf.quants.quantize(values, qtype)
        except NotImplementedError:
            data = _random_k_quant_blocks(values.shape, qtype, rng)
        writer.add_tensor(key, data, raw_shape=data.shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _random_k_quant_blocks(shape: tuple[int, ...], qtype: Any, rng: Any) -> Any:
    """Bytes of a K-quant tensor: random blocks whose two leading fp16 scales are small and finite."""
    import gguf
    import numpy as np

    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block_size:
        raise ValueError(f"a {qtype.name} row must be a multiple of {block_size} wide, not {shape[-1]}")
    n_blocks = int(np.prod(shape)) // block_size
    blocks = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    scales = np.full((n_blocks, 2), 1e-4, dtype=np.float16).view(np.uint8)  # d and dmin
    if qtype.name == "Q6_K":  # Q6_K keeps its one fp16 scale at the end of the block
        blocks[:, -2:] = scales[:, :2]
    else:
        blocks[:, :4] = scales
    return blocks.reshape(*shape[:-1], shape[-1] // block_size * type_size)
