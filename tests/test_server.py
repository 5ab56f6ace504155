"""``loragraph serve``: a real server on loopback, driven over HTTP and a real websocket.

One server (aiohttp on 127.0.0.1, a free port) serves the whole module from its own thread and
event loop, as ``loragraph serve`` would; the tests are clients in the test thread. Workflows use
the built-in tiny SD pipeline at 64x64 with one or two steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from loragraph import host
from loragraph.server import RemoteBindRefused, ServerConfig, check_bind, create_app, run
from loragraph.server.queue import PromptQueue

MAX_JSON = 256 * 1024
MAX_UPLOAD = 1024 * 1024
WAIT_S = 120.0  # generous: the CI machine may be shared


class LiveServer:
    """``create_app`` served by a real TCPSite on a free loopback port, in a thread of its own."""

    def __init__(self, config: ServerConfig) -> None:
        self.app = create_app(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-server", daemon=True)
        self.runner: web.AppRunner | None = None
        self.port = 0

    def start(self) -> LiveServer:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def folders(models_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {"models": models_dir, "output": root / "output", "input": root / "input", "outside": root}


@pytest.fixture(scope="module")
def server(folders):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=folders["models"], output_dir=folders["output"])
    config = ServerConfig(input_dir=folders["input"], max_json_size=MAX_JSON, max_upload_size=MAX_UPLOAD)
    live = LiveServer(config).start()
    yield live
    live.stop()
    host.configure(models_dir=before[0], output_dir=before[1])


@pytest.fixture(autouse=True)
def _host_folders(request, folders):
    # Other modules' fixtures reconfigure the process-wide host; put this module's folders back.
    host.configure(models_dir=folders["models"], output_dir=folders["output"])


def sd_workflow(steps: int = 2, seed: int = 1, prefix: str = "srv") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "auto"},
              "_meta": {"title": "Load Pipeline"}},
        "2": {"class_type": "Sampler", "_meta": {"title": "Sampler"},
              "inputs": {"pipeline": ["1", 0], "prompt": "a red circle", "negative_prompt": "", "seed": seed,
                         "steps": steps, "cfg": 7.0, "width": 64, "height": 64, "scheduler": "default",
                         "batch_size": 1}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix},
              "_meta": {"title": "Save Image"}},
    }


def lora_workflow(weights: str = "0.5", steps: int = 1) -> dict[str, Any]:
    wf = sd_workflow(steps=steps, seed=7, prefix="lora")
    wf["4"] = {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sd_a.safetensors",
                                                     "strength": 1.0, "adapter_name": "a"}}
    wf["5"] = {"class_type": "SetAdapterWeights", "inputs": {"pipeline": ["4", 0], "adapter_names": "a",
                                                              "weights": weights, "text_encoder_weights": "",
                                                              "block_weights": ""}}
    wf["2"]["inputs"]["pipeline"] = ["5", 0]
    return wf


def info_workflow(strength: float) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "auto"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "sd_b.safetensors",
                                                    "strength": strength, "adapter_name": "b"}},
        "3": {"class_type": "LoRAInfo", "inputs": {"pipeline": ["2", 0]}},
    }


# -- client helpers -------------------------------------------------------------------------------


class Client:
    """One websocket (``clientId``) plus HTTP calls, recording every message it receives."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.client_id = uuid.uuid4().hex
        self.messages: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader: asyncio.Task | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> dict[str, Any]:
        self.ws = await self.session.ws_connect(f"{self.url}/ws?clientId={self.client_id}")
        self._reader = asyncio.create_task(self._read())
        return await self.wait_for(lambda m: m["type"] == "status")

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages.append(json.loads(msg.data))
                self._new.set()

    async def wait_for(self, match, timeout: float = WAIT_S, start: int = 0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen = start
        while True:
            for m in self.messages[seen:]:
                if match(m):
                    return m
            seen = len(self.messages)
            self._new.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching message in {timeout} s; "
                                     f"got {[m['type'] for m in self.messages]}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._new.wait(), left)

    async def queue(self, prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
        status, body = await self.post("/prompt", {"prompt": prompt, "client_id": self.client_id, **extra})
        assert status == 200, body
        return body

    async def finished(self, prompt_id: str, timeout: float = WAIT_S) -> list[dict[str, Any]]:
        """Wait for ``executing {node: None}`` of the prompt; returns the prompt's messages."""
        await self.wait_for(lambda m: m["type"] == "executing" and m["data"]["node"] is None
                            and m["data"].get("prompt_id") == prompt_id, timeout)
        return [m for m in self.messages
                if isinstance(m.get("data"), dict) and m["data"].get("prompt_id") == prompt_id]

    async def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        async with self.session.post(self.url + path, data=data, **kw) as resp:
            text = await resp.text()
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        async with self.session.get(self.url + path, **kw) as resp:
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, await resp.read()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            await self._reader


def with_client(server: LiveServer, body) -> Any:
    """Run ``body(client)`` on a fresh event loop with a connected websocket client."""

    async def main():
        async with aiohttp.ClientSession() as session:
            client = Client(session, server.url)
            await client.connect()
            try:
                return await body(client)
            finally:
                await client.close()

    return asyncio.run(main())


def types(messages: list[dict[str, Any]]) -> list[str]:
    return [m["type"] for m in messages]


# -- a workflow end to end ------------------------------------------------------------------------


def test_queue_workflow_streams_events_and_serves_the_image(server):
    async def body(client: Client):
        first = client.messages[0]
        assert first == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}},
                                                     "sid": client.client_id}}
        queued = await client.queue(sd_workflow(steps=2, seed=1, prefix="e2e"))
        assert set(queued) == {"prompt_id", "number", "node_errors"} and queued["node_errors"] == {}
        prompt_id = queued["prompt_id"]
        msgs = await client.finished(prompt_id)
        kinds = types(msgs)
        assert kinds[0] == "execution_start" and kinds[1] == "execution_cached"
        executing = [m["data"]["node"] for m in msgs if m["type"] == "executing"]
        assert executing[-1] is None and set(executing[:-1]) <= {"1", "2", "3"} and "2" in executing
        progress = [m["data"] for m in msgs if m["type"] == "progress"]
        assert [(p["value"], p["max"], p["node"]) for p in progress] == [(1, 2, "2"), (2, 2, "2")]
        assert kinds.index("progress") < kinds.index("executed") < kinds.index("execution_success")
        executed = next(m["data"] for m in msgs if m["type"] == "executed")
        assert executed["node"] == "3" and executed["display_node"] == "3"
        image = executed["output"]["images"][0]
        assert image["type"] == "output" and image["filename"].startswith("e2e_")

        status, png = await client.get("/view", params=image)
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        from PIL import Image

        with Image.open(io.BytesIO(png)) as img:
            assert img.size == (64, 64)
            assert json.loads(img.text["prompt"])["2"]["class_type"] == "Sampler"
        for extra, content_type in (({"preview": "webp;50"}, "image/webp"),
                                    ({"preview": "jpeg;80"}, "image/jpeg"),
                                    ({"channel": "rgb"}, "image/png"), ({"channel": "a"}, "image/png")):
            async with client.session.get(client.url + "/view", params={**image, **extra}) as resp:
                assert resp.status == 200 and resp.content_type == content_type, extra

        status, history = await client.get(f"/history/{prompt_id}")
        entry = history[prompt_id]
        assert entry["prompt"][1] == prompt_id and entry["prompt"][3]["client_id"] == client.client_id
        assert entry["prompt"][4] == ["3"]
        assert entry["outputs"] == {"3": executed["output"]}
        assert entry["meta"]["3"]["node_id"] == "3"
        assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
        assert [m[0] for m in entry["status"]["messages"]] == ["execution_start", "execution_cached",
                                                                "execution_success"]
        # The status broadcasts went to this client too; the queue is empty again.
        assert (await client.get("/prompt"))[1] == {"exec_info": {"queue_remaining": 0}}
        assert (await client.get("/queue"))[1] == {"queue_running": [], "queue_pending": []}

    with_client(server, body)


