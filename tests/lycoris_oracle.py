"""LyCORIS files made by the LyCORIS library itself on the tiny pipelines, and the producer's images.

The producer's own forward pass is the oracle (not `lycoris.utils.merge`, which applies alpha/dim
twice for LoHa and low-rank LoKr halves in 4.1.3): its network is rebuilt from the saved file with
`create_network_from_weights` and applied with the multiplier, as kohya sd-scripts does at inference.
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import render

# Which layers the test networks adapt: attention and MLP blocks, resnets, up/down samplers and the
# conv_in (a 3x3 conv for LoCon/Tucker); LyCORIS's default preset also names time_embedding twice.
PRESET = {
    "enable_conv": True,
    "unet_target_module": ["Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D"],
    "unet_target_name": ["conv_in"],
    "text_encoder_target_module": ["CLIPAttention", "CLIPMLP"],
    "text_encoder_target_name": [],
}
# Spread of the random weights added to LyCORIS's init: large enough that every algorithm changes
# the tiny pipeline's image by tens of pixels, small enough to stay far from saturation.
NOISE = 0.1


def _preset(**override) -> str:
    import lycoris.kohya as lk

    lk.PRESET["loragraph-test"] = {**PRESET, **override}
    return "loragraph-test"


def _text_encoders(pipe):
    tes = [pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) is not None
                                 else [])
    return tes if len(tes) > 1 else tes[0]


def make_network(pipe, algo: str, seed: int, dim: int = 4, alpha: float = 2, preset: dict | None = None,
                 **kwargs):
    """A LyCORIS network on `pipe` (applied), its weights drawn from `seed`; `preset` overrides PRESET."""
    from lycoris.kohya import create_network

    torch.manual_seed(seed)
    net = create_network(1.0, dim, alpha, pipe.vae, _text_encoders(pipe), pipe.unet, algo=algo,
                         preset=_preset(**(preset or {})), warn_on_unmatched=False, **kwargs)
    net.apply_to(_text_encoders(pipe), pipe.unet, True, True)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * NOISE)
    return net


def write_file(path: Path, pipe_builder, algo: str, seed: int, **kwargs) -> Path:
    """Save a LyCORIS network made on a fresh pipeline from `pipe_builder` to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    net = make_network(pipe_builder(), algo, seed, **kwargs)
    net.save_weights(str(path), torch.float32, {"ss_network_module": "lycoris.kohya"})
    return path


def merge_files(path: Path, parts: dict[Path, str]) -> Path:
    """One file from several: each part's modules whose name contains its pattern (a preset's mix)."""
    from safetensors.torch import load_file, save_file

    out: dict[str, torch.Tensor] = {}
    for src, pattern in parts.items():
        taken = {k.split(".")[0] for k in out}  # a module comes whole from the first part naming it
        for k, v in load_file(str(src)).items():
            if pattern in k.split(".")[0] and k.split(".")[0] not in taken:
                out[k] = v
    save_file(out, str(path))
    return path


def producer_apply(pipe, path: Path, multiplier: float, text_encoder: bool = True):
    """LyCORIS's network rebuilt from the file and applied to `pipe` with `multiplier`."""
    from lycoris.kohya import LycorisNetworkKohya, create_network_from_weights

    # the network's constructor walks the class's preset: ours, whatever a make_network before set
    # (LyCORIS's default names time_embedding twice and fails); modules come from the file's keys
    LycorisNetworkKohya.apply_preset(PRESET)
    tes = _text_encoders(pipe)
    net, _ = create_network_from_weights(multiplier, str(path), pipe.vae, tes, pipe.unet)
    net.apply_to(tes, pipe.unet, text_encoder, True)
    return net


def producer_image(pipe_builder, path: Path, multiplier: float) -> torch.Tensor:
    pipe = pipe_builder()
    pipe.set_progress_bar_config(disable=True)
    producer_apply(pipe, path, multiplier)
    return render(pipe)


def to_sgm_names(src: Path, dst: Path, pipe) -> Path:
    """The file with its UNet modules under kohya sd-scripts' SDXL (SGM/LDM) names, tensors unchanged."""
    from loragraph.testing import _LDM_RESNET, _ldm_unet_names
    from safetensors.torch import load_file, save_file

    pairs = sorted(_ldm_unet_names(pipe.unet.config), key=lambda p: -len(p[0]))
    paths = {"lora_unet_" + n.replace(".", "_"): n for n, _ in pipe.unet.named_modules() if n}
    out = {}
    for key, value in load_file(str(src)).items():
        module, _, suffix = key.partition(".")
        if module in paths:
            path = paths[module] + "."
            ours, theirs = next(p for p in pairs if path.startswith(p[0]))
            rest = path[len(ours):]
            rest = next((b + rest[len(a):] for a, b in _LDM_RESNET if rest.startswith(a)), rest)
            module = "lora_unet_" + (theirs + rest).rstrip(".").replace(".", "_")
        out[f"{module}.{suffix}"] = value
    save_file(out, str(dst))
    return dst



def scale_whole_delta(modules, multiplier: float) -> None:
    """The contract's strength rule (docs/CONTRACT.md) on the producer's own forward pass: each adapted
    layer outputs base + multiplier * (producer(x) - base), the producer's modules applied at
    multiplier 1.

    A layer is linear in its weight, so this is W0 + multiplier * (W1 - W0) with W1 the producer's
    patched weight; for the DoRA family it is not LyCORIS's multiplier (which interpolates the
    normalisation and keeps the low-rank update whole); for the others the two agree.
    (`get_merged_weight` is not used: in 4.1.3 it fails on LoHa convs and scales LoHa twice.)
    """
    for m in modules:
        assert m.multiplier == 1.0
        layer, full = m.org_module[0], m.forward

        def forward(x, *args, _m=m, _full=full, **kwargs):
            base = _m.org_forward(x, *args, **kwargs)
            return base + multiplier * (_full(x, *args, **kwargs) - base)

        layer.forward = forward


def linear_image(pipe_builder, path: Path, multiplier: float) -> torch.Tensor:
    """The image of `scale_whole_delta` on a fresh pipeline, the network rebuilt from the file."""
    pipe = pipe_builder()
    pipe.set_progress_bar_config(disable=True)
    net = producer_apply(pipe, path, 1.0)
    scale_whole_delta(net.unet_loras + net.text_encoder_loras, multiplier)
    return render(pipe)
