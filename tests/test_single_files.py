"""Single-file checkpoints offline: the shipped configs (loaders/single_file_configs/) are the published
models' (parameter counts, tokenizer ids), a checkpoint's family is read from its keys, a full-size
SD 1.x checkpoint loads with nothing but the package, and every file that cannot load says what it needs.

The hub is off in every test (conftest sets HF_HUB_OFFLINE): anything diffusers tried to fetch would fail.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_pipeline
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.loaders import single_file as sf
from loragraph.loaders.engine import Engine
from single_file_layouts import (
    build_tiny_sd3_for_single_files,
    build_tiny_sdxl_two_widths,
    flux_checkpoint,
    random_fp16,
    sd1_checkpoint,
    sd1_layout,
    sd3_checkpoint,
    sdxl_checkpoint,
    shapes,
)

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

    folder = sf.config_folder(family)
    library, cls_name = json.loads((folder / "model_index.json").read_text())[component]
    with torch.device("meta"):  # buffers too: SD3.5 Medium's position table alone is 0.9 GB
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


# --- SD 1.x at full size, in the original (LDM) layout A1111 and ComfyUI checkpoints have --------------


def test_a_full_size_sd1_checkpoint_loads_offline_from_the_shipped_config(tmp_path):
    """SD 1.5's shapes, random fp16 weights, the original layout: LoadPipeline detects SD 1.x from the
    keys and builds the pipeline with the shipped config, tokenizer and scheduler; every weight of every
    component is the file's, bit for bit. The test's cost on 2 cores: about 25 s, most of it writing the
    2.1 GB file, and 3 GB of memory at peak."""
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
        ckpt.unlink()  # pytest keeps the last runs' tmp_path folders: not 2 GB each


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


# --- SDXL (SGM layout): at full size on the meta device, and as a tiny pipeline ------------------------


def test_a_full_size_sdxl_checkpoint_reads_as_sdxl_and_fits_the_shipped_config():
    """SDXL base at full size on the meta device (no memory): its layout is detected as `xl_base`,
    holds every part, and diffusers' own converters turn it into exactly the tensors the shipped
    configs' UNet, VAE and both text encoders have."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    parts = {c: meta_component("xl_base", c) for c in ("unet", "vae", "text_encoder", "text_encoder_2")}
    ckpt = sdxl_checkpoint(**parts)
    assert sf.detect_family(ckpt) == "xl_base"
    assert sf.missing_parts("xl_base", ckpt) == ([], [])
    unet = convert_ldm_unet_checkpoint(dict(ckpt), dict(parts["unet"].config))
    assert shapes(unet) == shapes(parts["unet"].state_dict())
    vae = convert_ldm_vae_checkpoint(dict(ckpt), dict(parts["vae"].config))
    assert shapes(vae) == shapes(parts["vae"].state_dict())
    clip_l = {k.removeprefix("text_model."): v for k, v in convert_ldm_clip_checkpoint(dict(ckpt)).items()
              if k.startswith("text_model.")}
    assert shapes(clip_l) == shapes(parts["text_encoder"].state_dict())
    clip_g = convert_open_clip_checkpoint(parts["text_encoder_2"], dict(ckpt),
                                          prefix="conditioner.embedders.1.model.")
    assert shapes(clip_g) == shapes(parts["text_encoder_2"].state_dict())


def save_as_diffusers_and_single_file(pipe, models: Path, name: str, checkpoint: dict) -> None:
    """The same weights twice: `diffusers/<name>/` and `checkpoints/<name>.safetensors` with its
    `.config/` (the folder without weights: tiny shapes are no shipped family's)."""
    folder = models / "diffusers" / name
    pipe.save_pretrained(folder)
    tensors = {k: v.contiguous() for k, v in checkpoint.items()}
    ckpt = write(models / "checkpoints" / f"{name}.safetensors", tensors)
    sidecar = ckpt.with_name(ckpt.name + ".config")
    pipe.save_pretrained(sidecar)
    for weights in sidecar.rglob("*"):
        if weights.suffix in (".safetensors", ".bin"):
            weights.unlink()


def test_a_tiny_sdxl_single_file_renders_as_its_diffusers_folder(checkpoints):
    pipe = build_tiny_sdxl_two_widths()
    models = checkpoints.parent
    save_as_diffusers_and_single_file(
        pipe, models, "tiny_xl", sdxl_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2))
    engine = Engine()
    folder, single = engine.load_pipeline("tiny_xl"), engine.load_pipeline("tiny_xl.safetensors")
    assert type(engine.live(single.source).pipe).__name__ == "StableDiffusionXLPipeline"
    assert single.source.components == folder.source.components
    images = [engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE) for h in (folder, single)]
    assert max_diff(*images) <= 2 / 255
    other = engine.sample(folder, "a blue square", "", 1, STEPS, 7.0, SIZE, SIZE)
    assert max_diff(images[0], other) > 2 / 255  # the comparison can fail: the prompt reaches the image


