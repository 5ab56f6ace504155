"""PNGs: what SaveImage writes (ComfyUI's chunks plus the LoRA credits) and re-running a PNG.

Runs go through the real executor with the built-in tiny pipeline (64x64, 2 steps) and the LoRA
files of conftest's ``models_dir``; chunks are read back with PIL, independently of our reader.
"""

from __future__ import annotations

import gc
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from loragraph.graph import (
    Executor,
    WorkflowError,
    apply_overrides,
    editor_to_api,
    load_workflow_document,
    read_png_text,
)
from loragraph.loaders import store
from loragraph.loaders.state import (
    ActiveSet,
    AdapterSpec,
    AdapterState,
    ComponentWeights,
    FuseOp,
    PipelineHandle,
    PipelineSource,
)
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS as REGISTRY
from loragraph.nodes import lora_credits
from PIL import Image
from PIL.PngImagePlugin import PngInfo

EDITOR = Path(__file__).parent / "fixtures" / "editor"


def run(doc, prompt=None) -> Path:
    """Run ``doc`` on a fresh executor (no cached outputs) and return the one PNG it wrote."""
    from loragraph import host

    before = set(host.output_dir().glob("*.png")) if host.output_dir().exists() else set()
    result = Executor(REGISTRY).execute(prompt or doc.prompt, extra_data=doc.extra_data())
    assert result.ok, result.error_lines()
    (png,) = set(host.output_dir().glob("*.png")) - before
    return png


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def chunks(path: Path) -> dict[str, str]:
    with Image.open(path) as img:
        return dict(img.text)


@pytest.fixture(scope="module")
def first_png(models_dir, tmp_path_factory):
    """The plain editor fixture run once: two LoRAs re-weighted (sd_a 0.5, sd_b as "b" 1.0), seed 7."""
    from loragraph import host

    host.configure(models_dir=models_dir, output_dir=tmp_path_factory.mktemp("png_output"))
    doc = load_workflow_document(EDITOR / "plain_v04.json", REGISTRY)
    return doc, run(doc)


def test_png_carries_prompt_workflow_and_the_loras(first_png, models_dir):
    doc, png = first_png
    text = chunks(png)
    assert list(text) == ["prompt", "workflow", "loras", "parameters"]
    prompt = json.loads(text["prompt"])
    assert ({k: v["class_type"] for k, v in prompt.items()}
            == {k: v["class_type"] for k, v in doc.prompt.items()})
    assert prompt["5"]["inputs"]["seed"] == 7
    assert json.loads(text["workflow"]) == json.loads((EDITOR / "plain_v04.json").read_text())

    a = store.read_lora(models_dir / "loras" / "sd_a.safetensors")
    b = store.read_lora(models_dir / "loras" / "sd_b.safetensors")
    assert json.loads(text["loras"]) == [
        {"name": "sd_a", "file": "sd_a.safetensors", "adapter": "sd_a", "weight": 0.5, "sha256": a.sha256,
         "short_hash": a.short_hash, "fused": False},
        {"name": "sd_b", "file": "sd_b.safetensors", "adapter": "b", "weight": 1.0, "sha256": b.sha256,
         "short_hash": b.short_hash, "fused": False},
    ]
    assert len(a.short_hash) == 12 and a.short_hash != b.short_hash
    assert text["parameters"] == (
        "a red circle on a white background\n"
        "Negative prompt: blurry\n"
        f'Steps: 2, CFG scale: 7, Seed: 7, Size: 64x64, Model: "builtin:tiny-sd", '
        f'Lora hashes: "sd_a: {a.short_hash}, sd_b: {b.short_hash}", Version: loragraph'
    )


def test_rerunning_the_png_gives_the_same_image_and_set_changes_it(first_png):
    doc, png = first_png
    again = load_workflow_document(png, REGISTRY)
    assert again.workflow == doc.workflow  # carried over, so the new PNG opens in the editor too
    assert ({k: v["inputs"] for k, v in again.prompt.items()}
            == {k: v["inputs"] for k, v in doc.prompt.items()})
    rerun = run(again)
    assert np.array_equal(pixels(rerun), pixels(png))
    assert json.loads(chunks(rerun)["workflow"]) == doc.workflow

    reseeded = run(again, apply_overrides(again.prompt, ["5.seed=8"], REGISTRY))
    assert not np.array_equal(pixels(reseeded), pixels(png))
    assert ", Seed: 8," in chunks(reseeded)["parameters"]
    assert json.loads(chunks(reseeded)["prompt"])["5"]["inputs"]["seed"] == 8


