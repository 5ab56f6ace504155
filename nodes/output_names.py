"""Output file naming, as ComfyUI's `folder_paths.get_save_image_path` does it; writes go through
base/disk.py."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path

from ..base import disk
from ..base.errors import NodeInputError


class NumberedNames:
    """`{prefix}_{counter:05}_{suffix}` names in the output folder (ComfyUI's rule), saved without clashes.

    The first counter is 1 + the highest already there (ComfyUI's `map_filename`); `save` then takes
    the first free name from there on with an exclusive link (disk.write_new), so another process
    saving the same prefix into the same folder at the same time never overwrites a file.
    """

    def __init__(self, folder: Path, filename_prefix: str, suffix: str,
                 input_name: str = "filename_prefix") -> None:
        folder = Path(folder).resolve()
        _check_prefix(filename_prefix or "ComfyUI", input_name)
        norm = os.path.normpath(filename_prefix or "ComfyUI")
        subfolder = os.path.dirname(norm)
        self.name = os.path.basename(norm)
        target = (folder / subfolder).resolve()
        if os.path.isabs(norm) or os.path.commonpath((str(folder), str(target))) != str(folder):
            raise NodeInputError(input_name, f"{filename_prefix!r} would save outside the output folder")
        target.mkdir(parents=True, exist_ok=True)
        self.target = target
        self.suffix = suffix
        self.subfolder = subfolder.replace("\\", "/")
        self.counter = self._highest() + 1

    def _highest(self) -> int:
        name, counter = self.name, 0
        for entry in os.listdir(self.target):
            # ComfyUI's map_filename: "<prefix>_<digits>_..." -> digits
            if entry[: len(name)].lower() == name.lower() and entry[len(name) : len(name) + 1] == "_":
                with contextlib.suppress(ValueError):
                    counter = max(counter, int(entry[len(name) + 1 :].split("_")[0]))
        return counter

    def path_for(self, counter: int) -> Path:
        return self.target / f"{self.name}_{counter:05}_{self.suffix}"

    def save(self, write: Callable[[str], None]) -> Path:
        """Write the next numbered file through ``write(temp_path)``; returns its final path."""
        path, used = disk.write_new(self.target, lambda n: self.path_for(n).name, self.counter, write)
        self.counter = used + 1
        return path


# Bytes one part of a prefix may take: file systems take 255 per name, and the counter, the suffix
# and the temp file's marker need the rest ("_00001_.png", ".lg-tmp-" and 12 hex digits).
MAX_PREFIX_PART_BYTES = 200


def _check_prefix(prefix: str, input_name: str) -> None:
    """Refuse a prefix no file system takes, or one that would hide its files, naming the input."""
    if "\x00" in prefix:
        raise NodeInputError(input_name, "holds a NUL byte, which no file name can")
    for part in os.path.normpath(prefix).replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > MAX_PREFIX_PART_BYTES:
            raise NodeInputError(input_name, f"{part[:40]!r}... is longer than {MAX_PREFIX_PART_BYTES} "
                                             "bytes; file names are at most 255 with the counter and suffix")
        if part.startswith(".") and part != "..":  # "..": the folder check's (it would leave the folder)
            raise NodeInputError(input_name, f"{prefix!r} would write hidden files (a name part starts "
                                             "with '.'), which no listing shows")


def next_path(folder: Path, filename_prefix: str, suffix: str,
              input_name: str = "filename_prefix") -> tuple[Path, str]:
    """The name the next save would take (a guess: `NumberedNames.save` is what reserves it)."""
    names = NumberedNames(folder, filename_prefix, suffix, input_name)
    return names.path_for(names.counter), names.subfolder
