"""The `loragraph` command line: run, validate, inspect, nodes (CONTRACT: Pinned details, Files and folders).

Most tests call `loragraph.cli.main([...])` in-process (the engine and its live pipeline are then
shared, which keeps them fast); one runs `python -m loragraph` in a subprocess to check that stdout
carries nothing but the JSON lines.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROMPT, SIZE, STEPS
from loragraph.cli import main
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS, NODE_CLASS_MAPPINGS
from PIL import Image

# docs/CONTRACT.md's node table: each node's inputs, in order (test_the_contract_lists_these_inputs).
SPEC_INPUTS = {
    "LoadPipeline": ["model", "dtype", "device"],
    "LoadLoRA": ["pipeline", "lora_name", "strength", "adapter_name"],
    "SetAdapterWeights": ["pipeline", "adapter_names", "weights", "text_encoder_weights", "block_weights"],
    "ScheduleAdapterWeights": ["pipeline", "adapter_name", "keyframes", "interpolation"],
    "FuseLoRA": ["pipeline", "fuse_unet", "fuse_text_encoder", "lora_scale", "safe_fusing", "adapter_names"],
    "UnfuseLoRA": ["pipeline", "unfuse_unet", "unfuse_text_encoder"],
    "TextEncoderLoRAToggle": ["pipeline", "enabled", "text_encoder"],
    "DeleteAdapters": ["pipeline", "adapter_names"],
    "UnloadLoRA": ["pipeline"],
    "SetLoRADevice": ["pipeline", "adapter_names", "device"],
    "SaveLoRA": ["pipeline", "adapter_name", "filename_prefix", "format"],
    "LoRAInfo": ["pipeline"],
    "LoRAStack": ["pipeline", "loras"],
    "PromptLoRAs": ["pipeline", "text"],
    "Sampler": ["pipeline", "prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height",
                "scheduler", "batch_size"],
    "SaveImage": ["images", "filename_prefix"],
    "PreviewImage": ["images"],
    "SaveAnimation": ["images", "filename_prefix", "fps"],
}
OBJECT_INFO_KEYS = {"input", "input_order", "output", "output_is_list", "output_name", "name", "display_name",
                    "description", "python_module", "category", "output_node"}


def workflow(lora: str | None = "sd_a.safetensors", seed: int = 1, prefix: str = "cli") -> dict:
    """LoadPipeline -> [LoadLoRA] -> Sampler (3 steps, 64x64) -> SaveImage, in API format."""
    wf = {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "float32", "device": "cpu"}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0] if lora else ["1", 0], "prompt": PROMPT, "negative_prompt": "",
            "seed": seed, "steps": STEPS, "cfg": 7.0, "width": SIZE, "height": SIZE, "scheduler": "default",
            "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }
    if lora:
        wf["2"] = {"class_type": "LoadLoRA", "inputs": {
            "pipeline": ["1", 0], "lora_name": lora, "strength": 1.0, "adapter_name": ""}}
    return wf


def write(path: Path, wf: dict) -> str:
    path.write_text(json.dumps(wf))
    return str(path)


@pytest.fixture()
def dirs(models_dir, tmp_path):
    out = tmp_path / "output"
    return ["--models-dir", str(models_dir), "--output-dir", str(out)], out


def json_lines(capsys) -> list[dict]:
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines and all(line.startswith("{") for line in lines), out
    return [json.loads(line) for line in lines]


def pngs(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def test_run_json_prints_one_line_per_file_with_the_pinned_shape(dirs, tmp_path, capsys):
    args, out = dirs
    good = write(tmp_path / "good.json", workflow())
    assert main(["run", good, "--json", *args]) == 0
    (line,) = json_lines(capsys)
    assert set(line) == {"file", "status", "outputs", "error"}
    assert line["file"] == good and line["status"] == "success" and line["error"] is None
    (image,) = line["outputs"]["4"]["images"]
    assert image == {"filename": "cli_00001_.png", "subfolder": "", "type": "output"}
    png = Image.open(out / image["filename"])
    assert png.size == (SIZE, SIZE)
    assert json.loads(png.info["prompt"])["2"]["inputs"]["lora_name"] == "sd_a.safetensors"


def test_set_overrides_inputs_and_bad_overrides_are_invalid(dirs, tmp_path, capsys):
    args, out = dirs
    good = write(tmp_path / "good.json", workflow())
    code = main(["run", good, "--json", "--set", "3.seed=5", "--set", "4.filename_prefix=over", *args])
    assert code == 0
    (line,) = json_lines(capsys)
    assert line["outputs"]["4"]["images"][0]["filename"] == "over_00001_.png"
    saved = json.loads(Image.open(out / "over_00001_.png").info["prompt"])
    assert saved["3"]["inputs"]["seed"] == 5 and saved["4"]["inputs"]["filename_prefix"] == "over"

    for bad in ("9.seed=5", "3.sed=5", "3seed"):
        assert main(["run", good, "--json", "--set", bad, *args]) == 2
        (line,) = json_lines(capsys)
        assert line["status"] == "invalid" and bad in line["error"]["message"]


def test_a_failing_file_does_not_stop_the_next_and_the_worst_status_wins(dirs, tmp_path, capsys):
    args, out = dirs
    good = write(tmp_path / "good.json", workflow(prefix="good"))
    # NaN weights are found only when the file is read whole, so the run fails, not the validation.
    broken = write(tmp_path / "broken.json", workflow("bad/nan_lora.safetensors", prefix="broken"))
    invalid = write(tmp_path / "invalid.json", workflow("../sd_a.safetensors", prefix="invalid"))
    unreadable = tmp_path / "unreadable.json"
    unreadable.write_text("{ not json")

    assert main(["run", broken, good, "--json", *args]) == 1  # an execution error: 1
    lines = json_lines(capsys)
    assert [(x["file"], x["status"]) for x in lines] == [(broken, "error"), (good, "success")]
    assert lines[0]["error"]["node_id"] == "2" and lines[0]["error"]["node_type"] == "LoadLoRA"
    assert "lora_name" in lines[0]["error"]["exception_message"]

    assert main(["run", invalid, broken, good, str(unreadable), "--json", *args]) == 2  # 2 wins over 1
    lines = json_lines(capsys)
    assert [x["status"] for x in lines] == ["invalid", "error", "success", "invalid"]
    assert lines[0]["error"]["node_errors"]["2"]["errors"][0]["extra_info"]["input_name"] == "lora_name"
    assert "invalid JSON" in lines[3]["error"]["message"]
    # Only the good workflow wrote images (twice: once per command).
    assert [p.name for p in pngs(out)] == ["good_00001_.png", "good_00002_.png"]


def test_run_summary_names_nodes_times_files_and_errors(dirs, tmp_path, capsys):
    args, _ = dirs
    good = write(tmp_path / "good.json", workflow())
    broken = write(tmp_path / "broken.json", workflow("bad/nan_lora.safetensors"))
    assert main(["run", good, good, broken, *args]) == 1
    text = capsys.readouterr().out
    first, second, third = re.split(rf"^{re.escape(str(tmp_path))}/", text, flags=re.MULTILINE)[1:]
    assert first.startswith("good.json: success") and "4 nodes run, 0 cached" in first
    assert "LoadLoRA" in first and " s\n" in first
    assert "image   " in first and "cli_00001_.png  (node 4)" in first
    # The second run of the same file in the same process is served from the cache.
    assert "0 nodes run, 4 cached" in second and "cached\n" in second
    assert third.startswith("broken.json: error")
    assert "error: node 2 (LoadLoRA)" in third and "lora_name" in third


def test_multi_file_overrides_apply_where_the_node_exists(dirs, tmp_path, capsys):
    args, _ = dirs
    with_lora = write(tmp_path / "a.json", workflow())
    other = workflow(lora=None)
    other["7"] = other.pop("4")
    other["7"]["inputs"]["filename_prefix"] = "other"
    plain = write(tmp_path / "b.json", other)
    assert main(["validate", with_lora, plain, "--json", "--set", "2.strength=0.5", *args]) == 0
    assert [x["status"] for x in json_lines(capsys)] == ["valid", "valid"]
    assert main(["validate", with_lora, plain, "--json", "--set", "12.strength=0.5", *args]) == 2
    lines = json_lines(capsys)
    assert all("no workflow has a node with id '12'" in x["error"]["message"] for x in lines)


def test_validate_reports_every_error_per_node_and_runs_nothing(dirs, tmp_path, capsys):
    args, out = dirs
    good = write(tmp_path / "good.json", workflow())
    wf = workflow()
    wf["3"]["inputs"].update(steps=0, width=60)
    del wf["2"]["inputs"]["strength"]
    bad = write(tmp_path / "bad.json", wf)
    assert main(["validate", good, *args]) == 0
    assert capsys.readouterr().out == f"{good}: valid\n"
    assert main(["validate", good, bad, *args]) == 2
    text = capsys.readouterr().out
    assert f"{bad}: invalid" in text
    assert "node 2 (LoadLoRA), input 'strength': Required input is missing" in text
    assert "node 3 (Sampler), input 'steps': Value 0 smaller than min of 1" in text
    assert "node 3 (Sampler), input 'width'" in text and "multiple of 8" in text
    assert not out.exists()


def test_inspect_prints_summary_and_coverage(models_dir, capsys):
    assert main(["inspect", "sd_b.safetensors", "--models-dir", str(models_dir)]) == 0
    text = capsys.readouterr().out
    assert "format:        kohya" in text and "alphas:        2.0" in text and "ranks:         4" in text
    assert "coverage on builtin:tiny-sd:" in text and "all " in text and "LoRA modules land" in text

    path = models_dir / "loras" / "bad" / "sdxl_lora_for_sd.safetensors"
    assert main(["inspect", str(path), "--json"]) == 0
    (line,) = json_lines(capsys)
    assert line["summary"]["base_model"] == "SDXL"
    # no --model: checked on the built-in model it fits, not reported as made for another one
    assert line["summary"]["fits"] == ["builtin:tiny-sdxl"]
    assert line["coverage"]["model"] == "builtin:tiny-sdxl" and line["coverage"]["loadable"] is True
    assert main(["inspect", str(path), "--json", "--model", "builtin:tiny-sd"]) == 0
    (line,) = json_lines(capsys)
    assert line["coverage"]["model"] == "builtin:tiny-sd" and line["coverage"]["loadable"] is False

    assert main(["inspect", "sd_a.safetensors", "--json", "--models-dir", str(models_dir)]) == 0
    (line,) = json_lines(capsys)
    assert line["summary"]["base_model"] == "builtin:tiny-sd" and line["coverage"]["loadable"] is True
    assert set(line["summary"]["module_algorithms"].values()) == {"lora"}

    assert main(["inspect", "sd_a.safetensors", "--json", "--models-dir", str(models_dir),
                 "--model", "builtin:tiny-sdxl"]) == 0
    (line,) = json_lines(capsys)
    assert line["summary"]["format"] == "diffusers" and line["coverage"]["loadable"] is False

    assert main(["inspect", "no_such.safetensors", "--models-dir", str(models_dir)]) == 2
    assert main(["inspect", "bad/truncated.safetensors", "--models-dir", str(models_dir)]) == 2
    assert main(["inspect", "sd_a.safetensors", "--models-dir", str(models_dir), "--model",
                 "builtin:nope"]) == 2
    assert capsys.readouterr().out == ""


def test_the_contract_lists_these_inputs():
    """docs/CONTRACT.md's node table names each node's inputs in the order the nodes declare them."""
    import re

    contract = (Path(__file__).resolve().parents[1] / "docs" / "CONTRACT.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\w+) \| (.*?) \|", contract, re.MULTILINE)}
    for class_type, inputs in SPEC_INPUTS.items():
        if class_type in ("SaveImage", "PreviewImage"):  # headless stand-ins: described in prose
            assert class_type in contract
            continue
        row, at = rows[class_type], 0
        for name in inputs:
            found = re.compile(rf"(?:^|; ){name}\b").search(row, at)
            assert found, f"{class_type}: {name} missing or out of order in docs/CONTRACT.md"
            at = found.end()


def test_nodes_prints_object_info_in_spec_order(models_dir, capsys):
    assert main(["nodes", "--models-dir", str(models_dir)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert list(info) == list(HEADLESS_NODE_CLASS_MAPPINGS)
    for class_type, entry in info.items():
        assert set(entry) >= OBJECT_INFO_KEYS, class_type
        assert entry["name"] == class_type
        assert entry["input_order"]["required"] == SPEC_INPUTS[class_type], class_type
        assert len(entry["output"]) == len(entry["output_is_list"]) == len(entry["output_name"])
        module = "custom_nodes.loragraph" if class_type in NODE_CLASS_MAPPINGS else "nodes"
        assert entry["python_module"] == module
    assert info["Sampler"]["output"] == ["IMAGE"] and info["Sampler"]["output_tooltips"]
    assert info["SaveLoRA"]["output_node"] is True and info["LoadLoRA"]["output_node"] is False
    assert info["SaveImage"]["display_name"] == "Save Image"
    assert "sd_a.safetensors" in info["LoadLoRA"]["input"]["required"]["lora_name"][0]
    assert info["Sampler"]["input"]["required"]["seed"][1]["control_after_generate"] is True

    assert main(["nodes", "LoRAInfo"]) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["LoRAInfo"]
    assert main(["nodes", "NoSuchNode"]) == 2


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["run"]) == 2
    assert main(["serve", "--listen", "0.0.0.0", "--port", "0"]) == 2  # remote binds need --allow-remote
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("loragraph ")


def test_python_m_loragraph_json_stdout_is_only_json(models_dir, tmp_path):
    good = write(tmp_path / "good.json", workflow(seed=3))
    unknown = workflow()
    unknown["3"]["class_type"] = "NoSuchSampler"
    invalid = write(tmp_path / "unknown.json", unknown)
    # One thread: a tiny model gains nothing from more, and it keeps the run steady on a busy machine.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "loragraph", "run", good, invalid, "--json",
         "--models-dir", str(models_dir), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(x["file"], x["status"]) for x in lines] == [(good, "success"), (invalid, "invalid")]
    assert lines[1]["error"]["type"] == "missing_node_type"
    assert lines[1]["error"]["extra_info"]["node_id"] == "3"
    assert (tmp_path / "out" / "cli_00001_.png").is_file()
