"""The Sampler on other model families (docs/CONTRACT.md, Sampler): video and image-conditioned
pipelines through the executor, checked against the raw pipeline called with exactly the contract's
keyword arguments, offline on the CPU.

Video pipelines return [videos x frames, H, W, 3]; SaveImage writes one PNG per frame and
SaveAnimation one animated WebP. Every family is a built-in tiny model (builtin_models/catalog.py);
the tiny Flux is also saved as a diffusers folder, as a user's model would be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import max_diff
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.builtin_models.catalog import BUILTIN_MODELS, BUILTINS
from loragraph.builtin_models.tiny_wan import build_tiny_wan
from loragraph.graph import Executor, load_workflow
from loragraph.loaders.engine import Engine, call_parameters
from loragraph.testing import write_lora_file
from PIL import Image
from test_workflows import EXAMPLES, REGISTRY, CaptureImage, Workflow, run

TOL = 2 / 255
PROMPT = "a red circle on a white background"
STEPS = 2
WAN = "builtin:tiny-wan"
WAN22 = "builtin:tiny-wan22"
WAN_SIZE = 32  # a multiple of 16: the Wan VAE's 8x times the transformer's 2x2 patches
WAN_FRAMES = 5  # the first frame, then one latent frame per 4 (the VAE's temporal factor)
KONTEXT = "builtin:tiny-kontext"
FLUX = "tiny-flux"
FLUX_SIZE = 32


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> Path:
    """DIR/diffusers/tiny-flux and loras/wan_t.safetensors (a peft-made LoRA on the tiny Wan's
    transformer, saved by WanPipeline.save_lora_weights)."""
    from loragraph.builtin_models.tiny_flux import build_tiny_flux

    root = tmp_path_factory.mktemp("family-models")
    wan = build_tiny_wan()
    build_tiny_flux().save_pretrained(root / "diffusers" / FLUX)
    write_lora_file(root / "loras" / "wan_t.safetensors", fmt="diffusers", rank=4, seed=41, pipe=wan,
                    components=("transformer",), scale=1.5)
    return root


@pytest.fixture()
def executor(family_models, tmp_path) -> Executor:
    host.configure(models_dir=family_models, output_dir=tmp_path / "output")
    return Executor(REGISTRY)


def raw(models: Path, name: str) -> Any:
    """A fresh raw pipeline: a built-in's own builder, else the saved folder."""
    if name.startswith("builtin:"):
        return BUILTIN_MODELS[name.removeprefix("builtin:")][0]()
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(models / "diffusers" / name, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_call(pipe: Any, seed: int = 1, **kwargs: Any) -> torch.Tensor:
    """The pipeline called by keyword, np output, CPU generator: IMAGE, videos flattened to frames."""
    out = pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs)
    array = np.asarray(out.frames if hasattr(out, "frames") else out.images)
    return torch.from_numpy(array.reshape(-1, *array.shape[-3:])).float()


def wan_sampler(wf: Workflow, pipe: list, **overrides: Any) -> list:
    inputs = {"pipeline": pipe, "prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": STEPS,
              "cfg": 5.0, "width": WAN_SIZE, "height": WAN_SIZE, "scheduler": "default", "batch_size": 2,
              "frames": WAN_FRAMES}
    return wf.add("Sampler", **{**inputs, **overrides})


def wan_raw_kwargs(batch_size: int = 2) -> dict[str, Any]:
    """What the contract says WanPipeline receives: no num_images_per_prompt, no true_cfg_scale."""
    return {"prompt": PROMPT, "negative_prompt": "", "num_inference_steps": STEPS, "guidance_scale": 5.0,
            "width": WAN_SIZE, "height": WAN_SIZE, "num_frames": WAN_FRAMES,
            "num_videos_per_prompt": batch_size}


def capture(wf: Workflow, images: list) -> str:
    return wf.add("CaptureImage", images=images)[0]


# --- video: Wan 2.1 and Wan 2.2 ------------------------------------------------------------------------


