"""``loragraph run --sweep`` (docs/CONTRACT.md, "Pinned for the next features": Ray): a grid over one
workflow.

The oracle is the same workflow run once per point with ``--set``: a sweep must write the same
images (byte for byte) under the same names, in the order the grid gives (first --sweep slowest).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import PROMPT, SIZE, STEPS
from loragraph.cli import main, sweep
from loragraph.graph import WorkflowError


def workflow(prefix: str = "sw") -> dict:
    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "float32", "device": "cpu"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sd_a.safetensors",
                                                  "strength": 1.0, "adapter_name": "a"}},
        "3": {"class_type": "Sampler", "inputs": {
            "pipeline": ["2", 0], "prompt": PROMPT, "negative_prompt": "", "seed": 1, "steps": STEPS,
            "cfg": 7.0, "width": SIZE, "height": SIZE, "scheduler": "default", "batch_size": 1}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": prefix}},
    }


def _run(capsys, *argv: str) -> tuple[int, list[dict]]:
    code = main(["run", "--json", *argv])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, lines


def test_parse_ranges_values_and_order():
    axes = sweep.parse_sweeps(["3.seed=1-3", "2.strength=0,0.5", "4.filename_prefix=a b,7x"])
    assert axes[0].values == ("1", "2", "3")
    runs = sweep.grid(axes)
    assert len(runs) == 12
    # the first --sweep varies slowest, the last fastest
    assert [r.values["3.seed"] for r in runs[:4]] == [1, 1, 1, 1]
    assert [r.values["4.filename_prefix"] for r in runs[:2]] == ["a b", "7x"]
    assert runs[2].values == {"3.seed": 1, "2.strength": 0.5, "4.filename_prefix": "a b"}
    assert runs[-1].overrides == ("3.seed=3", "2.strength=0.5", "4.filename_prefix=7x")
    assert sweep.parse_sweep("3.seed=-2--1").values == ("-2", "-1")


@pytest.mark.parametrize("item, words", [
    ("3.seed", "expected NODE_ID.INPUT"),
    ("seed=1,2", "expected NODE_ID.INPUT"),
    ("3.seed=1,,2", "empty value"),
    ("3.seed=5-2", "backwards"),
])
def test_parse_errors_name_the_sweep(item, words):
    with pytest.raises(WorkflowError, match=words) as info:
        sweep.parse_sweeps([item])
    assert "--sweep" in str(info.value)


def test_sweep_writes_what_set_writes(configured, tmp_path, capsys):
    file = tmp_path / "wf.json"
    file.write_text(json.dumps(workflow()))
    models = ["--models-dir", str(configured)]
    code, lines = _run(capsys, str(file), *models, "--output-dir", str(tmp_path / "grid"),
                       "--sweep", "3.seed=1-2", "--sweep", "2.strength=0.5,1")
    assert code == 0
    assert [line["set"] for line in lines] == [
        {"3.seed": 1, "2.strength": 0.5}, {"3.seed": 1, "2.strength": 1},
        {"3.seed": 2, "2.strength": 0.5}, {"3.seed": 2, "2.strength": 1}]
    names = [line["outputs"]["4"]["images"][0]["filename"] for line in lines]
    assert names == [f"sw_{i:05}_.png" for i in range(1, 5)]  # numbered by the counter in run order
    # the oracle: each point run on its own with --set, into a fresh folder, in the same order
    for i, line in enumerate(lines):
        sets = [f"{k}={json.dumps(v)}" for k, v in line["set"].items()]
        args = [a for s in sets for a in ("--set", s)]
        code, (single,) = _run(capsys, str(file), *models, "--output-dir", str(tmp_path / "single"), *args)
        assert code == 0 and "set" not in single
        assert single["outputs"]["4"]["images"][0]["filename"] == names[i]
        grid_png = (tmp_path / "grid" / names[i]).read_bytes()
        assert grid_png == (tmp_path / "single" / names[i]).read_bytes()
    # the points differ: a sweep that ignored its values would write four equal images
    assert len({(tmp_path / "grid" / n).read_bytes() for n in names}) == 4


def test_sweep_errors(configured, tmp_path, capsys):
    file = tmp_path / "wf.json"
    file.write_text(json.dumps(workflow()))
    models = ["--models-dir", str(configured), "--output-dir", str(tmp_path / "out")]
    code, lines = _run(capsys, str(file), str(file), *models, "--sweep", "3.seed=1,2")
    assert code == 2 and len(lines) == 2
    assert all("exactly one workflow" in line["error"]["message"] for line in lines)
    code, (line,) = _run(capsys, str(file), *models, "--sweep", "9.seed=1,2")
    assert (code == 2 and "--sweep '9.seed=1'" in line["error"]["message"]
            and "no node" in line["error"]["message"])
    code, (line,) = _run(capsys, str(file), *models, "--sweep", "3.sed=1,2")
    assert code == 2 and "no input 'sed'" in line["error"]["message"]
    assert not Path(tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the text summary names each run by its values
    assert main(["run", str(file), *models, "--sweep", "3.seed=4-5"]) == 0
    text = capsys.readouterr().out
    assert f"{file} [3.seed=4]: success" in text and f"{file} [3.seed=5]: success" in text
