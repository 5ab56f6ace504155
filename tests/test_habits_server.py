"""The LoRA preview route (`GET /loragraph/lora_preview?name=`) on a real server on loopback: it serves
only image files beside LoRA files of loras/, behind the same Host/Origin guard and with /view's
headers; `/loragraph/lora_info` says whether a preview exists and gives the trigger words."""

from __future__ import annotations

import asyncio
import io
import json
import os

import aiohttp
import pytest
from loragraph import host
from loragraph.server import ServerConfig
from loragraph.server.file_routes import VIEW_CSP
from loragraph.testing import write_lora_file
from PIL import Image
from test_server import LiveServer


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def preview_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("previews")
    loras = root / "models" / "loras"
    write_lora_file(loras / "ink.safetensors", "sd", "diffusers", rank=2, seed=1,
                    metadata={"modelspec.trigger_phrase": "inkwash"})
    (loras / "ink.preview.png").write_bytes(png("red"))
    (loras / "ink.png").write_bytes(png("blue"))  # .preview.png comes first
    write_lora_file(loras / "sub" / "paper.safetensors", "sd", "kohya", rank=2, seed=2)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "green").save(buffer, format="WEBP")
    (loras / "sub" / "paper.webp").write_bytes(buffer.getvalue())
    write_lora_file(loras / "bare.safetensors", "sd", "diffusers", rank=2, seed=3)
    write_lora_file(loras / "escape.safetensors", "sd", "diffusers", rank=2, seed=4)
    (root / "secret.png").write_bytes(png("black") + b"secret")
    os.symlink(root / "secret.png", loras / "escape.png")
    (loras / "page.html").write_text("<script>alert(1)</script>")
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=root / "models", output_dir=root / "output")
    live = LiveServer(ServerConfig(input_dir=root / "input")).start()
    yield live
    live.stop()
    host.configure(models_dir=before[0], output_dir=before[1])


def fetch(server, path, params, headers=None):
    async def go():
        async with aiohttp.ClientSession() as session, session.get(server.url + path, params=params,
                                                                   headers=headers or {}) as resp:
            return resp.status, resp.headers, await resp.read()

    return asyncio.run(go())


def test_preview_served_beside_the_lora(preview_server):
    status, headers, body = fetch(preview_server, "/loragraph/lora_preview", {"name": "ink.safetensors"})
    assert status == 200 and body == png("red")
    assert headers["Content-Type"] == "image/png" and headers["Content-Security-Policy"] == VIEW_CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Disposition"].startswith("inline")
    status, headers, body = fetch(preview_server, "/loragraph/lora_preview",
                                  {"name": "sub/paper.safetensors"})
    assert status == 200 and headers["Content-Type"] == "image/webp" and body.startswith(b"RIFF")

    status, _, body = fetch(preview_server, "/loragraph/lora_info", {"name": "ink.safetensors"})
    info = json.loads(body)
    assert status == 200 and info["preview"] is True and info["trigger_words"] == ["inkwash"]
    assert json.loads(fetch(preview_server, "/loragraph/lora_info", {"name": "bare.safetensors"})[2])[
        "preview"] is False


@pytest.mark.parametrize(("params", "status"), [
    ({"name": "bare.safetensors"}, 404),  # no preview beside it
    ({"name": "escape.safetensors"}, 404),  # its preview is a link out of loras/
    ({"name": "ink.preview.png"}, 404),  # not a LoRA file: never served by its own name
    ({"name": "page.html"}, 404),
    ({"name": "../secret.png"}, 400),
    ({"name": "/etc/passwd"}, 400),
    ({"name": "missing.safetensors"}, 404),
    ({}, 400),
])
def test_preview_refuses_everything_else(preview_server, params, status):
    got, _, body = fetch(preview_server, "/loragraph/lora_preview", params)
    assert got == status and png("black") not in body and b"<script>" not in body


def test_preview_behind_the_host_guard(preview_server):
    status, _, body = fetch(preview_server, "/loragraph/lora_preview", {"name": "ink.safetensors"},
                            headers={"Host": "attacker.example"})
    assert status == 403 and body != png("red")