def test_changing_one_weight_reruns_only_the_nodes_after_it(server):
    async def body(client: Client):
        first = (await client.queue(lora_workflow(weights="0.5")))["prompt_id"]
        await client.finished(first)
        second = (await client.queue(lora_workflow(weights="0.8")))["prompt_id"]
        msgs = await client.finished(second)
        cached = next(m["data"]["nodes"] for m in msgs if m["type"] == "execution_cached")
        ran = {m["data"]["node"] for m in msgs if m["type"] == "executing" and m["data"]["node"] is not None}
        assert sorted(cached) == ["1", "4"]  # the pipeline and the loaded LoRA came from the cache
        assert ran == {"5", "2", "3"}
        assert "execution_success" in types(msgs)
        # Same workflow again: everything is cached, nothing runs, the image is reported again.
        third = (await client.queue(lora_workflow(weights="0.8")))["prompt_id"]
        msgs = await client.finished(third)
        assert sorted(next(m["data"]["nodes"] for m in msgs if m["type"] == "execution_cached")) == \
            ["1", "2", "3", "4", "5"]
        history = (await client.get(f"/history/{third}"))[1][third]
        assert history["status"]["status_str"] == "success" and "3" in history["outputs"]

    with_client(server, body)


def test_twenty_prompts_at_once_all_complete_in_order(server):
    strengths = [round(0.1 + 0.05 * i, 2) for i in range(20)]

    async def body(client: Client):
        await client.post("/history", {"clear": True})
        answers = await asyncio.gather(*(client.queue(info_workflow(s)) for s in strengths))
        ids = [a["prompt_id"] for a in answers]
        assert len(set(ids)) == 20 and len({a["number"] for a in answers}) == 20
        for prompt_id in ids:
            await client.finished(prompt_id)
        _, history = await client.get("/history")
        assert set(history) == set(ids)
        by_strength = {}
        for _prompt_id, entry in history.items():
            assert entry["status"]["status_str"] == "success", entry["status"]
            info = json.loads(entry["outputs"]["3"]["text"][0])
            by_strength[entry["prompt"][2]["2"]["inputs"]["strength"]] = info["adapters"]["b"]["strength"]
        assert by_strength == {s: s for s in strengths}
        # Run order follows queue numbers.
        order = [p for p in (m["data"].get("prompt_id") for m in client.messages
                             if m["type"] == "execution_start")]
        numbers = {a["prompt_id"]: a["number"] for a in answers}
        assert [numbers[p] for p in order if p in numbers] == sorted(numbers.values())
        assert (await client.get("/queue"))[1] == {"queue_running": [], "queue_pending": []}
        assert len((await client.get("/history", params={"max_items": "5"}))[1]) == 5
        await client.post("/history", {"delete": ids[:3]})
        assert set((await client.get("/history"))[1]) == set(ids[3:])

    with_client(server, body)


