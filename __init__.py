"""loragraph: diffusers' LoRA management as ComfyUI-style graph nodes.

This file is what ComfyUI imports from `custom_nodes/`. It must stay cheap and must not need
ComfyUI: the same package runs headless (`loragraph run`, `loragraph serve`, the Python API).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from . import host as _host
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

if _host.inside_comfyui():  # ComfyUI's PromptServer exists by now: add the pack's /loragraph/* routes
    from .server.pack_routes import register_in_comfyui

    register_in_comfyui()

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"


def run_workflow(
    workflow: Mapping[str, Any] | str | os.PathLike[str],
    *,
    models_dir: str | os.PathLike[str] = "models",
    output_dir: str | os.PathLike[str] = "output",
    set: Iterable[str] | Mapping[str, Any] = (),  # the CLI's --set, by its name
) -> dict[str, dict[str, Any]]:
    """Run one workflow headless and return its outputs ``{node_id: ui}``; see loragraph/cli/api.py.

    Imported on first call: importing the pack (ComfyUI does it at start) must stay cheap.
    """
    from .cli.api import run_workflow as run

    return run(workflow, models_dir=models_dir, output_dir=output_dir, set=set)


__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "run_workflow"]
