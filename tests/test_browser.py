"""The visual editor: ComfyUI's frontend served by ``loragraph serve``, with the pack's extension.

Without a browser (aiohttp's test client): the pack route ``/loragraph/lora_info``, the routes the
frontend needs to boot (users, settings, userdata), and the pack routes' registration inside ComfyUI.

With one: headless Chromium (Debian's ``chromium``) driven by ``tests/browser/editor_flow.js``
through playwright-core (``npm ci``) against a real server on a free loopback port. It opens the
editor, finds the pack's nodes, loads the quickstart, checks the extension's widgets (LoadLoRA
summaries, the adapter picker, fused badges), queues the workflow, sees the image and the LoRAInfo
table, and keeps screenshots in ``test-artifacts/``. It skips, saying why, when chromium, node,
playwright-core or the ``comfyui-frontend-package`` (``pip install -e ".[editor]"``) is missing.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from loragraph import host
from loragraph.server import ServerConfig, create_app, pack_routes
from loragraph.server import frontend as editor_module

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "browser" / "editor_flow.js"
ARTIFACTS = REPO / "test-artifacts"
QUICKSTART = REPO / "examples" / "workflows" / "quickstart.json"
EXAMPLE_LORAS = REPO / "examples" / "models" / "loras"
CHROMIUM = os.environ.get("LORAGRAPH_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
STEPS = 2  # enough to make an image, fast on a shared 2-core CPU
INK_TRIGGERS = "inkwash, red circle"


@pytest.fixture(scope="module")
def editor_models(tmp_path_factory) -> Path:
    """loras/: the examples' files (when present: demo_a/b and shapes/*), `ink` (diffusers, trigger words
    in its metadata) and `styles/paper-v2` (kohya, alpha 2), all for the built-in tiny SD pipeline."""
    from loragraph.testing import write_lora_file

    root = tmp_path_factory.mktemp("editor-models")
    loras = root / "loras"
    loras.mkdir()
    if EXAMPLE_LORAS.is_dir():
        for f in EXAMPLE_LORAS.rglob("*.safetensors"):  # shapes/ holds the quickstart's
            (loras / f.relative_to(EXAMPLE_LORAS)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, loras / f.relative_to(EXAMPLE_LORAS))
    write_lora_file(loras / "ink.safetensors", "sd", "diffusers", rank=4, seed=31,
                    metadata={"modelspec.trigger_phrase": INK_TRIGGERS, "modelspec.title": "Ink wash"})
    write_lora_file(loras / "styles" / "paper-v2.safetensors", "sd", "kohya", rank=4, alpha=2, seed=32)
    (loras / "zz-broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return root


@pytest.fixture()
def folders(editor_models, tmp_path):
    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=editor_models, output_dir=tmp_path / "output")
    yield {"models": editor_models, "output": tmp_path / "output", "input": tmp_path / "input",
           "user": tmp_path / "user"}
    host.configure(models_dir=before[0], output_dir=before[1])


@pytest.fixture()
def fake_frontend(tmp_path, monkeypatch) -> Path:
    """A stand-in for the frontend package's files, so the editor's routes are tested without it."""
    static = tmp_path / "frontend"
    static.mkdir()
    (static / "index.html").write_text("<!doctype html><title>ComfyUI</title>")
    (static / "scripts").mkdir()
    (static / "scripts" / "app.js").write_text("export const app = {};")
    monkeypatch.setattr(editor_module, "frontend_root", lambda: static)
    return static


def with_client(app: web.Application, body) -> None:
    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await body(client)

    asyncio.run(main())


def config_for(folders, **extra: Any) -> ServerConfig:
    return ServerConfig(input_dir=folders["input"], user_dir=folders["user"], **extra)


# -- the pack's route ------------------------------------------------------------------------------


def test_lora_info_route_describes_a_lora_file(folders):
    async def body(client: TestClient) -> None:
        for prefix in ("", "/api"):
            res = await client.get(f"{prefix}/loragraph/lora_info", params={"name": "ink.safetensors"})
            assert res.status == 200
            info = await res.json()
            assert info["file"] == "ink.safetensors" and info["format"] == "diffusers"
            assert info["ranks"] == [4] and info["base_model"]
            assert info["trigger_words"][:2] == ["inkwash", "red circle"] and info["title"] == "Ink wash"
        kohya = await (await client.get("/loragraph/lora_info",
                                        params={"name": "styles/paper-v2.safetensors"})).json()
        assert kohya["format"] == "kohya" and kohya["alphas"] == [2.0]
        assert "ink.safetensors" in await (await client.get("/loragraph/loras")).json()

        for name, status in [("", 400), ("../outside.safetensors", 400), ("/etc/passwd", 400),
                             ("nothing.safetensors", 404), ("zz-broken.safetensors", 422)]:
            res = await client.get("/loragraph/lora_info", params={"name": name} if name else {})
            assert res.status == status, name
            assert (await res.json())["error"]

    with_client(create_app(config_for(folders, editor=False)), body)


def test_lora_info_route_names_the_family_a_file_fits_as_inspect_does(tmp_path, capsys):
    """A Wan file and a Flux-family file (Kontext's, in kohya's layout) made for the built-in models:
    the route answers the built-in model and pipeline family `loragraph inspect` names, not "other"."""
    from loragraph.builtin_models.catalog import BUILTINS
    from loragraph.cli import main
    from loragraph.testing import WAN_TARGETS, write_lora_file
    from test_families_oracle import write_family_file

    loras = tmp_path / "models" / "loras"
    write_lora_file(loras / "wan" / "style.safetensors", fmt="diffusers", rank=4, seed=5,
                    pipe=BUILTINS["tiny-wan"].builder(), components=("transformer",), targets=WAN_TARGETS)
    write_family_file(loras / "kontext_kohya.safetensors", "tiny-kontext", "kohya-flux")
    said = {}
    for name in ("wan/style.safetensors", "kontext_kohya.safetensors"):
        assert main(["inspect", str(loras / name), "--json"]) == 0
        said[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["summary"]
    assert said["wan/style.safetensors"]["family"] == "WanPipeline"
    flux_family = ("FluxPipeline", "FluxKontextPipeline", "ChromaPipeline")
    assert said["kontext_kohya.safetensors"]["family"] in flux_family

    before = host.folder_roots("loras")[0].parent, host.output_dir()
    host.configure(models_dir=tmp_path / "models", output_dir=tmp_path / "output")

    async def body(client: TestClient) -> None:
        for name, inspected in said.items():
            res = await client.get("/loragraph/lora_info", params={"name": name})
            assert res.status == 200, await res.text()
            info = await res.json()
            assert info["family"] == inspected["family"] and info["fits"] == inspected["fits"] != []
            assert info["base_model"] == inspected["base_model"] == inspected["fits"][0] != "other"

    try:
        with_client(create_app(ServerConfig(input_dir=tmp_path / "input", user_dir=tmp_path / "user",
                                            editor=False)), body)
    finally:
        host.configure(models_dir=before[0], output_dir=before[1])


def test_pack_routes_register_on_comfyuis_prompt_server(monkeypatch):
    assert pack_routes.register_in_comfyui() is False  # headless: no ComfyUI server module
    routes = web.RouteTableDef()
    fake = types.ModuleType("server")
    fake.PromptServer = type("PromptServer", (), {"instance": types.SimpleNamespace(routes=routes)})
    monkeypatch.setitem(sys.modules, "server", fake)
    assert pack_routes.register_in_comfyui() is False  # a module named server, but not inside ComfyUI
    for name in ("folder_paths", "comfy.utils"):  # what host.inside_comfyui() looks for
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    assert pack_routes.register_in_comfyui() is True
    assert pack_routes.register_in_comfyui() is True  # the pack imported twice adds nothing twice
    paths = [r.path for r in routes]
    assert sorted(paths) == ["/loragraph/lora_info", "/loragraph/lora_preview", "/loragraph/loras"]


def test_the_editor_derives_adapter_names_as_the_engine_does():
    """web/js/adapters.js re-implements state.derive_adapter_name for the adapter picker."""
    if shutil.which("node") is None:
        pytest.skip("no node on PATH")
    from loragraph.loaders.transitions import derive_adapter_name

    cases = [("styles/ink-v2.safetensors", []), ("ink-v2.safetensors", ["ink-v2"]),
             ("ink-v2.safetensors", ["ink-v2", "ink-v2_2"]), ("a\\b\\x.y.z.pt", []), ("...safetensors", []),
             ("über style!.safetensors", []), ("noext", []), ("_odd__name_.ckpt", [])]
    script = (f"import {{ deriveAdapterName }} from {json.dumps((REPO / 'web/js/adapters.js').as_uri())};\n"
              f"const cases = {json.dumps(cases)};\n"
              "console.log(JSON.stringify(cases.map(([n, taken]) => deriveAdapterName(n, taken))));")
    proc = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=30, check=False, env={**os.environ, "NODE_NO_WARNINGS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [derive_adapter_name(n, tuple(taken)) for n, taken in cases]


# -- what the frontend needs to boot ---------------------------------------------------------------


def test_editor_routes_users_settings_userdata_round_trip(folders, fake_frontend):
    user_root = folders["user"] / "default"

    async def body(client: TestClient) -> None:
        res = await client.get("/")
        assert res.status == 200 and "ComfyUI" in await res.text()
        assert res.headers["Cache-Control"] == "no-cache"
        assert (await client.get("/scripts/app.js")).status == 200  # the frontend's own files
        assert (await client.get("/extensions/loragraph/js/loragraph.js")).status == 200
        extensions = await (await client.get("/api/extensions")).json()
        assert "/extensions/loragraph/js/loragraph.js" in extensions
        assert (await (await client.get("/api/users")).json())["storage"] == "server"

        # settings: the editor's defaults, then the user's own, kept on disk
        settings = await (await client.get("/api/settings")).json()
        assert settings == editor_module.EDITOR_DEFAULT_SETTINGS
        assert (await client.post("/api/settings", json={"Comfy.Locale": "en", "x": 1})).status == 200
        assert (await client.post("/api/settings/Comfy.TutorialCompleted", json=False)).status == 200
        assert await (await client.get("/api/settings/x")).json() == 1
        assert await (await client.get("/api/settings/Comfy.TutorialCompleted")).json() is False
        assert await (await client.get("/api/settings/nothing")).json() is None
        stored = json.loads((user_root / "comfy.settings.json").read_text())
        assert stored == {"Comfy.Locale": "en", "x": 1, "Comfy.TutorialCompleted": False}
        assert (await client.post("/api/settings", data=b"[1, 2]")).status == 400
        assert (await client.post("/api/settings/x", data=b"{not json")).status == 400

        # userdata: save, list, read, refuse to overwrite, move, delete
        graph = json.dumps({"nodes": [], "links": []}).encode()
        res = await client.post("/api/userdata/workflows%2Fmine.json", data=graph)
        assert res.status == 200 and await res.json() == "workflows/mine.json"
        assert (user_root / "workflows" / "mine.json").read_bytes() == graph
        listed = await (await client.get("/api/userdata", params={"dir": "workflows"})).json()
        assert listed == ["mine.json"]
        full = await (await client.get("/api/userdata", params={"dir": "workflows", "recurse": "true",
                                                                  "full_info": "true"})).json()
        assert full[0]["path"] == "mine.json" and full[0]["size"] == len(graph)
        split = await (await client.get("/api/userdata", params={"dir": "workflows", "split": "true"})).json()
        assert split == [["mine.json", "mine.json"]]
        tree = await (await client.get("/api/v2/userdata")).json()
        assert {"name": "workflows", "path": "workflows", "type": "directory"} in tree
        assert any(e["path"] == "workflows/mine.json" and e["size"] == len(graph) for e in tree)
        assert await (await client.get("/api/userdata/workflows%2Fmine.json")).read() == graph
        res = await client.post("/api/userdata/workflows%2Fmine.json?overwrite=false", data=b"{}")
        assert res.status == 409
        # overwrite=false is atomic: of ten posts of one new name at once, one writes, nine get 409
        bodies = [json.dumps({"n": i}).encode() for i in range(10)]
        answers = await asyncio.gather(*(client.post("/api/userdata/workflows%2Frace.json?overwrite=false",
                                                     data=b)
                                         for b in bodies))
        assert sorted(r.status for r in answers) == [200] + [409] * 9
        winner = next(b for b, r in zip(bodies, answers, strict=True) if r.status == 200)
        assert (user_root / "workflows" / "race.json").read_bytes() == winner
        for i in range(2):
            await client.post(f"/api/userdata/workflows%2Fsrc{i}.json", data=bodies[i])
        moves = await asyncio.gather(*(client.post(f"/api/userdata/workflows%2Fsrc{i}.json/move/"
                                                   "workflows%2Fdest.json?overwrite=false")
                                       for i in range(2)))
        assert sorted(r.status for r in moves) == [200, 409]
        kept = next(i for i, r in enumerate(moves) if r.status == 409)  # the refused move leaves its file
        assert (user_root / "workflows" / f"src{kept}.json").read_bytes() == bodies[kept]
        assert (user_root / "workflows" / "dest.json").read_bytes() == bodies[1 - kept]
        for name in ("race.json", "dest.json", f"src{kept}.json"):
            assert (await client.delete(f"/api/userdata/workflows%2F{name}")).status == 204
        res = await client.post("/api/userdata/workflows%2Fmine.json/move/workflows%2Fmoved.json"
                                "?full_info=true")
        assert res.status == 200 and (await res.json())["path"] == "workflows/moved.json"
        assert (await client.delete("/api/userdata/workflows%2Fmoved.json")).status == 204
        assert (await client.get("/api/userdata/workflows%2Fmoved.json")).status == 404
        assert (await client.get("/api/userdata", params={"dir": "nothing"})).status == 404
        await client.post("/api/userdata/page.html", data=b"<script>alert(1)</script>")
        res = await client.get("/api/userdata/page.html")
        # never rendered in the editor's origin
        assert res.headers["Content-Type"] == "application/octet-stream"
        await client.post("/api/userdata/user.css", data=b"body {}")
        assert (await client.get("/api/userdata/user.css")).headers["Content-Type"].startswith("text/css")
        assert (await client.get("/api/userdata")).status == 400

        # nothing outside the user's folder
        for path in ("/api/userdata/..%2F..%2Fescape.json", "/api/userdata/%2Fetc%2Fpasswd"):
            assert (await client.post(path, data=b"x")).status == 403, path
            assert (await client.get(path)).status == 403, path
        assert (await client.get("/api/userdata", params={"dir": "../"})).status == 403
        assert (await client.get("/api/v2/userdata", params={"path": "../.."})).status == 400
        assert not (folders["user"].parent / "escape.json").exists()

        # the rest of the boot sequence
        assert await (await client.get("/api/i18n")).json() == {}
        assert await (await client.get("/api/workflow_templates")).json() == {}
        assert (await client.get("/templates/index.json")).status == 200
        kinds = {f["name"] for f in await (await client.get("/api/experiment/models")).json()}
        assert {"loras", "checkpoints", "diffusers"} <= kinds
        loras = await (await client.get("/api/experiment/models/loras")).json()
        ink = next(x for x in loras if x["name"] == "ink.safetensors")
        assert ink["pathIndex"] == 0 and ink["size"] > 0
        assert any(x["name"] == "styles/paper-v2.safetensors" for x in loras)
        meta = await (await client.get("/api/view_metadata/loras",
                                       params={"filename": "ink.safetensors"})).json()
        assert meta["modelspec.trigger_phrase"] == INK_TRIGGERS
        assert (await client.get("/internal/logs/raw")).status == 200
        assert (await client.get("/internal/files/output")).status == 200
        assert (await client.get("/internal/files/models")).status == 400

    with_client(create_app(config_for(folders)), body)


def test_without_the_frontend_the_server_serves_the_api_only(folders, monkeypatch):
    monkeypatch.setattr(editor_module, "frontend_root", lambda: None)

    async def body(client: TestClient) -> None:
        res = await client.get("/")
        assert res.status == 200 and "loragraph[editor]" in await res.text()
        assert (await client.get("/api/settings")).status == 404
        assert (await client.get("/loragraph/lora_info", params={"name": "ink.safetensors"})).status == 200

    with_client(create_app(config_for(folders)), body)


# -- the editor in a browser -----------------------------------------------------------------------


def browser_missing() -> str | None:
    if not Path(CHROMIUM).is_file():
        return f"no chromium at {CHROMIUM} (apt-get install -y chromium)"
    if shutil.which("node") is None:
        return "no node on PATH"
    if not (REPO / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core is missing (npm ci)"
    if editor_module.frontend_root() is None:
        return 'the comfyui-frontend-package is not installed (pip install -e ".[editor]")'
    return None


class LiveServer:
    """``create_app`` on a real TCPSite at a free loopback port, in a thread, as ``loragraph serve`` runs."""

    def __init__(self, config: ServerConfig) -> None:
        self.app = create_app(config)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="editor-server", daemon=True)
        self.runner = web.AppRunner(self.app, access_log=None)
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_workflow() -> tuple[dict[str, Any], list[str]]:
    """The quickstart (or, without the examples, the same graph on our own files), made quick, with a
    LoRAInfo on the fused pipeline; and the adapter names its LoRAInfo must list."""
    if QUICKSTART.is_file() and EXAMPLE_LORAS.is_dir():
        wf = json.loads(QUICKSTART.read_text())
    else:
        wf = {
            "1": {"class_type": "LoadPipeline",
                  "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "auto"}},
            "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "ink.safetensors",
                                                        "strength": 1.0, "adapter_name": "ink"}},
            "3": {"class_type": "LoadLoRA",
                  "inputs": {"pipeline": ["2", 0], "lora_name": "styles/paper-v2.safetensors",
                             "strength": 1.0, "adapter_name": "paper"}},
            "4": {"class_type": "SetAdapterWeights",
                  "inputs": {"pipeline": ["3", 0], "adapter_names": "ink, paper", "weights": "0.8, 0.6",
                             "text_encoder_weights": "", "block_weights": ""}},
            "5": {"class_type": "FuseLoRA",
                  "inputs": {"pipeline": ["4", 0], "fuse_unet": True, "fuse_text_encoder": True,
                             "lora_scale": 1.0, "safe_fusing": False, "adapter_names": ""}},
            "6": {"class_type": "Sampler",
                  "inputs": {"pipeline": ["5", 0], "prompt": "a red circle", "negative_prompt": "",
                             "seed": 42, "steps": 20, "cfg": 7.0, "width": 64, "height": 64,
                             "scheduler": "default", "batch_size": 1}},
            "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "quickstart"}},
        }
    for node in wf.values():
        if node["class_type"] == "Sampler":
            node["inputs"].update(steps=STEPS, width=64, height=64, batch_size=1)
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "browser"
    fuse = next(i for i, n in wf.items() if n["class_type"] == "FuseLoRA")
    wf["90"] = {"class_type": "LoRAInfo", "inputs": {"pipeline": [fuse, 0]}}
    return wf, loaded_names(wf)


def loaded_names(wf: dict[str, Any]) -> list[str]:
    """LoadLoRA adapter names in chain order, derived from file names as the engine does."""
    from loragraph.loaders.transitions import derive_adapter_name

    names: list[str] = []
    node_id = next(i for i, n in wf.items() if n["class_type"] == "LoadPipeline")
    while True:
        nxt = next((i for i, n in wf.items() if n["inputs"].get("pipeline") == [node_id, 0]
                    and n["class_type"] not in ("LoRAInfo", "Sampler")), None)
        if nxt is None:
            return names
        node = wf[nxt]
        if node["class_type"] == "LoadLoRA":
            names.append(node["inputs"]["adapter_name"].strip()
                         or derive_adapter_name(node["inputs"]["lora_name"], tuple(names)))
        node_id = nxt


def names_workflow() -> dict[str, Any]:
    """LoRAs named by their files only: the editor must derive the names the engine would."""
    def lora(i: int, src: str, name: str) -> dict[str, Any]:
        return {"class_type": "LoadLoRA", "inputs": {"pipeline": [src, 0], "lora_name": name, "strength": 1.0,
                                                      "adapter_name": ""}}

    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "auto"}},
        "2": lora(2, "1", "ink.safetensors"),
        "3": lora(3, "2", "styles/paper-v2.safetensors"),
        "4": lora(4, "3", "ink.safetensors"),
        "5": {"class_type": "DeleteAdapters", "inputs": {"pipeline": ["4", 0], "adapter_names": ""}},
    }


def schedule_workflow() -> dict[str, Any]:
    """A LoRA whose strength is scheduled: 1 until 40% of the steps, 0 from 60%."""
    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-sd", "dtype": "auto", "device": "auto"}},
        "2": {"class_type": "LoadLoRA", "inputs": {"pipeline": ["1", 0], "lora_name": "ink.safetensors",
                                                    "strength": 1.0, "adapter_name": "ink"}},
        "3": {"class_type": "ScheduleAdapterWeights", "inputs": {"pipeline": ["2", 0], "adapter_name": "ink",
                                                                  "keyframes": "0:1, 0.4:1, 0.6:0",
                                                                  "interpolation": "linear"}},
    }


def check_curve(plot: dict[str, Any], keyframes: list[tuple[float, float]]) -> None:
    """The plot the editor drew follows `keyframes` (linear): its samples equal the engine's strength,
    each keyframe's dot and the curve between are painted, and points off the curve are not."""
    from loragraph.loaders.state import Schedule

    assert plot["error"] is None and plot["visible"]
    assert plot["keyframes"] == [list(k) for k in keyframes]
    curve = Schedule("x", tuple(keyframes), "linear")
    assert len(plot["samples"]) > 50
    for p, s in plot["samples"]:
        assert s == pytest.approx(curve.strength(p), abs=1e-9), p
    assert all(alpha > 200 for alpha in plot["keyframe_alpha"] + plot["curve_alpha"]), plot
    assert all(alpha == 0 for alpha in plot["off_alpha"]), plot["off_alpha"]


