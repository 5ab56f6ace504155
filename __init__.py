"""loragraph: diffusers' LoRA management as ComfyUI-style graph nodes.

This file is what ComfyUI imports from `custom_nodes/`. It must stay cheap and must not need
ComfyUI: the same package runs headless (`loragraph run`, `loragraph serve`, the Python API).
"""

from __future__ import annotations

from . import host as _host
from .api import WorkflowFailed, run_workflow
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

if _host.inside_comfyui():  # ComfyUI's PromptServer exists by now: add the pack's /loragraph/* routes
    from .server.pack_routes import register_in_comfyui

    register_in_comfyui()

WEB_DIRECTORY = "./web"
__version__ = "0.1.0"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY", "WorkflowFailed",
           "run_workflow"]
