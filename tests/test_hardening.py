"""Issue 13: hostile requests and inputs, each refused cleanly.

A real server (aiohttp on 127.0.0.1) driven with raw HTTP and websocket handshakes; real processes
racing to save into one folder; real LoRA files with broken numbers; real symlink loops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import zlib
from pathlib import Path

import aiohttp
import pytest
from loragraph import host
from loragraph.base import disk, limits
from loragraph.cli import build_parser, main
from loragraph.server import ServerConfig, create_app
from test_server import LiveServer


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    (root / "models" / "loras").mkdir(parents=True)
    (root / "input").mkdir()
    left = root / "input" / ".lg-tmp-0123456789ab.png"  # a save killed before this server started
    left.write_bytes(b"")
    os.utime(left, (time.time() - 7200, time.time() - 7200))
    config = ServerConfig(models_dir=root / "models", output_dir=root / "output", input_dir=root / "input",
                          user_dir=root / "user", editor=False, allow_hosts=("proxy.example",),
                          max_upload_size=64 * 1024 * 1024)
    server = LiveServer(config).start()
    server.root = root
    yield server
    server.stop()
    host.configure(models_dir=before[0], output_dir=before[1])


def raw_http(port: int, method: str, path: str, headers: dict[str, str],
             body: bytes = b"") -> tuple[int, dict, bytes]:
    """One request over a plain socket: every header exactly as given (Host included), nothing added."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
            if b"101 Switching Protocols" in data[:40] and b"\r\n\r\n" in data:
                break  # a websocket: the server keeps the connection open
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    answer = {}
    for line in header_lines:
        k, _, v = line.partition(":")
        answer[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), answer, rest


def ws_handshake(port: int, host_header: str, origin: str | None) -> int:
    headers = {"Host": host_header, "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13"}
    if origin is not None:
        headers["Origin"] = origin
    lines = ["GET /ws?clientId=x HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall("\r\n".join(lines).encode())
        first = sock.recv(4096)
    return int(first.split()[1])


# -- 1. cross-site requests and DNS rebinding ----------------------------------------------------

EMPTY_PROMPT = json.dumps({"prompt": {}}).encode()  # passes the guard, then fails validation: 400


def _origin_cases(port: int) -> list[tuple[str, dict[str, str], int]]:
    own = f"127.0.0.1:{port}"
    return [
        ("no Origin (curl, Python clients)", {"Host": own}, 400),
        ("own origin", {"Host": own, "Origin": f"http://{own}"}, 400),
        ("localhost, own origin", {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}, 400),
        ("[::1] host name", {"Host": f"[::1]:{port}"}, 400),
        ("proxy name allowed with --allow-host",
         {"Host": "proxy.example", "Origin": "https://proxy.example"}, 400),
        ("page served through the proxy", {"Host": own, "Origin": "https://proxy.example"}, 400),
        ("Origin: null (sandboxed iframe, file:// page)", {"Host": own, "Origin": "null"}, 403),
        ("empty Origin", {"Host": own, "Origin": ""}, 403),
        ("file:// Origin", {"Host": own, "Origin": "file://"}, 403),
        ("another site", {"Host": own, "Origin": "http://evil.example"}, 403),
        ("another port on localhost", {"Host": own, "Origin": "http://127.0.0.1:1"}, 403),
        ("localhost page posting to 127.0.0.1", {"Host": own, "Origin": f"http://localhost:{port}"}, 403),
        ("Host 0.0.0.0", {"Host": f"0.0.0.0:{port}"}, 403),
        ("Host 0.0.0.0 with its own Origin",
         {"Host": f"0.0.0.0:{port}", "Origin": f"http://0.0.0.0:{port}"}, 403),
        ("rebinding: attacker's name as Host",
         {"Host": f"rebind.evil.example:{port}", "Origin": f"http://rebind.evil.example:{port}"}, 403),
        ("LAN address as Host", {"Host": f"192.168.1.5:{port}"}, 403),
        ("garbage Host", {"Host": "a b c"}, 403),
    ]


def test_posts_from_other_origins_and_other_host_names_are_refused(live):
    for name, headers, expected in _origin_cases(live.port):
        status, answer, body = raw_http(live.port, "POST", "/prompt",
                                        {**headers, "Content-Type": "application/json"}, EMPTY_PROMPT)
        assert status == expected, (name, status, body[:200])
        assert answer.get("x-content-type-options") == "nosniff", name
    # reading is refused too for a foreign Host (a rebinding page would read /history)
    assert raw_http(live.port, "GET", "/history", {"Host": f"rebind.evil.example:{live.port}"})[0] == 403
    assert raw_http(live.port, "GET", "/history", {"Host": f"127.0.0.1:{live.port}"})[0] == 200


def test_the_server_cleans_stale_temp_files_when_it_starts(live):
    assert not (live.root / "input" / ".lg-tmp-0123456789ab.png").exists()


def test_a_refused_upload_writes_nothing(live):
    boundary = "b" + uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\nDATA\r\n--{boundary}--\r\n").encode()
    headers = {"Host": f"127.0.0.1:{live.port}", "Origin": "null",
               "Content-Type": f"multipart/form-data; boundary={boundary}"}
    assert raw_http(live.port, "POST", "/upload/image", headers, body)[0] == 403
    assert not (live.root / "input" / "x.png").exists()


def test_websocket_needs_the_servers_own_origin_and_host(live):
    own = f"127.0.0.1:{live.port}"
    assert ws_handshake(live.port, own, None) == 101
    assert ws_handshake(live.port, own, f"http://{own}") == 101
    for origin in ("null", "", "file://", "http://evil.example"):
        assert ws_handshake(live.port, own, origin) == 403, origin
    assert ws_handshake(live.port, f"rebind.evil.example:{live.port}", None) == 403

    async def client_library():
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.url}/ws?clientId=a", headers={"Origin": live.url}) as ws:
                assert (await ws.receive_json())["type"] == "status"
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await session.ws_connect(f"{live.url}/ws?clientId=b", headers={"Origin": "null"})
            assert err.value.status == 403

    asyncio.run(client_library())


