"""LoRAStack's rows in the editor (headless Chromium driving ComfyUI's frontend on `loragraph serve`,
tests/browser/stack_flow.js): three rows added, one turned off, saved, reloaded, queued; the image
equals the equivalent API workflow's run headless, and the saved text is the pinned `loras` form.
Skips, saying why, without chromium, node, playwright-core or the frontend package (test_browser.py).
"""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np
import pytest
from loragraph import host
from loragraph.graph import Executor
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS
from loragraph.testing import write_lora_file
from PIL import Image
from test_browser import ARTIFACTS, CHROMIUM, REPO, LiveServer, browser_missing, config_for

DRIVER = REPO / "tests" / "browser" / "stack_flow.js"
ROWS = [
    {"name": "ink.safetensors", "strength": 0.8},
    {"name": "styles/paper-v2.safetensors", "strength": 0.7, "te": 0.3},
    {"name": "sub/dots.safetensors", "strength": 1.0, "off": True},
]
EXPECTED = "ink.safetensors:0.8\nstyles/paper-v2.safetensors:0.7:0.3\n# sub/dots.safetensors:1"


def workflow(loras: str) -> dict:
    return {
        "1": {"class_type": "LoadPipeline", "inputs": {"model": "builtin:tiny-sd", "dtype": "auto",
                                                        "device": "auto"}},
        "2": {"class_type": "LoRAStack", "inputs": {"pipeline": ["1", 0], "loras": loras}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0], "prompt": "a red circle", "negative_prompt": "", "seed": 5, "steps": 2,
            "cfg": 7.0, "width": 64, "height": 64, "scheduler": "default", "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "stack"}},
    }


def editor_workflow() -> dict:
    """The API workflow with an empty stack, and a LoadLoRA off to the side (no output reads it) whose
    combo menu the driver hovers."""
    wf = workflow("")
    wf["9"] = {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sub/dots.safetensors",
                                                     "strength": 1.0, "adapter_name": ""}}
    return wf


@pytest.fixture()
def folders(tmp_path):
    loras = tmp_path / "models" / "loras"
    write_lora_file(loras / "ink.safetensors", "sd", "diffusers", rank=4, seed=31,
                    metadata={"modelspec.trigger_phrase": "inkwash, red circle"})
    Image.new("RGB", (8, 8), "red").save(loras / "ink.preview.png")
    write_lora_file(loras / "styles" / "paper-v2.safetensors", "sd", "kohya", rank=4, alpha=2, seed=32)
    write_lora_file(loras / "sub" / "dots.safetensors", "sd", "diffusers", rank=4, seed=33)
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=tmp_path / "models", output_dir=tmp_path / "output")
    yield {"models": tmp_path / "models", "output": tmp_path / "output", "input": tmp_path / "input",
           "user": tmp_path / "user"}
    host.configure(models_dir=before[0], output_dir=before[1])


def headless_image(prompt: dict, output) -> np.ndarray:
    host.configure(output_dir=output)
    result = Executor(HEADLESS_NODE_CLASS_MAPPINGS).execute(prompt)
    assert result.ok, result.error_lines()
    (png,) = sorted(output.rglob("*.png"))
    return np.asarray(Image.open(png).convert("RGB"))


def test_stack_rows_in_the_editor_save_reload_queue(folders, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    server = LiveServer(config_for(folders))
    server.start()
    try:
        config = {"url": f"http://127.0.0.1:{server.port}", "workflow": editor_workflow(), "rows": ROWS,
                  "screenshot_dir": str(ARTIFACTS / "browser"), "user_data_dir": str(tmp_path / "profile"),
                  "chromium": CHROMIUM, "timeout_ms": 60000}
        (tmp_path / "driver.json").write_text(json.dumps(config))
        proc = subprocess.run(["node", str(DRIVER), str(tmp_path / "driver.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=180, check=False)
    finally:
        server.stop()
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the driver printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    seen = json.loads(lines[-1])
    assert "failure" not in seen, seen["failure"]
    ours = [e for e in seen["page_errors"] + seen["console_errors"] if "/extensions/loragraph/" in e]
    assert not ours, ours

    assert seen["textarea_hidden"]
    assert seen["loras_text"] == EXPECTED and seen["loras_text_reloaded"] == EXPECTED
    assert seen["rows_reloaded"] == seen["rows_typed"]
    assert [r["on"] for r in seen["rows_reloaded"]] == [True, True, False]
    assert [r["te_shown"] for r in seen["rows_reloaded"]] == [False, True, False]
    assert seen["save_status"] == 200
    assert seen["card"]["shown"] and seen["card"]["name"] == "ink.safetensors"
    assert seen["card"]["words"] == "trigger words: inkwash, red circle"
    assert seen["card"]["preview_width"] == 8
    assert seen["combo_card"] == {"shown": True, "name": "ink.safetensors",
                                  "words": "trigger words: inkwash, red circle"}
    assert seen["execution_errors"] == []
    stack = next(n for n in seen["prompt"].values() if n["class_type"] == "LoRAStack")
    assert stack["inputs"]["loras"] == EXPECTED

    (image,) = [i for d in seen["executed"] for i in d["output"].get("images", [])]
    browser_png = folders["output"] / image["subfolder"] / image["filename"]
    got = np.asarray(Image.open(io.BytesIO(browser_png.read_bytes())).convert("RGB"))
    expected = headless_image(workflow(EXPECTED), tmp_path / "api-run")
    assert np.array_equal(got, expected), "the editor's run must equal the API workflow's"
    plain = headless_image(workflow(""), tmp_path / "plain-run")
    assert np.abs(got.astype(int) - plain).max() > 3, "the stack must change the image"
