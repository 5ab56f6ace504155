"""Hostile clients, second round: each case keeps the well-behaved clients served.

A real server (aiohttp on 127.0.0.1, a free port) with three real websocket clients that each queue
a real prompt (the built-in tiny SD pipeline, 64x64, one step) and must hear its completion while
one bad actor misbehaves. The file and input cases are in test_hardening_inputs.py.
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
import pytest
from loragraph import host
from loragraph.server import ServerConfig
from loragraph.server.app import SERVER_KEY, watch_slow_clients
from test_server import Client, LiveServer, sd_workflow

SEND_TIMEOUT_S = 2.0  # short here so a stalled client is dropped within the test's patience
HEADER_TIMEOUT_S = 2.0  # likewise for a connection that never finishes its request head
GOOD_WAIT_S = 90.0  # three one-step prompts on a shared 2-core machine
DEEP = "[" * 5000 + "]" * 5000


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



def test_concurrent_output_folder_checks_do_not_trip_over_each_other(tmp_path):
    """The server validates concurrent prompts in threads; each checks the (missing) output folder by
    creating it, writing a probe and removing what it made. Interleaved, one check's cleanup made
    another's mkdir fail with "File exists" and a valid prompt got a 400."""
    import threading

    from loragraph.base import disk

    folder = tmp_path / "out" / "sub"
    problems: list[str] = []

    def check() -> None:
        for _ in range(200):
            problem = disk.writable_folder_problem(folder)
            if problem is not None:
                problems.append(problem)

    threads = [threading.Thread(target=check) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    assert not (tmp_path / "out").exists()  # the check still leaves the disk as it was
