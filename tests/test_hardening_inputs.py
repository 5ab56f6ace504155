"""Hostile files and inputs, second round: LoRA files replaced in place, PNG text bombs, huge sweeps,
numbers past Python's limits, terminal escapes, metadata built to crash readers, weights a pipeline
cannot survive, bad filename prefixes, and fused weight changes that must reuse their memory.

Real files on disk, the real CLI in-process, the built-in tiny SD pipeline; the server cases are in
test_hardening2.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from loragraph import host
from loragraph.server import ServerConfig
from test_server import LiveServer, sd_workflow


@pytest.fixture(autouse=True)
def _restore_host():
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    yield
    host.configure(models_dir=before[0], output_dir=before[1])


# -- the LoRA cache key -------------------------------------------------------------------------


def _png_loras(path: Path) -> list[dict[str, Any]]:
    from PIL import Image

    with Image.open(path) as image:
        return json.loads(image.text["loras"])


def _run_lora(tmp_path: Path, models: Path, lora_name: str, prefix: str) -> tuple[Path, np.ndarray]:
    from loragraph.cli import main

    wf = sd_workflow(steps=1, seed=3, prefix=prefix)
    wf["4"] = {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": lora_name,
                                                     "strength": 1.0, "adapter_name": ""}}
    wf["2"]["inputs"]["pipeline"] = ["4", 0]
    path = tmp_path / f"{prefix}.json"
    path.write_text(json.dumps(wf))
    out = tmp_path / "out"
    assert main(["run", str(path), "--models-dir", str(models), "--output-dir", str(out), "--quiet"]) == 0
    png = max(out.glob(f"{prefix}_*.png"), key=lambda p: p.stat().st_mtime_ns)
    from PIL import Image

    with Image.open(png) as image:
        return png, np.asarray(image.convert("RGB"), dtype=np.int16)


def test_a_lora_replaced_with_its_size_and_mtime_kept_is_read_again(tmp_path):
    """``cp -p``, rsync and restores keep the mtime; new bytes of the same size must still be read."""
    from loragraph.loaders import store
    from loragraph.testing import write_lora_file

    models = tmp_path / "models"
    (models / "loras").mkdir(parents=True)
    live_file = models / "loras" / "x.safetensors"
    write_lora_file(live_file, "sd", "diffusers", rank=4, seed=31)
    newer = write_lora_file(models / "loras" / "y.safetensors", "sd", "diffusers", rank=4, seed=32)
    assert live_file.stat().st_size == newer.stat().st_size
    old_sha, new_sha = store.file_sha256(live_file), store.file_sha256(newer)
    assert old_sha != new_sha

    first_png, first = _run_lora(tmp_path, models, "x.safetensors", "before")
    assert _png_loras(first_png)[0]["sha256"] == old_sha
    _, oracle = _run_lora(tmp_path, models, "y.safetensors", "oracle")
    assert np.abs(first - oracle).max() > 0  # the two LoRAs give different pictures

    st = live_file.stat()
    time.sleep(0.05)  # past the file system's timestamp tick
    live_file.write_bytes(newer.read_bytes())  # in place, same inode, as cp -p does

    os.utime(live_file, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (live_file.stat().st_size, live_file.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    assert store.file_sha256(live_file) == new_sha
    assert store.read_lora(live_file).sha256 == new_sha
    again_png, again = _run_lora(tmp_path, models, "x.safetensors", "after")
    assert _png_loras(again_png)[0]["sha256"] == new_sha
    assert np.array_equal(again, oracle)


def test_a_model_file_rewritten_with_its_size_and_mtime_kept_gets_a_new_cache_key(tmp_path):
    """The same rule for models: a diffusers folder's weights, a single-file checkpoint and a denoiser
    file rewritten in place (same size, mtime restored) change the pipeline's cache key, and the
    validation header cache reads a LoRA again."""
    from loragraph import host
    from loragraph.loaders import preflight
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.pipelines import make_source
    from loragraph.testing import write_lora_file

    models = tmp_path / "models"
    folder = models / "diffusers" / "m"
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (models / "checkpoints").mkdir()
    (models / "loras").mkdir()
    weights, checkpoint = folder / "w.bin", models / "checkpoints" / "c.safetensors"
    lora = write_lora_file(models / "loras" / "x.safetensors", "sd", "diffusers", rank=4, seed=31)
    other = write_lora_file(models / "loras" / "y.safetensors", "sd", "diffusers", rank=8, seed=32)
    weights.write_bytes(b"a" * 64)
    checkpoint.write_bytes(b"a" * 64)
    host.configure(models_dir=str(models), output_dir=str(tmp_path / "out"))

    def rewrite(path: Path, data: bytes) -> None:
        st = path.stat()
        time.sleep(0.05)  # past the file system's timestamp tick
        path.write_bytes(data)  # in place, same inode, as cp -p does
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    before = make_source("m").fingerprint, make_source("c.safetensors").fingerprint
    first = preflight.read_lora_header(lora, "x.safetensors")
    rewrite(weights, b"b" * 64)
    rewrite(checkpoint, b"b" * 64)
    after = make_source("m").fingerprint, make_source("c.safetensors").fingerprint
    assert before[0] != after[0] and before[1] != after[1]
    st = lora.stat()
    time.sleep(0.05)
    lora.write_bytes(other.read_bytes()[: st.st_size].ljust(st.st_size, b" "))  # damaged, same size
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(LoraFileError, match="truncated"):  # read again, not the cached header
        preflight.read_lora_header(lora, "x.safetensors")
    assert first.format


# -- PNG text bombs -----------------------------------------------------------------------------


def write_png(path: Path, texts: list[tuple[bytes, bytes, bytes]]) -> Path:
    """A 1x1 grey PNG with ``(chunk type, keyword, payload)`` text chunks before its pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = [chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))]
    for kind, keyword, payload in texts:
        if kind == b"zTXt":
            body.append(chunk(kind, keyword + b"\0\0" + zlib.compress(payload, 9)))
        elif kind == b"iTXt":
            body.append(chunk(kind, keyword + b"\0\1\0\0\0" + zlib.compress(payload, 9)))
        else:
            body.append(chunk(kind, keyword + b"\0" + payload))
    body += [chunk(b"IDAT", zlib.compress(b"\0\x80")), chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(body))
    return path