def test_interrupt_mid_run_then_the_queue_goes_on_and_a_deleted_prompt_never_runs(server):
    async def body(client: Client):
        slow = (await client.queue(sd_workflow(steps=200, seed=99, prefix="slow")))["prompt_id"]
        await client.wait_for(lambda m: m["type"] == "progress" and m["data"]["prompt_id"] == slow)
        doomed = (await client.queue(sd_workflow(steps=1, seed=5, prefix="doomed")))["prompt_id"]
        after = (await client.queue(sd_workflow(steps=1, seed=6, prefix="after")))["prompt_id"]
        running, pending = (await client.get("/queue"))[1].values()
        assert [item[1] for item in running] == [slow]
        assert [item[1] for item in pending] == [doomed, after]
        assert len(pending[0]) == 5 and pending[0][2]["2"]["inputs"]["seed"] == 5

        assert (await client.post("/queue", {"delete": [doomed]}))[0] == 200
        assert [item[1] for item in (await client.get("/queue"))[1]["queue_pending"]] == [after]
        # Interrupting a prompt that is not running does nothing; the running one stops.
        assert (await client.post("/interrupt", {"prompt_id": "not-running"}))[0] == 200
        assert (await client.post("/interrupt", {"prompt_id": slow}))[0] == 200
        msgs = await client.finished(slow)
        interrupted = next(m["data"] for m in msgs if m["type"] == "execution_interrupted")
        assert interrupted["node_id"] == "2" and interrupted["node_type"] == "Sampler"
        steps_done = [m for m in msgs if m["type"] == "progress"]
        assert len(steps_done) < 200

        msgs = await client.finished(after)
        assert "execution_success" in types(msgs) and "execution_interrupted" not in types(msgs)
        history = (await client.get("/history"))[1]
        assert history[slow]["status"]["status_str"] == "error"
        assert history[slow]["status"]["messages"][-1][0] == "execution_interrupted"
        assert history[after]["status"]["status_str"] == "success"
        assert doomed not in history
        assert not any(m["data"].get("prompt_id") == doomed for m in client.messages
                       if isinstance(m.get("data"), dict))

    with_client(server, body)