# --- SD3 (MMDiT names, text_encoders.*): at full size on the meta device, and as a tiny pipeline -------


@pytest.mark.parametrize("family", ["sd3", "sd35_medium", "sd35_large"])


def test_a_full_size_sd3_checkpoint_reads_as_its_family_and_fits_the_shipped_config(family):
    """SD3 Medium, SD3.5 Medium (dual attention, qk norms, 384 positions) and SD3.5 Large at full size
    on the meta device: detected as their own family, every part present, and diffusers' converters
    give exactly the shipped configs' tensors."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_sd3_t5_checkpoint_to_diffusers,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    parts = {c: meta_component(family, c)
             for c in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")}
    ckpt = sd3_checkpoint(**parts)
    assert sf.detect_family(ckpt) == family
    assert sf.missing_parts(family, ckpt) == ([], [])
    transformer = convert_sd3_transformer_checkpoint_to_diffusers(dict(ckpt))
    assert shapes(transformer) == shapes(parts["transformer"].state_dict())
    assert shapes(convert_ldm_vae_checkpoint(dict(ckpt), dict(parts["vae"].config))) == shapes(
        parts["vae"].state_dict())
    for component, prefix in (("text_encoder", "text_encoders.clip_l.transformer."),
                              ("text_encoder_2", "text_encoders.clip_g.transformer.")):
        converted = convert_ldm_clip_checkpoint(dict(ckpt), prefix)
        expected = shapes(parts[component].state_dict())
        if component == "text_encoder":
            expected.pop("text_projection.weight")  # diffusers sets it to the identity
        assert shapes(converted) == expected, component
    t5 = shapes(parts["text_encoder_3"].state_dict())
    t5.pop("encoder.embed_tokens.weight")
    assert shapes(convert_sd3_t5_checkpoint_to_diffusers(dict(ckpt))) == t5
    no_t5 = {k: v for k, v in ckpt.items() if not k.startswith("text_encoders.t5xxl.")}
    assert sf.missing_parts(family, no_t5) == ([], ["text_encoder_3"])  # loads with text_encoder_3=None


def test_a_tiny_sd3_single_file_renders_as_its_diffusers_folder(checkpoints):
    pipe = build_tiny_sd3_for_single_files()
    save_as_diffusers_and_single_file(
        pipe, checkpoints.parent, "tiny_sd3",
        sd3_checkpoint(pipe.transformer, pipe.vae, pipe.text_encoder, pipe.text_encoder_2))
    engine = Engine()
    folder, single = engine.load_pipeline("tiny_sd3"), engine.load_pipeline("tiny_sd3.safetensors")
    assert type(engine.live(single.source).pipe).__name__ == "StableDiffusion3Pipeline"
    assert single.source.components == folder.source.components
    images = [engine.sample(h, PROMPT, "", 1, STEPS, 7.0, 32, 32) for h in (folder, single)]
    assert max_diff(*images) <= 2 / 255
    other = engine.sample(folder, "a blue square", "", 1, STEPS, 7.0, 32, 32)
    assert max_diff(images[0], other) > 2 / 255  # the comparison can fail: the prompt reaches the image


# --- Flux (BFL names, ComfyUI's all-in-one file): at full size on the meta device -----------------------


@pytest.mark.parametrize("family", ["flux-dev", "flux-schnell"])


def test_a_full_size_flux_checkpoint_reads_as_its_family_and_fits_the_shipped_config(family):
    """Flux.1 dev and schnell at full size on the meta device, ComfyUI's all-in-one layout: detected
    (the guidance embedder tells them apart), every part present, diffusers' converters give exactly
    the shipped configs' tensors; the bare transformer is refused as no whole pipeline."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
        convert_ldm_clip_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_sd3_t5_checkpoint_to_diffusers,
    )

    parts = {c: meta_component(family, c) for c in ("transformer", "vae", "text_encoder", "text_encoder_2")}
    ckpt = flux_checkpoint(**parts)
    assert sf.detect_family(ckpt) == family
    assert sf.missing_parts(family, ckpt) == ([], [])
    transformer = convert_flux_transformer_checkpoint_to_diffusers(dict(ckpt))
    assert shapes(transformer) == shapes(parts["transformer"].state_dict())
    assert shapes(convert_ldm_vae_checkpoint(dict(ckpt), dict(parts["vae"].config))) == shapes(
        parts["vae"].state_dict())
    clip = {k.removeprefix("text_model."): v
            for k, v in convert_ldm_clip_checkpoint(dict(ckpt), "text_encoders.clip_l.transformer.").items()}
    assert shapes(clip) == shapes(parts["text_encoder"].state_dict())
    t5 = shapes(parts["text_encoder_2"].state_dict())
    t5.pop("encoder.embed_tokens.weight")
    assert shapes(convert_sd3_t5_checkpoint_to_diffusers(dict(ckpt))) == t5
    bare = {k: v for k, v in ckpt.items() if k.startswith("model.diffusion_model.")}
    assert sf.missing_parts(family, bare) == (["vae", "text_encoder", "text_encoder_2"], [])