def test_a_comfyui_png_with_only_a_workflow_chunk_runs(configured, tmp_path):
    workflow = json.loads((EDITOR / "subgraph_v1.json").read_text())
    info = PngInfo()
    info.add_text("workflow", json.dumps(workflow))
    png = tmp_path / "ComfyUI_00001_.png"
    Image.new("RGB", (8, 8), "white").save(png, pnginfo=info)

    doc = load_workflow_document(png, REGISTRY)
    assert doc.workflow == workflow
    expected = editor_to_api(workflow, REGISTRY)
    assert {k: v["inputs"] for k, v in doc.prompt.items()} == {k: v["inputs"] for k, v in expected.items()}
    out = run(doc)
    text = chunks(out)
    assert json.loads(text["workflow"]) == workflow
    assert [lora["adapter"] for lora in json.loads(text["loras"])] == ["sd_a", "d"]


def test_pngs_without_a_workflow_or_broken_ones_get_clear_errors(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(WorkflowError, match=r"plain\.png: this PNG holds no workflow.*text chunks: none"):
        load_workflow_document(plain, REGISTRY)

    a1111 = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20")
    Image.new("RGB", (8, 8)).save(a1111, pnginfo=info)
    with pytest.raises(WorkflowError, match=r"a1111\.png: this PNG holds no workflow.*'parameters'"):
        load_workflow_document(a1111, REGISTRY)

    bad_json = tmp_path / "bad_json.png"
    info = PngInfo()
    info.add_text("prompt", '{"1": {"class_type": ')
    Image.new("RGB", (8, 8)).save(bad_json, pnginfo=info)
    with pytest.raises(WorkflowError, match=r"bad_json\.png: the PNG's 'prompt' chunk is not valid JSON"):
        load_workflow_document(bad_json, REGISTRY)

    data = plain.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) - 20])
    with pytest.raises(WorkflowError, match=r"truncated\.png: the PNG file is truncated"):
        load_workflow_document(truncated, REGISTRY)
    (tmp_path / "stub.png").write_bytes(data[:5])
    with pytest.raises(WorkflowError, match="truncated"):
        load_workflow_document(tmp_path / "stub.png", REGISTRY)

    damaged = tmp_path / "damaged.png"
    damaged.write_bytes(data[:20] + bytes([data[20] ^ 0xFF]) + data[21:])  # inside IHDR: CRC fails
    with pytest.raises(WorkflowError, match=r"damaged\.png: the PNG file is damaged \(bad CRC"):
        load_workflow_document(damaged, REGISTRY)

    not_png = tmp_path / "notes.png"
    not_png.write_text('{"1": {}}')
    with pytest.raises(WorkflowError, match=r"notes\.png: not a PNG file"):
        load_workflow_document(not_png, REGISTRY)
    with pytest.raises(WorkflowError, match="no such workflow file"):
        load_workflow_document(tmp_path / "missing.png", REGISTRY)

    unknown = tmp_path / "unknown_node.png"
    info = PngInfo()
    info.add_text("workflow", json.dumps({"nodes": [{"id": 3, "type": "KSampler", "mode": 0}], "links": []}))
    Image.new("RGB", (8, 8)).save(unknown, pnginfo=info)
    with pytest.raises(WorkflowError,
                       match=r"unknown_node\.png \('workflow' chunk\): node 3: unknown node type"):
        load_workflow_document(unknown, REGISTRY)


def test_a_png_is_recognised_by_its_signature_whatever_its_name(first_png, tmp_path):
    doc, png = first_png
    renamed = tmp_path / "image.bin"
    renamed.write_bytes(png.read_bytes())
    assert load_workflow_document(renamed, REGISTRY).workflow == doc.workflow


