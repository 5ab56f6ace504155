"""Single-file checkpoints offline: the shipped configs (loaders/single_file_configs/) are the published
models' (parameter counts, tokenizer ids), a checkpoint's family is read from its keys, a full-size
SD 1.x checkpoint loads with nothing but the package, and every file that cannot load says what it needs.

The hub is off in every test (conftest sets HF_HUB_OFFLINE): anything diffusers tried to fetch would fail.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.loaders import single_file as sf
from loragraph.loaders.engine import Engine
from loragraph.testing import _ldm_unet, _ldm_vae

# Published parameter counts (the models' own cards and papers; diffusers' configs give the same).
PUBLISHED = {
    ("v1", "unet"): 859_520_964,
    ("v1", "vae"): 83_653_863,
    ("v1", "text_encoder"): 123_060_480,  # CLIP ViT-L/14's text tower
    ("xl_base", "unet"): 2_567_463_684,
    ("xl_base", "text_encoder_2"): 694_659_840,  # OpenCLIP ViT-bigG/14's, with its projection
    ("sd3", "transformer"): 2_028_328_000,
    ("sd3", "text_encoder_3"): 4_762_310_656,  # T5 v1.1 XXL's encoder
    ("flux-dev", "transformer"): 11_901_408_320,
    # schnell is dev without the guidance embedder (two linears: 256 -> 3072 -> 3072)
    ("flux-schnell", "transformer"): 11_901_408_320 - (256 * 3072 + 3072) - (3072 * 3072 + 3072),
}


def meta_component(family: str, component: str):
    """A component built from the shipped config on the meta device: its shapes, no memory."""
    import diffusers
    import transformers
    from accelerate import init_empty_weights

    folder = sf.config_folder(family)
    library, cls_name = json.loads((folder / "model_index.json").read_text())[component]
    with init_empty_weights():
        if library == "diffusers":
            cls = getattr(diffusers, cls_name)
            return cls.from_config(cls.load_config(folder, subfolder=component))
        config = transformers.AutoConfig.from_pretrained(folder / component)
        return getattr(transformers, cls_name)(config)


def unique_params(module) -> int:
    # T5's `shared` and `encoder.embed_tokens` are one tensor once tied; on meta they are two
    return sum(p.numel() for name, p in module.named_parameters() if name != "encoder.embed_tokens.weight")


@pytest.mark.parametrize(("family", "component"), sorted(PUBLISHED))
def test_shipped_configs_build_the_published_models(family, component):
    assert unique_params(meta_component(family, component)) == PUBLISHED[(family, component)]


def test_every_shipped_family_has_each_component_config_and_its_tokenizers():
    for family in sf.FAMILIES:
        folder = sf.config_folder(family)
        tokenizers = sf.tokenizers(family)
        for component, entry in json.loads((folder / "model_index.json").read_text()).items():
            if component.startswith("_") or not isinstance(entry, list) or entry[0] is None:
                continue
            if component.startswith("tokenizer"):
                assert type(tokenizers[component]).__name__.startswith(entry[1].removesuffix("Fast")), family
            else:
                config = "scheduler_config.json" if component == "scheduler" else "config.json"
                assert (folder / component / config).is_file(), (family, component)


def test_shipped_tokenizers_give_clip_and_t5_ids():
    """CLIP's and T5's own ids for a prompt; OpenCLIP's tokenizer pads with "!" (id 0), CLIP's with
    end-of-text, and both stop at CLIP's 77 positions."""
    tok = sf.tokenizers("sd3")
    ids = [49406, 320, 1125, 539, 320, 2368, 49407]  # <start> a photo of a cat <end>
    assert tok["tokenizer"]("a photo of a cat").input_ids == ids
    assert tok["tokenizer_2"]("a photo of a cat").input_ids == ids
    padded = tok["tokenizer"]("a photo of a cat", padding="max_length", truncation=True,
                              max_length=tok["tokenizer"].model_max_length).input_ids
    assert len(padded) == 77 and padded[7:] == [49407] * 70
    padded_2 = tok["tokenizer_2"]("a photo of a cat", padding="max_length", max_length=77).input_ids
    assert padded_2[7:] == [0] * 70
    assert tok["tokenizer_3"]("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]


# --- the original (LDM) layout of SD 1.x, as A1111 and ComfyUI checkpoints have it --------------------

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


def test_a_full_size_sd1_checkpoint_loads_offline_from_the_shipped_config(tmp_path):
    """SD 1.5's shapes, random fp16 weights, the original layout: LoadPipeline detects SD 1.x from the
    keys and builds the pipeline with the shipped config, tokenizer and scheduler; every weight of every
    component is the file's, bit for bit. Measured here (2 shared cores): 17 s to make and write the 2.1 GB
    file, 2.5 s to load it, 3 GB peak memory."""
    layout = sd1_layout(meta_component("v1", "unet"), meta_component("v1", "vae"),
                        meta_component("v1", "text_encoder"))
    tensors = random_fp16(layout)
    ckpt = tmp_path / "models" / "checkpoints" / "sd15_full.safetensors"
    ckpt.parent.mkdir(parents=True)
    safetensors.torch.save_file(tensors, str(ckpt))
    assert sf.detect_family(sf.read_header(ckpt)) == "v1"
    assert ckpt.stat().st_size > 2_000_000_000  # 1.07 billion fp16 weights
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=tmp_path / "models", output_dir=tmp_path / "out")
    try:
        engine = Engine()
        handle = engine.load_pipeline("sd15_full.safetensors", dtype="float16")
        pipe = engine.live(handle.source).pipe
        assert type(pipe).__name__ == "StableDiffusionPipeline"
        assert type(pipe.scheduler).__name__ == "PNDMScheduler"
        assert handle.source.components == ("unet", "text_encoder")
        assert pipe.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        states = {c: getattr(pipe, c).state_dict() for c in ("unet", "vae", "text_encoder")}
        for original, (name, _) in layout.items():
            component, key = name.split(".", 1)
            loaded = states[component][key]
            assert loaded.dtype == torch.float16, name
            assert torch.equal(loaded.flatten(), tensors[original].flatten()), name
        assert sum(len(s) for s in states.values()) == len(layout)  # nothing loaded from elsewhere
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])


