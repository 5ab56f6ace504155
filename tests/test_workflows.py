"""Whole workflows through the executor, checked against raw diffusers (CONTRACT: Semantics, Bad input).

Each contract semantics line is a workflow whose Sampler output (the IMAGE tensor, captured by a
test-only output node) must equal what the named diffusers calls give on a fresh tiny pipeline,
within 1/255. Then sequences of workflows in one process (what a server or `loragraph run A B` does),
every kind of bad input, and the shipped example workflows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS, max_diff, raw_pipeline, render
from diffusers.loaders.lora_base import disable_lora_for_text_encoder, enable_lora_for_text_encoder
from loragraph import host
from loragraph.cli import main
from loragraph.graph import Executor, apply_overrides, load_workflow
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

TOL = 1 / 255
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class CaptureImage:
    """Test-only output node: keeps the IMAGE tensor it gets (cached or not), by node id."""

    captured: ClassVar[dict[str, torch.Tensor]] = {}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE", {})}, "hidden": {"unique_id": "UNIQUE_ID"}}

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")  # never cached: every run captures what its Sampler gives, fresh or cached

    def run(self, images, unique_id=None):
        CaptureImage.captured[unique_id] = images.clone()
        return {"ui": {"captured": [unique_id]}}


REGISTRY = {**HEADLESS_NODE_CLASS_MAPPINGS, "CaptureImage": CaptureImage}


class Workflow:
    """Builds an API-format prompt: `add` returns the link to the new node's first output."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}

    def add(self, class_type: str, **inputs: Any) -> list:
        node_id = str(len(self.nodes) + 1)
        self.nodes[node_id] = {"class_type": class_type, "inputs": inputs}
        return [node_id, 0]

    def pipeline(self, model: str = "builtin:tiny-sd") -> list:
        return self.add("LoadPipeline", model=model, dtype="float32", device="cpu")

    def lora(self, pipe: list, name: str, strength: float = 1.0, adapter: str = "") -> list:
        return self.add("LoadLoRA", pipeline=pipe, lora_name=name, strength=strength, adapter_name=adapter)

    def sample(self, pipe: list, seed: int = 1, **overrides: Any) -> str:
        """A Sampler with the raw oracle's settings (conftest.render) and a capture; returns its id."""
        inputs = {"pipeline": pipe, "prompt": PROMPT, "negative_prompt": "", "seed": seed, "steps": STEPS,
                  "cfg": 7.0, "width": SIZE, "height": SIZE, "scheduler": "default", "batch_size": 1}
        images = self.add("Sampler", **{**inputs, **overrides})
        return self.add("CaptureImage", images=images)[0]


def run(executor: Executor, wf: Workflow | dict) -> dict[str, torch.Tensor]:
    """Execute; on success return {capture node id: IMAGE}."""
    CaptureImage.captured.clear()
    result = executor.execute(wf.nodes if isinstance(wf, Workflow) else wf)
    assert result.ok, result.error_lines()
    return dict(CaptureImage.captured)


@pytest.fixture()
def executor(configured) -> Executor:
    return Executor(REGISTRY)


def raw_with(models_dir: Path, *loras: tuple[str, str], kind: str = "sd"):
    """A fresh raw pipeline with LoRA files loaded by diffusers itself, under the given adapter names."""
    pipe = raw_pipeline(kind)
    for name, adapter in loras:
        if name == "sd_c.safetensors":  # a bare PEFT file (one model's adapter): the model's own loader
            pipe.unet.load_lora_adapter(str(models_dir / "loras" / name), prefix=None, adapter_name=adapter)
        else:
            pipe.load_lora_weights(str(models_dir / "loras"), weight_name=name, adapter_name=adapter)
    return pipe


# --- contract semantics, one workflow each ----------------------------------------------------------


