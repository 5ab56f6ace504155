"""Replay the hostile inputs of two rounds against a real server and the CLI; one row per probe.

    python tools/probe_hostile.py          # exit 0 when every row is ok

Everything runs offline in a temporary folder: the built-in tiny SD pipeline, LoRA files written
here (one good, one each with NaN, inf and 1e30, one with a 5,000-deep header), a real aiohttp
server on a free loopback port (raw sockets, so every header is exactly the probe's), two real
processes racing to save into one folder, and a symlink loop in the loras folder. The second round
(rows 7-24) adds three well-behaved websocket clients that must keep hearing their prompts finish
while one bad actor misbehaves (``second_round``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROWS: list[tuple[bool, str, str]] = []
SETUP: dict = {}  # the temporary folder and the CLI's folder options


def probe(name: str, check: Callable[[], tuple[bool, str]]) -> None:
    t0 = time.perf_counter()
    try:
        ok, detail = check()
    except Exception as ex:  # a probe that crashes is a failed row, not a failed script
        ok, detail = False, f"{type(ex).__name__}: {ex}"
    detail = f"{detail} ({time.perf_counter() - t0:.1f} s)"
    ROWS.append((ok, name, detail))
    print(f"{'ok  ' if ok else 'FAIL'}  {name:<58} {detail}", flush=True)


# -- plumbing -----------------------------------------------------------------------------------


def raw_http(port: int, method: str, path: str, headers: dict[str, str],
             body: bytes = b"") -> tuple[int, dict, bytes]:
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1") + body)
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
            if data.startswith(b"HTTP/1.1 101"):
                break
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines_ = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines_)}
    return int(status.split()[1]), headers, rest


def png_of_zeros(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    packer = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "b" + uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data
    body += f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def cli(*argv: str) -> tuple[int, dict]:
    """``loragraph ARGV --json`` in this process: (exit code, its last JSON line)."""
    from loragraph.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "--json"])
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}


def expect_status(expected: int,
                  request: Callable[[], tuple[int, dict, bytes]]) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        status, _, answer = request()
        return status == expected, f"status {status}" + (f": {answer[:50]!r}" if status != expected else "")
    return check


def expect_run(code: int, node: str, name: str, **changes: dict) -> Callable[[], tuple[bool, str]]:
    """``loragraph run`` of the probe workflow with ``changes``: exit ``code``, the error naming ``name``."""
    def check() -> tuple[bool, str]:
        got, line = run_json(workflow(**changes))
        error = line.get("error") or {}
        shown = str(error.get("exception_message") or error.get("message") or "")[:60]
        return got == code and names_input(line, node, name), f"exit {got}, {line.get('status')}: {shown}"
    return check


def names_input(line: dict, node: str, name: str) -> bool:
    error = line.get("error") or {}
    if line.get("status") == "invalid":
        errors = (error.get("node_errors") or {}).get(node, {}).get("errors", [])
        return any(e.get("extra_info", {}).get("input_name") == name for e in errors)
    message = str(error.get("exception_message", ""))
    return error.get("node_id") == node and (f"{name}: " in message or f"'{name}'" in message)


# -- the setup ----------------------------------------------------------------------------------


def write_loras(loras: Path) -> None:
    import safetensors.torch
    from loragraph.testing import write_lora_file

    good = write_lora_file(loras / "good.safetensors", "sd", "diffusers", seed=1)
    tensors = safetensors.torch.load_file(str(good))
    key = min(k for k in tensors if "lora_B" in k)
    for name, value in (("nan", float("nan")), ("inf", float("inf")), ("huge", 1e30)):
        broken = {k: v.clone() for k, v in tensors.items()}
        broken[key][0, 0] = value
        safetensors.torch.save_file(broken, str(loras / f"{name}.safetensors"))
    header = ('{"__metadata__": {"x": ' + "[" * 5000 + "]" * 5000 + "}}").encode()
    (loras / "deep_header.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def workflow(**changes: dict) -> dict:
    nodes = {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "float32", "device": "cpu"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "good.safetensors",
                                                    "strength": 1.0, "adapter_name": ""}},
        "3": {"class_type": "SetAdapterWeights",
              "inputs": {"pipeline": ["2", 0], "adapter_names": "", "weights": "1.0",
                         "text_encoder_weights": "", "block_weights": ""}},
        "4": {"class_type": "Sampler",
              "inputs": {"pipeline": ["3", 0], "prompt": "a red circle", "negative_prompt": "",
                         "seed": 1, "steps": 1, "cfg": 7.0, "width": 64, "height": 64,
                         "scheduler": "default", "batch_size": 1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "probe"}},
    }
    for node, inputs in changes.items():
        nodes[node.lstrip("n")]["inputs"].update(inputs)
    return nodes


_RACER = """
import os, sys, time, torch
from loragraph import host
from loragraph.nodes.image import SaveImage
host.configure(output_dir=sys.argv[1])
me, go = int(sys.argv[2]), sys.argv[3]
open(go + f".ready{me}", "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(64):
    SaveImage().save_images(torch.full((1, 8, 8, 3), (me * 64 + i) / 255.0), "race")
"""


def main() -> int:
    from loragraph import host
    from loragraph.server import ServerConfig, create_app
    from loragraph.server.app import watch_slow_clients

    tmp = Path(tempfile.mkdtemp(prefix="loragraph-probe-"))
    loras = tmp / "models" / "loras"
    loras.mkdir(parents=True)
    write_loras(loras)
    host.configure(models_dir=tmp / "models", output_dir=tmp / "output")
    models = ["--models-dir", str(tmp / "models"), "--output-dir", str(tmp / "output")]
    SETUP.update(tmp=tmp, models=models)

    from aiohttp import web

    app = create_app(ServerConfig(models_dir=tmp / "models", output_dir=tmp / "output",
                                  input_dir=tmp / "input", user_dir=tmp / "user", editor=True,
                                  ws_send_timeout_s=2.0, header_timeout_s=2.0))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    runner = web.AppRunner(app, access_log=None)

    async def start() -> int:
        await runner.setup()
        watch_slow_clients(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner.addresses[0][1]

    port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    own = f"127.0.0.1:{port}"
    body = json.dumps({"prompt": workflow()}).encode()
    post = {"Content-Type": "application/json"}

    # 1. cross-site requests and DNS rebinding
    for name, headers in [("Origin: null", {"Host": own, "Origin": "null"}),
                          ("empty Origin", {"Host": own, "Origin": ""}),
                          ("Origin: file://", {"Host": own, "Origin": "file://"}),
                          ("Origin of another site", {"Host": own, "Origin": "http://evil.example"}),
                          ("Host: 0.0.0.0", {"Host": f"0.0.0.0:{port}"}),
                          ("Host: a rebinding name", {"Host": f"rebind.evil.example:{port}",
                                                      "Origin": f"http://rebind.evil.example:{port}"})]:
        probe(f"1 POST /prompt, {name}: 403",
              expect_status(403, lambda h=headers: raw_http(port, "POST", "/prompt", {**h, **post}, body)))
    probe("1 GET /history, Host: a rebinding name: 403",
          expect_status(403,
                        lambda: raw_http(port, "GET", "/history", {"Host": f"rebind.evil.example:{port}"})))
    ws = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
          "Sec-WebSocket-Version": "13"}
    probe("1 websocket, Origin: null: 403",
          expect_status(403,
                        lambda: raw_http(port, "GET", "/ws?clientId=p",
                                         {"Host": own, "Origin": "null", **ws})))
    probe("1 websocket, own origin: 101", expect_status(
        101, lambda: raw_http(port, "GET", "/ws?clientId=p", {"Host": own, "Origin": f"http://{own}", **ws})))

    def same_origin_post() -> tuple[bool, str]:
        status, _, answer = raw_http(port, "POST", "/prompt",
                                     {"Host": own, "Origin": f"http://{own}", **post}, body)
        return status == 200, f"status {status}, {answer[:60]!r}"

    probe("1 POST /prompt from the server's own page: queued", same_origin_post)

    # 2. /view
    def upload(name: str, data: bytes) -> tuple[int, dict, bytes]:
        payload, content_type = multipart(name, data)
        return raw_http(port, "POST", "/upload/image", {"Host": own, "Content-Type": content_type}, payload)

    def xml_is_a_download() -> tuple[bool, str]:
        upload("evil.xml", b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>')
        status, headers, _ = raw_http(port, "GET", "/view?type=input&filename=evil.xml", {"Host": own})
        ok = (status == 200 and headers.get("content-disposition", "").startswith("attachment")
              and headers.get("x-content-type-options") == "nosniff"
              and "sandbox" in headers.get("content-security-policy", ""))
        return ok, f"{status}, {headers.get('content-disposition', '')[:30]}, nosniff, CSP"

    probe("2 uploaded XHTML served as an attachment, nosniff, CSP", xml_is_a_download)

    def preview_bomb() -> tuple[bool, str]:
        upload("zeros.png", png_of_zeros(12000, 12000))
        status, _, answer = raw_http(port, "GET", "/view?type=input&filename=zeros.png&preview=webp;90",
                                     {"Host": own})
        return status == 400, f"status {status}: {answer[:60]!r}"

    probe("2 preview of a 12000x12000 PNG of zeros: 400, no decode", preview_bomb)

    def pil_bomb() -> tuple[bool, str]:
        upload("bomb.png", png_of_zeros(13500, 13500))  # past PIL's own limit, where Image.open raises
        status, _, answer = raw_http(port, "GET", "/view?type=input&filename=bomb.png&channel=rgb",
                                     {"Host": own})
        return status == 400, f"status {status}: {answer[:60]!r}"

    probe("2 channel=rgb of a 13500x13500 PNG: 400", pil_bomb)
    probe("2 bad preview spec: 400", expect_status(400, lambda: raw_http(
        port, "GET", "/view?type=input&filename=zeros.png&preview=webp;99999999999", {"Host": own})))
    probe("2 a 300-character upload name: 400", expect_status(400, lambda: upload("a" * 300 + ".png", b"x")))
    probe("2 a malformed multipart body: 400", expect_status(400, lambda: raw_http(
        port, "POST", "/upload/image", {"Host": own, "Content-Type": "multipart/form-data; boundary=X"},
        b'--X\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\nDATA')))

    # 3. writing files
    def race() -> tuple[bool, str]:
        folder, go = tmp / "race", tmp / "race-go"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        old = os.umask(0o022)
        try:
            procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(folder), str(me), str(go)], env=env)
                     for me in (0, 1)]
        finally:
            os.umask(old)
        while not all(Path(f"{go}.ready{me}").exists() for me in (0, 1)):
            time.sleep(0.01)
        go.touch()
        codes = [p.wait(300) for p in procs]
        files = list(folder.glob("race_*.png"))
        modes = {oct(f.stat().st_mode & 0o777) for f in files}
        ok = codes == [0, 0] and len(files) == 128 and modes == {"0o644"}
        return ok, f"{len(files)}/128 files, modes {modes}"

    probe("3 two processes x 64 images, one prefix: all kept, 0644", race)

    def leftovers() -> tuple[bool, str]:
        stale = loras / ".lg-tmp-0123456789ab.safetensors"
        stale.write_bytes(b"")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        listed = host.list_loras()
        removed = host.clean_stale_temps()
        ok = not any(n.startswith(".") for n in listed) and removed >= 1 and not stale.exists()
        return ok, f"removed {removed}"

    probe("3 a killed save's temp file: hidden, cleaned on start", leftovers)

    # 4. numbers
    for name in ("nan", "inf", "huge"):
        probe(f"4 LoRA with {name} values refused naming lora_name",
              expect_run(1, "2", "lora_name", n2={"lora_name": f"{name}.safetensors"}))
    for node, name, value in (("2", "strength", "NaN"), ("4", "cfg", "Infinity"), ("3", "weights", "nan")):
        probe(f"4 {name} = {value} refused in validation",
              expect_run(2, node, name, **{f"n{node}": {name: value}}))

    def nan_body() -> tuple[bool, str]:
        status = raw_http(port, "POST", "/prompt", {"Host": own, **post}, b'{"prompt": {}, "number": NaN}')[0]
        queue = raw_http(port, "GET", "/queue", {"Host": own})[2]
        json.loads(queue)  # strict: NaN would not parse
        return status == 400, f"status {status}, /queue valid JSON"

    probe('4 "number": NaN in /prompt: 400, /queue stays JSON', nan_body)
    probe("4 steps at the declared maximum (1000): refused naming steps",
          expect_run(1, "4", "steps", n4={"steps": 1000}))

    # 5. limits
    probe("5 Sampler 16384x16384x64: refused before allocating",
          expect_run(1, "4", "width", n4={"width": 16384, "height": 16384, "batch_size": 64}))
    probe("5 a 50 MB prompt to run: invalid, exit 2, a JSON line",
          expect_run(2, "4", "prompt", n4={"prompt": "a" * 50_000_000}))

    def big_prompt_server() -> tuple[bool, str]:
        big = json.dumps({"prompt": workflow(n4={"prompt": "a" * 9_500_000})}).encode()
        status = raw_http(port, "POST", "/prompt", {"Host": own, **post}, big)[0]
        return status == 400, f"status {status}"

    probe("5 a 9.5 MB prompt to the server: 400", big_prompt_server)
    deep = "[" * 10_000 + "]" * 10_000
    for command in ("run", "validate"):
        def deep_file(command: str = command) -> tuple[bool, str]:
            path = tmp / "deep.json"
            path.write_text(deep)
            code, line = cli(command, str(path), *models)
            return code == 2 and line.get("status") == "invalid", f"exit {code}, {line.get('status')}"

        probe(f"5 a 10,000-deep JSON file to {command}: invalid, exit 2", deep_file)

    def deep_body() -> tuple[bool, str]:
        status, _, answer = raw_http(port, "POST", "/prompt", {"Host": own, **post},
                                     ('{"prompt": ' + deep + "}").encode())
        ok = status == 400 and json.loads(answer)["error"]["type"] == "invalid_json"
        return ok, f"status {status}, JSON"

    probe("5 a 10,000-deep /prompt body: JSON 400", deep_body)
    # refused by validation, before any model loads (its header is read there): exit 2
    probe("5 a 5,000-deep safetensors header: refused naming lora_name",
          expect_run(2, "2", "lora_name", n2={"lora_name": "deep_header.safetensors"}))

    # 6. folder walks
    def symlink_loop() -> tuple[bool, str]:
        os.symlink(".", loras / "loop")
        os.symlink(".", loras / "loop2")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run([sys.executable, "-m", "loragraph", "nodes", "LoadLoRA", "--models-dir",
                               str(tmp / "models")],
                              check=False, env=env, capture_output=True, timeout=120, text=True)
        return done.returncode == 0 and "good.safetensors" in done.stdout, f"exit {done.returncode}"

    probe("6 symlink loops in loras/: `loragraph nodes` finishes", symlink_loop)

    from probe_hostile_round2 import second_round

    second_round(port, app, probe, tmp, models, workflow, run_json, cli)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
    shutil.rmtree(tmp, ignore_errors=True)  # symlinks are removed, not followed
    failed = [name for ok, name, _ in ROWS if not ok]
    print(f"\n{len(ROWS) - len(failed)}/{len(ROWS)} ok"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def run_json(prompt: dict) -> tuple[int, dict]:
    path = Path(SETUP["tmp"]) / f"wf-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(prompt))
    return cli("run", str(path), *SETUP["models"])


if __name__ == "__main__":
    sys.exit(main())