def cli_json(*argv: str) -> tuple[int, list[dict[str, Any]], str]:
    """``loragraph ARGV --json`` in this process: (exit code, its JSON lines, everything printed)."""
    import io
    from contextlib import redirect_stdout

    from loragraph.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main([*argv, "--json"])
    text = out.getvalue()
    return code, [json.loads(line) for line in text.splitlines() if line.startswith("{")], text


@pytest.mark.parametrize("texts", [
    [(b"zTXt", b"prompt", b" " * (40 << 20))],  # one chunk, 40 MiB inflated
    [(b"iTXt", b"workflow", b" " * (40 << 20))],
    [(b"zTXt", f"k{i}".encode(), b"\0" * (8 << 20)) for i in range(40)],  # 40 x 8 MiB
], ids=["zTXt", "iTXt", "many-chunks"])
def test_png_text_bombs_are_refused_before_they_inflate(tmp_path, texts):
    from loragraph.graph.png import MAX_PNG_TEXT_BYTES

    bomb = write_png(tmp_path / "bomb.png", texts)
    assert bomb.stat().st_size < 2 << 20
    code, lines, _ = cli_json("validate", str(bomb))
    assert code == 2 and lines[-1]["status"] == "invalid"
    assert f"more than {MAX_PNG_TEXT_BYTES} bytes" in json.dumps(lines[-1])


def test_png_text_under_the_cap_still_reads(tmp_path):
    """The cap counts every text chunk; a workflow a little under it is read whole."""
    from loragraph.graph.png import MAX_PNG_TEXT_BYTES, read_png_text

    padding = b" " * (MAX_PNG_TEXT_BYTES - 1000)
    png = write_png(tmp_path / "ok.png", [(b"zTXt", b"prompt", b"{}" + padding), (b"tEXt", b"x", b"y" * 900)])
    texts = read_png_text(png)
    assert len(texts["prompt"]) == MAX_PNG_TEXT_BYTES - 998 and texts["x"] == "y" * 900


# -- sweeps -------------------------------------------------------------------------------------


