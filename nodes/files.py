"""Output file naming, as ComfyUI's `folder_paths.get_save_image_path` does it, and atomic writes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import NodeInputError


def next_path(folder: Path, filename_prefix: str, suffix: str, input_name: str = "filename_prefix") -> tuple[Path, str]:
    """`{prefix}_{counter:05}_{suffix}` with counter = 1 + the highest already there (ComfyUI's rule)."""
    paths, subfolder = next_paths(folder, filename_prefix, suffix, 1, input_name)
    return paths[0], subfolder


def next_paths(
    folder: Path, filename_prefix: str, suffix: str, count: int, input_name: str = "filename_prefix"
) -> tuple[list[Path], str]:
    folder = Path(folder).resolve()
    norm = os.path.normpath(filename_prefix or "ComfyUI")
    subfolder = os.path.dirname(norm)
    name = os.path.basename(norm)
    target = (folder / subfolder).resolve()
    if os.path.isabs(norm) or os.path.commonpath((str(folder), str(target))) != str(folder):
        raise NodeInputError(input_name, f"{filename_prefix!r} would save outside the output folder")
    target.mkdir(parents=True, exist_ok=True)
    counter = 0
    for entry in os.listdir(target):
        # ComfyUI's map_filename: "<prefix>_<digits>_..." -> digits
        if entry[: len(name)].lower() == name.lower() and entry[len(name) : len(name) + 1] == "_":
            try:
                counter = max(counter, int(entry[len(name) + 1 :].split("_")[0]))
            except ValueError:
                pass
    return [target / f"{name}_{counter + 1 + i:05}_{suffix}" for i in range(count)], subfolder.replace("\\", "/")


def atomic_write(path: Path, write) -> None:
    """Write through a temp file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