FAMILY_EDITS = {"2": {"target": "transformer_2"}, "3": {"true_cfg": 2.5, "frames": 5}, "6": {"true_cfg": 3.0}}
FAMILY_FRAMES = 5


def family_workflow() -> dict[str, Any]:
    """Wan 2.2 with its low-noise LoRA, a video Sampler into SaveImage, and a Flux Kontext Sampler whose
    `image` is the video's frames. The Kontext Sampler feeds no output node, so the server never runs
    it (as ComfyUI, it runs what output nodes need): it is there for the queued prompt only."""
    def sampler(pipe: str, **extra: Any) -> dict[str, Any]:
        return {"class_type": "Sampler",
                "inputs": {"pipeline": [pipe, 0], "prompt": "a red circle", "negative_prompt": "", "seed": 3,
                           "steps": STEPS, "cfg": 5.0, "width": 32, "height": 32, "scheduler": "default",
                           "batch_size": 1, "true_cfg": 1.0, "frames": 1, **extra}}

    return {
        "1": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-wan22", "dtype": "float32", "device": "cpu",
                         "denoiser": "(from model)", "weight_dtype": "default"}},
        "2": {"class_type": "LoadLoRA",
              "inputs": {"pipeline": ["1", 0], "lora_name": "wan22/low_noise.safetensors", "strength": 1.0,
                         "adapter_name": "low", "target": "auto"}},
        "3": sampler("2"),
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "family"}},
        "5": {"class_type": "LoadPipeline",
              "inputs": {"model": "builtin:tiny-kontext", "dtype": "float32", "device": "cpu",
                         "denoiser": "(from model)", "weight_dtype": "default"}},
        "6": sampler("5", image=["3", 0]),
    }