@pytest.mark.parametrize("model", [WAN, WAN22])
def test_wan_returns_videos_x_frames_that_match_the_raw_pipeline(executor, family_models, model):
    wf = Workflow()
    out = capture(wf, wan_sampler(wf, wf.add("LoadPipeline", model=model, dtype="float32", device="cpu")))
    images = run(executor, wf)[out]
    reference = raw_call(raw(family_models, model), **wan_raw_kwargs())
    assert images.shape == (2 * WAN_FRAMES, WAN_SIZE, WAN_SIZE, 3) and images.dtype == torch.float32
    assert max_diff(images, reference) <= TOL
    # each video's frames in order: the frames of one video differ from each other and from the other's
    assert max_diff(images[0], images[1]) > 0.01 and max_diff(images[0], images[WAN_FRAMES]) > 0.01


def test_save_image_writes_one_png_per_frame_and_save_animation_one_webp(executor, tmp_path):
    wf = Workflow()
    frames = wan_sampler(wf, wf.add("LoadPipeline", model=WAN, dtype="float32", device="cpu"), batch_size=1)
    wf.add("SaveImage", images=frames, filename_prefix="wan")
    wf.add("SaveAnimation", images=frames, filename_prefix="wan_anim", fps=8)
    out = capture(wf, frames)
    result = executor.execute(wf.nodes, extra_data={"extra_pnginfo": {"workflow": {"w": 1}}})
    assert result.ok, result.error_lines()
    images = CaptureImage.captured[out]
    folder = tmp_path / "output"
    pngs = sorted(folder.glob("wan_*.png"))
    assert [p.name for p in pngs] == [f"wan_{i:05}_.png" for i in range(1, WAN_FRAMES + 1)]
    for png, frame in zip(pngs, images, strict=True):
        saved = torch.from_numpy(np.array(Image.open(png).convert("RGB"))).float() / 255
        assert max_diff(saved, frame) <= 1 / 255
    (webp,) = folder.glob("*.webp")
    assert webp.name == "wan_anim_00001_.webp"
    animation = Image.open(webp)
    assert animation.format == "WEBP" and animation.n_frames == WAN_FRAMES
    for i, frame in enumerate(images):
        animation.seek(i)
        animation.load()
        assert animation.info["duration"] == 1000 // 8
        saved = torch.from_numpy(np.array(animation.convert("RGB"))).float() / 255
        assert max_diff(saved, frame) <= 1 / 255  # lossless: the frame as SaveImage quantizes it
    assert animation.info["loop"] == 0
    exif = animation.getexif()
    assert exif[0x0110].startswith("prompt:") and json.loads(exif[0x0110][len("prompt:"):]) == wf.nodes
    assert exif[0x010F] == 'workflow:{"w": 1}'
    save_node = next(k for k, v in wf.nodes.items() if v["class_type"] == "SaveAnimation")
    assert result.outputs[save_node] == {
        "images": [{"filename": webp.name, "subfolder": "", "type": "output"}], "animated": (True,)}


def test_an_image_on_a_pipeline_that_takes_none_is_an_error_naming_image(family_models, tmp_path):
    host.configure(models_dir=family_models, output_dir=tmp_path / "output")
    engine = Engine()
    handle = engine.load_pipeline(WAN, device="cpu")
    with pytest.raises(NodeInputError) as refused:
        engine.sample(handle, PROMPT, "", 1, STEPS, 5.0, WAN_SIZE, WAN_SIZE, frames=WAN_FRAMES,
                      image=torch.zeros(1, WAN_SIZE, WAN_SIZE, 3))
    assert refused.value.input_name == "image" and "image" in str(refused.value)


def test_progress_per_step_and_cancel_between_steps_on_a_video_pipeline(executor):
    wf = Workflow()
    sampler = wan_sampler(wf, wf.add("LoadPipeline", model=WAN, dtype="float32", device="cpu"), steps=3)
    capture(wf, sampler)
    events: list[tuple[str, dict]] = []
    executor.bus.subscribe(lambda event, data: events.append((event, data)))
    result = executor.execute(wf.nodes, prompt_id="whole")
    assert result.ok, result.error_lines()
    progress = [(d["value"], d["max"]) for e, d in events if e == "progress" and d["node"] == sampler[0]]
    assert progress == [(1, 3), (2, 3), (3, 3)]

    def cancel_at_step_2(event: str, data: dict) -> None:
        if event == "progress" and data["node"] == sampler[0] and data["value"] == 2:
            executor.interrupt()

    events.clear()
    executor.bus.subscribe(cancel_at_step_2)
    reseeded = {**wf.nodes[sampler[0]], "inputs": {**wf.nodes[sampler[0]]["inputs"], "seed": 2}}
    result = executor.execute({**wf.nodes, sampler[0]: reseeded}, prompt_id="cancelled")
    executor.bus.unsubscribe(cancel_at_step_2)
    assert result.interrupted and result.error["node_type"] == "Sampler"
    assert [d["value"] for e, d in events if e == "progress" and d["node"] == sampler[0]] == [1, 2]