def test_a_large_sweep_builds_each_run_only_when_it_is_taken(tmp_path):
    """``--sweep 6.seed=1-5000`` over a 200-node workflow: the first run comes at once, with one
    workflow copy in memory, not 5,000 of them."""
    import itertools
    import tracemalloc

    from loragraph.cli.workflows import load_workflows, sweep_workflows
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS as registry

    wf = sd_workflow(steps=1)
    for i in range(10, 207):  # 197 more SaveImage nodes, each reading the one Sampler
        wf[str(i)] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": f"p{i}"}}
    path = tmp_path / "big.json"
    path.write_text(json.dumps(wf))
    (loaded,) = load_workflows([str(path)], [], registry)
    tracemalloc.start()
    try:
        runs = sweep_workflows([loaded], ["2.seed=1-5000"], registry)
        first_three = list(itertools.islice(runs, 3))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r.prompt["2"]["inputs"]["seed"] for r in first_three] == [1, 2, 3]
    assert [r.sweep.label() for r in first_three] == ["2.seed=1", "2.seed=2", "2.seed=3"]
    assert peak < 20 * 2**20, f"taking three runs of the sweep peaked at {peak / 2**20:.0f} MiB"
    assert next(runs).prompt["2"]["inputs"]["seed"] == 4  # the rest follow, in order


# -- numbers past Python's limits -----------------------------------------------------------------


def test_a_5000_digit_integer_is_an_invalid_file_and_the_next_file_still_runs(tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sd_workflow(steps=1)))
    long_int = json.dumps(sd_workflow(steps=1)).replace('"seed": 1', '"seed": ' + "7" * 5000)
    bad = tmp_path / "long.json"
    bad.write_text(long_int)
    png = write_png(tmp_path / "long.png", [(b"tEXt", b"prompt", long_int.encode())])
    code, lines, printed = cli_json("validate", str(bad), str(png), str(good))
    assert code == 2 and "Traceback" not in printed
    assert [(line["file"], line["status"]) for line in lines] == [
        (str(bad), "invalid"), (str(png), "invalid"), (str(good), "valid")]
    for line in lines[:2]:
        assert "4300 digits" in line["error"]["message"]


# -- terminal escapes ---------------------------------------------------------------------------

ESC_NAME = "e\x1b]0;owned\x07\x1b[2J"


def test_escape_sequences_from_files_never_reach_the_terminal(tmp_path, capsys):
    from loragraph.cli import main
    from loragraph.testing import write_lora_file

    models = tmp_path / "models"
    lora = write_lora_file(models / "loras" / f"{ESC_NAME}.safetensors", "sd", "diffusers", seed=5,
                           metadata={"ss_output_name": "\x1b[31mred\x1b[0m", "note": "\x9b2J\u202eevil"})
    wf = sd_workflow(steps=1, prefix="esc")
    wf["4"] = {"class_type": "LoadLoRA", "_meta": {"title": "\x1b[8mhidden"},
               "inputs": {"pipeline": ["1", 0], "lora_name": lora.name, "strength": "x\x1b[1m",
                          "adapter_name": ""}}
    wf["2"]["inputs"]["pipeline"] = ["4", 0]
    path = tmp_path / f"{ESC_NAME}.json"
    path.write_text(json.dumps(wf))
    folders = ["--models-dir", str(models), "--output-dir", str(tmp_path / "out")]

    printed = []
    for argv in (["inspect", str(lora), "--verbose"], ["validate", str(path), *folders],
                 ["run", str(path), *folders]):
        main(argv)
        got = capsys.readouterr()
        printed.append(got.out + got.err)
    inspected, validated, ran = printed
    assert "\\x1b[31mred" in inspected and "owned" in inspected  # shown, as escapes
    assert "hidden" in validated and "owned" in validated and "hidden" in ran
    for text in printed:
        assert not any(ch in text for ch in "\x1b\x07\x9b\u202e"), repr(text[:300])


# -- metadata that crashed the tools, and what errors tell ----------------------------------------

DEEP = "[" * 5000 + "]" * 5000
TAG_FREQUENCIES = {"deep": '{"d": {"t": ' + DEEP + "}}", "nan": '{"d": {"tag": NaN, "ok": 2}}',
                   "huge": '{"d": {"tag": 1e999, "ok": 2}}'}