def declared_inputs(class_type: str) -> tuple[list[str], list[str]]:
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    spec = HEADLESS_NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()
    return list(spec["required"]), list(spec.get("optional", {}))


def check_family(family: dict[str, Any], folders: dict[str, Path]) -> None:
    """The editor shows the Sampler's optional inputs and LoadLoRA's target; what it queues is exactly
    the declared inputs (an unconnected `image` left out) with the values set through the widgets."""
    from loragraph.loaders.components import DENOISERS

    shown = family["shown"]
    required, optional = declared_inputs("Sampler")
    assert optional == ["true_cfg", "frames", "image"]
    for node in ("3", "6"):
        widgets = {w["name"]: w for w in shown[node]["widgets"]}
        assert {"true_cfg", "frames"} <= set(widgets) and "image" not in widgets
        assert widgets["true_cfg"]["value"] == 1.0 and widgets["frames"]["value"] == 1
        (image,) = [i for i in shown[node]["inputs"] if i["name"] == "image"]
        # a socket, not a widget; drawn hollow (the frontend's RenderShape.HollowCircle = 7) as optional
        assert image["type"] == "IMAGE" and image["widget"] is None and image["shape"] == 7, image
        assert image["linked"] == (node == "6")
        assert shown[node]["optional"] == optional
    target = next(w for w in shown["2"]["widgets"] if w["name"] == "target")
    assert target["type"] == "combo" and target["value"] == "auto"
    assert target["values"] == ["auto", *DENOISERS]

    # LoadLoRA's summary names the family its Wan file fits, as `loragraph inspect` does (not "other")
    (summary,) = [s for s in family["summaries"] if str(s["id"]) == "2"]
    assert "family: WanPipeline" in summary["lines"], summary["lines"]
    assert any(line.startswith("base model: builtin:tiny-wan") for line in summary["lines"]), summary["lines"]

    (queued,) = family["queued"]
    wanted = family_workflow()
    for node, values in FAMILY_EDITS.items():
        wanted[node]["inputs"].update(values)
    assert without_meta(queued) == wanted
    lora_required, lora_optional = declared_inputs("LoadLoRA")
    assert set(queued["2"]["inputs"]) == {*lora_required, *lora_optional}
    pipe_required, pipe_optional = declared_inputs("LoadPipeline")
    assert set(queued["1"]["inputs"]) == set(queued["5"]["inputs"]) == {*pipe_required, *pipe_optional}
    assert set(queued["6"]["inputs"]) == {*required, *optional}
    assert set(queued["3"]["inputs"]) == {*required, *optional} - {"image"}

    # It ran: one PNG per frame from the video Sampler, the Kontext Sampler left out.
    assert not family["errors"], family["errors"]
    (saved,) = [d for d in family["executed"] if d["node"] == "4"]
    assert len(saved["output"]["images"]) == FAMILY_FRAMES
    assert len(list(folders["output"].glob("family_*.png"))) == FAMILY_FRAMES
    assert not [d for d in family["executed"] if d["node"] == "6"]