# -- bad requests ---------------------------------------------------------------------------------


def test_validation_errors_have_comfyui_shapes(server):
    async def body(client: Client):
        missing = sd_workflow()
        del missing["2"]["inputs"]["steps"]
        status, answer = await client.post("/prompt", {"prompt": missing})
        assert status == 400
        assert answer["error"]["type"] == "prompt_outputs_failed_validation"
        assert set(answer["error"]) == {"type", "message", "details", "extra_info"}
        err = answer["node_errors"]["2"]
        assert err["class_type"] == "Sampler" and err["dependent_outputs"] == ["3"]
        assert err["errors"][0]["type"] == "required_input_missing"
        assert err["errors"][0]["extra_info"]["input_name"] == "steps"

        bad_combo = sd_workflow()
        bad_combo["2"]["inputs"]["scheduler"] = "no-such-scheduler"
        status, answer = await client.post("/prompt", {"prompt": bad_combo})
        assert status == 400
        assert answer["node_errors"]["2"]["errors"][0]["type"] == "value_not_in_list"

        unknown = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
        status, answer = await client.post("/prompt", {"prompt": unknown})
        assert status == 400 and answer["error"]["type"] == "missing_node_type"

        status, answer = await client.post("/prompt", {"client_id": "x"})
        assert status == 400 and answer["error"]["type"] == "no_prompt" and answer["node_errors"] == {}
        status, answer = await client.post("/prompt", {"prompt": [1, 2]})
        assert status == 400 and answer["error"]["type"] == "invalid_prompt"
        # Nothing was queued.
        assert (await client.get("/prompt"))[1]["exec_info"]["queue_remaining"] == 0

    with_client(server, body)


def test_malformed_json_oversized_bodies_unknown_routes_and_cross_site_posts(server):
    async def body(client: Client):
        status, answer = await client.post("/prompt", b'{"prompt": {',
                                           headers={"Content-Type": "application/json"})
        assert status == 400 and answer["error"]["type"] == "invalid_json"
        assert "not valid JSON" in answer["error"]["message"]
        status, answer = await client.post("/queue", b"[1, 2]")
        assert status == 400 and "JSON object" in answer["error"]["message"]

        big = json.dumps({"prompt": {"1": {"class_type": "LoRAInfo", "inputs": {"x": "a" * MAX_JSON}}}})
        status, answer = await client.post("/prompt", big)
        assert status == 413 and answer["error"]["type"] == "body_too_large"

        form = aiohttp.FormData()
        form.add_field("image", b"\0" * (MAX_UPLOAD + 1024), filename="huge.png", content_type="image/png")
        async with client.session.post(client.url + "/upload/image", data=form) as resp:
            assert resp.status == 413

        for path in ("/nope", "/api/nope", "/history/x/y"):
            assert (await client.get(path))[0] == 404
        assert (await client.get("/api/prompt"))[1] == {"exec_info": {"queue_remaining": 0}}

        # A page on another site POSTing to this loopback server is refused (ComfyUI's guard).
        status, _ = await client.post("/prompt", {"prompt": sd_workflow()},
                                      headers={"Origin": "http://evil.example"})
        assert status == 403
        assert (await client.post("/interrupt", b"", headers={"Origin": client.url}))[0] == 200

    with_client(server, body)