def test_allow_remote_warns_that_the_api_is_unauthenticated(caplog, tmp_path):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    try:
        with caplog.at_level(logging.WARNING, logger="loragraph.server"):
            create_app(ServerConfig(allow_remote=True, editor=False, input_dir=tmp_path))
        assert any("no authentication" in r.getMessage() for r in caplog.records)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="loragraph.server"):
            create_app(ServerConfig(editor=False, input_dir=tmp_path))
        assert not any("no authentication" in r.getMessage() for r in caplog.records)
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])
    args = build_parser().parse_args(["serve", "--allow-host", "a.example", "--allow-host", "b.example"])
    assert args.allow_host == ["a.example", "b.example"]


# -- 2. files served by /view --------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of zeros, compressed as it streams (a 4100x4100 one is 17 KB)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _upload(live, name: str, data: bytes, raw_body: bytes | None = None) -> tuple[int, dict, bytes]:
    boundary = "b" + uuid.uuid4().hex
    body = raw_body if raw_body is not None else (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + (
        f"\r\n--{boundary}--\r\n".encode())
    return raw_http(live.port, "POST", "/upload/image",
                    {"Host": f"127.0.0.1:{live.port}",
                     "Content-Type": f"multipart/form-data; boundary={boundary}"},
                    body)


def test_view_shows_only_media_inline_with_nosniff_and_a_csp(live):
    xhtml = b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(document.domain)</script></html>'
    assert _upload(live, "evil.xml", xhtml)[0] == 200
    assert _upload(live, "fine.png", _png(8, 8))[0] == 200
    assert _upload(live, "notes.txt", b"text")[0] == 200
    own = {"Host": f"127.0.0.1:{live.port}"}
    for name, inline in (("evil.xml", False), ("notes.txt", False), ("fine.png", True)):
        status, headers, _ = raw_http(live.port, "GET", f"/view?type=input&filename={name}", own)
        assert status == 200
        assert headers["content-disposition"].startswith("inline" if inline else "attachment"), (
            name, headers)
        assert headers["x-content-type-options"] == "nosniff"
        assert ("default-src 'none'" in headers["content-security-policy"]
                and "sandbox" in headers["content-security-policy"])


def test_view_preview_is_capped_and_bad_requests_are_400_not_500(live):
    own = {"Host": f"127.0.0.1:{live.port}"}
    assert _upload(live, "fine.png", _png(8, 8))[0] == 200
    assert _upload(live, "huge.png", _png(4100, 4100))[0] == 200  # 16.8 M pixels, just over the cap
    assert _upload(live, "bomb.png", _png(13500, 13500))[0] == 200  # past PIL's own bomb limit: it raises
    for name in ("huge.png", "bomb.png"):
        status, _, body = raw_http(live.port, "GET", f"/view?type=input&filename={name}&preview=webp;90", own)
        assert status == 400 and b"too large" in body, (name, status, body[:100])
    assert raw_http(live.port, "GET", "/view?type=input&filename=huge.png", own)[0] == 200  # served whole
    assert raw_http(live.port, "GET", "/view?type=input&filename=fine.png&preview=jpeg;80", own)[0] == 200
    for preview in ("webp;1000", "webp;99999999999999999999"):
        assert raw_http(live.port, "GET", f"/view?type=input&filename=fine.png&preview={preview}",
                        own)[0] == 400
    assert raw_http(live.port, "GET", "/view?type=input&filename=fine.png&channel=zz", own)[0] == 400
    assert _upload(live, "a" * 300 + ".png", b"x")[0] == 400
    assert raw_http(live.port, "GET", f"/view?type=input&filename={'a' * 300}.png", own)[0] == 400
    for broken in (b"--not-the-boundary\r\ngarbage", b"\xff" * 100,
                   b"--X\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\nDATA"):
        status, _, body = _upload(live, "", b"", raw_body=broken)
        assert status == 400, (broken[:30], status, body[:200])


# -- 3. writing files ----------------------------------------------------------------------------

_RACER = textwrap.dedent("""
    import os, sys, time, torch
    from loragraph import host
    from loragraph.nodes.image import SaveImage
    host.configure(output_dir=sys.argv[1])
    me, count, go = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    open(go + f".ready{me}", "w").close()
    while not os.path.exists(go):  # both start saving at once
        time.sleep(0.001)
    names = []
    for i in range(count):
        image = torch.full((1, 8, 8, 3), (me * count + i) / 255.0)  # each image distinct
        names.append(SaveImage().save_images(image, "race")["ui"]["images"][0]["filename"])
    print("\\n".join(names))
""")


def test_two_processes_saving_one_prefix_lose_no_file(tmp_path):
    from PIL import Image

    count = 60
    go = tmp_path.parent / f"{tmp_path.name}-go"
    old = os.umask(0o022)  # the processes inherit it: their PNGs must be 0644, as ComfyUI's are
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(me), str(count), str(go)],
                                  stdout=subprocess.PIPE, text=True) for me in (0, 1)]
    finally:
        os.umask(old)
    deadline = time.time() + 120
    while not all(Path(f"{go}.ready{me}").exists() for me in (0, 1)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    reported = outs[0] + outs[1]
    assert len(set(reported)) == 2 * count  # no name reported twice
    files = sorted(p.name for p in tmp_path.glob("race_*.png"))
    assert files == sorted(reported)
    values = {Image.open(tmp_path / f).getpixel((0, 0))[0] for f in files}
    assert len(values) == 2 * count  # every image survived, none overwritten by another
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
    assert {(tmp_path / f).stat().st_mode & 0o777 for f in files} == {0o644}


def test_files_get_the_mode_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        disk.write_file(tmp_path / "a.json", b"{}")
        path, n = disk.write_new(tmp_path, lambda i: f"b_{i}.png", 1, lambda p: Path(p).write_bytes(b"x"))
        assert (path.name, n) == ("b_1.png", 1)
        assert disk.write_new(tmp_path, lambda i: f"b_{i}.png", 1, b"y")[0].name == "b_2.png"
        os.umask(0o077)
        disk.write_file(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b_1.png").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "b_1.png").read_bytes() == b"x" and (tmp_path / "b_2.png").read_bytes() == b"y"


def test_a_failed_write_leaves_nothing(tmp_path):
    def broken(path: str) -> None:
        Path(path).write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        disk.write_new(tmp_path, lambda i: f"x_{i}.png", 1, broken)
    with pytest.raises(RuntimeError):
        disk.write_file(tmp_path / "y.safetensors", broken)
    assert list(tmp_path.iterdir()) == []


def test_temp_files_are_hidden_from_listings_and_stale_ones_cleaned(tmp_path, capsys):
    loras = tmp_path / "models" / "loras"
    loras.mkdir(parents=True)
    (loras / "real.safetensors").write_bytes(b"x")
    stale = [loras / ".lg-tmp-0123456789ab.safetensors", loras / "sub" / ".lg-tmp-ba9876543210.png"]
    fresh = loras / ".lg-tmp-456456456456.safetensors"
    # the user's own files: only names our saves give their temp files are cleaned
    others = [loras / ".hidden-by-the-user", loras / ".tmp-abc.safetensors", loras / ".lg-tmp-mine.png"]
    (loras / "sub").mkdir()
    for p in (*stale, fresh, *others):
        p.write_bytes(b"")
    hour_ago = time.time() - 2 * 3600
    for p in (*stale, *others):
        os.utime(p, (hour_ago, hour_ago))
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    try:
        host.configure(models_dir=tmp_path / "models", output_dir=tmp_path / "output")
        assert host.list_loras() == ["real.safetensors"]
        # `loragraph run` cleans up when it starts (before it even reads the workflow)
        (tmp_path / "none.json").write_text("{}")
        main(["run", str(tmp_path / "none.json"), "--json", "--models-dir", str(tmp_path / "models"),
              "--output-dir", str(tmp_path / "output")])
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and all(p.exists() for p in others)  # one being written now; files not ours


# -- 4 and 5. numbers and limits -----------------------------------------------------------------


@pytest.mark.parametrize("value", [float("inf"), 1e30])
def test_a_lora_with_inf_or_absurd_values_is_refused_naming_the_tensor(tmp_path, value):
    import safetensors.torch
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora
    from loragraph.testing import write_lora_file

    path = write_lora_file(tmp_path / "broken.safetensors", "sd", "diffusers", seed=5)
    tensors = safetensors.torch.load_file(str(path))
    key = sorted(k for k in tensors if "lora_B" in k)[3]
    tensors[key][0, 0] = value
    safetensors.torch.save_file(tensors, str(path))
    lf = read_lora(path)
    with pytest.raises(LoraFileError, match=f"broken.safetensors: tensor '{key}'"):
        lf.check_finite()


def test_non_finite_numbers_are_refused_where_json_is_parsed(live):
    own = {"Host": f"127.0.0.1:{live.port}", "Content-Type": "application/json"}
    for text in (b'{"prompt": {}, "number": NaN}', b'{"prompt": {}, "number": Infinity}',
                 b'{"prompt": {}, "number": -Infinity}', b'{"prompt": {}, "number": 1e999}'):
        status, _, body = raw_http(live.port, "POST", "/prompt", own, text)
        assert status == 400 and json.loads(body)["error"]["type"] == "invalid_json", (text, body)
    status, _, body = raw_http(live.port, "GET", "/queue", own)
    assert status == 200 and json.loads(body) is not None  # strict JSON: parses


def test_deep_json_is_invalid_input_everywhere(live, tmp_path, capsys):
    deep = "[" * 10_000 + "]" * 10_000
    status, _, body = raw_http(live.port, "POST", "/prompt",
                               {"Host": f"127.0.0.1:{live.port}", "Content-Type": "application/json"},
                               ('{"prompt": ' + deep + "}").encode())
    assert status == 400 and "nested deeper" in json.loads(body)["error"]["details"]
    medium = '{"prompt": {"1": {"class_type": "LoRAInfo", "inputs": {"x": ' + "[" * 150 + "]" * 150 + "}}}}"
    status, _, body = raw_http(live.port, "POST", "/prompt",
                               {"Host": f"127.0.0.1:{live.port}", "Content-Type": "application/json"},
                               medium.encode())
    assert status == 400 and "nested deeper" in body.decode()
    for i, text in enumerate((deep, '{"1": ' + "{" * 10_000 + "}" * 10_001, '{"1": {"x": NaN}}')):
        path = tmp_path / f"deep{i}.json"
        path.write_text(text)
        for command in ("validate", "run"):
            assert main([command, str(path), "--json"]) == 2
            line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert line["status"] == "invalid", line


def test_a_deep_safetensors_header_is_a_file_error(tmp_path):
    from loragraph.loaders.lora_file import LoraFileError
    from loragraph.loaders.store import read_lora

    header = ('{"__metadata__": {"x": ' + "[" * 5000 + "]" * 5000 + "}}").encode()
    path = tmp_path / "deep.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(LoraFileError, match=r"deep\.safetensors"):
        read_lora(path)


def test_weights_that_are_not_finite_are_refused_in_validation(configured):
    from loragraph.graph import validate_prompt
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    def prompt(**weights):
        return {
            "1": {"class_type": "LoadPipeline",
                  "inputs": {"model": "builtin:tiny-sd", "dtype": "float32", "device": "cpu"}},
            "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sd_a.safetensors",
                                                        "strength": 1.0, "adapter_name": ""}},
            "3": {"class_type": "SetAdapterWeights", "inputs": {"pipeline": ["2", 0], "adapter_names": "",
                                                                 "weights": "1.0", "text_encoder_weights": "",
                                                                 "block_weights": "", **weights}},
            "4": {"class_type": "LoRAInfo", "inputs": {"pipeline": ["3", 0]}},
        }

    assert validate_prompt(prompt(), HEADLESS_NODE_CLASS_MAPPINGS)[0] is True
    for name, value in (("weights", "nan"), ("weights", "0.5, inf"), ("text_encoder_weights", "-Infinity"),
                        ("weights", float("nan"))):
        ok, _error, _outputs, node_errors = validate_prompt(prompt(**{name: value}),
                                                            HEADLESS_NODE_CLASS_MAPPINGS)
        assert ok is False
        details = " ".join(e["details"] for e in node_errors["3"]["errors"])
        assert f"{name}: " in details and "finite" in details, details