# --- files that cannot load say what they need ---------------------------------------------------------

def write(path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(tensors, str(path))
    return path


@pytest.fixture()
def checkpoints(tmp_path):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=tmp_path / "models", output_dir=tmp_path / "out")
    yield tmp_path / "models" / "checkpoints"
    host.configure(models_dir=before[0], output_dir=before[1])


def load_error(name: str) -> str:
    with pytest.raises(NodeInputError) as err:
        Engine().load_pipeline(name)
    assert err.value.input_name == "model"
    return str(err.value)


def test_a_file_of_no_known_family_says_a_config_folder_is_needed(checkpoints):
    write(checkpoints / "mystery.safetensors", {"encoder.layers.0.weight": torch.zeros(2, 2)})
    message = load_error("mystery.safetensors")
    assert "no model family diffusers knows" in message and "SD 1.x, SDXL" in message
    assert "mystery.safetensors.config" in message and "diffusers/" in message


def test_a_family_with_no_shipped_config_is_named(checkpoints):
    """SD 2.x (1024-wide cross-attention): diffusers knows it, the package ships no config for it."""
    key = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"
    write(checkpoints / "sd21.safetensors", {key: torch.zeros(320, 1024, dtype=torch.float16)})
    message = load_error("sd21.safetensors")
    assert "diffusers reads it as 'v2'" in message and "sd21.safetensors.config" in message


def test_a_denoiser_only_flux_file_says_what_it_lacks(checkpoints):
    """A bare Flux transformer (BFL's flux1-schnell.safetensors layout) is no whole pipeline."""
    write(checkpoints / "flux1-schnell.safetensors",
          {"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(128)})
    message = load_error("flux1-schnell.safetensors")
    assert "Flux.1 schnell checkpoint without vae, text_encoder, text_encoder_2" in message
    assert "diffusion_models/" in message


def test_a_file_that_is_not_safetensors_is_named_as_such(checkpoints):
    checkpoints.mkdir(parents=True)
    (checkpoints / "notes.safetensors").write_text("not weights at all")
    assert "not a safetensors file" in load_error("notes.safetensors")


def test_detection_reads_sd3_and_flux_variants_from_header_shapes():
    """The header view answers diffusers' detection like a loaded state dict: shapes decide SD3 vs
    SD3.5 Medium, and the guidance embedder Flux dev vs schnell."""
    sd3 = {"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": [9216]}
    pos = "model.diffusion_model.pos_embed"
    assert sf.detect_family(sf.HeaderView({**sd3, pos: [1, 36864, 1536]})) == "sd3"  # 192 x 192 positions
    assert sf.detect_family(sf.HeaderView({**sd3, pos: [1, 147456, 1536]})) == "sd35_medium"  # 384 x 384
    flux = {"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": [128],
            "model.diffusion_model.img_in.weight": [3072, 64]}
    assert sf.detect_family(sf.HeaderView(flux)) == "flux-schnell"
    guidance = {"model.diffusion_model.guidance_in.in_layer.bias": [3072]}
    assert sf.detect_family(sf.HeaderView({**flux, **guidance})) == "flux-dev"