# --- tiny SD 1.x in the real LDM names; validation's header-only check --------------------------------


def test_a_tiny_sd1_single_file_renders_as_its_diffusers_folder(checkpoints):
    """builtin tiny-sd in the LDM names real SD 1.x files use (in_layers, skip_connection, ...), loaded
    with its `.config/` (tiny shapes): the same image as the diffusers folder of the same weights."""
    pipe = raw_pipeline()
    layout = sd1_checkpoint(pipe.unet, pipe.vae, pipe.text_encoder)
    assert sf.detect_family(layout) is None  # two UNet levels, not SD 1.x's four: no shipped config fits
    save_as_diffusers_and_single_file(pipe, checkpoints.parent, "tiny_sd1", layout)
    engine = Engine()
    folder, single = engine.load_pipeline("tiny_sd1"), engine.load_pipeline("tiny_sd1.safetensors")
    assert single.source.components == folder.source.components == ("unet", "text_encoder")
    images = [engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE) for h in (folder, single)]
    assert max_diff(*images) <= 2 / 255
    other = engine.sample(folder, "a blue square", "", 1, STEPS, 7.0, SIZE, SIZE)
    assert max_diff(images[0], other) > 2 / 255  # the comparison can fail: the prompt reaches the image


def test_config_problem_answers_from_the_header_alone(checkpoints):
    """What validation can ask before any model loads: None for a loadable file (a shipped family with
    every part, or any file with its own config beside it), the load error's sentence otherwise; and
    the pipeline class it will be."""
    mystery = write(checkpoints / "mystery.safetensors", {"encoder.layers.0.weight": torch.zeros(2, 2)})
    problem = sf.config_problem(mystery, "mystery.safetensors")
    assert problem is not None and "no model family diffusers knows" in problem
    (checkpoints / "mystery.safetensors.config").mkdir()
    assert sf.config_problem(mystery, "mystery.safetensors") is None
    bare_flux = write(checkpoints / "flux.safetensors",
                      {"double_blocks.0.img_attn.norm.key_norm.scale": torch.ones(128)})
    assert "without vae, text_encoder, text_encoder_2" in sf.config_problem(bare_flux, "flux.safetensors")
    # an SD 1.x header with all three parts passes (shapes are not checked here: diffusers does that)
    sd1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(1),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(1),
           "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}
    assert sf.config_problem(write(checkpoints / "sd1.safetensors", sd1), "sd1.safetensors") is None
    assert sf.checkpoint_pipeline_class(checkpoints / "sd1.safetensors") == "StableDiffusionPipeline"
    assert sf.checkpoint_pipeline_class(mystery) is None  # its .config/ has no model_index.json
    (checkpoints / "mystery.safetensors.config" / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionXLPipeline"}')
    assert sf.checkpoint_pipeline_class(mystery) == "StableDiffusionXLPipeline"
    del sd1["first_stage_model.decoder.conv_in.weight"]
    assert "SD 1.x checkpoint without vae" in sf.config_problem(
        write(checkpoints / "sd1_novae.safetensors", sd1), "sd1_novae.safetensors")


def test_a_ckpt_is_read_as_plain_tensors_only(checkpoints):
    """A `.ckpt` (A1111's older checkpoints, a `state_dict` inside) is read with torch.load's
    `weights_only` for its names; a pickle that would run code is refused, without torch's advice."""
    sd1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(1),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(1)}
    checkpoints.mkdir(parents=True)
    torch.save({"state_dict": sd1, "global_step": 1}, checkpoints / "old.ckpt")
    assert sf.detect_family(sf.read_header(checkpoints / "old.ckpt")) == "v1"
    # torch's pre-1.6 format cannot be memory-mapped: read whole
    torch.save({"state_dict": sd1}, checkpoints / "legacy.ckpt", _use_new_zipfile_serialization=False)
    assert sf.detect_family(sf.read_header(checkpoints / "legacy.ckpt")) == "v1"
    assert "SD 1.x checkpoint without text_encoder" in load_error("old.ckpt")
    # a Path is a global weights_only refuses, as it would any class a pickle names
    torch.save({"state_dict": sd1, "hook": Path("x")}, checkpoints / "code.ckpt")
    message = load_error("code.ckpt")
    assert "not a readable checkpoint (UnpicklingError)" in message and "weights_only=False" not in message


def test_a_file_that_does_not_fit_its_family_config_says_so(checkpoints):
    """SD 1.x's keys, every part present, but not SD 1.x's tensors (a pruned or resized model): the
    error is diffusers', prefixed with the file and the family tried, and says what would load it."""
    sd1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(1),
           "first_stage_model.decoder.conv_in.weight": torch.zeros(1),
           "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(1)}
    write(checkpoints / "odd.safetensors", sd1)
    message = load_error("odd.safetensors")
    assert message.startswith("model: odd.safetensors: could not load the checkpoint with SD 1.x's config: ")
    assert "a model of other shapes needs its own config" in message and "odd.safetensors.config" in message