def test_load_lora_leaves_every_loaded_adapter_active_at_its_strength(executor, configured):
    wf = Workflow()
    p = wf.pipeline()
    two = wf.sample(wf.lora(wf.lora(p, "sd_a.safetensors", 0.7), "sd_b.safetensors", 1.0))
    peft_only = wf.sample(wf.lora(p, "sd_c.safetensors", 0.5, "c"))
    images = run(executor, wf)

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"))
    raw.set_adapters(["sd_a", "sd_b"], [0.7, 1.0])  # diffusers alone would leave only sd_b active
    assert max_diff(images[two], render(raw)) <= TOL
    raw = raw_with(configured, ("sd_c.safetensors", "c"))
    raw.set_adapters(["c"], [0.5])
    assert max_diff(images[peft_only], render(raw)) <= TOL
    assert max_diff(images[two], images[peft_only]) > 0.01


def test_set_adapter_weights_is_set_adapters_with_text_encoder_and_block_weights(executor, configured):
    wf = Workflow()
    both = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors"), "sd_b.safetensors")
    blocks = {"unet": {"down": 0.2, "mid": 1.0, "up": 0.5}}
    weighted = wf.add("SetAdapterWeights", pipeline=both, adapter_names="sd_b", weights="0.6",
                      text_encoder_weights="0.3", block_weights=json.dumps(blocks))
    out = wf.sample(weighted)
    images = run(executor, wf)

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"))
    raw.set_adapters(["sd_b"], [{**blocks, "text_encoder": 0.3}])  # sd_a stays loaded but inactive
    assert max_diff(images[out], render(raw)) <= TOL


def test_fuse_lora_is_fuse_lora_with_components_scale_safety_and_names(executor, configured):
    wf = Workflow()
    both = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors"), "sd_b.safetensors", 0.5)
    fused = wf.add("FuseLoRA", pipeline=both, fuse_unet=True, fuse_text_encoder=False, lora_scale=0.6,
                   safe_fusing=True, adapter_names="sd_a")
    out = wf.sample(fused)
    images = run(executor, wf)

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"))
    raw.set_adapters(["sd_a", "sd_b"], [1.0, 0.5])
    raw.fuse_lora(components=["unet"], lora_scale=0.6, safe_fusing=True, adapter_names=["sd_a"])
    assert max_diff(images[out], render(raw)) <= TOL


def test_unfuse_lora_restores_the_original_weights_bit_for_bit(executor, configured):
    wf = Workflow()
    p = wf.pipeline()
    base = wf.sample(p)
    loaded = wf.lora(p, "sd_a.safetensors", 0.8)
    plain = wf.sample(loaded)
    fused = wf.add("FuseLoRA", pipeline=loaded, fuse_unet=True, fuse_text_encoder=True, lora_scale=0.6,
                   safe_fusing=False, adapter_names="")
    unfused = wf.add("UnfuseLoRA", pipeline=fused, unfuse_unet=True, unfuse_text_encoder=True)
    after_unfuse = wf.sample(unfused)
    after_unload = wf.sample(wf.add("UnloadLoRA", pipeline=unfused))
    images = run(executor, wf)

    raw = raw_pipeline()
    assert max_diff(images[base], render(raw)) <= TOL
    raw.load_lora_weights(str(configured / "loras"), weight_name="sd_a.safetensors", adapter_name="sd_a")
    raw.set_adapters(["sd_a"], [0.8])
    assert max_diff(images[after_unfuse], render(raw)) <= TOL
    # diffusers' own unfuse_lora subtracts the delta again; ours restores the saved weights:
    assert max_diff(images[after_unfuse], images[plain]) == 0
    assert max_diff(images[after_unload], images[base]) == 0


def test_text_encoder_toggle_is_disable_and_enable_lora_for_text_encoder(executor, configured):
    wf = Workflow()
    loaded = wf.lora(wf.pipeline(), "sd_a.safetensors")
    off = wf.add("TextEncoderLoRAToggle", pipeline=loaded, enabled=False, text_encoder="all")
    on = wf.add("TextEncoderLoRAToggle", pipeline=off, enabled=True, text_encoder="all")
    image_off, image_on = wf.sample(off), wf.sample(on)
    images = run(executor, wf)

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"))
    raw.set_adapters(["sd_a"], [1.0])
    disable_lora_for_text_encoder(raw.text_encoder)
    assert max_diff(images[image_off], render(raw)) <= TOL
    enable_lora_for_text_encoder(raw.text_encoder)
    assert max_diff(images[image_on], render(raw)) <= TOL
    assert max_diff(images[image_on], images[image_off]) > 0.001


