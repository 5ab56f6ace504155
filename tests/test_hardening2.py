"""Hostile clients and inputs, second round: each case keeps the well-behaved clients served.

A real server (aiohttp on 127.0.0.1, a free port) with three real websocket clients that each queue
a real prompt (the built-in tiny SD pipeline, 64x64, one step) and must hear its completion while
one bad actor misbehaves; real files on disk for the cache, PNG and metadata cases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from loragraph import host
from loragraph.server import ServerConfig
from loragraph.server.app import SERVER_KEY, watch_slow_clients
from test_server import Client, LiveServer, sd_workflow

SEND_TIMEOUT_S = 2.0  # short here so a stalled client is dropped within the test's patience
HEADER_TIMEOUT_S = 2.0  # likewise for a connection that never finishes its request head
GOOD_WAIT_S = 90.0  # three one-step prompts on a shared 2-core machine


@pytest.fixture(scope="module")
def live(models_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening2")
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    config = ServerConfig(models_dir=models_dir, output_dir=root / "output", input_dir=root / "input",
                          user_dir=root / "user", editor=True, ws_send_timeout_s=SEND_TIMEOUT_S,
                          ws_queue_bound=1024, header_timeout_s=HEADER_TIMEOUT_S)
    server = LiveServer(config).start()
    server.root = root

    async def watch() -> None:
        watch_slow_clients(server.runner)

    asyncio.run_coroutine_threadsafe(watch(), server.loop).result(10)
    yield server
    server.stop()
    host.configure(models_dir=before[0], output_dir=before[1])


@pytest.fixture(autouse=True)
def _host_folders(live, models_dir):
    host.configure(models_dir=models_dir, output_dir=live.root / "output")


def hub(live: LiveServer):
    return live.app[SERVER_KEY].hub


async def good_clients_are_served(live: LiveServer, bad_actor, n: int = 3) -> Any:
    """Connect ``n`` good clients, start ``bad_actor()`` beside them, then each good client queues a
    prompt and must hear its completion; returns what the bad actor returned."""
    async with aiohttp.ClientSession() as session:
        clients = [Client(session, live.url) for _ in range(n)]
        for c in clients:
            await c.connect()
        try:
            bad = asyncio.create_task(bad_actor())
            await asyncio.sleep(0.2)
            queued = [await c.queue(sd_workflow(steps=1, seed=i, prefix=f"good{i}"))
                      for i, c in enumerate(clients)]
            for c, q in zip(clients, queued, strict=True):
                messages = await c.finished(q["prompt_id"], timeout=GOOD_WAIT_S)
                assert "executed" in [m["type"] for m in messages]
            return await asyncio.wait_for(bad, GOOD_WAIT_S)
        finally:
            for c in clients:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.close(), 5)


def ws_upgrade(port: int, client_id: str, rcvbuf: int = 4096) -> socket.socket:
    """A websocket that completes the handshake and then never reads (a tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    assert sock.recv(12).startswith(b"HTTP/1.1 101")
    return sock


# -- websocket fan-out --------------------------------------------------------------------------


def test_a_client_id_that_is_not_a_string_is_refused_and_silences_nobody(live):
    async def bad_actor() -> int:
        async with aiohttp.ClientSession() as session, session.post(
                live.url + "/prompt", json={"prompt": sd_workflow(steps=1), "client_id": {"x": 1}}) as resp:
            body = await resp.json()
            assert "client_id" in body["error"]["message"]
            return resp.status

    assert asyncio.run(good_clients_are_served(live, bad_actor)) == 400


def test_a_client_that_never_reads_is_dropped_and_the_others_keep_their_events(live):
    bad_id = "stalled-" + uuid.uuid4().hex[:8]
    sock = ws_upgrade(live.port, bad_id)
    try:
        async def bad_actor() -> float:
            # 24 MB of broadcasts, the way the worker thread sends them: far past the stalled
            # client's socket buffers, so its sends block; the good clients read every one.
            blob = "x" * 64_000
            started = time.monotonic()
            for i in range(384):
                hub(live).send_sync("progress", {"value": i, "max": 384, "pad": blob})
                if i % 32 == 0:
                    await asyncio.sleep(0.01)
            while bad_id in hub(live).sockets:
                assert time.monotonic() - started < 30, "the stalled client was never dropped"
                await asyncio.sleep(0.1)
            return time.monotonic() - started

        dropped_after = asyncio.run(good_clients_are_served(live, bad_actor))
        assert dropped_after < SEND_TIMEOUT_S + 20
    finally:
        sock.close()

    # A client connecting after the drop hears its events at once: no backlog is left to drain.
    async def newcomer() -> None:
        async with aiohttp.ClientSession() as session:
            client = Client(session, live.url)
            started = time.monotonic()
            await client.connect()
            queued = await client.queue(sd_workflow(steps=1, seed=9, prefix="late"))
            await client.finished(queued["prompt_id"], timeout=GOOD_WAIT_S)
            assert time.monotonic() - started < GOOD_WAIT_S
            await client.close()

    asyncio.run(newcomer())


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


# -- request bodies -----------------------------------------------------------------------------


def test_json_bombs_are_refused_before_parsing_and_off_the_event_loop(live):
    flat = b"[" + b"[]," * 3_300_000 + b"[]]"  # 9.9 MB, 3.3 million lists: under the size cap
    deep = b"[" * 4_950_000 + b"]" * 4_950_000

    async def bad_actor() -> tuple[list[int], float]:
        async with aiohttp.ClientSession() as session:
            async def post(body: bytes) -> int:
                async with session.post(live.url + "/prompt", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    answer = await resp.json()
                    assert answer["error"]["type"] == "invalid_json", answer
                    return resp.status

            async def queue_latency() -> float:
                worst = 0.0
                for _ in range(20):
                    started = time.monotonic()
                    async with session.get(live.url + "/queue") as resp:
                        assert resp.status == 200
                    worst = max(worst, time.monotonic() - started)
                    await asyncio.sleep(0.05)
                return worst

            posts = asyncio.gather(*(post(flat if i % 2 else deep) for i in range(10)))
            worst = await queue_latency()
            return list(await posts), worst

    statuses, worst = asyncio.run(good_clients_are_served(live, bad_actor))
    assert statuses == [400] * 10
    assert worst < 3.0, f"GET /queue took {worst:.1f} s while the bodies were parsed"


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


# -- the editor's settings, uploads and model metadata ---------------------------------------------


def raw_request(port: int, method: str, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    """One request over a plain socket, every byte as given: (status, body)."""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _part(disposition: str, extra: str = "") -> bytes:
    return (f"--XB\r\n{disposition}\r\n{extra}Content-Type: image/png\r\n\r\nDATA\r\n"
            "--XB--\r\n").encode("latin-1")


MULTIPART_CASES = {
    "CR/LF in the filename": _part('Content-Disposition: form-data; name="image"; filename="a\r\nb.png"'),
    "a header line without a colon": _part('Content-Disposition: form-data; name="image"; filename="a.png"',
                                           "NoColonHere\r\n"),
    "a 100 KB header line": _part('Content-Disposition: form-data; name="image"; filename="a.png"',
                                  "X-Long: " + "a" * 100_000 + "\r\n"),
    "a body that is not multipart": b"this is not a multipart body at all",
    "no closing boundary": b'--XB\r\nContent-Disposition: form-data; name="image"; filename="a.png"'
                           b"\r\n\r\nDATA",
}


def test_malformed_settings_metadata_and_uploads_are_400_and_silence_nobody(live):
    header = ('{"__metadata__": {"x": ' + DEEP + "}}").encode()
    deep_header = Path(host.folder_roots("loras")[0]) / "zz_deep_header_probe.safetensors"
    deep_header.write_bytes(len(header).to_bytes(8, "little") + header)

    def bad_requests() -> dict[str, int]:
        port, got = live.port, {}
        got["POST /settings/X NaN"] = raw_request(port, "POST", "/settings/X", b"NaN", "application/json")[0]
        got["POST /settings/X deep"] = raw_request(port, "POST", "/settings/X", DEEP.encode(),
                                                   "application/json")[0]
        got["POST /settings deep"] = raw_request(port, "POST", "/settings",
                                                 ('{"a": ' + DEEP + "}").encode(), "application/json")[0]
        for name, body in MULTIPART_CASES.items():
            got[f"upload, {name}"] = raw_request(port, "POST", "/upload/image", body,
                                                 "multipart/form-data; boundary=XB")[0]
        return got

    async def bad_actor() -> dict[str, int]:
        got = await asyncio.to_thread(bad_requests)
        async with aiohttp.ClientSession() as session:
            async with session.get(live.url + "/settings") as resp:
                json.loads(await resp.text())  # strict: still JSON, NaN never stored
                got["GET /settings"] = resp.status
            async with session.get(live.url + "/view_metadata/loras",
                                   params={"filename": deep_header.name}) as resp:
                got["GET /view_metadata, 5,000-deep header"] = resp.status
        return got

    try:
        got = asyncio.run(good_clients_are_served(live, bad_actor))
    finally:
        deep_header.unlink()
    expected = {name: 400 for name in got}
    expected.update({"GET /settings": 200, "GET /view_metadata, 5,000-deep header": 404})
    assert got == expected


# -- the startup cleaner ----------------------------------------------------------------------------


def test_the_cleaner_removes_only_what_a_killed_save_left(live, tmp_path):
    """User files named like temp files (.lg-tmp-*, .tmp-*, from SaveImage, an upload, /userdata)
    survive a restart; a temp file a killed save left is removed; nothing can be saved under a name
    kept for temp files."""
    from loragraph import host
    from loragraph.base import disk

    input_dir = live.root / "input"
    input_dir.mkdir(exist_ok=True)
    users = [input_dir / ".lg-tmp-mine.png", input_dir / ".tmp-upload.png", input_dir / ".lg-tmp-_00001_.png",
             live.root / "user" / "default" / ".userdata-notes.json"]
    killed = input_dir / ".lg-tmp-0123456789ab.png"
    for path in (*users, killed):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"mine")
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    assert host.clean_stale_temps(input_dir, live.root / "user") == 1
    assert not killed.exists() and all(p.read_bytes() == b"mine" for p in users)

    with pytest.raises(ValueError, match="temp files"):
        disk.write_new(input_dir, lambda n: f".lg-tmp-00000000abc{n}.png", 1, b"x")
    body = (b'--XB\r\nContent-Disposition: form-data; name="image"; filename=".lg-tmp-00000000abcd.png"\r\n'
            b"Content-Type: image/png\r\n\r\nDATA\r\n--XB--\r\n")
    assert raw_request(live.port, "POST", "/upload/image", body, "multipart/form-data; boundary=XB")[0] == 400
    reserved = ".lg-tmp-00000000abcd.json"
    status = raw_request(live.port, "POST", f"/userdata/{reserved}", b"{}", "application/json")[0]
    assert status in (400, 403) and not (live.root / "user" / "default" / reserved).exists()


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


# -- slowloris --------------------------------------------------------------------------------------


def test_connections_that_never_finish_a_request_are_closed(live):
    def open_slow() -> list[socket.socket]:
        socks = []
        for i in range(60):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=30)
            if i % 2:  # a request head that trickles in and never ends; the others send nothing
                sock.sendall(f"GET /queue HTTP/1.1\r\nHost: 127.0.0.1:{live.port}\r\n".encode())
            socks.append(sock)
        return socks

    async def bad_actor() -> float:
        socks = await asyncio.to_thread(open_slow)
        started = time.monotonic()
        open_ = set(range(len(socks)))
        try:
            while open_ and time.monotonic() - started < 30:
                for i in list(open_):
                    sock = socks[i]
                    sock.setblocking(False)
                    try:
                        if sock.recv(1024) == b"":
                            open_.discard(i)
                            continue
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        open_.discard(i)
                        continue
                    if i % 2:
                        with contextlib.suppress(OSError):
                            sock.send(b"X")  # one more byte of header, far too slowly
                await asyncio.sleep(0.25)
            assert not open_, f"{len(open_)} of {len(socks)} slow connections still open after 30 s"
            return time.monotonic() - started
        finally:
            for sock in socks:
                sock.close()

    closed_after = asyncio.run(good_clients_are_served(live, bad_actor))
    assert closed_after < HEADER_TIMEOUT_S + 10


# -- shutdown -----------------------------------------------------------------------------------


def test_shutdown_tells_the_clients_of_pending_prompts_that_they_will_not_run(models_dir, tmp_path, caplog):
    config = ServerConfig(models_dir=models_dir, output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                          user_dir=tmp_path / "user", editor=False)
    server = LiveServer(config).start()

    async def main() -> tuple[list[str], list[dict[str, Any]]]:
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            await client.connect()
            running = await client.queue(sd_workflow(steps=400, seed=1, prefix="long"))
            pending = [(await client.queue(sd_workflow(steps=1, seed=2 + i, prefix="p")))["prompt_id"]
                       for i in range(2)]
            await client.wait_for(lambda m: m["type"] == "progress"
                                  and m["data"].get("prompt_id") == running["prompt_id"])
            await asyncio.to_thread(server.stop)  # as SIGTERM does: the app's shutdown hooks run
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client._reader, 10)
            return pending, client.messages

    with caplog.at_level("WARNING", logger="loragraph.server"):
        pending, messages = asyncio.run(main())
    errors = {m["data"]["prompt_id"]: m["data"]["exception_message"] for m in messages
              if m["type"] == "execution_error"}
    for prompt_id in pending:
        assert "shut down before this prompt ran" in errors.get(prompt_id, ""), errors
        assert any(prompt_id in r.getMessage() and "will not run" in r.getMessage() for r in caplog.records)


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
