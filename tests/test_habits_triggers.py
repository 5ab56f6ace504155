"""Trigger words (docs/CONTRACT.md, "Trigger words"): the pinned order of preference over the file's
metadata and its sidecar, in `inspect`, LoRAInfo and the stack nodes' `trigger_words` output; and
hostile metadata or sidecars ignored with a warning, never a crash."""

from __future__ import annotations

import json
import logging
import os

import pytest
from loragraph import host
from loragraph.cli import main
from loragraph.loaders.engine import get_engine
from loragraph.loaders.store import read_lora
from loragraph.nodes.inspect_save import LoRAInfo
from loragraph.nodes.stack import LoRAStack, PromptLoRAs
from loragraph.testing import write_lora_file

TAGS = json.dumps({"10_ink": {f"tag{i:02d}": 100 - i for i in range(15)} | {"ink style": 500},
                   "5_bg": {"tag07": 200}})
PHRASE = "inkwash, red circle"


@pytest.fixture(scope="module")
def trigger_models(tmp_path_factory):
    """loras/ with one file per source and one with all three."""
    root = tmp_path_factory.mktemp("trigger-models")
    loras = root / "loras"
    specs = {
        "phrase": {"modelspec.trigger_phrase": PHRASE},
        "tags": {"ss_tag_frequency": TAGS},
        "sidecar": {},
        "all": {"modelspec.trigger_phrase": PHRASE, "ss_tag_frequency": TAGS},
        "side_and_tags": {"ss_tag_frequency": TAGS},
        "none": {},
    }
    for i, (name, meta) in enumerate(specs.items()):
        write_lora_file(loras / f"{name}.safetensors", "sd", "diffusers", rank=2, seed=40 + i, metadata=meta)
    info = {"trainedWords": ["paper cut", "origami, folded", "paper cut"], "images": [{"url": "x"}]}
    for name in ("sidecar", "all", "side_and_tags"):
        (loras / f"{name}.civitai.info").write_text(json.dumps(info))
    return root


@pytest.fixture()
def models(trigger_models, tmp_path):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=trigger_models, output_dir=tmp_path / "out")
    yield trigger_models
    host.configure(models_dir=before[0], output_dir=before[1])


def words_of(models, name):
    return read_lora(models / "loras" / f"{name}.safetensors").summary()["trigger_words"]


def test_order_of_preference(models):
    top_ten = ["ink style", "tag07", "tag00", "tag01", "tag02", "tag03", "tag04", "tag05", "tag06", "tag08"]
    assert words_of(models, "phrase") == ["inkwash", "red circle"]
    assert words_of(models, "tags") == top_ten
    assert words_of(models, "sidecar") == ["paper cut", "origami", "folded"]  # deduplicated
    assert words_of(models, "all") == ["inkwash", "red circle"]  # the phrase wins over both
    assert words_of(models, "side_and_tags") == ["paper cut", "origami", "folded"]  # sidecar over tags
    assert words_of(models, "none") == []
    # a plain NAME.info is read too
    os.rename(models / "loras" / "sidecar.civitai.info", models / "loras" / "sidecar.info")
    try:
        assert words_of(models, "sidecar") == ["paper cut", "origami", "folded"]
    finally:
        os.rename(models / "loras" / "sidecar.info", models / "loras" / "sidecar.civitai.info")


def test_inspect_lorainfo_and_stack_outputs(models, capsys):
    assert main(["inspect", "all.safetensors", "--json", "--models-dir", str(models)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["summary"]["trigger_words"] == ["inkwash", "red circle"]
    assert main(["inspect", "sidecar.safetensors", "--models-dir", str(models)]) == 0
    assert "paper cut, origami, folded" in capsys.readouterr().out

    base = get_engine().load_pipeline("builtin:tiny-sd")
    stack = "phrase.safetensors\n# tags.safetensors\nsidecar.safetensors:0.5\nall.safetensors"
    out = LoRAStack().run(base, stack)
    handle, words = out["result"] if isinstance(out, dict) else out
    assert words == "inkwash, red circle, paper cut, origami, folded"  # enabled lines only, deduplicated
    info = json.loads(LoRAInfo().run(handle)["result"][0])
    assert info["adapters"]["sidecar"]["trigger_words"] == ["paper cut", "origami", "folded"]
    out = PromptLoRAs().run(base, "a cat <lora:tags:1>")
    _, text, words = out["result"] if isinstance(out, dict) else out
    assert text == "a cat" and words.split(", ")[:2] == ["ink style", "tag07"]


def test_hostile_metadata_and_sidecars_are_ignored_with_a_warning(tmp_path, caplog):
    loras = tmp_path / "loras"
    huge = "x" * 50_000_000
    big_phrase = write_lora_file(loras / "big_phrase.safetensors", "sd", "diffusers", rank=2, seed=1,
                                 metadata={"modelspec.trigger_phrase": huge, "ss_tag_frequency": TAGS})
    big_tags = write_lora_file(loras / "big_tags.safetensors", "sd", "diffusers", rank=2, seed=2,
                               metadata={"ss_tag_frequency": json.dumps({"d": {huge: 3}})})
    bad_json = write_lora_file(loras / "bad_json.safetensors", "sd", "diffusers", rank=2, seed=3,
                               metadata={"ss_tag_frequency": "{not json", "modelspec.trigger_phrase": ""})
    (loras / "bad_json.civitai.info").write_text("{trainedWords: [")
    huge_side = write_lora_file(loras / "huge_side.safetensors", "sd", "diffusers", rank=2, seed=4)
    with open(loras / "huge_side.civitai.info", "wb") as f:
        f.truncate(200_000_000)  # sparse: no disk used, but 200 MB to a reader
    escape = write_lora_file(loras / "escape.safetensors", "sd", "diffusers", rank=2, seed=5)
    (tmp_path / "secret.json").write_text(json.dumps({"trainedWords": ["leaked"]}))
    (loras / "escape.civitai.info").symlink_to(tmp_path / "secret.json")
    (loras / "escape.info").symlink_to("../secret.json")
    odd = write_lora_file(loras / "odd.safetensors", "sd", "diffusers", rank=2, seed=6)
    (loras / "odd.civitai.info").write_text(json.dumps({"trainedWords": "not a list"}))
    deep = write_lora_file(loras / "deep.safetensors", "sd", "diffusers", rank=2, seed=7)
    (loras / "deep.civitai.info").write_text("[" * 5000 + "]" * 5000)

    caplog.set_level(logging.WARNING, logger="loragraph")
    summaries = {p.stem: read_lora(p).summary() for p in (big_phrase, big_tags, bad_json, huge_side, escape,
                                                          odd, deep)}
    assert summaries["big_phrase"]["trigger_words"][:2] == ["ink style", "tag07"]  # phrase refused: tags
    assert summaries["big_tags"]["trigger_words"] == [] and summaries["big_tags"]["tag_frequency"] == {}
    for name in ("bad_json", "huge_side", "escape", "odd", "deep"):
        assert summaries[name]["trigger_words"] == [], name
    text = caplog.text
    assert "modelspec.trigger_phrase is 50000000 characters long" in text
    assert "ss_tag_frequency is 50000" in text and "ss_tag_frequency is not valid JSON" in text
    assert "bad_json.civitai.info: not a readable JSON sidecar" in text
    assert "huge_side.civitai.info is 200000000 bytes" in text
    assert "escape.civitai.info: not a file beside the LoRA" in text and "leaked" not in json.dumps(summaries)