# --- image input and true CFG: Flux Kontext, Flux ---------------------------------------------------


def flux_sampler(wf: Workflow, pipe: list, size: int = FLUX_SIZE, **overrides: Any) -> list:
    inputs = {"pipeline": pipe, "prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": STEPS,
              "cfg": 3.5, "width": size, "height": size, "scheduler": "default", "batch_size": 1}
    return wf.add("Sampler", **{**inputs, **overrides})


def flux_raw_kwargs(size: int = FLUX_SIZE, **extra: Any) -> dict[str, Any]:
    """What FluxPipeline / FluxKontextPipeline receive: true_cfg_scale too, no num_frames."""
    return {"prompt": PROMPT, "negative_prompt": "", "num_inference_steps": STEPS, "guidance_scale": 3.5,
            "true_cfg_scale": 1.0, "width": size, "height": size, "num_images_per_prompt": 1, **extra}


def as_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(np.clip(255.0 * image.numpy(), 0, 255).astype(np.uint8))


def test_kontext_takes_the_first_image_of_the_batch_by_keyword(executor, family_models):
    size = BUILTINS[KONTEXT.removeprefix("builtin:")].native_size
    wf = Workflow()
    pipe = wf.add("LoadPipeline", model=KONTEXT, dtype="float32", device="cpu")
    first = flux_sampler(wf, pipe, size, batch_size=2)
    edited = capture(wf, flux_sampler(wf, pipe, size, seed=3, image=first))
    plain = capture(wf, flux_sampler(wf, pipe, size, seed=3))
    made = capture(wf, first)
    images = run(executor, wf)
    kontext = raw(family_models, KONTEXT)
    assert max_diff(images[made], raw_call(kontext, **flux_raw_kwargs(size, num_images_per_prompt=2))) <= TOL
    reference = raw_call(kontext, seed=3, **flux_raw_kwargs(size, image=as_pil(images[made][0])))
    assert max_diff(images[edited], reference) <= TOL
    assert max_diff(images[edited], images[plain]) > 0.01  # the image conditions the render


def test_true_cfg_reaches_a_pipeline_that_takes_it(executor, family_models):
    wf = Workflow()
    pipe = wf.add("LoadPipeline", model=FLUX, dtype="float32", device="cpu")
    plain = capture(wf, flux_sampler(wf, pipe, negative_prompt="blue"))
    guided = capture(wf, flux_sampler(wf, pipe, negative_prompt="blue", true_cfg=4.0))
    images = run(executor, wf)
    flux = raw(family_models, FLUX)
    assert max_diff(images[plain], raw_call(flux, **flux_raw_kwargs(negative_prompt="blue"))) <= TOL
    reference = raw_call(flux, **flux_raw_kwargs(negative_prompt="blue", true_cfg_scale=4.0))
    assert max_diff(images[guided], reference) <= TOL
    assert max_diff(images[guided], images[plain]) > 0.01


# --- a LoRA on a video pipeline -----------------------------------------------------------------------


def test_a_lora_on_the_wan_transformer_matches_diffusers_and_unfuses_to_the_base_bits(executor,
                                                                                       family_models):
    wf = Workflow()
    base_pipe = wf.add("LoadPipeline", model=WAN, dtype="float32", device="cpu")
    base = capture(wf, wan_sampler(wf, base_pipe))
    lora = wf.add("LoadLoRA", pipeline=base_pipe, lora_name="wan_t.safetensors", strength=0.8,
                  adapter_name="t")
    with_lora = capture(wf, wan_sampler(wf, lora))
    fused = wf.add("FuseLoRA", pipeline=lora, fuse_unet=True, fuse_text_encoder=True, lora_scale=1.0,
                   safe_fusing=False, adapter_names="")
    fused_out = capture(wf, wan_sampler(wf, fused))
    unfused = wf.add("UnfuseLoRA", pipeline=fused, unfuse_unet=True, unfuse_text_encoder=True)
    back = capture(wf, wan_sampler(wf, wf.add("UnloadLoRA", pipeline=unfused)))
    images = run(executor, wf)

    wan = raw(family_models, WAN)
    assert max_diff(images[base], raw_call(wan, **wan_raw_kwargs())) <= TOL
    wan.load_lora_weights(str(family_models / "loras"), weight_name="wan_t.safetensors", adapter_name="t")
    wan.set_adapters(["t"], [0.8])
    reference = raw_call(wan, **wan_raw_kwargs())
    assert max_diff(images[with_lora], reference) <= TOL
    assert max_diff(images[with_lora], images[base]) > 0.01  # the LoRA is no silent no-op
    wan.fuse_lora(components=["transformer"], lora_scale=1.0)
    assert max_diff(images[fused_out], raw_call(wan, **wan_raw_kwargs())) <= TOL
    assert torch.equal(images[back], images[base])


