"""Manual check against a real, running ComfyUI with this pack in custom_nodes/ (not collected by pytest).

    python tests/comfy_standin/real_comfyui_check.py --url http://127.0.0.1:8199 --comfyui /path/to/ComfyUI

Writes two LoRA files into ComfyUI's models/loras (a good one and a truncated one), then checks: the
LoadLoRA combo shows them without a restart; a workflow mixing our nodes with ComfyUI's SaveImage and
PreviewImage runs through /prompt with `progress` messages on /ws; POST /interrupt stops a 300-step
Sampler between steps; the truncated LoRA fails with an execution_error on its LoadLoRA node naming
`lora_name`.

Then the model families (docs/architecture.md, "The real-ComfyUI check"): the LoadPipeline combo
lists every built-in; tiny Wan 2.1 (bare, and with the example Wan LoRA) and Wan 2.2 (bare, and with
its LoRA pair, the low-noise file placed by `target`) render 5 frames into ComfyUI's SaveImage (one
PNG per frame) and SaveAnimatedWEBP, compared with the same workflow run by loragraph's executor in
this process (so run it with an interpreter that imports loragraph); every built-in renders one step
as it does headless; tiny Kontext takes ComfyUI's LoadImage as `image`, and a 32x32 one fails on
`image`. Prints one line per check and exits non-zero if one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import numpy as np
import torch
from PIL import Image, ImageSequence


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


# --- model families: a video family's frames into ComfyUI's own save nodes, an editing pipeline ------

TOLERANCE = 2  # levels of 255: a frame from ComfyUI and from `loragraph run` may differ this much
WAN_SIZE, WAN_FRAMES, WAN_STEPS = 32, 5, 3  # Wan: 16-pixel multiples, 4k+1 frames; seconds on a CPU
EXAMPLE_LORAS = Path(__file__).resolve().parents[2] / "examples" / "models" / "loras"
EXAMPLE_DIR = "loragraph_examples"  # where the example LoRA files are copied inside ComfyUI's loras


def family_prompt(model: str, loras: list[tuple[str, str]], save: dict, prefix: str, frames: int,
                  size: int, steps: int, image: str | None = None) -> dict:
    """LoadPipeline, a LoadLoRA per (file, target), a Sampler, SaveImage, and `save` (the animated
    WebP node: ComfyUI's SaveAnimatedWEBP, or the pack's SaveAnimation headless) when given."""
    prompt: dict = {"1": {"class_type": "LoadPipeline",
                          "inputs": {"model": model, "dtype": "float32", "device": "cpu"}}}
    source = "1"
    for i, (name, target) in enumerate(loras):
        node = str(10 + i)
        prompt[node] = {"class_type": "LoadLoRA",
                        "inputs": {"pipeline": [source, 0], "lora_name": name, "strength": 1.0,
                                   "adapter_name": f"l{i}", "target": target}}
        source = node
    sampler = {"pipeline": [source, 0], "prompt": "a red circle moving to the right", "negative_prompt": "",
               "seed": 42, "steps": steps, "cfg": 5.0, "width": size, "height": size,
               "scheduler": "default", "batch_size": 1, "true_cfg": 1.0, "frames": frames}
    if image is not None:
        prompt["20"] = {"class_type": "LoadImage", "inputs": {"image": image}}
        sampler["image"] = ["20", 0]
    prompt["2"] = {"class_type": "Sampler", "inputs": sampler}
    prompt["3"] = {"class_type": "SaveImage",
                   "inputs": {"images": ["2", 0], "filename_prefix": f"{prefix}/frame"}}
    if loras:  # where each file went, as LoRAInfo shows it
        prompt["5"] = {"class_type": "LoRAInfo", "inputs": {"pipeline": [source, 0]}}
    if save:
        prompt["4"] = {**save, "inputs": {"images": ["2", 0], "filename_prefix": f"{prefix}/video",
                                          **save["inputs"]}}
    return prompt


COMFY_WEBP = {"class_type": "SaveAnimatedWEBP",
              "inputs": {"fps": 8.0, "lossless": True, "quality": 100, "method": "default"}}
HEADLESS_WEBP = {"class_type": "SaveAnimation", "inputs": {"fps": 8}}


class ComfyLoadImage:
    """Headless stand-in for ComfyUI's LoadImage on an RGB PNG of its input folder: the same tensor
    (RGB, float32 / 255, a batch of one), so the headless run sees what ComfyUI's Sampler saw."""

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "load"
    input_dir: Path = Path("input")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"image": ("STRING", {})}}

    def load(self, image: str) -> tuple:
        return (pil_to_tensor(Image.open(self.input_dir / image)),)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.convert("RGB")).astype(np.float32) / 255.0)[None]


def frames_of(files: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(f).convert("RGB")).astype(np.int16) for f in files])


