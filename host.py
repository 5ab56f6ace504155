"""The host seam: where the model folders are, how to report progress, whether the user cancelled.

Inside ComfyUI the answers come from ComfyUI's `folder_paths`, `comfy.utils.ProgressBar` and
`comfy.model_management`; headless they come from the CLI's options and the executor's event bus.
This is the only module of the package that imports ComfyUI.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from .base import disk

logger = logging.getLogger(__name__)

LORA_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".bin", ".pth")
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt")


def inside_comfyui() -> bool:
    """True when ComfyUI's own modules are loaded (the pack was imported by ComfyUI)."""
    return "folder_paths" in sys.modules and "comfy.utils" in sys.modules


class HeadlessFolders:
    """A ComfyUI-style models root: DIR/loras, DIR/diffusers/<name>, DIR/checkpoints; and an output dir."""

    def __init__(self, models_dir: str | os.PathLike = "models", output_dir: str | os.PathLike = "output"):
        self.models_dir = Path(models_dir).resolve()
        self.output_dir = Path(output_dir).resolve()

    def roots(self, kind: str) -> list[Path]:
        return [self.models_dir / kind]

    def output(self) -> Path:
        return self.output_dir


_folders = HeadlessFolders()


def configure(models_dir: str | os.PathLike | None = None,
              output_dir: str | os.PathLike | None = None) -> None:
    """Headless only: set the models root and output folder (the CLI's --models-dir / --output-dir)."""
    global _folders
    _folders = HeadlessFolders(
        models_dir if models_dir is not None else _folders.models_dir,
        output_dir if output_dir is not None else _folders.output_dir,
    )


def folder_roots(kind: str) -> list[Path]:
    """All folders of a kind ("loras", "diffusers", "checkpoints"), extra_model_paths included."""
    if inside_comfyui():
        import folder_paths  # type: ignore[import-not-found]

        try:
            return [Path(p) for p in folder_paths.get_folder_paths(kind)]
        except KeyError:
            return []
    return _folders.roots(kind)


def describe_folders(kind: str) -> str:
    """Where the files of a combo were looked for, for an error about a name not found there."""
    roots = folder_roots(kind)
    shown = ", ".join(f"{r}{'' if r.is_dir() else ' (does not exist)'}" for r in roots)
    return f"searched {shown or 'no ' + kind + ' folder'}"


def temp_dir() -> Path:
    """Where PreviewImage writes; ComfyUI's temp folder inside ComfyUI."""
    if inside_comfyui():
        import folder_paths  # type: ignore[import-not-found]

        return Path(folder_paths.get_temp_directory())
    import tempfile

    return Path(tempfile.gettempdir()) / "loragraph-temp"


def output_dir() -> Path:
    if inside_comfyui():
        import folder_paths  # type: ignore[import-not-found]

        return Path(folder_paths.get_output_directory())
    return _folders.output()


def _list_files(roots: list[Path], extensions: tuple[str, ...]) -> list[str]:
    found: set[str] = set()
    for root in roots:
        if not root.is_dir():
            continue
        # Symlinks followed (a shared LoRA folder), each real folder once (a `loop -> .` link ends);
        # dot files hidden (a save in progress, or one a killed process left: base/disk.py).
        for dirpath, filenames in disk.walk(root):
            for f in filenames:
                if f.lower().endswith(extensions):
                    rel = (Path(dirpath) / f).relative_to(root).as_posix()
                    found.add(rel)
    return sorted(found)


def _comfy_file_list(kind: str, extensions: tuple[str, ...]) -> list[str] | None:
    """ComfyUI's own listing of a models folder kind (what its LoraLoader shows), or None if unknown.

    `folder_paths.get_filename_list` walks every registered folder (extra_model_paths.yaml included)
    and caches the result until a folder's mtime changes, so a new file shows on the next call.
    """
    import folder_paths  # type: ignore[import-not-found]

    try:
        names = folder_paths.get_filename_list(kind)
    except KeyError:
        return None
    names = (n.replace(os.sep, "/") for n in names)
    # ComfyUI lists dot files too: hide temp files of a save in progress here as well (base/disk.py).
    return sorted({n for n in names if n.lower().endswith(extensions) and disk.visible(n.rsplit("/", 1)[-1])})


def _list_kind(kind: str, extensions: tuple[str, ...]) -> list[str]:
    if inside_comfyui():
        listed = _comfy_file_list(kind, extensions)
        if listed is not None:
            return listed
    return _list_files(folder_roots(kind), extensions)