def test_delete_adapters_and_unload_lora(executor, configured):
    wf = Workflow()
    both = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors"), "sd_b.safetensors", 0.5)
    deleted = wf.add("DeleteAdapters", pipeline=both, adapter_names="sd_a")
    only_b = wf.sample(deleted)
    unloaded = wf.sample(wf.add("UnloadLoRA", pipeline=deleted))
    images = run(executor, wf)

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"))
    raw.set_adapters(["sd_a", "sd_b"], [1.0, 0.5])
    raw.delete_adapters("sd_a")
    assert max_diff(images[only_b], render(raw)) <= TOL
    raw.unload_lora_weights()
    assert max_diff(images[unloaded], render(raw)) <= TOL


def test_set_lora_device_to_the_pipelines_own_device_changes_nothing(executor, configured):
    wf = Workflow()
    loaded = wf.lora(wf.pipeline(), "sd_a.safetensors")
    before = wf.sample(loaded)
    after = wf.sample(wf.add("SetLoRADevice", pipeline=loaded, adapter_names="", device="cpu"))
    auto = wf.sample(wf.add("SetLoRADevice", pipeline=loaded, adapter_names="sd_a", device="auto"))
    images = run(executor, wf)
    assert max_diff(images[before], images[after]) == 0
    assert max_diff(images[before], images[auto]) == 0


def test_save_lora_writes_a_file_diffusers_loads_to_the_same_image(executor, configured):
    wf = Workflow()
    # The active weight (0.4) and the fusion must not be baked into the saved file.
    loaded = wf.lora(wf.pipeline(), "sd_b.safetensors", 0.9)
    weighted = wf.add("SetAdapterWeights", pipeline=loaded, adapter_names="", weights="0.4",
                      text_encoder_weights="", block_weights="")
    fused = wf.add("FuseLoRA", pipeline=weighted, fuse_unet=True, fuse_text_encoder=True, lora_scale=1.0,
                   safe_fusing=False, adapter_names="")
    for fmt in ("kohya", "diffusers"):
        wf.add("SaveLoRA", pipeline=fused, adapter_name="sd_b", filename_prefix=f"saved/{fmt}", format=fmt)
    result = executor.execute(wf.nodes)
    assert result.ok, result.error_lines()
    shown = sorted((ui["loras"][0]["subfolder"], ui["loras"][0]["filename"])
                   for ui in result.outputs.values())
    assert shown == [("saved", "diffusers_00001_.safetensors"), ("saved", "kohya_00001_.safetensors")]
    saved = sorted((host.output_dir() / "loras" / "saved").glob("*.safetensors"))
    assert [p.name for p in saved] == [name for _, name in shown]

    raw = raw_with(configured, ("sd_b.safetensors", "orig"))
    for path in saved:
        raw.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=path.name.split("_")[0])
    raw.set_adapters(["orig"], [0.7])
    expected = render(raw)
    for adapter in ("kohya", "diffusers"):
        raw.set_adapters([adapter], [0.7])
        assert max_diff(render(raw), expected) <= TOL, adapter


def test_lora_info_reports_loaded_active_and_fused_state(executor, configured):
    wf = Workflow()
    loaded = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors", 0.7), "sd_c.safetensors")
    weighted = wf.add("SetAdapterWeights", pipeline=loaded, adapter_names="sd_a", weights="0.3",
                      text_encoder_weights="", block_weights="")
    fused = wf.add("FuseLoRA", pipeline=weighted, fuse_unet=True, fuse_text_encoder=False, lora_scale=1.0,
                   safe_fusing=False, adapter_names="")
    info_id = wf.add("LoRAInfo", pipeline=fused)[0]
    result = executor.execute(wf.nodes)
    assert result.ok, result.error_lines()
    info = json.loads(result.outputs[info_id]["text"][0])
    assert info["active_adapters"] == ["sd_a"]
    assert info["list_adapters"] == {"unet": ["sd_a", "sd_c"], "text_encoder": ["sd_a"]}
    assert info["adapters"]["sd_a"]["strength"] == 0.7
    assert info["adapters"]["sd_a"]["weights"] == {"unet": 0.3, "text_encoder": 0.3}
    assert info["adapters"]["sd_a"]["fused"] == ["unet"]
    assert info["adapters"]["sd_c"]["active"] is False and info["adapters"]["sd_c"]["rank"] == {"unet": 8}


