"""The pack as ComfyUI loads it: the host seam against stand-ins of ComfyUI's modules.

CI has no ComfyUI, so tests/comfy_standin/ re-creates the three modules host.py talks to
(`folder_paths`, `comfy.utils`, `comfy.model_management`). The pack is imported the way ComfyUI's
`nodes.load_custom_node` does it: by file path, as a package named after its folder path, so only
its relative imports hold it together. The real check inside ComfyUI is in the README ("Inside ComfyUI").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

PACK_ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "comfy_standin"
COMFY_MODULES = ("folder_paths", "comfy", "comfy.utils", "comfy.model_management")
PACK_NODES = [
    "LoadPipeline",
    "LoadLoRA",
    "SetAdapterWeights",
    "ScheduleAdapterWeights",
    "FuseLoRA",
    "UnfuseLoRA",
    "TextEncoderLoRAToggle",
    "DeleteAdapters",
    "UnloadLoRA",
    "SetLoRADevice",
    "SaveLoRA",
    "LoRAInfo",
    "LoRAStack",
    "PromptLoRAs",
    "Sampler",
]


def comfy_module_name(module_path: Path) -> str:
    """The sys.modules name ComfyUI gives a custom-node folder (nodes.load_custom_node)."""
    return str(module_path).replace(".", "_x_")


def load_custom_node(module_path: Path) -> ModuleType:
    """Import a custom-node folder exactly as ComfyUI does: from its __init__.py, under its path's name."""
    name = comfy_module_name(module_path)
    spec = importlib.util.spec_from_file_location(name, os.path.join(module_path, "__init__.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _forget(prefix: str) -> None:
    for key in [k for k in sys.modules if k == prefix or k.startswith(prefix + ".")]:
        del sys.modules[key]


@contextlib.contextmanager
def comfyui_standins(base: Path) -> Iterator[SimpleNamespace]:
    """ComfyUI's modules on sys.modules (as at custom-node load time) and the pack loaded from its folder.

    On exit every stand-in and every module of the pack's second copy leave sys.modules again, so the
    tests after these see the headless host.
    """
    assert not any(m in sys.modules for m in COMFY_MODULES), "a ComfyUI module is already imported"
    saved_path = list(sys.path)
    sys.path.insert(0, str(STANDIN))
    pack_name = comfy_module_name(PACK_ROOT)
    try:
        import comfy.utils
        import folder_paths

        folder_paths.reset(str(base))
        # ComfyUI has imported these (and more) before it loads custom nodes; model_management is
        # left out here so the test can see that importing the pack does not pull it in.
        before = set(sys.modules)
        started = time.perf_counter()
        pack = load_custom_node(PACK_ROOT)
        import_seconds = time.perf_counter() - started
        new_modules = set(sys.modules) - before
        import comfy.model_management

        yield SimpleNamespace(
            pack=pack,
            host=importlib.import_module(pack_name + ".host"),  # the seam, in the pack's ComfyUI copy
            folder_paths=folder_paths,
            utils=comfy.utils,
            mm=comfy.model_management,
            new_modules=new_modules,
            import_seconds=import_seconds,
            pack_name=pack_name,
        )
    finally:
        for name in COMFY_MODULES:
            sys.modules.pop(name, None)
        _forget(pack_name)
        sys.path[:] = saved_path


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory):
    """A ComfyUI install: models/{loras,checkpoints,diffusers} plus a second tree that
    extra_model_paths.yaml adds; a real LoRA and a truncated one to load."""
    from loragraph.testing import write_lora_file

    base = tmp_path_factory.mktemp("ComfyUI")
    extra = tmp_path_factory.mktemp("extra_models")
    loras = base / "models" / "loras"
    good = write_lora_file(loras / "style" / "good.safetensors", "sd", "diffusers", rank=4, seed=31)
    data = good.read_bytes()
    (loras / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (extra / "loras").mkdir(parents=True)
    (extra / "loras" / "extra_a.safetensors").write_bytes(data)
    (extra / "loras" / "notes.txt").write_text("not a LoRA")
    (extra / "loras" / "old.pkl").write_bytes(
        b""
    )  # ComfyUI lists .pkl; loragraph never loads pickles by name
    with comfyui_standins(base) as env:
        for kind in ("loras", "diffusers", "checkpoints"):
            env.folder_paths.add_model_folder_path(
                kind, str(extra / kind)
            )  # what extra_model_paths.yaml does
        env.base, env.extra = base, extra
        yield env
    env.utils.set_progress_bar_global_hook(None)


def test_standins_leave_no_trace(tmp_path):
    """Runs first, before the module's ComfyUI fixture exists (pytest keeps file order)."""
    from loragraph import host

    with comfyui_standins(tmp_path) as env:
        assert env.host.inside_comfyui() and host.inside_comfyui()
    assert not any(m in sys.modules for m in COMFY_MODULES)
    assert not any(k.startswith(env.pack_name) for k in sys.modules)
    assert not host.inside_comfyui()


def nodes(env) -> dict[str, type]:
    return env.pack.NODE_CLASS_MAPPINGS


def test_exports_what_comfyui_reads(comfyui):
    pack = comfyui.pack
    assert list(pack.NODE_CLASS_MAPPINGS) == PACK_NODES  # SaveImage/PreviewImage are ComfyUI's own there
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == set(PACK_NODES)
    web = PACK_ROOT / pack.WEB_DIRECTORY
    assert web.is_dir() and any(p.suffix == ".js" for p in web.rglob("*.js"))
    for cls in pack.NODE_CLASS_MAPPINGS.values():
        assert (
            hasattr(cls, cls.FUNCTION) and isinstance(cls.RETURN_TYPES, tuple) and cls.CATEGORY == "loragraph"
        )
    assert comfyui.host.inside_comfyui()


def test_import_loads_no_comfyui_module_and_is_cheap(comfyui):
    assert not [m for m in comfyui.new_modules if m.split(".")[0] in ("folder_paths", "comfy")]
    heavy = ("torch", "diffusers", "peft", "transformers", "safetensors", "numpy", "PIL")
    # In this process torch is already there; a fresh interpreter shows what the import itself pulls in.
    script = textwrap.dedent(
        f"""
        import importlib.util, json, os, sys, time
        sys.path.insert(0, {str(STANDIN)!r})
        import folder_paths, comfy.utils
        root = {str(PACK_ROOT)!r}
        name = root.replace(".", "_x_")
        t = time.perf_counter()
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        seconds = time.perf_counter() - t
        print(json.dumps({{"seconds": seconds, "nodes": len(module.NODE_CLASS_MAPPINGS),
                           "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {list(heavy)!r}
                                            or m == "comfy.model_management")}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["nodes"] == len(PACK_NODES)
    assert report["loaded"] == [], f"importing the pack pulled in {report['loaded']}"
    assert report["seconds"] < 2.0


def test_lora_combo_lists_every_loras_folder_and_new_files_without_restart(comfyui):
    load_lora = nodes(comfyui)["LoadLoRA"]

    def listed() -> list[str]:
        return load_lora.INPUT_TYPES()["required"]["lora_name"][0]

    assert comfyui.folder_paths.get_folder_paths("loras")[1] == str(comfyui.extra / "loras")
    assert listed() == ["extra_a.safetensors", "style/good.safetensors", "truncated.safetensors"]
    newcomer = comfyui.extra / "loras" / "new" / "late.safetensors"
    newcomer.parent.mkdir()
    newcomer.write_bytes(b"")
    assert "new/late.safetensors" in listed()
    newcomer.unlink()
    assert "new/late.safetensors" not in listed()
    saving = comfyui.extra / "loras" / ".lg-tmp-0123.safetensors"  # a save in progress (base/disk.py)
    saving.write_bytes(b"")
    try:
        assert not any(n.rsplit("/", 1)[-1].startswith(".") for n in listed())
    finally:
        saving.unlink()


def test_pipeline_combo_lists_builtins_diffusers_folders_and_checkpoints(comfyui):
    models = comfyui.base / "models"
    (models / "diffusers" / "tiny-folder").mkdir(parents=True)
    (models / "diffusers" / "tiny-folder" / "model_index.json").write_text("{}")
    (comfyui.extra / "diffusers" / "other-folder").mkdir(parents=True)
    (comfyui.extra / "diffusers" / "other-folder" / "model_index.json").write_text("{}")
    (comfyui.extra / "diffusers" / "not-a-pipeline").mkdir()
    (models / "checkpoints" / "sd15").mkdir(parents=True)
    (models / "checkpoints" / "sd15" / "x.safetensors").write_bytes(b"")
    (comfyui.extra / "checkpoints").mkdir()
    (comfyui.extra / "checkpoints" / "y.ckpt").write_bytes(b"")
    (comfyui.extra / "checkpoints" / "z.pt").write_bytes(b"")
    choices = nodes(comfyui)["LoadPipeline"].INPUT_TYPES()["required"]["model"][0]
    builtins = [c for c in choices if c.startswith("builtin:")]
    assert choices[: len(builtins)] == builtins and "builtin:tiny-sd" in builtins
    from loragraph.builtin_models.catalog import BUILTINS

    assert sorted(builtins) == sorted(f"builtin:{name}" for name in BUILTINS)  # every family's tiny model
    assert choices[len(builtins) :] == ["other-folder", "tiny-folder", "sd15/x.safetensors", "y.ckpt"]


def test_a_workflow_runs_and_drives_comfyuis_progress_bar(comfyui):
    calls = []
    comfyui.utils.set_progress_bar_global_hook(
        lambda value, total, preview, node_id=None: calls.append((value, total))
    )
    n = nodes(comfyui)
    with torch.inference_mode():  # ComfyUI runs every prompt under inference_mode
        (pipe,) = n["LoadPipeline"]().run("builtin:tiny-sd", "auto", "cpu")
        out = n["LoadLoRA"]().run(pipe, "style/good.safetensors", 0.8, "", unique_id="2")
        (pipe,) = out["result"] if isinstance(out, dict) else out
        (images,) = n["Sampler"]().run(pipe, "a red circle", "", 1, 2, 7.0, 64, 64)
    assert calls == [(1, 2), (2, 2)]
    assert images.shape == (1, 64, 64, 3) and images.dtype == torch.float32
    assert images.min().item() >= 0.0 and images.max().item() <= 1.0
    assert comfyui.host.output_dir() == Path(comfyui.base / "output")


def test_cancel_stops_the_sampler_between_steps_with_comfyuis_exception(comfyui):
    calls = []
    cancel_at = [1]

    def hook(value, total, preview, node_id=None):
        calls.append((value, total))
        if value in cancel_at:
            cancel_at.clear()
            comfyui.mm.interrupt_current_processing()  # the user presses Cancel during step 2

    comfyui.utils.set_progress_bar_global_hook(hook)
    n = nodes(comfyui)
    with torch.inference_mode():
        (pipe,) = n["LoadPipeline"]().run("builtin:tiny-sd", "auto", "cpu")
        with pytest.raises(comfyui.mm.InterruptProcessingException):
            n["Sampler"]().run(pipe, "a red circle", "", 1, 3, 7.0, 64, 64)
        assert calls == [(1, 3)]
        assert not comfyui.mm.processing_interrupted()  # ComfyUI's throw clears the flag
        calls.clear()
        (images,) = n["Sampler"]().run(pipe, "a red circle", "", 1, 1, 7.0, 64, 64)  # usable afterwards
    assert calls == [(1, 1)] and images.shape == (1, 64, 64, 3)


def load_image_like_comfyui(path: Path) -> torch.Tensor:
    """What ComfyUI's LoadImage returns for an RGB PNG: [1, H, W, 3] float32 in 0..1."""
    import numpy as np
    from PIL import Image

    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).astype(np.float32) / 255.0)[None]


def test_an_input_image_the_pipeline_cannot_take_fails_on_image(comfyui, tmp_path):
    """Flux Kontext rounds the input image's sides down to its image processor's multiple (64 on the
    tiny one): a smaller image ends in diffusers' bare ZeroDivisionError, which the Sampler turns into
    an error on `image`. An empty batch, or an image on a pipeline that takes none, is refused too."""
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 30, 30)).save(tmp_path / "small.png")
    small = load_image_like_comfyui(tmp_path / "small.png")
    n = nodes(comfyui)
    with torch.inference_mode():
        (kontext,) = n["LoadPipeline"]().run("builtin:tiny-kontext", "float32", "cpu")
        with pytest.raises(ValueError) as err:
            n["Sampler"]().run(kontext, "a red circle", "", 1, 2, 3.5, 64, 64, image=small)
        assert str(err.value) == ("image: FluxKontextPipeline cannot take a 32x32 input image: it rounds "
                                  "each side down to a multiple of 64, which leaves nothing; give it one of "
                                  "at least 64x64")
        with pytest.raises(ValueError) as err:
            n["Sampler"]().run(kontext, "a red circle", "", 1, 2, 3.5, 64, 64, image=small[:0])
        message = str(err.value)
        assert message.startswith("image: must be an IMAGE batch") and "(0, 32, 32, 3)" in message
        (sd,) = n["LoadPipeline"]().run("builtin:tiny-sd", "auto", "cpu")
        with pytest.raises(ValueError) as err:
            n["Sampler"]().run(sd, "a red circle", "", 1, 1, 7.0, 64, 64, image=small)
        assert str(err.value).startswith("image: StableDiffusionPipeline takes no input image")