@pytest.fixture()
def hostile_loras(tmp_path):
    from loragraph.testing import write_lora_file

    models = tmp_path / "models"
    loras = models / "loras"
    for name, tags in TAG_FREQUENCIES.items():
        write_lora_file(loras / f"tags_{name}.safetensors", "sd", "kohya", seed=41,
                        metadata={"ss_tag_frequency": tags})
    write_lora_file(loras / "deep_config.safetensors", "sd", "diffusers", seed=42,
                    metadata={"lora_adapter_metadata": '{"r": ' + DEEP + "}"})
    (loras / "passwd.safetensors").symlink_to("/etc/passwd")
    return models


def test_hostile_tag_frequencies_are_skipped_by_inspect_and_lora_info(hostile_loras, capsys):
    from loragraph.cli import main

    for name in TAG_FREQUENCIES:
        code = main(["inspect", str(hostile_loras / "loras" / f"tags_{name}.safetensors")])
        printed = capsys.readouterr()
        assert code == 0 and "Traceback" not in printed.out + printed.err, printed.err[-500:]

    live = LiveServer(ServerConfig(models_dir=hostile_loras, output_dir=hostile_loras / "out",
                                   input_dir=hostile_loras / "in", user_dir=hostile_loras / "user",
                                   editor=False)).start()

    async def ask() -> list[tuple[int, dict]]:
        answers = []
        async with aiohttp.ClientSession() as session:
            for name in [*(f"tags_{n}.safetensors" for n in TAG_FREQUENCIES), "passwd.safetensors",
                         "missing.safetensors"]:
                async with session.get(live.url + "/loragraph/lora_info", params={"name": name}) as resp:
                    answers.append((resp.status, await resp.json()))
        return answers

    try:
        answers = asyncio.run(ask())
    finally:
        live.stop()
    assert [status for status, _ in answers] == [200, 200, 200, 422, 404]
    assert answers[0][1]["tag_frequency"] == {}
    assert answers[1][1]["tag_frequency"] == {} and answers[2][1]["tag_frequency"] == {}
    for _, body in answers[3:]:
        assert str(hostile_loras) not in body["error"] and "/etc" not in body["error"], body
    assert "3475222254926655346" not in answers[3][1]["error"]


def test_a_deep_lora_adapter_metadata_is_refused_naming_lora_name(hostile_loras, tmp_path):
    wf = sd_workflow(steps=1, prefix="deep")
    wf["4"] = {"class_type": "LoadLoRA",
               "inputs": {"pipeline": ["1", 0], "lora_name": "deep_config.safetensors", "strength": 1.0,
                          "adapter_name": ""}}
    wf["2"]["inputs"]["pipeline"] = ["4", 0]
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(wf))
    code, lines, printed = cli_json("run", str(path), "--models-dir", str(hostile_loras),
                                    "--output-dir", str(tmp_path / "out"))
    error = lines[-1]["error"]
    assert code == 1 and "Traceback" not in printed and error["node_id"] == "4"
    assert error["exception_message"].startswith("lora_name: ") and "lora_adapter_metadata" in error[
        "exception_message"]


def test_a_file_that_is_not_safetensors_does_not_have_its_bytes_read_out(tmp_path):
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora

    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(LoraFileError) as info:
        read_lora(secret)
    assert str(int.from_bytes(b"root:x:0", "little")) not in str(info.value)


# -- weights a pipeline cannot survive ------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("weights", "1e30"), ("weights", "0.5, -101"),
                                         ("text_encoder_weights", "1e300")])
def test_a_finite_weight_too_large_for_the_pipeline_is_refused_in_validation(tmp_path, models_dir, name,
                                                                            value):
    wf = sd_workflow(steps=1, prefix="huge")
    wf["4"] = {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sd_a.safetensors",
                                                     "strength": 1.0, "adapter_name": ""}}
    wf["5"] = {"class_type": "SetAdapterWeights",
               "inputs": {"pipeline": ["4", 0], "adapter_names": "", "weights": "1.0",
                          "text_encoder_weights": "", "block_weights": "", name: value}}
    wf["2"]["inputs"]["pipeline"] = ["5", 0]
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(wf))
    code, lines, _ = cli_json("run", str(path), "--models-dir", str(models_dir),
                              "--output-dir", str(tmp_path / "out"))
    assert code == 2 and lines[-1]["status"] == "invalid"
    errors = lines[-1]["error"]["node_errors"]["5"]["errors"]
    assert any(f"{name}: weights must lie between -100 and 100" in e["details"] for e in errors), errors
    assert not list((tmp_path / "out").glob("*.png"))