def test_sampler_is_the_pipeline_call_with_a_cpu_generator(executor, configured):
    wf = Workflow()
    p = wf.pipeline()
    settings = {"prompt": "a blue square", "negative_prompt": "blurry", "seed": 9, "cfg": 4.5,
                "batch_size": 2}
    default = wf.sample(p, **settings)
    euler = wf.sample(p, **{**settings, "scheduler": "euler"})
    images = run(executor, wf)

    def call(pipe):
        out = pipe("a blue square", negative_prompt="blurry", num_inference_steps=STEPS, guidance_scale=4.5,
                   width=SIZE, height=SIZE, num_images_per_prompt=2,
                   generator=torch.Generator("cpu").manual_seed(9), output_type="np")
        return torch.from_numpy(out.images).float()

    image = images[default]
    assert image.dtype == torch.float32 and tuple(image.shape) == (2, SIZE, SIZE, 3)  # ComfyUI's IMAGE
    assert image.min() >= 0 and image.max() <= 1
    raw = raw_pipeline()
    assert max_diff(image, call(raw)) <= TOL
    from diffusers import EulerDiscreteScheduler

    raw.scheduler = EulerDiscreteScheduler.from_config(raw.scheduler.config)
    assert max_diff(images[euler], call(raw)) <= TOL


# --- sequences in one process -------------------------------------------------------------------


def test_a_lora_workflow_then_one_without_it_gives_the_base_image(executor, configured):
    with_lora = Workflow()
    lora_image = with_lora.sample(with_lora.lora(with_lora.pipeline(), "sd_a.safetensors"))
    without = Workflow()
    base_image = without.sample(without.pipeline())
    first = run(executor, with_lora)[lora_image]
    second = run(executor, without)[base_image]
    assert max_diff(second, render(raw_pipeline())) <= TOL
    assert max_diff(first, second) > 0.01


def test_a_fused_workflow_run_twice_gives_the_same_image(executor, configured):
    wf = Workflow()
    both = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors", 0.8), "sd_b.safetensors", 0.6)
    out = wf.sample(wf.add("FuseLoRA", pipeline=both, fuse_unet=True, fuse_text_encoder=True, lora_scale=1.0,
                           safe_fusing=False, adapter_names=""))
    first = run(executor, wf)[out]
    # A fresh executor has no cached outputs: every node runs again on the already fused pipeline.
    second = run(Executor(REGISTRY), wf)[out]
    assert max_diff(first, second) == 0
    # Same executor, another seed and back: only the Sampler re-runs; the LoRA is not fused twice.
    reseeded = apply_overrides(wf.nodes, [f"{int(out) - 1}.seed=2"])
    run(executor, reseeded)
    assert max_diff(run(executor, wf)[out], first) == 0

    raw = raw_with(configured, ("sd_a.safetensors", "sd_a"), ("sd_b.safetensors", "sd_b"))
    raw.set_adapters(["sd_a", "sd_b"], [0.8, 0.6])
    raw.fuse_lora(components=["unet", "text_encoder"], adapter_names=["sd_a", "sd_b"])
    assert max_diff(first, render(raw)) <= TOL


def test_two_samplers_off_one_pipeline_see_only_their_own_loras(executor, configured):
    wf = Workflow()
    p = wf.pipeline()
    base = wf.sample(p, seed=4)
    lora = wf.sample(wf.lora(p, "sd_b.safetensors", 0.9), seed=4)
    images = run(executor, wf)
    raw = raw_pipeline()
    assert max_diff(images[base], render(raw, seed=4)) <= TOL
    raw.load_lora_weights(str(configured / "loras"), weight_name="sd_b.safetensors", adapter_name="sd_b")
    raw.set_adapters(["sd_b"], [0.9])
    assert max_diff(images[lora], render(raw, seed=4)) <= TOL


