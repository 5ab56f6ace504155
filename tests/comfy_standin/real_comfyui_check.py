"""Manual check against a real, running ComfyUI with this pack in custom_nodes/ (not collected by pytest).

    python tests/comfy_standin/real_comfyui_check.py --url http://127.0.0.1:8199 --comfyui /path/to/ComfyUI

Writes two LoRA files into ComfyUI's models/loras (a good one and a truncated one), then checks: the
LoadLoRA combo shows them without a restart; a workflow mixing our nodes with ComfyUI's SaveImage and
PreviewImage runs through /prompt with `progress` messages on /ws; POST /interrupt stops a 300-step
Sampler between steps; the truncated LoRA fails with an execution_error on its LoadLoRA node naming
`lora_name`. Prints one line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path

import aiohttp


def workflow(lora: str, steps: int = 3, seed: int = 1) -> dict:
    sampler = {
        "pipeline": ["2", 0],
        "prompt": "a red circle",
        "negative_prompt": "",
        "seed": seed,
        "steps": steps,
        "cfg": 7.0,
        "width": 64,
        "height": 64,
        "scheduler": "default",
        "batch_size": 1,
    }
    return {
        "1": {
            "class_type": "LoadPipeline",
            "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "cpu"},
        },
        "2": {
            "class_type": "LoadLoRA",
            "inputs": {"pipeline": ["1", 0], "lora_name": lora, "strength": 0.8, "adapter_name": ""},
        },
        "3": {"class_type": "Sampler", "inputs": sampler},
        "4": {
            "class_type": "SaveImage",
            "inputs": {"images": ["3", 0], "filename_prefix": "loragraph_check"},
        },
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


async def run(session, ws, url: str, client_id: str, prompt: dict, interrupt_at: int | None = None) -> list:
    async with session.post(f"{url}/prompt", json={"prompt": prompt, "client_id": client_id}) as r:
        body = await r.json()
        if r.status != 200:
            return [("http_error", body)]
    prompt_id, events, sent = body["prompt_id"], [], False
    while True:
        msg = await ws.receive(timeout=600)
        if msg.type != aiohttp.WSMsgType.TEXT:
            continue
        m = json.loads(msg.data)
        data = m.get("data", {})
        if data.get("prompt_id") != prompt_id:
            continue
        events.append((m["type"], data))
        if (
            m["type"] == "progress"
            and interrupt_at is not None
            and not sent
            and data["value"] >= interrupt_at
        ):
            sent = True
            await session.post(f"{url}/interrupt", json={})
        if m["type"] in ("execution_success", "execution_error", "execution_interrupted"):
            return events


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8199")
    ap.add_argument(
        "--comfyui", required=True, type=Path, help="the ComfyUI folder (for models/ and output/)"
    )
    args = ap.parse_args()
    from loragraph.testing import write_lora_file

    url, loras, failed = args.url.rstrip("/"), args.comfyui / "models" / "loras", []

    def check(name: str, ok: bool, detail: object = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {name} {detail}")
        if not ok:
            failed.append(name)

    async with aiohttp.ClientSession() as session:
        stamp = uuid.uuid4().hex[:8]
        good = write_lora_file(loras / f"check_{stamp}.safetensors", "sd", "diffusers", rank=4, seed=7)
        data = good.read_bytes()
        (loras / f"check_{stamp}_truncated.safetensors").write_bytes(data[: len(data) // 2])
        async with session.get(f"{url}/object_info/LoadLoRA") as r:
            names = (await r.json())["LoadLoRA"]["input"]["required"]["lora_name"][0]
        check("new LoRA files listed without restart", good.name in names, names)
        async with session.get(f"{url}/object_info") as r:
            ours = [k for k, v in (await r.json()).items() if v["python_module"].endswith("loragraph")]
        check("12 nodes in /object_info", len(ours) == 12, ours)

        client_id = uuid.uuid4().hex
        async with session.ws_connect(f"{url}/ws?clientId={client_id}") as ws:
            t = time.time()
            events = await run(session, ws, url, client_id, workflow(good.name, seed=int(t)))
            progress = [(d["value"], d["max"], d["node"]) for k, d in events if k == "progress"]
            saved = [d["output"] for k, d in events if k == "executed" and d["node"] == "4"]
            check("mixed workflow succeeds", events[-1][0] == "execution_success", f"{time.time() - t:.1f}s")
            check("progress per step on /ws", progress == [(1, 3, "3"), (2, 3, "3"), (3, 3, "3")], progress)
            files = [
                args.comfyui / "output" / i["subfolder"] / i["filename"] for o in saved for i in o["images"]
            ]
            check("SaveImage wrote the image", bool(files) and all(f.is_file() for f in files), files)

            events = await run(
                session, ws, url, client_id, workflow(good.name, 300, int(t) + 1), interrupt_at=3
            )
            steps = [d["value"] for k, d in events if k == "progress"]
            last = events[-1]
            check(
                "interrupt stops the Sampler between steps",
                last[0] == "execution_interrupted" and last[1]["node_id"] == "3" and steps[-1] < 300,
                f"after step {steps[-1] if steps else None} of 300",
            )

            events = await run(session, ws, url, client_id, workflow(f"check_{stamp}_truncated.safetensors"))
            err = events[-1][1]
            check(
                "truncated LoRA: execution_error on LoadLoRA naming lora_name",
                events[-1][0] == "execution_error"
                and err["node_id"] == "2"
                and err["exception_message"].startswith("lora_name:"),
                err.get("exception_message", "")[:200],
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
