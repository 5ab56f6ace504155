"""The pack's own HTTP routes, for its editor extension (``web/``), in both hosts.

- ``GET /loragraph/loras``: the LoRA files the LoadLoRA combo lists;
- ``GET /loragraph/lora_info?name=<lora_name>``: what ``loragraph inspect`` says about one of them
  (format, ranks, alphas, components, base-model guess, the built-in model and family it fits,
  trigger words, training metadata);
- ``GET /loragraph/lora_preview?name=<lora_name>``: the preview image beside that LoRA file
  (``NAME.preview.png``, ``NAME.png``, ``NAME.jpg``, ``NAME.webp``), what the editor shows on hover.

They are plain aiohttp handlers. ``loragraph serve`` adds them to its app (``register``); inside
ComfyUI the pack's ``__init__.py`` calls ``register_in_comfyui()``, which puts them on ComfyUI's
``PromptServer.instance.routes`` (ComfyUI then serves them under ``/api`` too). Names are confined
to the ``loras`` folders by ``host.resolve_in``, as LoadLoRA confines them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import host

logger = logging.getLogger(__name__)

LORA_INFO_PATH = "/loragraph/lora_info"
LORAS_PATH = "/loragraph/loras"
LORA_PREVIEW_PATH = "/loragraph/lora_preview"
# What civitai helpers and LoRA managers write beside a LoRA, in the order they are looked for.
PREVIEW_SUFFIXES = (".preview.png", ".png", ".jpg", ".webp")
_PREVIEW_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}


def preview_path(name: str) -> Path | None:
    """The preview beside the LoRA file `name` (a path of the loras folder), or None.

    Only a regular file whose real path lies in the LoRA file's own folder counts: a preview that is
    a link out of it is refused (logged), as /view refuses one out of the output folder.
    """
    from .file_routes import inside

    lora = host.resolve_in("loras", name)  # UnsafePath / FileNotFoundError for the caller
    if not lora.is_file() or not lora.name.lower().endswith(host.LORA_EXTENSIONS):
        raise FileNotFoundError(f"{name!r} is not a LoRA file of the loras folder")
    stem = lora.name.rsplit(".", 1)[0]
    for suffix in PREVIEW_SUFFIXES:
        candidate = lora.with_name(stem + suffix)
        if not candidate.is_file():
            continue
        if not inside(candidate, lora.parent):
            logger.warning("refused the preview %s: it leads out of the LoRA's folder", candidate)
            continue
        return candidate
    return None


def _lora_info(name: str) -> dict[str, Any]:
    from ..loaders import fit
    from ..loaders.pipelines import quiet_loading
    from ..loaders.store import read_lora

    lora = read_lora(host.resolve_in("loras", name))
    summary = lora.summary()
    summary.pop("path", None)  # the file's absolute path is the server's business, not the page's
    with quiet_loading():  # no "Loading pipeline components" bars in the server's log
        summary.update(fit.family_fit(lora, summary.get("base_model")))  # as `loragraph inspect` says
    summary["preview"] = preview_path(name) is not None
    return summary


def _without_folders(message: str) -> str:
    """An error for the page, without the server's folders: the page knows a LoRA by its name."""
    for root in host.folder_roots("loras"):
        for form in {str(root), os.path.realpath(root)}:
            message = message.replace(form + os.sep, "").replace(form, "the loras folder")
    return message


async def lora_info(request: web.Request) -> web.Response:
    """The summary of one LoRA file; 400 for a bad name, 404 if absent, 422 if it is no usable LoRA."""
    from ..loaders.lora_file import LoraFileError

    name = request.rel_url.query.get("name", "")
    if not name:
        return web.json_response({"error": "give the LoRA file as ?name=<lora_name>"}, status=400)
    try:
        summary = await asyncio.to_thread(_lora_info, name)
    except host.UnsafePath as ex:
        return web.json_response({"error": _without_folders(str(ex))}, status=400)
    except FileNotFoundError as ex:
        return web.json_response({"error": _without_folders(str(ex))}, status=404)
    except LoraFileError as ex:
        return web.json_response({"error": _without_folders(str(ex))}, status=422)
    return web.json_response(summary)


async def lora_preview(request: web.Request) -> web.StreamResponse:
    """The preview image beside one LoRA file: 400 for a bad name, 404 if it or its preview is absent.
    Served as /view serves an image: inline, with its sandboxing Content-Security-Policy."""
    from .file_routes import VIEW_CSP, _disposition

    name = request.rel_url.query.get("name", "")
    if not name or "\x00" in name:
        return web.json_response({"error": "give the LoRA file as ?name=<lora_name>"}, status=400)
    try:
        path = await asyncio.to_thread(preview_path, name)
    except host.UnsafePath as ex:
        return web.json_response({"error": str(ex)}, status=400)
    except FileNotFoundError as ex:
        return web.json_response({"error": str(ex)}, status=404)
    if path is None:
        return web.json_response({"error": f"no preview beside {name}"}, status=404)
    content_type = _PREVIEW_TYPES[path.suffix.lower()]
    return web.FileResponse(path, headers={"Content-Type": content_type, "Content-Security-Policy": VIEW_CSP,
                                           "X-Content-Type-Options": "nosniff",
                                           "Content-Disposition": _disposition("inline", path.name)})


async def list_loras(request: web.Request) -> web.Response:
    return web.json_response(await asyncio.to_thread(host.list_loras))


def register(routes: web.RouteTableDef) -> None:
    """Add the pack's routes to a route table (``loragraph serve``'s, or ComfyUI's)."""
    routes.get(LORA_INFO_PATH)(lora_info)
    routes.get(LORAS_PATH)(list_loras)
    routes.get(LORA_PREVIEW_PATH)(lora_preview)


def build() -> web.RouteTableDef:
    routes = web.RouteTableDef()
    register(routes)
    return routes


def register_in_comfyui() -> bool:
    """Inside ComfyUI: add the routes to ``server.PromptServer.instance.routes``; False when not there.

    The route table comes from the host seam (``host.comfyui_routes``), which finds ComfyUI's server
    without importing anything. Called again (the pack imported twice), it adds nothing.
    """
    routes = host.comfyui_routes()
    if not isinstance(routes, web.RouteTableDef):
        return False
    if LORA_INFO_PATH not in {getattr(r, "path", None) for r in routes}:
        register(routes)
        logger.debug("loragraph routes registered on ComfyUI's server")
    return True