def test_a_bad_lora_fails_on_its_node_naming_the_input(comfyui):
    n = nodes(comfyui)
    with torch.inference_mode():
        (pipe,) = n["LoadPipeline"]().run("builtin:tiny-sd", "auto", "cpu")
        with pytest.raises(ValueError) as err:
            n["LoadLoRA"]().run(pipe, "truncated.safetensors", 1.0, "", unique_id="7")
    assert str(err.value).startswith("lora_name: ") and "truncated" in str(err.value)
    with pytest.raises(ValueError) as err:
        n["LoadLoRA"]().run(pipe, "../outside.safetensors", 1.0, "", unique_id="7")
    assert str(err.value).startswith("lora_name: ")


def test_a_symlinked_lora_folder_loads_as_comfyui_lists_it(comfyui, tmp_path):
    shared = tmp_path / "shared_loras"
    shared.mkdir()
    (shared / "linked.safetensors").write_bytes(
        (comfyui.extra / "loras" / "extra_a.safetensors").read_bytes()
    )
    link = comfyui.base / "models" / "loras" / "shared"
    try:
        link.symlink_to(shared, target_is_directory=True)
    except OSError:
        pytest.skip("no symlinks here")
    try:
        assert "shared/linked.safetensors" in n_lora_names(comfyui)
        path = comfyui.host.resolve_in("loras", "shared/linked.safetensors")
        assert path == link / "linked.safetensors"
    finally:
        link.unlink()


def test_the_seam_finds_comfyuis_route_table_without_importing_server(comfyui, monkeypatch):
    from aiohttp import web

    assert comfyui.host.comfyui_routes() is None  # no PromptServer module loaded: nothing to add routes to
    routes = web.RouteTableDef()
    server = ModuleType("server")
    server.PromptServer = type("PromptServer", (), {"instance": SimpleNamespace(routes=routes)})
    monkeypatch.setitem(sys.modules, "server", server)
    assert comfyui.host.comfyui_routes() is routes


def n_lora_names(env) -> list[str]:
    return nodes(env)["LoadLoRA"].INPUT_TYPES()["required"]["lora_name"][0]