def test_a_broken_workflow_chunk_next_to_a_good_prompt_is_only_dropped(tmp_path):
    png = tmp_path / "half.png"
    prompt = {"1": {"class_type": "LoadPipeline", "inputs": {"model": "builtin:tiny-sd"}}}
    info = PngInfo()
    info.add_text("prompt", json.dumps(prompt))
    info.add_text("workflow", "{broken")
    Image.new("RGB", (8, 8)).save(png, pnginfo=info)
    doc = load_workflow_document(png, REGISTRY)
    assert doc.prompt["1"]["class_type"] == "LoadPipeline" and doc.workflow is None


def _chunk(kind: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))


def test_compressed_and_international_text_chunks_are_read(tmp_path):
    info = PngInfo()
    info.add_text("prompt", json.dumps({"1": {"class_type": "X", "inputs": {}}}), zip=True)  # zTXt
    info.add_itxt("workflow", '{"nodes": [], "note": "café ☕"}', zip=True)  # compressed iTXt
    info.add_itxt("comment", "plain iTXt ✓")
    png = tmp_path / "text.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    text = read_png_text(png)
    assert json.loads(text["prompt"])["1"]["class_type"] == "X"
    assert json.loads(text["workflow"])["note"] == "café ☕"
    assert text["comment"] == "plain iTXt ✓"

    bomb = tmp_path / "bad_zip.png"
    data = png.read_bytes()
    iend = data.rindex(b"IEND") - 4
    bomb.write_bytes(data[:iend] + _chunk(b"zTXt", b"prompt\0\0not zlib") + data[iend:])
    with pytest.raises(WorkflowError, match="bad compressed text"):
        read_png_text(bomb)


# -- the credits side channel ---------------------------------------------------------------------


def test_credits_are_found_only_for_the_tensor_the_sampler_returned():
    images = torch.zeros(1, 8, 8, 3)
    made = lora_credits.ImageCredits("builtin:tiny-sd", (), "p", "", 1, 2, 7.0, 8, 8)
    lora_credits.register(images, made)
    assert lora_credits.lookup(images) is made
    assert lora_credits.lookup(images.clone()) is None and lora_credits.lookup(images[:1]) is None
    assert lora_credits.lookup(images + 0) is None
    count = len(lora_credits._entries)
    del images
    gc.collect()
    assert len(lora_credits._entries) == count - 1


def test_lora_credits_count_active_and_fused_adapters_only(configured, models_dir):
    loras = models_dir / "loras"

    def spec(name, file):
        return AdapterSpec(name, str(loras / file), store.file_sha256(loras / file), 1.0)

    state = AdapterState(
        adapters=(spec("a", "sd_a.safetensors"), spec("d", "sub/sd_d.safetensors"),
                  spec("off", "sd_b.safetensors")),
        active=ActiveSet(("a",), (ComponentWeights.of({"text_encoder": 0.2, "unet": 0.5}),)),
        fused=(FuseOp(("unet",), 1.0, False, ("d",), ActiveSet(("d",), (0.8,))),),
    )
    source = PipelineSource("builtin:tiny-sd", "builtin", "tiny-sd", "float32", "cpu", "v1",
                            ("unet", "text_encoder"))
    made = lora_credits.credits_for(PipelineHandle(source, state), "a, b: c", "", 3, 2, 7.5, 64, 64, "euler")
    got = [(c.name, c.file, c.adapter, c.weight, c.fused) for c in made.loras]
    assert got == [("sd_a", "sd_a.safetensors", "a", {"text_encoder": 0.2, "unet": 0.5}, False),
                   ("sd_d", "sub/sd_d.safetensors", "d", 0.8, True)]
    d_hash = store.read_lora(loras / "sub" / "sd_d.safetensors").short_hash
    text = lora_credits.infotext(made)
    assert text.startswith("a, b: c\nSteps: 2, CFG scale: 7.5, Seed: 3, Size: 64x64, ")  # no empty negative
    assert ', Sampler: euler, Lora hashes: "sd_a: ' in text and f'sd_d: {d_hash}", Version: loragraph' in text