def test_the_scheduler_limit_on_steps():
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    ddim = DDIMScheduler(steps_offset=1)
    assert limits.steps_refusal(ddim, 999) is None
    assert "1000 steps" in limits.steps_refusal(ddim, 1000)
    assert limits.steps_refusal(EulerDiscreteScheduler.from_config(ddim.config), 1000) is None
    assert limits.steps_refusal(FlowMatchEulerDiscreteScheduler(), 1000) is None


def test_memory_floor_names_what_to_lower():
    from loragraph.builtin_models.tiny_sd import build_tiny_sd

    pipe = build_tiny_sd()
    free = limits.free_memory("cpu")
    assert free and limits.memory_refusal(pipe, 512, 512, 4) is None
    assert limits.memory_refusal(pipe, 16384, 16384, 64)[0] == "width"
    side = 1024
    per_image = limits.sampling_bytes(pipe, side, side, 1)
    batch = int(free * limits.MEMORY_MARGIN / per_image) + 2
    if batch <= 64:
        name, message = limits.memory_refusal(pipe, side, side, batch)
        assert name == "batch_size" and f"batch_size {batch}" in message


# -- 6. folder walks -----------------------------------------------------------------------------


def test_symlink_loops_in_loras_do_not_hang_the_listing(tmp_path):
    loras = tmp_path / "models" / "loras"
    (loras / "sub").mkdir(parents=True)
    (loras / "a.safetensors").write_bytes(b"x")
    (loras / "sub" / "b.safetensors").write_bytes(b"x")
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "c.safetensors").write_bytes(b"x")
    os.symlink(".", loras / "loop")
    os.symlink("..", loras / "sub" / "up")
    os.symlink(shared, loras / "shared")  # a linked folder is still listed
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    found: list[list[str]] = []
    try:
        host.configure(models_dir=tmp_path / "models")
        worker = threading.Thread(target=lambda: found.append(host.list_loras()), daemon=True)
        worker.start()
        worker.join(30)
        assert not worker.is_alive(), "listing a folder with symlink loops did not finish"
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])
    assert found == [["a.safetensors", "shared/c.safetensors", "sub/b.safetensors"]]
