"""Pipelines: diffusers folders load offline, dtype/device resolve as documented, the LRU is bounded,
and a partly-landing LoRA warns the user with what did not land."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_pipeline, render
from loragraph import host
from loragraph.base.errors import NodeInputError
from loragraph.loaders import transitions as tr
from loragraph.loaders.engine import Engine
from loragraph.loaders.pipelines import PipelineCache, make_source, resolve_device, resolve_dtype

pytestmark = pytest.mark.lowend  # in .ci/run's run on the lowest diffusers/peft too


def test_auto_dtype_and_device():
    assert resolve_dtype("auto", "cuda") == "float16"
    assert resolve_dtype("auto", "cpu") == "float32"
    assert (resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
            or torch.backends.mps.is_available())
    if not torch.cuda.is_available():
        with pytest.raises(NodeInputError) as err:
            resolve_device("cuda")
        assert err.value.input_name == "device"


def test_diffusers_folder_loads_offline_and_renders_like_the_original(configured, tmp_path):
    raw = raw_pipeline()
    folder = configured / "diffusers" / "tiny-folder"
    if not folder.exists():
        raw.save_pretrained(folder)
    assert "tiny-folder" in host.list_diffusers_folders()
    engine = Engine()
    h = engine.load_pipeline("tiny-folder")
    assert h.source.kind == "diffusers" and h.source.components == ("unet", "text_encoder")
    ours = engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
    assert max_diff(ours, render(raw)) <= 1 / 255


@pytest.mark.parametrize(
    "model, message",
    [
        ("builtin:nope", "no built-in model"),
        ("missing-folder", "not in the diffusers folder"),
        ("../escape", "without '..'"),
        ("/abs/path", "relative"),
        ("sd15/missing.safetensors", "not in the checkpoints folder"),
    ],
)
def test_bad_model_names_fail_on_the_model_input(configured, model, message):
    with pytest.raises(NodeInputError) as err:
        make_source(model)
    assert err.value.input_name == "model"
    assert message in str(err.value)


def test_pipeline_lru_is_bounded_by_bytes():
    cache = PipelineCache(budget_bytes=100)
    a = make_source("builtin:tiny-sd")
    b = make_source("builtin:tiny-sdxl")
    cache.put(a, "A", 60)
    cache.put(b, "B", 60)  # over budget: the least recently used goes
    assert cache.get(a) is None and cache.get(b) == "B"
    cache.put(a, "A", 30)
    assert cache.get(b) == "B" and cache.get(a) == "A"


def test_partial_landing_warns_with_what_did_not_land(configured, tmp_path):
    loras = configured / "loras"
    tensors = safetensors.torch.load_file(str(loras / "sd_a.safetensors"))
    tensors["unet.down_blocks.9.attentions.0.proj.lora_A.weight"] = torch.zeros(4, 32)
    tensors["unet.down_blocks.9.attentions.0.proj.lora_B.weight"] = torch.zeros(32, 4)
    # no adapter metadata: alpha = rank, as in sd_a's own header
    safetensors.torch.save_file(tensors, str(loras / "partial.safetensors"))
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd")
    h = tr.add_adapter(base, engine.lora_spec(base, "partial.safetensors", 1.0, "p"))
    _, warnings = engine.realize(h)
    assert len(warnings) == 1 and "down_blocks.9" in warnings[0]
    raw = raw_pipeline()
    raw.load_lora_weights(str(loras), weight_name="sd_a.safetensors", adapter_name="p")
    ours = engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE)
    assert max_diff(ours, render(raw)) <= 1 / 255


def test_unrelated_names_that_land_nowhere_are_an_error(configured):
    loras = configured / "loras"
    safetensors.torch.save_file(
        {"unet.nowhere.lora_A.weight": torch.zeros(4, 8), "unet.nowhere.lora_B.weight": torch.zeros(8, 4)},
        str(loras / "nowhere.safetensors"),
    )
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd")
    from loragraph.loaders.reconcile import LoraOperationError

    with pytest.raises(LoraOperationError) as err:
        engine.realize(tr.add_adapter(base, engine.lora_spec(base, "nowhere.safetensors", 1.0, "n")))
    assert err.value.input_name == "lora_name"
    assert not any(engine.live(base.source).pipe.get_list_adapters().values())  # nothing half-loaded


def test_single_file_checkpoint_loads_offline_with_its_config_and_takes_a_lora(configured, tmp_path):
    """An original-layout (LDM) checkpoint, as A1111/ComfyUI keep them, read by from_single_file with
    the `<file>.config/` sidecar: same weights, same image, and a LoRA lands as on the diffusers pipe."""
    from loragraph.testing import write_single_file_checkpoint

    raw = raw_pipeline()
    ckpt = configured / "checkpoints" / "tiny_sd1.safetensors"
    if not ckpt.exists():
        write_single_file_checkpoint(raw, ckpt)
    assert "tiny_sd1.safetensors" in host.list_checkpoints()
    engine = Engine()
    h = engine.load_pipeline("tiny_sd1.safetensors")
    pipe = engine.live(h.source).pipe
    assert h.source.kind == "single_file" and type(pipe).__name__ == "StableDiffusionPipeline"
    assert h.source.components == ("unet", "text_encoder")
    for component in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(pipe, component).state_dict(), getattr(raw, component).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs), (
            component)
    assert max_diff(engine.sample(h, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE), render(raw)) <= 1 / 255

    h2 = tr.add_adapter(h, engine.lora_spec(h, "sd_a.safetensors", 0.8, "a"))
    raw.load_lora_weights(str(configured / "loras"), weight_name="sd_a.safetensors", adapter_name="a")
    raw.set_adapters(["a"], [0.8])
    assert max_diff(engine.sample(h2, PROMPT, "", 1, STEPS, 7.0, SIZE, SIZE), render(raw)) <= 1 / 255


def test_single_file_checkpoint_without_a_config_says_where_to_put_one(configured, tmp_path):
    bare = configured / "checkpoints" / "no_config.safetensors"
    bare.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({"model.diffusion_model.out.2.bias": torch.zeros(4)}, str(bare))
    with pytest.raises(NodeInputError) as err:
        Engine().load_pipeline("no_config.safetensors")
    assert err.value.input_name == "model"
    assert "no_config.safetensors.config" in str(err.value) and "offline" in str(err.value)