def without_meta(prompt: dict[str, Any]) -> dict[str, Any]:
    return {i: {"class_type": n["class_type"], "inputs": n["inputs"]} for i, n in prompt.items()}


def test_the_editor_in_a_browser_runs_the_quickstart(folders, tmp_path):
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    from loragraph.graph import editor_to_api
    from loragraph.nodes import HEADLESS_NODE_CLASS_MAPPINGS

    workflow, adapters = run_workflow()
    names_wf = names_workflow()
    shots = ARTIFACTS / "browser"
    server = LiveServer(config_for(folders))
    server.start()
    try:
        config = {"url": f"http://127.0.0.1:{server.port}", "run_workflow": workflow,
                  "names_workflow": names_wf, "schedule_workflow": schedule_workflow(),
                  "family_workflow": family_workflow(), "family_edits": FAMILY_EDITS,
                  "screenshot_dir": str(shots), "user_data_dir": str(tmp_path / "chromium-profile"),
                  "chromium": CHROMIUM, "timeout_ms": 60000}
        config_file = tmp_path / "driver.json"
        config_file.write_text(json.dumps(config))
        proc = subprocess.run(["node", str(DRIVER), str(config_file)], cwd=REPO, capture_output=True,
                              text=True, timeout=150, check=False)
    finally:
        server.stop()
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the driver printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    seen = json.loads(lines[-1])
    (ARTIFACTS / "browser").mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "browser" / "observations.json").write_text(json.dumps(seen, indent=1))
    assert "failure" not in seen, f"{seen['failure']}\nscreenshots: {seen.get('screenshots')}"
    assert proc.returncode == 0, proc.stderr[-3000:]

    # The editor booted on our server, with our nodes and our extension, and no error of ours.
    pack = {"LoadPipeline", "LoadLoRA", "SetAdapterWeights", "ScheduleAdapterWeights", "FuseLoRA",
            "UnfuseLoRA", "TextEncoderLoRAToggle", "DeleteAdapters", "UnloadLoRA", "SetLoRADevice",
            "SaveLoRA", "LoRAInfo", "Sampler", "SaveImage"}
    assert pack <= set(seen["node_types"])
    assert seen["extension_loaded"]
    ours = [e for e in seen["page_errors"] + seen["console_errors"] if "/extensions/loragraph/" in e]
    assert not ours, ours
    # No error answers at all (missing user.css, templates, empty user folders answer as empty),
    # so no 404s in the console; and nothing left 127.0.0.1 (no release notes, no telemetry).
    assert seen["bad_responses"] == [], seen["bad_responses"]
    assert not [e for e in seen["console_errors"] if "404" in e], seen["console_errors"]
    assert seen["outside_requests"] == [], seen["outside_requests"]
    # A new user starts from a graph of our nodes, not ComfyUI's default one.
    assert {"LoadPipeline", "Sampler", "SaveImage"} <= set(seen["starter_nodes"])

    # LoadLoRA shows its file's summary.
    summaries = {s["lora_name"]: s for s in seen["summaries"]}
    from loragraph.loaders.store import read_lora

    for name, summary in summaries.items():
        lora = read_lora(folders["models"] / "loras" / name)
        ranks = sorted({m.rank for m in lora.modules})
        assert summary["visible"]
        assert (summary["lines"][0].startswith(f"format: {lora.format} ")
                and f" rank {ranks[0]}" in summary["lines"][0])
        assert any(line.startswith("base model: ") for line in summary["lines"])
        assert any(line.startswith("trigger words: ") for line in summary["lines"])

    # The adapter picker offers what is loaded upstream, and its menu fills the widget.
    picker = seen["picker"]
    assert picker["SetAdapterWeights"] == adapters and picker["FuseLoRA"] == adapters and picker["button"]
    first, second = picker["picked"]
    assert first["menu"][0] == f"all: {', '.join(adapters)}" and first["value"] == ", ".join(adapters[1:])
    assert second["value"] == ", ".join(adapters)

    # FuseLoRA and the LoadLoRA nodes whose adapters it fuses carry the badge.
    badged = {key.split(":")[1]: names for key, names in seen["badges"].items()}
    assert badged["FuseLoRA"] == adapters
    assert sorted(n for key, names in seen["badges"].items()
                  if key.endswith("LoadLoRA") for n in names) == sorted(adapters)

    # The extension's widgets are in neither the prompt nor the saved graph: the saved graph converts
    # (graph/editor_format.py) to exactly the prompt the editor queued.
    prompt = seen["prompt"]
    declared = HEADLESS_NODE_CLASS_MAPPINGS["LoadLoRA"].INPUT_TYPES()
    assert set(prompt["2"]["inputs"]) == {*declared["required"], *declared.get("optional", {})}
    assert set(prompt["2"]["inputs"]) == {"pipeline", "lora_name", "strength", "adapter_name", "target"}
    converted = editor_to_api(seen["saved_graph"], HEADLESS_NODE_CLASS_MAPPINGS)
    assert without_meta(converted) == without_meta(prompt)

    # It ran: the image came back through /view, LoRAInfo's table shows the fused adapters.
    assert not seen["execution_errors"], seen["execution_errors"]
    image = seen["image"]
    assert image and "/view?" in image["src"] and image["status"] == 200 and image["png"]
    assert (image["width"], image["height"]) == (64, 64)
    assert list(folders["output"].glob("browser_*.png"))
    table = seen["info_table"]
    assert table["visible"] and table["header"][:3] == ["adapter", "active", "weights"]
    assert [row[0] for row in table["rows"]] == adapters
    fused_column = table["header"].index("fused")
    assert all(row[fused_column] == "unet, text_encoder" for row in table["rows"])
    # The table does not grow over the node placed right below LoRAInfo: it stops above it and scrolls.
    layout = seen["info_layout"]
    assert (layout["info_bottom"] <= layout["below_top"]
            and layout["panel_bottom_px"] <= layout["below_top_px"] + 1)
    assert layout["scrolls"] and layout["panel_height"] >= 40, layout
    # LoadLoRA's summary and LoRAInfo agree on alpha: the alpha peft uses, and whether the file stores it.
    alpha_column = table["header"].index("alpha")
    for row, name in zip(table["rows"], adapters, strict=True):
        lora_name = next(s["lora_name"] for s in seen["summaries"] if name in s["lora_name"])
        summary_line = summaries[lora_name]["lines"][0]
        lora = read_lora(folders["models"] / "loras" / lora_name).summary()
        (alpha,) = lora["effective_alphas"]
        assert f"alpha {alpha:g}" in summary_line and row[alpha_column].startswith(f"{alpha:g}"), (
            summary_line, row)
        assert (("not in the file" in summary_line) == (not lora["alpha_in_file"])
                == ("(= rank)" in row[alpha_column]))
    for shot in seen["screenshots"]:
        assert Path(shot).is_file() and Path(shot).stat().st_size > 10_000

    # Names derived from file names match the engine's; the summary follows the combo.
    assert seen["names_upstream"] == loaded_names(names_wf) == ["ink", "paper-v2", "ink_2"]
    ink = next(s for s in seen["names_summaries"] if s["lora_name"] == "ink.safetensors")
    assert "title: Ink wash" in ink["lines"] and f"trigger words: {INK_TRIGGERS}" in ink["lines"]
    paper = next(s for s in seen["names_summaries"] if s["lora_name"] == "styles/paper-v2.safetensors")
    assert paper["lines"][0] == "format: kohya · rank 4 · alpha 2"
    change = seen["combo_change"]
    assert change["summary_file"] == change["to"].split("/")[-1] and "format: " in change["text"]

    # ScheduleAdapterWeights draws its curve from the loaded keyframes, then redraws at each keystroke.
    schedule = seen["schedule"]
    check_curve(schedule["loaded"], [(0.0, 1.0), (0.4, 1.0), (0.6, 0.0)])
    half, bad, fixed, done = schedule["typing"]
    assert half["error"] == "keyframe 2 ('0.5:'): strength '' is not a number"
    assert bad["error"] == "keyframe 2 ('0.5:x'): strength 'x' is not a number"
    assert fixed["error"] == half["error"]
    assert done["widget"] == "0:0, 0.5:1, 1:-1"
    check_curve(done, [(0.0, 0.0), (0.5, 1.0), (1.0, -1.0)])
    scheduled = next(n for n in schedule["prompt"].values() if n["class_type"] == "ScheduleAdapterWeights")
    assert scheduled["inputs"] == {"pipeline": scheduled["inputs"]["pipeline"], "adapter_name": "ink",
                                   "keyframes": "0:0, 0.5:1, 1:-1", "interpolation": "linear"}
    assert without_meta(editor_to_api(schedule["saved_graph"], HEADLESS_NODE_CLASS_MAPPINGS)) == \
        without_meta(schedule["prompt"])

    # Model families: the Sampler's true_cfg, frames and image, LoadLoRA's target.
    check_family(seen["family"], folders)