def webp_frames(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.stack([np.asarray(f.convert("RGB")).astype(np.int16) for f in ImageSequence.Iterator(img)])


def saved_files(root: Path, outputs: dict, node: str) -> list[Path]:
    return [root / i["subfolder"] / i["filename"] for i in outputs.get(node, {}).get("images", [])]


class Headless:
    """The same workflows run by loragraph's own executor (as `loragraph run` does), with ComfyUI's
    models folder and a temporary output folder."""

    def __init__(self, comfyui: Path, out: Path) -> None:
        from loragraph import host
        from loragraph.graph import Executor
        from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

        host.configure(models_dir=comfyui / "models", output_dir=out)
        ComfyLoadImage.input_dir = comfyui / "input"
        self.out = out
        self.executor = Executor({**HEADLESS_NODE_CLASS_MAPPINGS, "LoadImage": ComfyLoadImage})

    def run(self, prompt: dict) -> dict:
        result = self.executor.execute(prompt)
        if result.status != "success":
            raise RuntimeError(f"headless run failed: {result.error or result.node_errors}")
        return {node: saved_files(self.out, result.outputs, node) for node in ("3", "4")}


async def comfy_outputs(session, ws, url: str, client_id: str, comfyui: Path, prompt: dict) -> tuple:
    events = await run(session, ws, url, client_id, prompt)
    outputs = {d["node"]: d["output"] for k, d in events if k == "executed"}
    files = {node: saved_files(comfyui / "output", outputs, node) for node in ("3", "4")}
    return events[-1], files, outputs


def levels(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max()) if a.shape == b.shape else 10_000


async def family_checks(session, ws, url: str, client_id: str, comfyui: Path, check) -> None:
    from loragraph.builtin_models.catalog import BUILTINS

    async with session.get(f"{url}/object_info/LoadPipeline") as r:
        combo = (await r.json())["LoadPipeline"]["input"]["required"]["model"][0]
    wanted = [f"builtin:{name}" for name in BUILTINS]
    check("LoadPipeline combo lists every built-in family", set(wanted) <= set(combo),
          f"{len(wanted)} built-ins: {', '.join(n.removeprefix('builtin:') for n in wanted)}")

    loras = comfyui / "models" / "loras" / EXAMPLE_DIR
    for f in EXAMPLE_LORAS.rglob("*.safetensors"):
        if f.parent.name == "wan22":
            (loras / "wan22").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, loras / "wan22" / f.name)
    high, low = f"{EXAMPLE_DIR}/wan22/high_noise.safetensors", f"{EXAMPLE_DIR}/wan22/low_noise.safetensors"
    stamp = uuid.uuid4().hex[:8]
    headless = Headless(comfyui, Path(tempfile.mkdtemp(prefix="loragraph-headless-")))
    cases = [
        ("tiny-wan", "builtin:tiny-wan", []),
        ("tiny-wan + LoRA", "builtin:tiny-wan", [(high, "auto")]),
        ("tiny-wan22", "builtin:tiny-wan22", []),
        ("tiny-wan22 + pair (target)", "builtin:tiny-wan22", [(high, "auto"), (low, "transformer_2")]),
    ]
    frames: dict[str, np.ndarray] = {}
    for label, model, pair in cases:
        prefix = f"loragraph_check_{stamp}/{label.split()[0]}_{len(pair)}"
        t = time.time()
        last, files, outputs = await comfy_outputs(
            session, ws, url, client_id, comfyui,
            family_prompt(model, pair, COMFY_WEBP, prefix, WAN_FRAMES, WAN_SIZE, WAN_STEPS))
        if last[0] != "execution_success":
            check(f"{label}: runs in ComfyUI", False, last[1].get("exception_message", last)[:300])
            continue
        pngs, webps = files["3"], files["4"]
        check(f"{label}: SaveImage wrote one PNG per frame", len(pngs) == WAN_FRAMES
              and all(p.is_file() for p in pngs), f"{len(pngs)} PNGs for {WAN_FRAMES} frames, "
              f"{time.time() - t:.1f}s")
        got = frames_of(pngs)
        animated = webp_frames(webps[0]) if len(webps) == 1 else np.zeros(0)
        check(f"{label}: SaveAnimatedWEBP wrote one animated WebP of the frames",
              len(webps) == 1 and levels(animated, got) == 0,
              f"{webps[0].name if webps else None}: {len(animated)} frames, lossless = the PNGs")
        want = headless.run(
            family_prompt(model, pair, HEADLESS_WEBP, prefix, WAN_FRAMES, WAN_SIZE, WAN_STEPS))
        ours = frames_of(want["3"])
        check(f"{label}: frames match `loragraph run` within {TOLERANCE}/255",
              len(ours) == WAN_FRAMES and levels(got, ours) <= TOLERANCE
              and levels(webp_frames(want["4"][0]), animated) <= TOLERANCE,
              f"max {levels(got, ours)}/255 over {len(ours)} frames (and the WebPs)")
        frames[label] = got
        if len(pair) == 2:
            placed = json.loads(outputs["5"]["text"][0])["list_adapters"]
            check(f"{label}: LoRAInfo puts each file on its expert", placed == {"transformer": ["l0"],
                  "transformer_2": ["l1"]}, placed)
    for label, base in (("tiny-wan + LoRA", "tiny-wan"), ("tiny-wan22 + pair (target)", "tiny-wan22")):
        if label in frames and base in frames:
            moved = levels(frames[label], frames[base])
            check(f"{label}: the LoRA changes the frames", moved > 3 * TOLERANCE,
                  f"max {moved}/255 from the base")

    # Every built-in family renders inside ComfyUI as it does headless (one step, its native size and
    # frame count: the other inputs are checked above; this is whether each pipeline runs there at all).
    for name, builtin in BUILTINS.items():
        count = builtin.frames or 1
        prompt = family_prompt(f"builtin:{name}", [], {}, f"loragraph_check_{stamp}/all/{name}", count,
                               builtin.native_size, 1)
        last, files, _ = await comfy_outputs(session, ws, url, client_id, comfyui, prompt)
        if last[0] != "execution_success":
            check(f"{name}: renders in ComfyUI", False, last[1].get("exception_message", last)[:300])
            continue
        got, ours = frames_of(files["3"]), frames_of(headless.run(prompt)["3"])
        check(f"{name}: renders in ComfyUI as in `loragraph run`",
              len(got) == count and levels(got, ours) <= TOLERANCE,
              f"{len(got)} image(s) of {builtin.native_size}px, max {levels(got, ours)}/255")

    # An editing pipeline gets ComfyUI's LoadImage output as `image`.
    size = BUILTINS["tiny-kontext"].native_size
    inputs = comfyui / "input"
    inputs.mkdir(exist_ok=True)
    # seeded noise, and a white image: far apart, so the tiny random model's outputs are too
    names = [f"loragraph_check_{stamp}_{c}.png" for c in ("noise", "white")]
    noise = np.random.default_rng(5).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(noise).save(inputs / names[0])
    Image.new("RGB", (size, size), (255, 255, 255)).save(inputs / names[1])
    prompt = family_prompt("builtin:tiny-kontext", [], {}, f"loragraph_check_{stamp}/kontext", 1, size, 2,
                           image=names[0])
    last, files, _ = await comfy_outputs(session, ws, url, client_id, comfyui, prompt)
    if last[0] != "execution_success":
        check("tiny-kontext: LoadImage -> Sampler.image runs", False,
              last[1].get("exception_message", last)[:300])
        return
    got = frames_of(files["3"])
    same = frames_of(headless.run(prompt)["3"])
    other_image = {"class_type": "LoadImage", "inputs": {"image": names[1]}}
    other = frames_of(headless.run({**prompt, "20": other_image})["3"])
    check("tiny-kontext: ComfyUI's LoadImage as `image` matches `loragraph run` on the same file",
          levels(got, same) <= TOLERANCE, f"max {levels(got, same)}/255")
    unconditioned = {k: v for k, v in prompt.items() if k != "20"}
    unconditioned["2"] = {**prompt["2"], "inputs": {k: v for k, v in prompt["2"]["inputs"].items()
                                                    if k != "image"}}
    plain = frames_of(headless.run(unconditioned)["3"])
    check("tiny-kontext: the image conditions the render",
          min(levels(got, other), levels(got, plain)) > 3 * TOLERANCE,
          f"max {levels(got, other)}/255 against another input image, {levels(got, plain)}/255 against none")

    # One smaller than Kontext's image processor rounds to (64 on the tiny one): an error on `image`.
    small_name = f"loragraph_check_{stamp}_small.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(inputs / small_name)
    small = {**prompt, "20": {"class_type": "LoadImage", "inputs": {"image": small_name}}}
    last, _, _ = await comfy_outputs(session, ws, url, client_id, comfyui, small)
    check("tiny-kontext: a 32x32 LoadImage fails on the Sampler naming image",
          last[0] == "execution_error" and last[1]["node_id"] == "2"
          and last[1]["exception_message"].startswith("image:"),
          last[1].get("exception_message", last[0])[:200])


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8199")
    ap.add_argument(
        "--comfyui", required=True, type=Path, help="the ComfyUI folder (for models/ and output/)"
    )
    args = ap.parse_args()
    from loragraph.nodes import NODE_CLASS_MAPPINGS
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
        check("every node of the pack in /object_info", sorted(ours) == sorted(NODE_CLASS_MAPPINGS),
              f"{len(ours)} nodes")

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
            await family_checks(session, ws, url, client_id, args.comfyui, check)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
