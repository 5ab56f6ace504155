"""The second hostile round for ``tools/probe_hostile.py`` (rows 7-24): one bad actor per case while
three well-behaved websocket clients each queue a prompt and must hear it finish.

Called by ``probe_hostile.main`` with its live server and helpers; not run on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEEP = "[" * 5000 + "]" * 5000


def second_round(port: int, app: Any, probe: Callable, tmp: Path, models: list[str], workflow: Callable,
                 run_json: Callable, cli: Callable) -> None:
    import aiohttp
    from loragraph.server.app import SERVER_KEY

    url = f"http://127.0.0.1:{port}"
    hub = app[SERVER_KEY].hub
    loras = tmp / "models" / "loras"

    def base_prompt(seed: int) -> dict:
        wf = workflow()
        wf["4"]["inputs"].update(seed=seed)
        wf["5"]["inputs"]["filename_prefix"] = f"good{seed}"
        return wf

    async def with_good_clients(bad_actor: Callable[[], Any]) -> tuple[int, Any]:
        """(how many of 3 good clients heard their prompt finish, what the bad actor returned)."""
        async with aiohttp.ClientSession() as session:
            heard = 0
            sockets = [(sid, await session.ws_connect(f"{url}/ws?clientId={sid}"))
                       for sid in (uuid.uuid4().hex for _ in range(3))]
            bad = asyncio.create_task(bad_actor())
            await asyncio.sleep(0.2)
            waiting = []
            for i, (sid, ws) in enumerate(sockets):
                async with session.post(f"{url}/prompt", json={"prompt": base_prompt(100 + i),
                                                               "client_id": sid}) as resp:
                    waiting.append(((await resp.json()).get("prompt_id"), ws))

            async def finished(prompt_id: str, ws: Any) -> bool:
                async for msg in ws:
                    data = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else {}
                    if (data.get("type") == "executing" and data["data"].get("node") is None
                            and data["data"].get("prompt_id") == prompt_id):
                        return True
                return False

            for prompt_id, ws in waiting:
                with contextlib.suppress(asyncio.TimeoutError):
                    heard += bool(await asyncio.wait_for(finished(prompt_id, ws), 120))
            result = await asyncio.wait_for(bad, 120)
            for _, ws in sockets:
                await ws.close()
            return heard, result

    def served(bad_actor: Callable[[], Any], judge: Callable[[Any], tuple[bool, str]]) -> Callable:
        def check() -> tuple[bool, str]:
            heard, result = asyncio.run(with_good_clients(bad_actor))
            ok, detail = judge(result)
            return ok and heard == 3, f"{heard}/3 good clients heard their prompt finish; {detail}"
        return check

    # 7. a client id that is not a string
    async def dict_client_id() -> int:
        async with aiohttp.ClientSession() as session, session.post(
                f"{url}/prompt", json={"prompt": workflow(), "client_id": {"x": 1}}) as resp:
            return resp.status

    probe("7 client_id {\"x\": 1}: 400, nobody silenced",
          served(dict_client_id, lambda status: (status == 400, f"status {status}")))

    # 8. a client that never reads
    async def stalled() -> bool:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall((f"GET /ws?clientId=stalled HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        await asyncio.sleep(0.2)
        for i in range(384):  # 24 MB of broadcasts, as the worker sends them
            hub.send_sync("progress", {"value": i, "max": 384, "pad": "x" * 64_000})
            if i % 32 == 0:
                await asyncio.sleep(0.01)
        deadline = time.monotonic() + 30
        while "stalled" in hub.sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        sock.close()
        return "stalled" not in hub.sockets

    probe("8 a websocket that never reads: dropped, nobody silenced",
          served(stalled, lambda dropped: (dropped, "dropped" if dropped else "never dropped")))

    # 9. a LoRA replaced with its size and mtime kept
    def stale_cache() -> tuple[bool, str]:
        from loragraph.loaders.store import file_sha256
        from loragraph.testing import write_lora_file

        target = write_lora_file(loras / "replaced.safetensors", "sd", "diffusers", seed=61)
        other = write_lora_file(tmp / "other.safetensors", "sd", "diffusers", seed=62)
        old_sha, st = file_sha256(target), target.stat()
        time.sleep(0.05)
        target.write_bytes(other.read_bytes())
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        now = file_sha256(target)
        return now == file_sha256(other) != old_sha, f"hash {now[:12]} (was {old_sha[:12]})"

    probe("9 a LoRA replaced as cp -p does: hashed and read again", stale_cache)

    # 10. JSON bombs
    async def json_bombs() -> tuple[list[int], float]:
        flat = b"[" + b"[]," * 3_300_000 + b"[]]"
        async with aiohttp.ClientSession() as session:
            async def post(body: bytes) -> int:
                async with session.post(f"{url}/prompt", data=body,
                                        headers={"Content-Type": "application/json"}) as resp:
                    return resp.status

            posts = asyncio.gather(*(post(flat if i % 2 else DEEP.encode() * 495) for i in range(10)))
            worst = 0.0
            for _ in range(20):
                started = time.monotonic()
                async with session.get(f"{url}/queue") as resp:
                    await resp.read()
                worst = max(worst, time.monotonic() - started)
                await asyncio.sleep(0.05)
            return list(await posts), worst

    probe("10 ten 9.9 MB JSON bombs: 400, /queue answers in < 3 s",
          served(json_bombs, lambda r: (set(r[0]) == {400} and r[1] < 3,
                                        f"statuses {sorted(set(r[0]))}, /queue worst {r[1]:.2f} s")))

    # 11. PNG text bombs
    def png_bomb() -> tuple[bool, str]:
        texts = [(b"zTXt", f"k{i}".encode(), b"\0" * (8 << 20)) for i in range(40)]
        path = _write_png(tmp / "bomb.png", texts)
        code, line = cli("validate", str(path))
        message = json.dumps(line.get("error"))
        return code == 2 and "more than" in message, f"exit {code}, {path.stat().st_size} byte file"

    probe("11 a PNG of zTXt chunks inflating to 320 MB: invalid at 32 MiB", png_bomb)

    # 12. a large sweep starts at once
    def lazy_sweep() -> tuple[bool, str]:
        import itertools
        import tracemalloc

        from loragraph.cli.workflows import load_workflows, sweep_workflows
        from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS as registry

        wf = workflow()
        for i in range(10, 1009):
            wf[str(i)] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "p"}}
        path = tmp / "big.json"
        path.write_text(json.dumps(wf))
        (loaded,) = load_workflows([str(path)], [], registry)
        tracemalloc.start()
        started = time.monotonic()
        first = next(itertools.islice(sweep_workflows([loaded], ["4.seed=1-99999"], registry), 1))
        took, (_, peak) = time.monotonic() - started, tracemalloc.get_traced_memory()
        tracemalloc.stop()
        ok = first.prompt["4"]["inputs"]["seed"] == 1 and peak < 50 * 2**20
        return ok, f"first of 99,999 runs in {took:.2f} s, peak {peak / 2**20:.0f} MiB"

    probe("12 --sweep 4.seed=1-99999 on 1,004 nodes: the first run at once", lazy_sweep)

    # 13. a 5,000-digit integer
    def long_int() -> tuple[bool, str]:
        bad, good = tmp / "long.json", tmp / "fine.json"
        bad.write_text(json.dumps(workflow()).replace('"seed": 1', '"seed": ' + "7" * 5000))
        good.write_text(json.dumps(workflow()))
        code, lines = _cli_lines("validate", str(bad), str(good), *models)
        statuses = [line.get("status") for line in lines]
        return code == 2 and statuses == ["invalid", "valid"], f"exit {code}, {statuses}"

    probe("13 a 5,000-digit integer: that file invalid, the next validated", long_int)

    # 14. terminal escapes
    def escapes() -> tuple[bool, str]:
        from loragraph.cli import main
        from loragraph.testing import write_lora_file

        lora = write_lora_file(loras / "e\x1b]0;owned\x07.safetensors", "sd", "diffusers", seed=63,
                               metadata={"ss_output_name": "\x1b[31mred"})
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            main(["inspect", str(lora), *models[:2]])
        raw = [ch for ch in out.getvalue() if ch in "\x1b\x07\x9b"]
        lora.unlink()
        return not raw and "\\x1b" in out.getvalue(), f"{len(raw)} raw control characters printed"

    probe("14 ESC in a LoRA name and metadata: shown as escapes by inspect", escapes)

    # 15. metadata that crashed the tools
    def hostile_tags() -> tuple[bool, str]:
        from loragraph.testing import write_lora_file

        path = write_lora_file(loras / "tags.safetensors", "sd", "kohya", seed=64,
                               metadata={"ss_tag_frequency": '{"d": {"t": 1e999, "u": ' + DEEP + "}}"})
        status = _get(port, "/loragraph/lora_info?name=tags.safetensors")[0]
        code, _ = cli("inspect", str(path), *models[:2])
        return code == 0 and status == 200, f"inspect exit {code}, lora_info {status}"

    probe("15 a deep / 1e999 ss_tag_frequency: inspect and lora_info answer", hostile_tags)

    def deep_config() -> tuple[bool, str]:
        from loragraph.testing import write_lora_file

        write_lora_file(loras / "deep_config.safetensors", "sd", "diffusers", seed=65,
                        metadata={"lora_adapter_metadata": '{"r": ' + DEEP + "}"})
        code, line = run_json(workflow(n2={"lora_name": "deep_config.safetensors"}))
        message = str((line.get("error") or {}).get("exception_message", ""))
        return code == 1 and message.startswith("lora_name: "), f"exit {code}: {message[:50]}"

    probe("15 a deep lora_adapter_metadata: refused naming lora_name", deep_config)

    # 16. a finite weight too large
    def huge_weight() -> tuple[bool, str]:
        code, line = run_json(workflow(n3={"weights": "1e30"}))
        errors = ((line.get("error") or {}).get("node_errors") or {}).get("3", {}).get("errors", [])
        ok = code == 2 and any("weights: weights must lie between" in e.get("details", "") for e in errors)
        return ok, f"exit {code}, {line.get('status')}"

    probe('16 weights = "1e30": invalid naming weights', huge_weight)

    # 17. the editor's settings and /view_metadata
    def settings() -> tuple[bool, str]:
        if app[SERVER_KEY].web_root is None:
            return True, "no editor installed: the routes are absent"
        got = [_post(port, "/settings/X", b"NaN"), _post(port, "/settings/X", DEEP.encode())]
        json.loads(_get(port, "/settings")[1])
        header = ('{"__metadata__": {"x": ' + DEEP + "}}").encode()
        (loras / "deep_meta.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
        got.append(_get(port, "/view_metadata/loras?filename=deep_meta.safetensors")[0])
        return got == [400, 400, 404], f"statuses {got}, GET /settings is JSON"

    probe("17 /settings NaN and deep: 400; a deep header's metadata: 404", settings)

    # 18. malformed multipart uploads
    def multipart() -> tuple[bool, str]:
        part = ('--XB\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n{}'
                "Content-Type: image/png\r\n\r\nDATA\r\n--XB--\r\n")
        bodies = [part.format("").replace('a.png"', 'a\r\nb.png"'), part.format("NoColonHere\r\n"),
                  part.format("X-Long: " + "a" * 100_000 + "\r\n"), "not multipart at all"]
        got = [_post(port, "/upload/image", body.encode(), "multipart/form-data; boundary=XB")
               for body in bodies]
        return got == [400] * 4, f"statuses {got}"

    probe("18 malformed multipart (CR/LF name, no colon, 100 KB line, not multipart): 400", multipart)

    # 19. the cleaner keeps user files
    def cleaner() -> tuple[bool, str]:
        from loragraph import host

        users = [loras / ".lg-tmp-mine.png", loras / ".tmp-upload.png", loras / ".lg-tmp-_00001_.png"]
        killed = loras / ".lg-tmp-00000000dead.safetensors"
        for path in (*users, killed):
            path.write_bytes(b"x")
            os.utime(path, (time.time() - 7200, time.time() - 7200))
        removed = host.clean_stale_temps()
        kept = sum(p.exists() for p in users)
        ok = removed == 1 and kept == 3 and not killed.exists()
        return ok, f"removed {removed}, user files kept {kept}/3"

    probe("19 the startup cleaner: a killed save's temp removed, user files kept", cleaner)

    # 20. what errors tell
    def leaks() -> tuple[bool, str]:
        (loras / "passwd.safetensors").symlink_to("/etc/passwd")
        # validation reads the header before any model loads: refused there (exit 2), naming lora_name
        code, line = run_json(workflow(n2={"lora_name": "passwd.safetensors"}))
        message = json.dumps(line)
        answer = _get(port, "/loragraph/lora_info?name=passwd.safetensors")[1].decode()
        ok = ("3475222254926655346" not in message and str(tmp) not in answer and code == 2
              and "lora_name" in message)
        return ok, f"exit {code}; lora_info {answer[:60]!r}"

    probe("20 loras/x -> /etc/passwd: no bytes read out, no server path", leaks)

    # 21. fused weight changes reuse memory
    def fused() -> tuple[bool, str]:
        from loragraph.loaders import transitions as tr
        from loragraph.loaders.engine import Engine
        from loragraph.nodes import widget_text as wt

        engine = Engine()
        base = engine.load_pipeline("builtin:tiny-sd", dtype="float32", device="cpu")
        a = tr.add_adapter(base, engine.lora_spec(base, "good.safetensors", 1.0, "a"))
        states = [wt.fuse(wt.set_weights(a, "a", w), True, True, 1.0, False, "") for w in ("0.6", "0.9")]
        live, _ = engine.realize(states[0])
        layer = next(m for _, m in live.pipe.unet.named_modules() if getattr(m, "merged_adapters", None))
        before = layer.get_base_layer().weight.data_ptr()
        engine.realize(states[1])
        same = layer.get_base_layer().weight.data_ptr() == before
        return same and not live.fusion_spares, "re-fused in place" if same else "a new tensor"

    probe("21 a weight change on fused adapters: written in place", fused)

    # 22. stacking grows linearly
    def stacking() -> tuple[bool, str]:
        from loragraph.loaders import transitions as tr
        from loragraph.loaders.engine import Engine
        from loragraph.testing import write_lora_file

        times = {}
        for n in (5, 20):
            for i in range(n):
                if not (loras / f"stack{i}.safetensors").exists():
                    write_lora_file(loras / f"stack{i}.safetensors", "sd", "diffusers", seed=200 + i)
            # best of 3 fresh pipelines, as benchmarks/stacking.py: one load on a shared 2-core
            # machine swung the ratio from 4x to 5.7x
            best = float("inf")
            for _ in range(3):
                engine = Engine()
                h = engine.load_pipeline("builtin:tiny-sd", dtype="float32", device="cpu")
                for i in range(n):
                    h = tr.add_adapter(h, engine.lora_spec(h, f"stack{i}.safetensors", 1.0, f"s{i}"))
                started = time.perf_counter()
                engine.realize(h)
                best = min(best, time.perf_counter() - started)
            times[n] = best
        ratio = times[20] / times[5]
        return ratio <= 5.0, f"5 LoRAs {times[5]:.1f} s, 20 LoRAs {times[20]:.1f} s: {ratio:.1f}x (linear 4x)"

    probe("22 a 20-LoRA stack loads in at most 5x a 5-LoRA stack's time", stacking)

    # 23. slowloris
    async def slowloris() -> int:
        socks = []
        for i in range(40):
            sock = socket.create_connection(("127.0.0.1", port))
            if i % 2:
                sock.sendall(f"GET /queue HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode())
            sock.setblocking(False)
            socks.append(sock)
        await asyncio.sleep(6)
        closed = 0
        for sock in socks:
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
            except ConnectionError:
                closed += 1
            sock.close()
        return closed

    probe("23 40 connections that never finish a request: closed", served(
        slowloris, lambda closed: (closed == 40, f"{closed}/40 closed after 6 s (limit 2 s here)")))

    # 24. filename_prefix
    for name, prefix in (("a NUL byte", "a\x00b"), ("300 characters", "p" * 300), ("'.'", ".")):
        def bad_prefix(prefix: str = prefix) -> tuple[bool, str]:
            code, line = run_json(workflow(n5={"filename_prefix": prefix}))
            message = str((line.get("error") or {}).get("exception_message", ""))
            return code == 1 and message.startswith("filename_prefix: "), f"exit {code}: {message[:50]}"

        probe(f"24 filename_prefix with {name}: refused naming it", bad_prefix)


def _write_png(path: Path, texts: list[tuple[bytes, bytes, bytes]]) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    body = [chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))]
    body += [chunk(kind, keyword + b"\0\0" + zlib.compress(payload, 9)) for kind, keyword, payload in texts]
    body += [chunk(b"IDAT", zlib.compress(b"\0\x80")), chunk(b"IEND", b"")]
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(body))
    return path


def _cli_lines(*argv: str) -> tuple[int, list[dict]]:
    from loragraph.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([*argv, "--json"])
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def _request(port: int, method: str, path: str, body: bytes = b"",
             content_type: str = "application/json") -> tuple[int, bytes]:
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def _get(port: int, path: str) -> tuple[int, bytes]:
    return _request(port, "GET", path)


def _post(port: int, path: str, body: bytes, content_type: str = "application/json") -> int:
    return _request(port, "POST", path, body, content_type)[0]