def test_view_is_confined_to_its_folders(server, folders):
    out = folders["output"]
    (out / "sub").mkdir(parents=True, exist_ok=True)
    (out / "sub" / "ok.png").write_bytes(b"fake png")
    secret = folders["outside"] / "secret.txt"
    secret.write_text("secret")
    link = out / "link.txt"
    if not link.exists():
        os.symlink(secret, link)
    (out / "page.html").write_text("<script>alert(1)</script>")

    async def body(client: Client):
        ok = await client.get("/view", params={"filename": "ok.png", "subfolder": "sub", "type": "output"})
        assert ok == (200, b"fake png")
        assert (await client.get("/view",
                                 params={"filename": "ok.png [output]", "subfolder": "sub"}))[0] == 200
        cases = [
            ({"filename": "../secret.txt"}, 400),
            ({"filename": "/etc/passwd"}, 400),
            ({"filename": "..\\secret.txt"}, 400),
            ({"filename": "secret.txt", "subfolder": ".."}, 403),
            ({"filename": "passwd", "subfolder": "/etc"}, 403),
            ({"filename": "secret.txt", "subfolder": "sub/../.."}, 403),
            ({"filename": "link.txt"}, 403),  # a symlink out of the folder
            ({"filename": "ok.png", "type": "models"}, 400),
            ({"filename": "missing.png"}, 404),
            ({}, 404),
        ]
        for params, expected in cases:
            status, content = await client.get("/view", params=params)
            assert status == expected, (params, status)
            assert b"secret" not in (content if isinstance(content, bytes) else b"")
        async with client.session.get(client.url + "/view", params={"filename": "page.html"}) as resp:
            assert resp.status == 200 and resp.content_type == "application/octet-stream"

    with_client(server, body)


def test_upload_image_saves_into_the_input_folder_only(server, folders):
    inp = folders["input"]
    outside = folders["outside"] / "elsewhere"
    outside.mkdir(exist_ok=True)
    if not (inp / "escape").exists():
        inp.mkdir(parents=True, exist_ok=True)
        os.symlink(outside, inp / "escape")

    async def upload(client: Client, name: str, data: bytes, **fields: str) -> tuple[int, Any]:
        # Multipart written by hand: aiohttp's FormData would percent-encode a "/" in the file name,
        # and a hostile client would not.
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode()
                 for key, value in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                     f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
        payload = b"".join(parts) + f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        async with client.session.post(client.url + "/upload/image", data=payload, headers=headers) as resp:
            return resp.status, (await resp.json() if resp.content_type == "application/json" else None)

    async def body(client: Client):
        assert await upload(client, "a.png", b"one") == (200, {"name": "a.png", "subfolder": "",
                                                                "type": "input"})
        assert (inp / "a.png").read_bytes() == b"one"
        assert (await upload(client, "a.png", b"one"))[1]["name"] == "a.png"  # the same bytes: kept
        assert (await upload(client, "a.png", b"two"))[1]["name"] == "a (1).png"
        assert (await upload(client, "a.png", b"three", overwrite="true"))[1]["name"] == "a.png"
        assert (inp / "a.png").read_bytes() == b"three"
        status, _ = await upload(client, "b.png", b"x", subfolder="nested/deeper")
        assert status == 200 and (inp / "nested" / "deeper" / "b.png").read_bytes() == b"x"
        assert (await client.get("/view", params={"filename": "b.png", "subfolder": "nested/deeper",
                                                  "type": "input"}))[1] == b"x"
        for name, fields, expected in [
            ("../evil.png", {}, 400),
            ("/tmp/evil.png", {}, 400),
            ("sub/evil.png", {}, 400),
            ("..", {}, 400),
            ("", {}, 400),
            ("evil.png", {"subfolder": "../.."}, 400),
            ("evil.png", {"subfolder": "/tmp"}, 400),
            ("evil.png", {"subfolder": "escape"}, 403),  # a symlinked subfolder leading out
            ("evil.png", {"type": "models"}, 400),
        ]:
            assert (await upload(client, name, b"evil", **fields))[0] == expected, (name, fields)
        assert not list(outside.iterdir())
        assert not (folders["outside"] / "evil.png").exists()

    with_client(server, body)


# -- the rest of the API --------------------------------------------------------------------------


