"""A new user's first hour: mistakes are refused before any model loads, naming the node and the one input.

Each row of MISTAKES is one mistake on an example workflow (the quickstart, the schedule example or
all_nodes.json): a `--set`, a changed workflow file, a wrong folder or a wrong file. For each, `loragraph
run` must exit 2 without building a pipeline (the engine's `build_pipeline` calls are counted) and
without reading a safetensors LoRA's weights (the store's reads are counted), print an error line
naming the node and the input, and show no traceback. Beside the table: the checks that each
stands for something (a good run builds the model; the examples stay valid), the `--sweep` JSON form,
serve's `/prompt` and the README's Python, run as written (docs/CONTRACT.md: Validation before loading).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from loragraph.cli import main
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
QUICKSTART = EXAMPLES / "workflows" / "quickstart.json"
SCHEDULE = EXAMPLES / "workflows" / "schedule_outline.json"
ALL_NODES = EXAMPLES / "workflows" / "all_nodes.json"
LORA_STACK = EXAMPLES / "workflows" / "lora_stack.json"
PROMPT_LORAS = EXAMPLES / "workflows" / "prompt_loras.json"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """The examples' models folder plus the files users get wrong: damaged, foreign, pickled, renamed."""
    from loragraph.testing import write_bad_files

    root = tmp_path_factory.mktemp("first_hour_models")
    shutil.copytree(EXAMPLES / "models", root, dirs_exist_ok=True)
    write_bad_files(root / "loras" / "bad")
    (root / "loras" / "bad" / "notes.safetensors").write_text("my favourite LoRAs: palette, outline\n")
    # Checkpoints whose headers alone decide: a family no one knows, and an SD 1.x file (weights unread).
    import safetensors.torch
    import torch

    (root / "checkpoints").mkdir(exist_ok=True)
    safetensors.torch.save_file({"encoder.layers.0.weight": torch.zeros(2, 2)},
                                str(root / "checkpoints" / "mystery.safetensors"))
    sd1 = ("model.diffusion_model.output_blocks.11.0.skip_connection.weight",
           "first_stage_model.decoder.conv_in.weight",
           "cond_stage_model.transformer.text_model.final_layer_norm.weight")
    safetensors.torch.save_file({k: torch.zeros(1) for k in sd1},
                                str(root / "checkpoints" / "sd15.safetensors"))
    return root