def test_a_weight_schedule_strength_too_large_is_refused_naming_keyframes():
    from loragraph.base.errors import NodeInputError
    from loragraph.nodes.widget_text import parse_keyframes

    assert parse_keyframes("0:100, 1:-100") == ((0.0, 100.0), (1.0, -100.0))
    with pytest.raises(NodeInputError) as info:
        parse_keyframes("0:1, 0.5:1e30")
    assert info.value.input_name == "keyframes" and "between -100 and 100" in str(info.value)


# -- filename_prefix --------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix, words", [("a\x00b", "NUL byte"), ("p" * 300, "longer than 200 bytes"),
                                           (".", "hidden files"), ("sub/.x", "hidden files"),
                                           ("é" * 101, "longer than 200 bytes")])
def test_a_bad_filename_prefix_is_refused_naming_the_input(tmp_path, prefix, words):
    import torch
    from loragraph.base.errors import NodeInputError
    from loragraph.nodes.image import SaveImage

    host.configure(output_dir=tmp_path / "out")
    with pytest.raises(NodeInputError) as info:
        SaveImage().save_images(torch.zeros(1, 8, 8, 3), prefix)
    assert info.value.input_name == "filename_prefix" and words in str(info.value)
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    # a long prefix that fits, and a dotted name that is not hidden, still save
    saved = SaveImage().save_images(torch.zeros(1, 8, 8, 3), "p" * 200 + "/x.y")
    assert saved["ui"]["images"][0]["filename"] == "x.y_00001_.png"


# -- fused weight changes reuse their memory ------------------------------------------------------


def test_a_weight_change_on_fused_adapters_writes_into_the_fused_tensors_it_had(models_dir):
    """unfuse + set_adapters + fuse reuses the fused layers' memory, and gives the same bits as a
    pipeline fused once at the new weight (and as raw diffusers within float rounding)."""
    import torch
    from loragraph.loaders import transitions as tr
    from loragraph.loaders.engine import Engine
    from loragraph.nodes import widget_text as wt

    host.configure(models_dir=models_dir)
    engine = Engine()
    base = engine.load_pipeline("builtin:tiny-sd", dtype="float32", device="cpu")
    a = tr.add_adapter(base, engine.lora_spec(base, "sd_a.safetensors", 1.0, "a"))
    fused_06 = wt.fuse(wt.set_weights(a, "a", "0.6"), True, True, 1.0, False, "")
    fused_09 = wt.fuse(wt.set_weights(a, "a", "0.9"), True, True, 1.0, False, "")
    live, _ = engine.realize(fused_06)

    def fused_weights() -> dict[str, torch.Tensor]:
        return {f"{c}.{n}": m.get_base_layer().weight for c in ("unet", "text_encoder")
                for n, m in getattr(live.pipe, c).named_modules() if hasattr(m, "merged_adapters")
                and m.merged_adapters}

    before = {k: w.data_ptr() for k, w in fused_weights().items()}
    assert before
    engine.realize(fused_09)
    after = fused_weights()
    assert {k: w.data_ptr() for k, w in after.items()} == before  # the same memory, rewritten
    assert not live.fusion_spares  # nothing held past the transition

    fresh_engine = Engine()
    fresh_base = fresh_engine.load_pipeline("builtin:tiny-sd", dtype="float32", device="cpu")
    fresh_a = tr.add_adapter(fresh_base, fresh_engine.lora_spec(fresh_base, "sd_a.safetensors", 1.0, "a"))
    fresh_live, _ = fresh_engine.realize(wt.fuse(wt.set_weights(fresh_a, "a", "0.9"), True, True, 1.0,
                                                 False, ""))
    for key, weight in after.items():
        comp, name = key.split(".", 1)
        other = getattr(fresh_live.pipe, comp).get_submodule(name).get_base_layer().weight
        assert torch.equal(weight, other), key
    engine.realize(tr.unfuse(fused_09, True, True))
    assert not live.backups