def test_the_wan_example_workflow_writes_its_frames_and_one_animation(tmp_path):
    host.configure(models_dir=EXAMPLES / "models", output_dir=tmp_path / "output")
    result = Executor(REGISTRY).execute(load_workflow(EXAMPLES / "workflows" / "wan_video.json"))
    assert result.ok, result.error_lines()
    output = tmp_path / "output"
    written = sorted(p.relative_to(output).as_posix() for p in output.rglob("*.*"))
    assert written == [*(f"wan_video/frame_{i:05}_.png" for i in range(1, 6)), "wan_video/video_00001_.webp"]
    assert Image.open(tmp_path / "output" / "wan_video" / "video_00001_.webp").n_frames == 5


# --- what each family's pipeline receives --------------------------------------------------------------

COMMON = ("prompt", "num_inference_steps", "guidance_scale", "width", "height", "generator", "output_type",
          "callback_on_step_end")
IMAGES = (*COMMON, "negative_prompt", "num_images_per_prompt")
VIDEOS = (*COMMON, "negative_prompt", "num_frames", "num_videos_per_prompt")
# The contract's list, read against each class's own __call__ (diffusers 0.42): SD 1.x/SDXL/SD3 get
# what they always got, Flux true_cfg_scale at its default too, Flux2 klein no negative_prompt.
RECEIVES = {
    "StableDiffusionPipeline": IMAGES,
    "StableDiffusionXLPipeline": IMAGES,
    "StableDiffusion3Pipeline": IMAGES,
    "FluxPipeline": (*IMAGES, "true_cfg_scale"),
    "FluxKontextPipeline": (*IMAGES, "true_cfg_scale", "image"),
    "QwenImagePipeline": (*IMAGES, "true_cfg_scale"),
    "ZImagePipeline": IMAGES,
    "ChromaPipeline": IMAGES,
    "WanPipeline": VIDEOS,
    "LTXPipeline": VIDEOS,
    "HunyuanVideoPipeline": (*VIDEOS, "true_cfg_scale"),
    "Flux2KleinPipeline": (*COMMON, "num_images_per_prompt", "image"),
    "Lumina2Pipeline": IMAGES,
    "SanaPipeline": IMAGES,
    "CogView4Pipeline": IMAGES,
}
OFFERED = {"prompt", "negative_prompt", "num_inference_steps", "guidance_scale", "true_cfg_scale", "width",
           "height", "num_frames", "num_images_per_prompt", "num_videos_per_prompt", "image", "generator",
           "output_type", "callback_on_step_end"}


@pytest.mark.parametrize("pipeline_class", sorted(RECEIVES))
def test_each_family_is_offered_exactly_the_contract_arguments_its_call_takes(pipeline_class):
    import diffusers

    cls = getattr(diffusers, pipeline_class, None)
    if cls is None:
        pytest.skip(f"diffusers {diffusers.__version__} has no {pipeline_class}")
    assert call_parameters(cls) & OFFERED == set(RECEIVES[pipeline_class])


# Every built-in family beyond the first four (SD 1.x, SDXL, Flux and the demo model, whose calls the
# other test files check): a new one is sampled here without a list to update.
FAMILIES = tuple(n for n in BUILTINS if n not in ("tiny-sd", "tiny-sdxl", "tiny-flux", "shapes"))


def builtin_or_skip(name: str) -> Any:
    if name not in BUILTINS:
        pytest.skip(f"no builtin:{name} yet")
    return BUILTINS[name]