def test_object_info_system_stats_and_small_routes(server):
    async def body(client: Client):
        status, info = await client.get("/object_info")
        assert status == 200 and {"LoadPipeline", "Sampler", "SaveImage", "LoRAInfo"} <= set(info)
        sampler = info["Sampler"]
        assert sampler["input_order"]["required"][:3] == ["pipeline", "prompt", "negative_prompt"]
        assert sampler["output"] == ["IMAGE"] and sampler["name"] == "Sampler"
        assert "sd_a.safetensors" in info["LoadLoRA"]["input"]["required"]["lora_name"][0]
        assert set((await client.get("/object_info/Sampler"))[1]) == {"Sampler"}
        assert (await client.get("/object_info/NoSuchNode"))[1] == {}

        stats = (await client.get("/system_stats"))[1]
        assert {"os", "ram_total", "ram_free", "python_version", "pytorch_version"} <= set(stats["system"])
        assert stats["devices"] and {"name", "type", "vram_total", "vram_free"} <= set(stats["devices"][0])
        assert (await client.get("/embeddings"))[1] == []
        extensions = (await client.get("/extensions"))[1]
        assert all(e.startswith("/extensions/loragraph/") and e.endswith(".js") for e in extensions)
        for ext in extensions[:1]:
            assert (await client.get(ext))[0] == 200
        assert "loras" in (await client.get("/models"))[1]
        assert "sd_a.safetensors" in (await client.get("/models/loras"))[1]
        assert (await client.get("/models/nothing"))[0] == 404
        assert (await client.get("/features"))[1]["max_upload_size"] == MAX_UPLOAD
        assert (await client.post("/free", {"free_memory": False}))[0] == 200
        status, _ = await client.get("/history", params={"max_items": "many"})
        assert status == 400

        # The first websocket message may be ComfyUI's feature-flag negotiation.
        async with client.session.ws_connect(f"{client.url}/ws") as ws:
            hello = await ws.receive_json(timeout=10)
            assert hello["type"] == "status" and hello["data"]["sid"]
            await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
            flags = await ws.receive_json(timeout=10)
            assert flags["type"] == "feature_flags" and "max_upload_size" in flags["data"]

    with_client(server, body)


def test_an_existing_comfyui_client_library_works_unchanged(server):
    """comfy-api-simplified (PyPI): requests for HTTP, websockets for events, /history + /view for images."""
    simplified = pytest.importorskip("comfy_api_simplified")
    api = simplified.ComfyApiWrapper(server.url)
    images = api.queue_and_wait_images(
        simplified.ComfyWorkflowWrapper(sd_workflow(steps=1, seed=3, prefix="lib")), "Save Image")
    assert len(images) == 1
    name, data = next(iter(images.items()))
    assert name.startswith("lib_") and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sampler" in api.get_object_info("Sampler")
    assert api.get_queue() == {"queue_running": [], "queue_pending": []}
    api.interrupt()


def test_refuses_to_listen_beyond_loopback_without_the_flag():
    for address in ("0.0.0.0", "::", "", "192.0.2.1"):
        with pytest.raises(RemoteBindRefused, match="--allow-remote"):
            check_bind([address], allow_remote=False)
        check_bind([address], allow_remote=True)
    check_bind(["127.0.0.1", "localhost", "::1", "127.0.0.2"], allow_remote=False)
    with pytest.raises(RemoteBindRefused):
        run(host="127.0.0.1,0.0.0.0", port=0)  # refused before anything binds


def test_prompt_queue_order_bounded_history_and_clear():
    changes = []
    q = PromptQueue(on_change=lambda: changes.append(1), history_size=3)
    for number, pid in [(2, "b"), (1, "a"), (-5, "front"), (2, "c")]:
        q.put((number, pid, {}, {}, []))
    assert [i[1] for i in q.current_queue()[1]] == ["front", "a", "b", "c"]
    assert q.delete(["a", "nope"]) == 1 and q.tasks_remaining() == 3
    for expected in ["front", "b"]:
        item, task = q.get(timeout=1)
        assert item[1] == expected and q.running_prompt_ids() == [expected]
        q.task_done(task, {"outputs": {}}, {"status_str": "success", "completed": True, "messages": []})
    assert q.wipe_queue() == 1 and q.tasks_remaining() == 0 and q.get(timeout=0.01) is None
    for i in range(5):
        q.put((i, f"p{i}", {}, {"api_key_comfy_org": "secret", "client_id": "c"}, []))
        item, task = q.get(timeout=1)
        q.task_done(task, {"outputs": {}}, None)
    history = q.history()
    assert list(history) == ["p2", "p3", "p4"]  # bounded, oldest dropped first
    assert history["p4"]["prompt"][3] == {"client_id": "c"}  # API keys never kept
    assert list(q.history(max_items=2)) == ["p3", "p4"] and list(q.history(offset=1, max_items=1)) == ["p3"]
    assert changes
    q.close()
    assert q.get() is None