class Counted:
    """Calls that pass through to the real function, counted: pipelines built, LoRA files read whole."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from loragraph.loaders import engine, store

        self.builds = 0
        self.reads: list[str] = []
        real_build, real_read = engine.build_pipeline, store.read_lora

        def build(source):
            self.builds += 1
            return real_build(source)

        def read(path):
            self.reads.append(str(path))
            return real_read(path)

        monkeypatch.setattr(engine, "build_pipeline", build)
        monkeypatch.setattr(store, "read_lora", read)


def edited(path: Path, tmp_path: Path, change) -> Path:
    data = json.loads(path.read_text())
    change(data)
    out = tmp_path / path.name
    out.write_text(json.dumps(data))
    return out


def _stray_sampler_name(wf):
    wf["6"]["inputs"]["sampler_name"] = "euler"


def _misspelled_strength(wf):
    wf["2"]["inputs"]["strenght"] = wf["2"]["inputs"].pop("strength")


def _block_weights_for_demo_c(wf):
    wf["4"]["inputs"]["block_weights"] = json.dumps({"demo_c": {"unet": 1}})


def _weights_after_the_stack_name_a_typo(wf):
    # SetAdapterWeights after a LoRAStack: the stack's adapters are known before anything loads.
    wf["9"] = {"class_type": "SetAdapterWeights",
               "inputs": {"pipeline": ["2", 0], "adapter_names": "palete", "weights": "1.0",
                          "text_encoder_weights": "", "block_weights": ""}}
    wf["5"]["inputs"]["pipeline"] = ["9", 0]


def _link_to_nowhere(wf):
    wf["6"]["inputs"]["pipeline"] = ["9", 0]


# (id, workflow, --set items, other arguments or a workflow edit, node, input, words the error holds)
MISTAKES = [
    # wrong files
    ("text file renamed .safetensors", QUICKSTART, ["2.lora_name=bad/notes.safetensors"], None,
     "2", "lora_name", "not a safetensors file"),
    ("truncated download", QUICKSTART, ["2.lora_name=bad/truncated.safetensors"], None,
     "2", "lora_name", "truncated"),
    ("a model, not a LoRA", QUICKSTART, ["2.lora_name=bad/unrelated_model.safetensors"], None,
     "2", "lora_name", "no LoRA keys"),
    ("empty file", QUICKSTART, ["2.lora_name=bad/empty.safetensors"], None, "2", "lora_name", "0 bytes"),
    ("unsafe pickle", QUICKSTART, ["2.lora_name=bad/unsafe_pickle.pt"], None,
     "2", "lora_name", "refused"),
    ("SDXL LoRA on an SD 1.x model", QUICKSTART, ["2.lora_name=bad/sdxl_lora_for_sd.safetensors"], None,
     "2", "lora_name", "made for SDXL"),
    ("a checkpoint of no known family", QUICKSTART, ["1.model=mystery.safetensors"], None,
     "1", "model", "no model family diffusers knows"),
    ("an SDXL LoRA on an SD 1.x checkpoint", QUICKSTART,
     ["1.model=sd15.safetensors", "2.lora_name=bad/sdxl_lora_for_sd.safetensors"], None,
     "2", "lora_name", "made for SDXL"),
    ("a LoRA chosen as the model", QUICKSTART, ["1.model=shapes/palette.safetensors"], None,
     "1", "model", "not in"),
    ("a stack line that is a text file", LORA_STACK, ["2.loras=bad/notes.safetensors:1.0"], None,
     "2", "loras", "not a safetensors file"),
    ("an SDXL LoRA in a stack on an SD 1.x model", LORA_STACK,
     ["2.loras=shapes/palette.safetensors\nbad/sdxl_lora_for_sd.safetensors:0.5"], None,
     "2", "loras", "made for SDXL"),
    ("a prompt tag naming a truncated file", PROMPT_LORAS, ["2.text=a circle <lora:bad/truncated:0.5>"], None,
     "2", "text", "truncated"),
    # names
    ("an adapter typo after a LoRAStack", LORA_STACK, [], _weights_after_the_stack_name_a_typo,
     "9", "adapter_names", "did you mean 'palette'"),
    ("adapter-name typo", QUICKSTART, ["4.adapter_names=palette, outlien"], None,
     "4", "adapter_names", "did you mean 'outline'"),
    ("duplicate adapter_name", QUICKSTART, ["3.adapter_name=palette"], None,
     "3", "adapter_name", "already loaded"),
    ("an adapter named twice", QUICKSTART, ["4.adapter_names=palette, palette"], None,
     "4", "adapter_names", "named twice"),
    ("adapter name with a dot", QUICKSTART, ["2.adapter_name=my.lora"], None, "2", "adapter_name", "'.'"),
    ("fuse an adapter not loaded", QUICKSTART, ["5.adapter_names=outlin"], None,
     "5", "adapter_names", "did you mean 'outline'"),
    ("schedule an adapter not loaded", SCHEDULE, ["3.adapter_name=outlne"], None,
     "3", "adapter_name", "did you mean 'outline'"),
    ("delete an adapter not loaded", ALL_NODES, ["9.adapter_names=demo_c"], None,
     "9", "adapter_names", "no adapter named demo_c"),
    ("move an adapter not loaded", ALL_NODES, ["8.adapter_names=demo"], None,
     "8", "adapter_names", "no adapter named demo"),
    ("save an adapter not loaded", ALL_NODES, ["13.adapter_name=demo_bb"], None,
     "13", "adapter_name", "did you mean 'demo_b'"),
    ("model typo", QUICKSTART, ["1.model=builtin:shapez"], None,
     "1", "model", "did you mean 'builtin:shapes'"),
    ("LoRA name typo", QUICKSTART, ["2.lora_name=shapes/palete.safetensors"], None,
     "2", "lora_name", "did you mean 'shapes/palette.safetensors'"),
    ("LoRA name without its subfolder", QUICKSTART, ["2.lora_name=palette.safetensors"], None,
     "2", "lora_name", "did you mean 'shapes/palette.safetensors'"),
    ("scheduler typo", QUICKSTART, ["6.scheduler=eulr"], None, "6", "scheduler", "did you mean 'euler'"),
    ("dtype typo", QUICKSTART, ["1.dtype=fp16"], None, "1", "dtype", "not in"),
    # text inputs
    ("keyframes out of order", SCHEDULE, ["3.keyframes=0.5:1, 0.2:0"], None,
     "3", "keyframes", "increase strictly"),
    ("keyframes that are not numbers", SCHEDULE, ["3.keyframes=start:1"], None,
     "3", "keyframes", "not a number"),
    ("weights that are not numbers", QUICKSTART, ["4.weights=abc"], None,
     "4", "weights", "expected numbers"),
    ("one weight too many", QUICKSTART, ["4.weights=1.0, 0.8, 0.5"], None, "4", "weights", "3"),
    ("text encoder weights that are not numbers", QUICKSTART, ["4.text_encoder_weights=half"], None,
     "4", "text_encoder_weights", "expected numbers"),
    ("block_weights that are not JSON", QUICKSTART, ["4.block_weights={unet: 1}"], None,
     "4", "block_weights", "not valid JSON"),
    ("block_weights for an adapter not named", ALL_NODES, [], _block_weights_for_demo_c,
     "4", "block_weights", "demo_c"),
    ("a text encoder the model lacks", ALL_NODES, ["7.text_encoder=text_encoder_2"], None,
     "7", "text_encoder", "text_encoder_2"),
    ("a denoiser the model lacks", QUICKSTART, ["2.target=transformer_2"], None,
     "2", "target", "no transformer_2"),
    # numbers
    ("width not a multiple of 8", QUICKSTART, ["6.width=33"], None, "6", "width", "multiple of 8"),
    ("steps 0", QUICKSTART, ["6.steps=0"], None, "6", "steps", "smaller than min"),
    ("negative seed", QUICKSTART, ["6.seed=-1"], None, "6", "seed", "smaller than min"),
    ("lora_scale NaN", QUICKSTART, ["5.lora_scale=NaN"], None, "5", "lora_scale", "finite"),
    ("strength as text", QUICKSTART, ["2.strength=strong"], None, "2", "strength", "FLOAT"),
    # unknown inputs
    ("stray sampler_name in the JSON", QUICKSTART, [], _stray_sampler_name, "6", "sampler_name",
     "Sampler has no input 'sampler_name'"),
    ("misspelled strength in the JSON", QUICKSTART, [], _misspelled_strength, "2", "strenght",
     "did you mean 'strength'"),
    ("--set input typo", QUICKSTART, ["6.sead=7"], None, "6", "sead", "did you mean 'seed'"),
    ("a link to a node that is not there", QUICKSTART, [], _link_to_nowhere,
     "6", "pipeline", "does not exist"),
    # folders
    ("output folder that cannot exist", QUICKSTART, [], ["--output-dir", "/proc/nope"],
     "7", "filename_prefix", "/proc/nope"),
    ("filename_prefix outside the output folder", QUICKSTART, ["7.filename_prefix=../../x"], None,
     "7", "filename_prefix", "outside the output folder"),
    ("wrong --models-dir", QUICKSTART, [], ["--models-dir", "{tmp}/nowhere"],
     "2", "lora_name", "nowhere/loras (does not exist)"),
    ("--models-dir at the loras folder itself", QUICKSTART, [], ["--models-dir", "{models}/loras"],
     "2", "lora_name", "loras/loras (does not exist)"),
]


@pytest.mark.parametrize(("workflow", "sets", "extra", "node", "input_name", "words"),
                         [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_refused_before_any_model_loads(models, tmp_path, monkeypatch, capsys, workflow, sets,
                                                     extra, node, input_name, words):
    counted = Counted(monkeypatch)
    args = ["--models-dir", str(models), "--output-dir", str(tmp_path / "output")]
    if callable(extra):
        workflow = edited(workflow, tmp_path, extra)
    elif extra:
        args += [a.format(tmp=tmp_path, models=models) for a in extra]
    code = main(["run", str(workflow), *args, *(x for s in sets for x in ("--set", s))])
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert counted.builds == 0, "a pipeline was built before the mistake was refused"
    assert not [p for p in counted.reads if p.endswith(".safetensors")], "a LoRA's weights were read"
    lines = [line for line in out.splitlines() if "error:" in line]
    assert lines, out
    line = next((x for x in lines if f"node {node} (" in x and (f"input '{input_name}'" in x
                                                               or f"{node}.{input_name}" in x)), "")
    assert f"input '{input_name}'" in line or f"{node}.{input_name}" in line, lines
    assert words in line, line
    assert "Traceback" not in out + err
    assert not list((tmp_path / "output").glob("**/*.png"))


def test_a_custom_check_blames_its_one_input_once(models, tmp_path, capsys):
    args = ["--models-dir", str(models), "--output-dir", str(tmp_path)]
    for item, input_name in (("6.width=33", "width"), ("4.weights=abc", "weights")):
        assert main(["validate", str(QUICKSTART), *args, "--set", item]) == 2
        lines = [x for x in capsys.readouterr().out.splitlines() if "error:" in x]
        assert len(lines) == 1 and f"input '{input_name}'" in lines[0], lines


def test_the_counters_count_a_good_run_and_the_examples_stay_valid(models, tmp_path, monkeypatch, capsys):
    # The mistakes' "no build" means something: the same run without a mistake builds the model once.
    from loragraph.loaders.engine import get_engine

    get_engine().unload_all()
    counted = Counted(monkeypatch)
    args = ["--models-dir", str(models), "--output-dir", str(tmp_path / "output")]
    assert main(["run", str(QUICKSTART), *args, "--set", "6.steps=2"]) == 0, capsys.readouterr()
    assert counted.builds == 1
    capsys.readouterr()
    for workflow in sorted((EXAMPLES / "workflows").glob("*.json")):
        assert main(["validate", str(workflow), *args]) == 0, capsys.readouterr().out
        out = capsys.readouterr().out
        assert "warning" not in out, out  # all_nodes.json does not trip its own "changes nothing" check


def test_a_sweep_over_per_lora_strengths_changes_the_image(models, tmp_path, capsys):
    # The README's sweep, on the quickstart: one run per element of the JSON array.
    out_dir = tmp_path / "output"
    code = main(["run", str(QUICKSTART), "--models-dir", str(models), "--output-dir", str(out_dir), "--json",
                 "--sweep", '4.weights=["1.0, 0.8", "0.0, 0.8", "1.0, 0.0"]', "--set", "6.steps=4"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["set"] for x in lines] == [{"4.weights": w} for w in ("1.0, 0.8", "0.0, 0.8", "1.0, 0.0")]
    images = [np.asarray(Image.open(out_dir / f"quickstart_0000{i}_.png"), dtype=np.int16) for i in (1, 2, 3)]
    assert all(np.abs(images[0] - other).mean() > 1.0 for other in images[1:])


def test_the_sweep_json_form_keeps_strings_and_is_refused_when_broken(models, tmp_path, capsys):
    from loragraph.cli.sweep import grid, parse_sweep

    # each element is a run's value as it is: the string "0.5" stays a string, the number 1 a number
    runs = grid([parse_sweep('4.weights=["1.0, 0.8", "0.5"]'), parse_sweep("6.seed=[1, 2]")])
    expected = [{"4.weights": w, "6.seed": s} for w in ("1.0, 0.8", "0.5") for s in (1, 2)]
    assert [r.values for r in runs] == expected
    assert main(["run", str(QUICKSTART), "--models-dir", str(models), "--output-dir", str(tmp_path),
                 "--sweep", '4.weights=["1.0, 0.8", ']) == 2
    assert "JSON array" in capsys.readouterr().out


def _python_blocks(readme: str, section: str) -> list[str]:
    body = readme.split(f"### {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_readme_python_runs_as_written(tmp_path, monkeypatch, capsys):
    # Run from a folder holding the examples, as from a checkout; the blocks set other inputs, so the
    # images differ (the values reach the run).
    (tmp_path / "examples").symlink_to(EXAMPLES)
    monkeypatch.chdir(tmp_path)
    blocks = _python_blocks((REPO / "README.md").read_text(), "Python")
    assert len(blocks) >= 2
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)
    written = sorted(p.name for p in (tmp_path / "output").glob("*.png"))
    assert len(written) == len(blocks), written  # one quickstart image each
    first, second = (np.asarray(Image.open(tmp_path / "output" / n), dtype=np.int16) for n in written[:2])
    assert np.abs(first - second).mean() > 1.0  # the weights it sets change the image


def test_serve_prompt_takes_editor_json_and_refuses_mistakes_before_loading(models_dir, tmp_path,
                                                                           monkeypatch):
    import asyncio

    import aiohttp
    from loragraph import host
    from loragraph.server import ServerConfig
    from test_server import LiveServer

    counted = Counted(monkeypatch)
    editor = json.loads((REPO / "tests" / "fixtures" / "editor" / "plain_v04.json").read_text())
    node_3 = next(n for n in editor["nodes"] if n["id"] == 3)
    assert node_3["widgets_values"][2] == "b"
    host.configure(models_dir=models_dir, output_dir=tmp_path / "output")
    live = LiveServer(ServerConfig(input_dir=tmp_path / "input")).start()

    async def post(prompt) -> tuple[int, dict]:
        async with aiohttp.ClientSession() as session, \
                session.post(f"{live.url}/prompt", json={"prompt": prompt}) as r:
            return r.status, await r.json()

    try:
        node_3["widgets_values"][2] = "sd_a"  # node 2 loads sd_a.safetensors as "sd_a" already
        status, body = asyncio.run(post(editor))
        assert status == 400, body
        (error,) = body["node_errors"]["3"]["errors"]
        assert error["extra_info"]["input_name"] == "adapter_name" and "already loaded" in error["details"]
        node_3["widgets_values"][2] = "b"
        api = json.loads((REPO / "tests" / "fixtures" / "editor" / "plain_v04.api.json").read_text())
        api["5"]["inputs"]["sampler_name"] = "euler"
        status, body = asyncio.run(post(api))
        assert status == 400 and body["node_errors"]["5"]["errors"][0]["type"] == "unknown_input"
        assert counted.builds == 0
        status, body = asyncio.run(post(editor))
        assert status == 200 and body["node_errors"] == {}, body  # queued, not "Prompt has no outputs"
    finally:
        live.stop()


def test_pickle_refusal_gives_no_advice_to_turn_safety_off(models):
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora

    with pytest.raises(LoraFileError) as err:
        read_lora(models / "loras" / "bad" / "unsafe_pickle.pt")
    text = str(err.value)
    assert "\x1b[" not in text and "weights_only` set to `False`" not in text and "False" not in text
    assert "NotATensor" in text or "GLOBAL" in text, text


def test_inspect_names_the_same_base_model_with_and_without_model_and_draws_no_loading_bars(capsys):
    import subprocess
    import sys

    lora = EXAMPLES / "models" / "loras" / "shapes" / "outline.safetensors"
    proc = subprocess.run([sys.executable, "-m", "loragraph", "inspect", str(lora)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "base model:    builtin:shapes" in proc.stdout
    assert "Loading pipeline components" not in proc.stderr and "it/s" not in proc.stderr, proc.stderr
    assert main(["inspect", str(lora), "--model", "builtin:shapes"]) == 0
    assert "base model:    builtin:shapes (all 79 modules land on it)" in capsys.readouterr().out


def test_a_widget_fed_by_another_node_is_checked_when_the_run_gets_there(models):
    # adapter_names comes from a node with no stand-in: validation cannot know it, so it does not guess
    # ("all adapters" against two weights would be a false error); the run then checks it for real.
    from loragraph import host
    from loragraph.graph import validate_prompt
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    host.configure(models_dir=models)
    wf = json.loads(QUICKSTART.read_text())
    wf["8"] = {"class_type": "LoRAInfo", "inputs": {"pipeline": ["3", 0]}}  # its STRING output feeds node 4
    wf["4"]["inputs"]["adapter_names"] = ["8", 0]
    wf["4"]["inputs"]["weights"] = "1.0, 0.8, 0.5"
    ok, _, _, node_errors = validate_prompt(wf, HEADLESS_NODE_CLASS_MAPPINGS)
    assert ok and not node_errors, node_errors
    wf["4"]["inputs"]["adapter_names"] = "palette, outline"  # the same mistake, knowable now
    _, _, _, node_errors = validate_prompt(wf, HEADLESS_NODE_CLASS_MAPPINGS)  # LoRAInfo (8) stays good
    assert node_errors["4"]["errors"][0]["extra_info"]["input_name"] == "weights"