def family_inputs(name: str, **overrides: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the Sampler's inputs, the raw call's keyword arguments): the contract's list, of what the
    family's class takes (RECEIVES), at the builtin's native size and frame count."""
    builtin = builtin_or_skip(name)
    size, frames = builtin.native_size, builtin.frames or 1
    inputs = {"prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": STEPS, "cfg": 4.0, "width": size,
              "height": size, "scheduler": "default", "batch_size": 2, "true_cfg": 1.0, "frames": frames,
              **overrides}
    values = {"prompt": inputs["prompt"], "negative_prompt": inputs["negative_prompt"],
              "num_inference_steps": inputs["steps"], "guidance_scale": inputs["cfg"],
              "true_cfg_scale": inputs["true_cfg"], "width": size, "height": size, "num_frames": frames,
              "num_images_per_prompt": inputs["batch_size"], "num_videos_per_prompt": inputs["batch_size"]}
    assert builtin.pipeline_class in RECEIVES, f"RECEIVES: say what {builtin.pipeline_class} takes"
    receives = RECEIVES[builtin.pipeline_class]
    return inputs, {k: v for k, v in values.items() if k in receives}


@pytest.mark.parametrize("name", FAMILIES)
def test_a_family_samples_as_its_raw_pipeline_called_with_the_contract_arguments(executor, name):
    inputs, kwargs = family_inputs(name)
    wf = Workflow()
    out = capture(wf, wf.add("Sampler", pipeline=wf.add("LoadPipeline", model=f"builtin:{name}",
                                                         dtype="float32", device="cpu"), **inputs))
    images = run(executor, wf)[out]
    reference = raw_call(BUILTIN_MODELS[name][0](), **kwargs)
    frames = inputs["frames"] if "num_frames" in kwargs else 1
    assert images.shape == (2 * frames, inputs["height"], inputs["width"], 3)
    assert max_diff(images, reference) <= TOL
    assert max_diff(images[0], images[frames]) > 0.01  # two different renders (or videos), not one twice


def test_qwen_image_gets_true_cfg_and_it_changes_the_image(executor):
    guided_inputs, guided_kwargs = family_inputs("tiny-qwenimage", negative_prompt="blue", true_cfg=4.0)
    plain_inputs, _ = family_inputs("tiny-qwenimage", negative_prompt="blue")
    wf = Workflow()
    pipe = wf.add("LoadPipeline", model="builtin:tiny-qwenimage", dtype="float32", device="cpu")
    guided = capture(wf, wf.add("Sampler", pipeline=pipe, **guided_inputs))
    plain = capture(wf, wf.add("Sampler", pipeline=pipe, **plain_inputs))
    images = run(executor, wf)
    assert guided_kwargs["true_cfg_scale"] == 4.0
    reference = raw_call(BUILTIN_MODELS["tiny-qwenimage"][0](), **guided_kwargs)
    assert max_diff(images[guided], reference) <= TOL
    assert max_diff(images[guided], images[plain]) > 0.01


def test_a_weight_schedule_on_a_video_pipeline_is_diffusers_step_callback_recipe(executor, family_models):
    steps, per_step = 4, [1.0, 1.0, 0.0, 0.0]  # hold: strength 1 until half the steps, then 0
    wf = Workflow()
    lora = wf.add("LoadLoRA", pipeline=wf.add("LoadPipeline", model=WAN, dtype="float32", device="cpu"),
                  lora_name="wan_t.safetensors", strength=1.0, adapter_name="t")
    scheduled = wf.add("ScheduleAdapterWeights", pipeline=lora, adapter_name="t", keyframes="0:1, 0.5:0",
                       interpolation="hold")
    out = capture(wf, wan_sampler(wf, scheduled, steps=steps))
    constant = capture(wf, wan_sampler(wf, lora, steps=steps))
    images = run(executor, wf)

    wan = raw(family_models, WAN)
    wan.load_lora_weights(str(family_models / "loras"), weight_name="wan_t.safetensors", adapter_name="t")
    wan.set_adapters(["t"], [per_step[0]])

    def on_step_end(pipe: Any, i: int, _t: Any, _kwargs: dict) -> dict:
        if i + 1 < steps:
            pipe.set_adapters(["t"], [per_step[i + 1]])
        return {}

    reference = raw_call(wan, **{**wan_raw_kwargs(), "num_inference_steps": steps},
                         callback_on_step_end=on_step_end)
    assert max_diff(images[out], reference) <= TOL
    assert max_diff(images[out], images[constant]) > 0.01