def list_loras() -> list[str]:
    """LoRA files as `/`-separated paths relative to their folder; read live so new files show."""
    return _list_kind("loras", LORA_EXTENSIONS)


def list_checkpoints() -> list[str]:
    return _list_kind("checkpoints", CHECKPOINT_EXTENSIONS)


def list_diffusers_folders() -> list[str]:
    names: set[str] = set()
    for root in folder_roots("diffusers"):
        if root.is_dir():
            for child in root.iterdir():
                if (child / "model_index.json").is_file():
                    names.add(child.name)
    return sorted(names)


# ComfyUI's UNETLoader folders: `diffusion_models` (ComfyUI maps the older `unet` folder into it).
DENOISER_KINDS = ("diffusion_models", "unet")
DENOISER_EXTENSIONS = (".safetensors", ".gguf")


def list_denoisers() -> list[str]:
    """Denoiser files (LoadPipeline's `denoiser`) relative to their folder, as UNETLoader lists them."""
    names: set[str] = set()
    for kind in DENOISER_KINDS:
        names.update(_list_kind(kind, DENOISER_EXTENSIONS))
        # ComfyUI lists only the extensions it registered: `.gguf` only with the ComfyUI-GGUF pack
        names.update(_list_files(folder_roots(kind), DENOISER_EXTENSIONS))
    return sorted(names)


def resolve_denoiser(relative: str) -> Path:
    """A `list_denoisers` name as a path: the first of the denoiser folders that holds it."""
    missing: FileNotFoundError | None = None
    for kind in DENOISER_KINDS:
        try:
            return resolve_in(kind, relative)
        except FileNotFoundError as e:
            missing = missing or e
    assert missing is not None
    raise missing


class UnsafePath(ValueError):
    pass


def resolve_in(kind: str, relative: str) -> Path:
    """Find `relative` inside one of the `kind` folders, refusing anything that escapes them.

    The name is confined lexically (relative, no `..`), as ComfyUI's own loaders do: a symlink that
    the user put in a models folder (a shared LoRA folder, a Hugging Face cache blob) is followed,
    since the combo lists what it points at. The path is returned unresolved, so its name (and
    suffix) is the one the user picked.
    """
    rel = (relative or "").replace("\\", "/")
    if (
        not rel
        or rel.startswith("/")
        or (len(rel) > 1 and rel[1] == ":")
        or any(part in ("..", "") for part in rel.split("/"))
    ):
        raise UnsafePath(f"{relative!r} must be a path relative to the {kind} folder, without '..'")
    roots = folder_roots(kind)
    for root in roots:
        candidate = Path(os.path.abspath(root / rel))
        if candidate.exists():
            return candidate
    shown = ", ".join(str(r) for r in roots) or "(no folder configured)"
    raise FileNotFoundError(f"{relative!r} is not in the {kind} folder ({shown})")


def clean_stale_temps(*more: str | os.PathLike) -> int:
    """Remove temp files a killed save left (base/disk.py) from the output, temp and LoRA folders
    and ``more``; headless runs and the server call it when they start."""
    return disk.clean_stale_temps([output_dir(), temp_dir(), *folder_roots("loras"), *more])


def comfyui_routes():
    """Inside ComfyUI: the aiohttp route table of its PromptServer (served at / and /api), else None.

    ComfyUI's main.py creates the PromptServer before it loads custom nodes, so the pack can add its
    routes while it is imported. The `server` module is looked up in sys.modules, never imported:
    headless, a module named `server` on the path may be anything (this package's own folder).
    """
    if not inside_comfyui():
        return None
    prompt_server = getattr(sys.modules.get("server"), "PromptServer", None)
    return getattr(getattr(prompt_server, "instance", None), "routes", None)


# --- progress and cancel -------------------------------------------------------------------------

ProgressFn = Callable[[int, int], None]


def progress_reporter(total: int) -> ProgressFn:
    """A callback(value, total) for long work: ComfyUI's ProgressBar, or the executor's event bus."""
    if inside_comfyui():
        import comfy.utils  # type: ignore[import-not-found]

        bar = comfy.utils.ProgressBar(total)

        def comfy_progress(value: int, total_: int, preview=None) -> None:
            bar.update_absolute(value, total_, preview)

        return comfy_progress
    from .graph import report_progress

    return lambda value, total_: report_progress(value, total_)


def check_interrupted() -> None:
    """Raise the host's interruption exception if the user pressed cancel."""
    if inside_comfyui():
        import comfy.model_management  # type: ignore[import-not-found]

        comfy.model_management.throw_exception_if_processing_interrupted()
        return
    from .graph import check_interrupted as graph_check

    graph_check()