SCREENSHOT_DRIVER = REPO / "tests" / "browser" / "editor_screenshot.js"
README_PICTURE = REPO / "docs" / "editor.png"


def test_the_readme_picture_of_the_editor(folders, tmp_path):
    """The README's docs/editor.png: the quickstart graph in the served editor, taken here. The picture
    is written again with LORAGRAPH_UPDATE_DOCS=1; otherwise the fresh one must match its size."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    workflow = json.loads(QUICKSTART.read_text())
    shot = ARTIFACTS / "browser" / "editor_quickstart.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    server = LiveServer(config_for(folders))
    server.start()
    try:
        config = {"url": f"http://127.0.0.1:{server.port}", "workflow": workflow, "screenshot": str(shot),
                  "user_data_dir": str(tmp_path / "chromium-profile"), "chromium": CHROMIUM,
                  "timeout_ms": 60000}
        (tmp_path / "shot.json").write_text(json.dumps(config))
        proc = subprocess.run(["node", str(SCREENSHOT_DRIVER), str(tmp_path / "shot.json")], cwd=REPO,
                              capture_output=True, text=True, timeout=150, check=False)
    finally:
        server.stop()
    lines = proc.stdout.strip().splitlines()
    assert lines, f"the driver printed nothing (exit {proc.returncode}): {proc.stderr[-3000:]}"
    seen = json.loads(lines[-1])
    assert "failure" not in seen, seen["failure"]
    assert sorted(seen["nodes"]) == sorted(n["class_type"] for n in workflow.values())
    assert len(seen["summaries"]) == 2 and all("format:" in s for s in seen["summaries"]), seen["summaries"]
    from PIL import Image

    with Image.open(shot) as fresh:
        assert fresh.size == (1600, 900) and shot.stat().st_size > 20_000
        if os.environ.get("LORAGRAPH_UPDATE_DOCS") == "1":
            shutil.copy(shot, README_PICTURE)
        with Image.open(README_PICTURE) as committed:
            assert committed.size == fresh.size
