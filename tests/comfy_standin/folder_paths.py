"""Stand-in for ComfyUI's `folder_paths` module (see README.md): the model folders by kind.

Behaves as ComfyUI's: each kind maps to ([folders], {extensions}); `add_model_folder_path` appends a
folder (extra_model_paths.yaml does this at start-up); `get_filename_list` walks every folder of a
kind (following symlinks, skipping .git), keeps the files with a known extension as paths relative
to their folder, and caches the result until the mtime of one of the walked folders changes.
"""

from __future__ import annotations

import os
import time

supported_pt_extensions: set[str] = {".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft"}

folder_names_and_paths: dict[str, tuple[list[str], set[str]]] = {}
filename_list_cache: dict[str, tuple[list[str], dict[str, float], float]] = {}
base_path = ""
models_dir = ""
output_directory = ""
temp_directory = ""
input_directory = ""

_LEGACY = {"unet": "diffusion_models", "clip": "text_encoders"}


def reset(base: str) -> None:
    """Stand-in only: lay out the default folders under `base`, as ComfyUI does under its install dir."""
    global base_path, models_dir, output_directory, temp_directory, input_directory
    base_path = os.path.abspath(base)
    models_dir = os.path.join(base_path, "models")
    folder_names_and_paths.clear()
    filename_list_cache.clear()
    folder_names_and_paths["checkpoints"] = (
        [os.path.join(models_dir, "checkpoints")],
        supported_pt_extensions,
    )
    folder_names_and_paths["loras"] = ([os.path.join(models_dir, "loras")], supported_pt_extensions)
    folder_names_and_paths["vae"] = ([os.path.join(models_dir, "vae")], supported_pt_extensions)
    folder_names_and_paths["diffusers"] = ([os.path.join(models_dir, "diffusers")], {"folder"})
    output_directory = os.path.join(base_path, "output")
    temp_directory = os.path.join(base_path, "temp")
    input_directory = os.path.join(base_path, "input")


def map_legacy(folder_name: str) -> str:
    return _LEGACY.get(folder_name, folder_name)


def get_output_directory() -> str:
    return output_directory


def get_temp_directory() -> str:
    return temp_directory


def get_input_directory() -> str:
    return input_directory


def set_output_directory(path: str) -> None:
    global output_directory
    output_directory = path


def set_temp_directory(path: str) -> None:
    global temp_directory
    temp_directory = path


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default and paths[0] != full_folder_path:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    """A copy of the kind's folder list; KeyError for a kind ComfyUI does not know."""
    return list(folder_names_and_paths[map_legacy(folder_name)][0])


def recursive_search(
    directory: str, excluded_dir_names: list[str] | None = None
) -> tuple[list[str], dict[str, float]]:
    if not os.path.isdir(directory):
        return [], {}
    excluded = excluded_dir_names or []
    files: list[str] = []
    dirs = {directory: os.path.getmtime(directory)}
    for dirpath, subdirs, filenames in os.walk(directory, followlinks=True, topdown=True):
        subdirs[:] = [d for d in subdirs if d not in excluded]
        for name in filenames:
            files.append(os.path.relpath(os.path.join(dirpath, name), directory))
        for d in subdirs:
            path = os.path.join(dirpath, d)
            dirs[path] = os.path.getmtime(path)
    return files, dirs


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if os.path.splitext(f)[-1].lower() in extensions or len(extensions) == 0)


def get_filename_list_(folder_name: str) -> tuple[list[str], dict[str, float], float]:
    folder_name = map_legacy(folder_name)
    folders, extensions = folder_names_and_paths[folder_name]
    names: set[str] = set()
    walked: dict[str, float] = {}
    for folder in folders:
        files, dirs = recursive_search(folder, excluded_dir_names=[".git"])
        names.update(filter_files_extensions(files, extensions))
        walked.update(dirs)
    return sorted(names), walked, time.perf_counter()


def cached_filename_list_(folder_name: str):
    folder_name = map_legacy(folder_name)
    cached = filename_list_cache.get(folder_name)
    if cached is None:
        return None
    for folder, mtime in cached[1].items():
        if os.path.getmtime(folder) != mtime:
            return None
    for folder in folder_names_and_paths[folder_name][0]:
        if os.path.isdir(folder) and folder not in cached[1]:
            return None
    return cached


def get_filename_list(folder_name: str) -> list[str]:
    folder_name = map_legacy(folder_name)
    out = cached_filename_list_(folder_name)
    if out is None:
        out = get_filename_list_(folder_name)
        filename_list_cache[folder_name] = out
    return list(out[0])


def get_full_path(folder_name: str, filename: str) -> str | None:
    folder_name = map_legacy(folder_name)
    if folder_name not in folder_names_and_paths:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in folder_names_and_paths[folder_name][0]:
        full_path = os.path.join(folder, filename)
        if os.path.isfile(full_path):
            return full_path
    return None
