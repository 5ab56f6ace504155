"""What a new user meets first: threads, serve's console, overridden inputs, run's summary (text
outputs, error text), inspect without a models folder, serve's folders."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from conftest import PROMPT, SIZE, STEPS
from loragraph.cli import main, threads
from loragraph.cli.console import cli_logging
from loragraph.graph import overridden_inputs
from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

REPO = Path(__file__).resolve().parent.parent


def lora_workflow(strength: float = 0.5, names: str = "", info: bool = True, sampler: bool = False,
                  lora: str = "sd_a.safetensors") -> dict:
    """LoadPipeline -> LoadLoRA(lora, strength) -> SetAdapterWeights(names, 0.7) -> LoRAInfo
    [-> Sampler -> Save]."""
    wf = {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "float32", "device": "cpu"}},
        "2": {"class_type": "LoadLoRA", "_meta": {"title": "style LoRA"}, "inputs": {
            "pipeline": ["1", 0], "lora_name": lora, "strength": strength,
            "adapter_name": "a"}},
        "3": {"class_type": "SetAdapterWeights", "inputs": {
            "pipeline": ["2", 0], "adapter_names": names, "weights": "0.7", "text_encoder_weights": "",
            "block_weights": ""}},
    }
    if info:
        wf["4"] = {"class_type": "LoRAInfo", "inputs": {"pipeline": ["3", 0]}}
    if sampler:
        wf["5"] = {"class_type": "Sampler", "inputs": {
            "pipeline": ["3", 0], "prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": STEPS,
            "cfg": 7.0, "width": SIZE, "height": SIZE, "scheduler": "default", "batch_size": 1}}
        wf["6"] = {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "first"}}
    return wf


def write(path: Path, wf: dict) -> str:
    path.write_text(json.dumps(wf))
    return str(path)


@pytest.fixture()
def dirs(models_dir, tmp_path):
    return ["--models-dir", str(models_dir), "--output-dir", str(tmp_path / "output")]


# --- 1. threads ----------------------------------------------------------------------------------


def test_default_threads_count_free_cores_only():
    assert threads.default_threads(cpus=2, load=0.1) == 2
    assert threads.default_threads(cpus=2, load=1.0) == 1  # another process on one core: leave it that core
    assert threads.default_threads(cpus=2, load=0.6) == 1  # a core busy most of the time is not free
    assert threads.default_threads(cpus=2, load=7.0) == 1
    assert threads.default_threads(cpus=16, load=3.4) == 13
    assert threads.choose_threads(3) == (3, "--threads")
    with pytest.raises(ValueError):
        threads.choose_threads(0)


def test_threads_option_sets_torchs_threads(dirs, tmp_path, monkeypatch, capsys):
    wf = write(tmp_path / "wf.json", lora_workflow(strength=1.0))
    try:
        assert main(["run", wf, "--threads", "2", *dirs]) == 0
        assert torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # without --threads, the user's OMP_NUM_THREADS wins
        assert main(["run", wf, *dirs]) == 0
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr(threads, "available_cpus", lambda: 2)
        monkeypatch.setattr(threads, "load_average", lambda: 1.3)  # one core taken by someone else
        assert main(["run", wf, *dirs]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)
    assert main(["run", wf, "--threads", "0", *dirs]) == 2
    assert "--threads" in capsys.readouterr().err


# --- 3. inputs a later node overrides --------------------------------------------------------------


class Source:
    """Toy nodes: the graph finds overrides from declarations alone, knowing nothing of LoRA."""

    RETURN_TYPES = ("V",)
    FUNCTION = "run"
    SETS = {"level": "level"}  # noqa: RUF012 - a toy

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"level": ("INT", {"default": 1})}}


class Reset(Source):
    OVERRIDES = {"level": "to"}  # noqa: RUF012

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"v": ("V",), "to": ("INT", {"default": 1})}}


class Use(Source):
    READS = ("level",)
    SETS = {}  # noqa: RUF012

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"v": ("V",)}}


class Pass(Use):
    READS = ()


TOYS = {"Source": Source, "Reset": Reset, "Use": Use, "Pass": Pass}


def toy(*edges: tuple[str, str, str], level: int = 5) -> dict:
    prompt = {"1": {"class_type": "Source", "inputs": {"level": level}}}
    for node_id, class_type, src in edges:
        inputs: dict = {"v": [src, 0]}
        if class_type == "Reset":
            inputs["to"] = 2
        prompt[node_id] = {"class_type": class_type, "inputs": inputs}
    return prompt


def test_the_graph_finds_values_every_path_overrides_from_declarations_alone():
    found = overridden_inputs(toy(("2", "Pass", "1"), ("3", "Reset", "2"), ("4", "Use", "3")), TOYS)
    assert [(o.node_id, o.input_name, o.by_node, o.by_input) for o in found] == [("1", "level", "3", "to")]
    assert ("node 1 (Source), input 'level' (= 5)" in found[0].message()
            and "node 3 (Reset)" in found[0].message())
    # A branch that uses the value before any override: it matters there.
    assert overridden_inputs(toy(("2", "Reset", "1"), ("3", "Use", "2"), ("4", "Use", "1")), TOYS) == []
    # Used on the way (a fuse at the current weights), then overridden: it mattered.
    assert overridden_inputs(toy(("2", "Use", "1"), ("3", "Reset", "2")), TOYS) == []
    # Left at its default: nothing was set.
    assert overridden_inputs(toy(("2", "Reset", "1"), level=1), TOYS) == []
    # No override anywhere: nothing to say.
    assert overridden_inputs(toy(("2", "Pass", "1"), ("3", "Use", "2")), TOYS) == []


def test_validate_and_run_warn_when_a_set_strength_is_overridden(dirs, tmp_path, capsys):
    wf = write(tmp_path / "wf.json", lora_workflow(strength=0.5))
    assert main(["validate", wf, *dirs]) == 0
    text = capsys.readouterr().out
    assert f"{wf}: valid\n  warning: node 2 (LoadLoRA \"style LoRA\"), input 'strength' (= 0.5) changes " \
           "nothing: node 3 (SetAdapterWeights) sets the adapter weights again" in text
    assert main(["validate", wf, "--json", *dirs]) == 0
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert line["status"] == "valid" and len(line["warnings"]) == 1 and "'weights'" in line["warnings"][0]
    assert main(["run", wf, *dirs]) == 0
    assert "  warning: node 2 (LoadLoRA \"style LoRA\"), input 'strength'" in capsys.readouterr().out

    # At its default strength, or read by a Sampler before any SetAdapterWeights: no warning.
    assert main(["validate", write(tmp_path / "d.json", lora_workflow(strength=1.0)), *dirs]) == 0
    branch = lora_workflow(strength=0.5, sampler=True)
    branch["5"]["inputs"]["pipeline"] = ["2", 0]
    assert main(["validate", write(tmp_path / "b.json", branch), *dirs]) == 0
    assert "warning" not in capsys.readouterr().out


def test_the_quickstart_warns_about_a_strength_its_weights_node_overrides(capsys):
    quickstart = str(REPO / "examples" / "workflows" / "quickstart.json")
    models = ["--models-dir", str(REPO / "examples" / "models")]
    assert main(["validate", quickstart, *models]) == 0
    assert "warning" not in capsys.readouterr().out  # as shipped: nothing set that changes nothing
    assert main(["validate", quickstart, "--set", "2.strength=0.3", *models]) == 0
    out = capsys.readouterr().out
    assert "node 2 (LoadLoRA \"palette LoRA\"), input 'strength' (= 0.3) changes nothing" in out
    assert "node 4 (SetAdapterWeights \"LoRA weights\")" in out and "change its 'weights' instead" in out
    titles = {k: v["_meta"]["title"] for k, v in json.loads(Path(quickstart).read_text()).items()}
    assert titles["2"] == "palette LoRA" and titles["3"] == "outline LoRA"


def test_the_lora_nodes_declare_what_they_override():
    nodes = HEADLESS_NODE_CLASS_MAPPINGS
    assert nodes["SetAdapterWeights"].OVERRIDES == {"adapter weights": "weights"}
    assert nodes["LoadLoRA"].SETS["strength"] == "adapter weights"
    assert "adapter weights" in nodes["Sampler"].READS and "adapter weights" in nodes["FuseLoRA"].READS


# --- 4, 5. run's summary: text outputs and error text ----------------------------------------------


def test_run_summary_shows_text_outputs_under_their_node(dirs, tmp_path, capsys):
    wf = write(tmp_path / "wf.json", lora_workflow(strength=1.0))
    assert main(["run", wf, *dirs]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row = next(i for i, line in enumerate(lines) if "LoRAInfo" in line)
    shown = []
    for line in lines[row + 1:]:
        if not line.startswith("         "):
            break
        shown.append(line[9:])
    info = json.loads("\n".join(shown))  # LoRAInfo's whole report, right under its line
    assert info["adapters"]["a"]["weights"] and info["adapters"]["a"]["active"] is True


def test_execution_errors_start_with_the_input_name_and_keep_the_class_for_verbose(dirs, tmp_path, capsys):
    # NaN weights show only when the file is read whole, so this fails when the node runs
    wf = write(tmp_path / "wf.json", lora_workflow(lora="bad/nan_lora.safetensors"))
    assert main(["run", wf, *dirs]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith("  error:")]
    assert line.startswith("  error: node 2 (LoadLoRA): lora_name: ")
    assert "Error" not in line and "loragraph." not in line
    assert main(["run", wf, "-v", *dirs]) == 1
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("  error:")]
    assert "lora_name: " in line and "NodeInputError" in line


# --- 6. inspect ------------------------------------------------------------------------------------


def test_inspect_of_a_path_needs_no_models_folder(models_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no ./models here
    assert main(["inspect", str(models_dir / "loras" / "sd_b.safetensors")]) == 0
    captured = capsys.readouterr()
    assert "format:        kohya" in captured.out and "models folder" not in captured.err
    assert main(["inspect", "sd_b.safetensors"]) == 2  # a bare name does need one
    assert "no such file" in capsys.readouterr().err


# --- 2, 8. serve's console and folders -----------------------------------------------------------


def test_serve_logging_levels():
    with cli_logging(False, False, "serve"):
        assert logging.getLogger("loragraph.server.worker").getEffectiveLevel() == logging.INFO
    with cli_logging(False, True, "serve"):
        assert logging.getLogger("loragraph.server.worker").getEffectiveLevel() == logging.ERROR
    with cli_logging(False, False, "run"):
        assert logging.getLogger("loragraph.server.worker").getEffectiveLevel() == logging.WARNING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, data: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(data).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_serve_says_what_it_does_on_its_console_and_makes_no_folder_it_does_not_write(models_dir, tmp_path):
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    err = tmp_path / "stderr.txt"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "loragraph", "serve", "--port", str(port), "--models-dir",
             str(models_dir)],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(url + "/queue", timeout=5).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"server did not start: {err.read_text()[-2000:]}")
                time.sleep(0.3)
        good = _post(url + "/prompt",
                     {"prompt": lora_workflow(strength=0.5, info=False, sampler=True)})["prompt_id"]
        bad = _post(url + "/prompt", {"prompt": lora_workflow(lora="bad/nan_lora.safetensors")})["prompt_id"]
        for prompt_id in (good, bad):
            while prompt_id not in json.loads(urllib.request.urlopen(f"{url}/history/{prompt_id}",
                                                                     timeout=5).read()):
                assert time.monotonic() < deadline, err.read_text()[-2000:]
                time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = err.read_text()
    assert f"loragraph server listening on {url}" in log
    if find_spec("comfyui_frontend_package") is not None:
        assert f"To see the editor go to: {url}/" in log
    else:
        assert "no visual editor: pip install 'loragraph[editor]'" in log
    assert f"got prompt {good} (5 nodes" in log and f"got prompt {bad} (4 nodes" in log
    assert (f"WARNING loragraph.server.routes: prompt {good}: node 2 (LoadLoRA \"style LoRA\"), "
            "input 'strength'" in log)
    assert f"prompt {good} done in " in log and " s (5 nodes run, 0 cached)" in log
    failed = next(line for line in log.splitlines() if line.startswith(f"prompt {bad} failed in "))
    assert "node 2 (LoadLoRA): lora_name: " in failed
    assert "#5 Sampler: 100%" in log and f"{STEPS}/{STEPS}" in log  # the tqdm bar
    assert "Loading pipeline components" not in log and "Traceback" not in log
    assert (tmp_path / "output" / "first_00001_.png").is_file()
    # Nothing was uploaded and no editor setting saved: no input/ or user/ folder appeared.
    assert not (tmp_path / "input").exists() and not (tmp_path / "user").exists()


# --- 7. one truth about alpha ----------------------------------------------------------------------


def test_the_file_summary_and_lorainfo_agree_on_alpha(configured):
    from loragraph.loaders import transitions
    from loragraph.loaders.engine import get_engine
    from loragraph.loaders.store import read_lora

    engine = get_engine()
    handle = engine.load_pipeline("builtin:tiny-sd", "float32", "cpu")
    for name, stored in (("sd_old.safetensors", False), ("sd_b.safetensors", True)):
        summary = read_lora(configured / "loras" / name).summary()
        spec = engine.lora_spec(handle, name, 1.0, "x")
        info = engine.info(transitions.add_adapter(handle, spec))["adapters"]["x"]
        assert summary["alpha_in_file"] is stored and info["alpha_in_file"] is stored
        assert set(info["alpha"].values()) == set(summary["effective_alphas"]), (name, info, summary)
        assert summary["effective_alphas"] == ([2.0] if stored else [4.0])  # sd_old: none stored, rank 4
