"""The HTTP and websocket routes of ComfyUI's API, with ComfyUI's paths, bodies and answers.

Each route is also served under ``/api`` (``/api/prompt`` ...), as ComfyUI does for its frontend.
What ComfyUI would answer with a 500 (a malformed JSON body, a non-numeric ``max_items``) is a 400
here with a message that says what was wrong; bodies over the size limits get a 413.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import sys
import urllib.parse
import uuid
from typing import Any

import aiohttp
from aiohttp import web

from ..base import limits
from ..graph import (
    WorkflowError,
    format_validation_error,
    is_editor_format,
    normalize_prompt,
    overridden_inputs,
    to_api_format,
    validate_prompt,
)
from . import file_routes
from .http import BodyError, Server, error_response, json_route, read_json

logger = logging.getLogger(__name__)


def _int_query(request: web.Request, name: str) -> int | None:
    value = request.rel_url.query.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BodyError(error_response(400, "invalid_query",
                                       f"{name} must be an integer, got {value!r}")) from None


def _ids(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise BodyError(error_response(400, "invalid_request", f"{what} must be a list of prompt ids"))
    return [str(v) for v in value]


# -- the routes -------------------------------------------------------------------------------


def build_routes(server: Server) -> web.RouteTableDef:
    """Every route of the ComfyUI API this server speaks, bound to ``server``."""
    routes = web.RouteTableDef()
    config = server.config

    @routes.get("/ws")
    async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
        server.hub.add(sid, ws, request.transport)
        try:
            await server.hub.send("status", {"status": server.queue_info(), "sid": sid}, sid)
            # A client reconnecting while its prompt runs learns which node is running.
            worker = server.worker
            if worker.client_id == sid and worker.last_node_id is not None:
                await server.hub.send("executing", {"node": worker.last_node_id}, sid)
            first_message = True
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.ERROR:
                    logger.warning("ws connection closed with exception %s", ws.exception())
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    try:
                        data = limits.loads(msg.data)
                    except ValueError:
                        logger.warning("Invalid JSON received from client %s", sid)
                        continue
                    if first_message and isinstance(data, dict) and data.get("type") == "feature_flags":
                        server.hub.metadata.setdefault(sid, {})["feature_flags"] = data.get("data", {})
                        await server.hub.send("feature_flags", server.feature_flags(), sid)
                    first_message = False
        finally:
            server.hub.remove(sid, ws)
        return ws

    @routes.get("/")
    async def get_root(request: web.Request) -> web.StreamResponse:
        if server.web_root is not None:  # the visual editor (server/frontend.py)
            from .frontend import index_response

            return index_response(server.web_root)
        return web.Response(text="loragraph server: ComfyUI's API without its frontend "
                                 '(pip install "loragraph[editor]" adds it). '
                                 "POST a workflow to /prompt; events on /ws.\n")

    @routes.get("/embeddings")
    async def get_embeddings(request: web.Request) -> web.Response:
        return web.json_response([])

    @routes.get("/models")
    async def list_model_types(request: web.Request) -> web.Response:
        return web.json_response(list(server.model_lists()))

    @routes.get("/models/{folder}")
    async def get_models(request: web.Request) -> web.Response:
        lister = server.model_lists().get(request.match_info["folder"])
        if lister is None:
            return web.Response(status=404)
        return web.json_response(await asyncio.to_thread(lister))

    @routes.get("/extensions")
    async def get_extensions(request: web.Request) -> web.Response:
        web_dir = config.web_dir
        found: list[str] = []
        if web_dir is not None and web_dir.is_dir():
            for f in sorted(glob.glob(os.path.join(glob.escape(str(web_dir)), "**/*.js"), recursive=True)):
                rel = os.path.relpath(f, web_dir).replace("\\", "/")
                found.append(f"/extensions/{urllib.parse.quote(config.extension_name)}/{rel}")
        return web.json_response(found)

    @routes.get("/view")
    async def view_image(request: web.Request) -> web.StreamResponse:
        return await file_routes.view(request, server.folder_of)

    @routes.post("/upload/image")
    async def upload_image(request: web.Request) -> web.Response:
        return await file_routes.upload_image(request, server.folder_of)

    @routes.get("/system_stats")
    async def system_stats(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(_system_stats))

    @routes.get("/features")
    async def get_features(request: web.Request) -> web.Response:
        return web.json_response(server.feature_flags())

    @routes.get("/prompt")
    async def get_prompt(request: web.Request) -> web.Response:
        return web.json_response(server.queue_info())

    @routes.get("/object_info")
    async def get_object_info(request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(server.object_info, None))

    @routes.get("/object_info/{node_class}")
    async def get_object_info_node(request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        if node_class not in server.registry:
            return web.json_response({})  # ComfyUI answers an unknown node with {}
        return web.json_response(await asyncio.to_thread(server.object_info, [node_class]))

    @routes.get("/history")
    @json_route
    async def get_history(request: web.Request) -> web.Response:
        max_items = _int_query(request, "max_items")
        offset = _int_query(request, "offset")
        return web.json_response(server.queue.history(max_items=max_items,
                                                      offset=-1 if offset is None else offset))

    @routes.get("/history/{prompt_id}")
    async def get_history_prompt_id(request: web.Request) -> web.Response:
        return web.json_response(server.queue.history(prompt_id=request.match_info["prompt_id"]))

    @routes.get("/queue")
    async def get_queue(request: web.Request) -> web.Response:
        running, pending = server.queue.current_queue()
        return web.json_response({"queue_running": running, "queue_pending": pending})

    @routes.post("/prompt")
    @json_route
    async def post_prompt(request: web.Request) -> web.Response:
        data = await read_json(request, config.max_json_size)
        number: float | int | None = None
        if "number" in data:
            try:
                number = float(data["number"])
            except (TypeError, ValueError):
                return error_response(400, "invalid_request",
                                      f"number must be a number, got {data['number']!r}")
        if "prompt" not in data:
            return error_response(400, "no_prompt", "No prompt provided")
        prompt = data["prompt"]
        if not isinstance(prompt, dict):
            return error_response(400, "invalid_prompt", "prompt must be a JSON object of nodes (API format)",
                                  f"got {type(prompt).__name__}")
        extra_data = data.get("extra_data") or {}
        if not isinstance(extra_data, dict):
            return error_response(400, "invalid_request", "extra_data must be a JSON object")
        extra_data = dict(extra_data)
        if "client_id" in data:
            extra_data["client_id"] = data["client_id"]
        client_id = extra_data.get("client_id")
        if client_id is not None and not isinstance(client_id, str):  # it keys the websocket table
            return error_response(400, "invalid_request",
                                  f"client_id must be a string, got {type(client_id).__name__}")
        targets = data.get("partial_execution_targets")
        if targets is not None and not isinstance(targets, list):
            return error_response(400, "invalid_request",
                                  "partial_execution_targets must be a list of node ids")
        prompt_id = str(data.get("prompt_id") or uuid.uuid4())
        if is_editor_format(prompt):  # a saved editor workflow: queue what the editor would (graphToPrompt)
            try:
                editor_json, prompt = prompt, to_api_format(prompt, server.registry)
            except WorkflowError as ex:
                return error_response(400, "invalid_prompt", str(ex))
            extra_data.setdefault("extra_pnginfo", {"workflow": editor_json})
        try:
            normalized = normalize_prompt(prompt)
        except WorkflowError as ex:
            return error_response(400, "invalid_prompt", str(ex))
        ok, error, outputs, node_errors = await asyncio.to_thread(
            validate_prompt, normalized, server.registry, [str(t) for t in targets] if targets else None)
        if not ok:
            logger.warning("invalid prompt %s: %s", prompt_id,
                           "; ".join(format_validation_error(error, node_errors, normalized)))
            return web.json_response({"error": error, "node_errors": node_errors}, status=400)
        if number is None:
            # Numbered when queued, not when received: validation awaits a thread, so prompts posted
            # together would otherwise enter the queue out of number order and run out of order.
            number = -server.number if data.get("front") else server.number
            server.number += 1
        server.queue.put((number, prompt_id, normalized, extra_data, list(outputs)))
        logger.info("got prompt %s (%d nodes; %d in the queue)", prompt_id, len(normalized),
                    server.queue.tasks_remaining())
        for overridden in overridden_inputs(normalized, server.registry):
            logger.warning("prompt %s: %s", prompt_id, overridden.message(normalized))
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    @routes.post("/queue")
    @json_route
    async def post_queue(request: web.Request) -> web.Response:
        data = await read_json(request, config.max_json_size)
        if data.get("clear"):
            server.queue.wipe_queue()
        if "delete" in data:
            server.queue.delete(_ids(data["delete"], "delete"))
        return web.Response(status=200)

    @routes.post("/interrupt")
    @json_route
    async def post_interrupt(request: web.Request) -> web.Response:
        try:
            data = await read_json(request, config.max_json_size, empty_ok=True)
        except BodyError as ex:
            if ex.response.status == 413:
                raise
            data = {}  # ComfyUI: a body that is not JSON means "interrupt whatever runs"
        server.worker.interrupt(data.get("prompt_id") or None)
        return web.Response(status=200)

    @routes.post("/free")
    @json_route
    async def post_free(request: web.Request) -> web.Response:
        data = await read_json(request, config.max_json_size)
        for flag in ("unload_models", "free_memory"):
            if data.get(flag):
                server.queue.set_flag(flag, True)
        return web.Response(status=200)

    @routes.post("/history")
    @json_route
    async def post_history(request: web.Request) -> web.Response:
        data = await read_json(request, config.max_json_size)
        if data.get("clear"):
            server.queue.wipe_history()
        if "delete" in data:
            server.queue.delete_history(_ids(data["delete"], "delete"))
        return web.Response(status=200)

    return routes


def _system_stats() -> dict[str, Any]:
    """ComfyUI's ``/system_stats`` shape: the machine, and the device the engine renders on."""
    import torch

    from .. import __version__

    ram_total, ram_free = _ram()
    devices: list[dict[str, Any]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({"name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda",
                            "index": index, "vram_total": total, "vram_free": free,
                            "torch_vram_total": torch.cuda.memory_reserved(index),
                            "torch_vram_free": torch.cuda.memory_reserved(index)
                            - torch.cuda.memory_allocated(index)})
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append({"name": "mps", "type": "mps", "index": 0, "vram_total": ram_total,
                        "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    else:  # ComfyUI reports RAM as the CPU device's memory
        devices.append({"name": "cpu", "type": "cpu", "index": 0, "vram_total": ram_total,
                        "vram_free": ram_free, "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    return {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            # the frontend's About panel reads comfyui_version; here it is the loragraph version
            "comfyui_version": f"loragraph {__version__}",
            "loragraph_version": __version__,
            "python_version": sys.version,
            "pytorch_version": torch.__version__,
            "embedded_python": False,
            "argv": sys.argv,
        },
        "devices": devices,
    }


def _ram() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 0, 0