def test_a_failed_lora_operation_leaves_the_pipeline_as_it_was(executor, configured):
    loaded = Workflow()
    good = loaded.sample(loaded.lora(loaded.pipeline(), "sd_a.safetensors"))
    reference = run(executor, loaded)[good]
    # A NaN file is refused when loaded (safe_fusing's own rollback is tested in test_engine_guarantees
    # with a spec made past that check); a truncated one before anything runs, from its header.
    for bad_name, safe, status in (("bad/nan_lora.safetensors", True, "error"),
                                   ("bad/truncated.safetensors", False, "invalid")):
        wf = Workflow()
        both = wf.lora(wf.lora(wf.pipeline(), "sd_a.safetensors"), bad_name)
        wf.sample(wf.add("FuseLoRA", pipeline=both, fuse_unet=True, fuse_text_encoder=True, lora_scale=1.0,
                         safe_fusing=safe, adapter_names=""))
        result = executor.execute(wf.nodes)
        assert result.status == status
        failed = result.error["node_type"] if status == "error" else result.node_errors["3"]["class_type"]
        assert failed == "LoadLoRA"
    # A new executor: nothing cached, the Sampler runs on whatever the live pipeline holds now.
    assert max_diff(run(Executor(REGISTRY), loaded)[good], reference) == 0


# --- bad input: a non-zero exit, an error naming node and input, no image -------------------------


def _base_prompt() -> dict:
    wf = Workflow()
    pipe = wf.lora(wf.pipeline(), "sd_a.safetensors")  # node 2
    fused = wf.add("FuseLoRA", pipeline=pipe, fuse_unet=True, fuse_text_encoder=True, lora_scale=1.0,
                   safe_fusing=False, adapter_names="")  # node 3
    images = wf.add("Sampler", pipeline=fused, prompt=PROMPT, negative_prompt="", seed=1, steps=STEPS,
                    cfg=7.0, width=SIZE, height=SIZE, scheduler="default", batch_size=1)  # node 4
    wf.add("SaveImage", images=images, filename_prefix="bad")  # node 5
    return wf.nodes


def _set(node: str, **inputs):
    return lambda p: p[node]["inputs"].update(inputs)


def _drop(node: str, name: str):
    return lambda p: p[node]["inputs"].pop(name)


def _retype(node: str, class_type: str):
    return lambda p: p[node].update(class_type=class_type)


