"""The driver writes the actors' files, under the names one process would have given them.

An actor saves into a private folder (its counters start at 1 every job) and returns the bytes.
The driver commits jobs in run order: each file gets ``{prefix}_{counter:05}_{suffix}`` with the
counter taken from the real folder at that moment, exactly as SaveImage / SaveLoRA count in one
process, and the job's outputs are rewritten to name it. The bytes are the actor's: PNG chunks
carry the prompt and workflow, never the file name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..base import disk
from ..nodes.output_names import NumberedNames

_NUMBERED = re.compile(r"^(?P<name>.*)_(?P<counter>\d{5,})_(?P<suffix>[^_/]*)$")


def commit_files(files: Sequence[Mapping[str, Any]], outputs: dict[str, dict[str, Any]]) -> list[Path]:
    """Write ``files`` (from ``EngineActor.run``) into this process's folders; fix ``outputs``'s names."""
    from .. import host

    folders = {"output": host.output_dir(), "temp": host.temp_dir()}
    written = []
    for item in files:
        folder = folders.get(item["kind"], host.output_dir()) / item["sub"]
        match = _NUMBERED.match(item["filename"])
        subfolder = item["subfolder"]
        data = item["data"]
        if match:  # the next free number of this prefix in the real folder, as SaveImage takes it
            prefix = f"{subfolder}/{match['name']}" if subfolder else match["name"]
            names = NumberedNames(folder, prefix, match["suffix"])
            path, subfolder = names.save(lambda tmp, data=data: Path(tmp).write_bytes(data)), names.subfolder
        else:  # not a counter name (no node of this pack writes one): kept as it is
            path = folder / subfolder / item["filename"]
            path.parent.mkdir(parents=True, exist_ok=True)
            disk.write_file(path, data)
        entry = outputs[item["node_id"]][item["key"]][item["index"]]
        entry["filename"], entry["subfolder"] = path.name, subfolder
        written.append(path)
    return written