BAD_INPUTS = {
    # case: (change to the good prompt, exit code, node id, input named in the error or None)
    "unknown class_type": (_retype("3", "FuseLoRAx"), 2, "3", None),
    "missing input": (_drop("4", "seed"), 2, "4", "seed"),
    "dangling link": (_set("3", pipeline=["42", 0]), 2, "3", "pipeline"),
    "cycle": (_set("2", pipeline=["3", 0]), 2, "2", None),
    "parent dir lora name": (_set("2", lora_name="../sd_a.safetensors"), 2, "2", "lora_name"),
    "absolute lora name": (lambda p: None, 2, "2", "lora_name"),  # filled in by the test (needs the path)
    "steps out of range": (_set("4", steps=0), 2, "4", "steps"),
    "strength out of range": (_set("2", strength=1000.0), 2, "2", "strength"),
    "width not a multiple of 8": (_set("4", width=60), 2, "4", "width"),
    # files: refused from their header before anything loads (docs/CONTRACT.md: Validation before loading)
    "corrupt file": (_set("2", lora_name="bad/truncated.safetensors"), 2, "2", "lora_name"),
    "unrelated keys": (_set("2", lora_name="bad/unrelated_model.safetensors"), 2, "2", "lora_name"),
    "wrong base model": (_set("2", lora_name="bad/sdxl_lora_for_sd.safetensors"), 2, "2", "lora_name"),
    "unsafe pickle": (_set("2", lora_name="bad/unsafe_pickle.pt"), 2, "2", "lora_name"),
    "NaN lora": (_set("2", lora_name="bad/nan_lora.safetensors"), 1, "2", "lora_name"),
    # numbers that are not numbers, and work refused before it starts
    "strength NaN": (_set("2", strength="NaN"), 2, "2", "strength"),
    "cfg NaN": (_set("4", cfg="nan"), 2, "4", "cfg"),
    "steps at the maximum": (_set("4", steps=1000), 1, "4", "steps"),  # DDIM would index timestep 1000
    "too large to sample": (_set("4", width=16384, height=16384, batch_size=64), 1, "4", "width"),
    "prompt too long": (_set("4", prompt="a" * 200_000), 2, "4", "prompt"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_fails_naming_node_and_input_and_writes_no_image(case, models_dir, tmp_path, capsys):
    change, code, node_id, input_name = BAD_INPUTS[case]
    prompt = _base_prompt()
    change(prompt)
    if case == "absolute lora name":
        prompt["2"]["inputs"]["lora_name"] = str(models_dir / "loras" / "sd_a.safetensors")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(prompt))
    out = tmp_path / "output"
    assert main(["run", str(path), "--json", "--models-dir", str(models_dir), "--output-dir",
                 str(out)]) == code
    line = json.loads(capsys.readouterr().out)
    error = line["error"]
    if code == 2:
        assert line["status"] == "invalid"
        if error["type"] in ("missing_node_type",):
            assert error["extra_info"]["node_id"] == node_id
        else:
            assert node_id in error["node_errors"], error
            names = [e["extra_info"].get("input_name") for e in error["node_errors"][node_id]["errors"]]
            if input_name is not None:
                assert input_name in names, error
    else:
        assert line["status"] == "error"
        assert error["node_id"] == node_id and error["node_type"] == prompt[node_id]["class_type"]
        message = error["exception_message"]
        # the input is named once: "input 'x': ..." from the executor, or the node's own "x: ..."
        assert f"{input_name}: " in message or f"'{input_name}'" in message, message
    assert not (out.exists() and list(out.rglob("*.png")))


# --- the shipped examples -----------------------------------------------------------------------


def test_examples_cover_every_node():
    used = {node["class_type"] for f in (EXAMPLES / "workflows").glob("*.json") for node in
            json.loads(f.read_text()).values()}
    assert set(HEADLESS_NODE_CLASS_MAPPINGS) <= used


def test_examples_run_and_reruns_execute_only_what_changed(tmp_path):
    host.configure(models_dir=EXAMPLES / "models", output_dir=tmp_path / "output")
    executor = Executor(HEADLESS_NODE_CLASS_MAPPINGS)
    prompts = {}
    for name in ("quickstart", "all_nodes", "branches"):
        prompt = load_workflow(EXAMPLES / "workflows" / f"{name}.json")
        samplers = [i for i, n in prompt.items() if n["class_type"] == "Sampler"]
        prompts[name] = prompt = apply_overrides(prompt, [f"{i}.steps={STEPS}" for i in samplers])
        result = executor.execute(prompt)
        assert result.ok, (name, result.error_lines())
    written = sorted(p.relative_to(tmp_path / "output").as_posix()
                     for p in (tmp_path / "output").rglob("*.*"))
    assert written == ["all_nodes/base_00001_.png", "branches/base_00001_.png", "branches/lora_00001_.png",
                       "loras/all_nodes/demo_b_00001_.safetensors", "quickstart_00001_.png"]

    # The benchmark's claims, untimed: a new seed re-runs the Sampler and SaveImage only ...
    quick = prompts["quickstart"]
    result = executor.execute(apply_overrides(quick, ["6.seed=43"]))
    assert result.ok and sorted(result.executed) == ["6", "7"]
    assert [quick[n]["class_type"] for n in sorted(result.executed)] == ["Sampler", "SaveImage"]
    # ... and an unchanged re-run executes nothing.
    result = executor.execute(apply_overrides(quick, ["6.seed=43"]))
    assert result.ok and result.executed == []
