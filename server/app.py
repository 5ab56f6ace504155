"""``loragraph serve``: ComfyUI's HTTP + websocket API in front of the headless executor.

Existing ComfyUI clients work unchanged: they POST an API-format workflow to ``/prompt``, follow
``executing`` / ``progress`` / ``executed`` on ``/ws?clientId=...``, read ``/history/{id}`` and
fetch images from ``/view``. The shapes are ComfyUI's (``server.py``, ``execution.PromptQueue``,
``main.prompt_worker``); ``routes.py`` lists the routes.

Use::

    from loragraph.server import run
    run(host="127.0.0.1", port=8188, models_dir="models", output_dir="output", input_dir="input")

or ``create_app(ServerConfig(...))`` for an ``aiohttp.web.Application`` to run yourself.

Safety: it binds to loopback unless ``allow_remote`` is set (the API runs arbitrary workflows and
writes files; there is no authentication), refuses cross-site requests to a loopback server the
way ComfyUI does (Host and Origin must agree), caps request bodies, and serves files only from the
input, output and temp folders.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import mimetypes
import os
import signal
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from .. import host as host_seam
from ..graph import Executor
from . import frontend, pack_routes
from .queue import DEFAULT_HISTORY_SIZE, PromptQueue
from .routes import build_routes
from .sockets import SocketHub
from .worker import PromptWorker

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8188
MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_SIZE = 50 * MiB  # any request body (image uploads); ComfyUI's default is 100 MB
DEFAULT_MAX_JSON_SIZE = 10 * MiB  # JSON bodies: a workflow plus the editor's copy of it is well under this
PACKAGE_WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class RemoteBindRefused(ValueError):
    """Binding to a non-loopback address without ``allow_remote``."""


@dataclass
class ServerConfig:
    """Everything ``create_app`` needs. ``models_dir`` / ``output_dir`` of None keep the host's folders."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models_dir: str | os.PathLike | None = None
    output_dir: str | os.PathLike | None = None
    input_dir: str | os.PathLike = "input"
    allow_remote: bool = False
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE
    max_json_size: int = DEFAULT_MAX_JSON_SIZE
    history_size: int = DEFAULT_HISTORY_SIZE
    registry: Mapping[str, type] | None = None  # default: the headless nodes (SaveImage included)
    web_dir: Path | None = field(default_factory=lambda: PACKAGE_WEB_DIR)
    extension_name: str = "loragraph"
    # The visual editor (ComfyUI's frontend, when comfyui-frontend-package is installed; see frontend.py)
    editor: bool = True
    user_dir: str | os.PathLike = "user"  # the editor's settings and saved workflows: {user_dir}/default


SERVER_KEY: web.AppKey[PromptServer] = web.AppKey("loragraph_server")


class PromptServer:
    """The server's state: config, registry, queue, worker, websockets (ComfyUI's ``PromptServer``)."""

    def __init__(self, config: ServerConfig) -> None:
        from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS

        self.config = config
        self.registry: Mapping[str, type] = config.registry or HEADLESS_NODE_CLASS_MAPPINGS
        self.input_dir = Path(config.input_dir).resolve()
        self.hub = SocketHub()
        self.queue = PromptQueue(on_change=self.queue_updated, history_size=config.history_size)
        self.executor = Executor(self.registry)
        self.worker = PromptWorker(self.queue, self.executor, self.hub)
        self.number = 0
        self.web_root: Path | None = None  # the editor's files, when it is served
        self.users = frontend.UserFiles(config.user_dir)

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.tasks_remaining()}}

    def queue_updated(self) -> None:
        """Broadcast ComfyUI's ``status`` message (the queue grew or shrank)."""
        self.hub.send_sync("status", {"status": self.queue_info()})

    def feature_flags(self) -> dict[str, Any]:
        # No live previews are sent, so no preview metadata either.
        return {"supports_preview_metadata": False, "max_upload_size": self.config.max_upload_size}

    def folder_of(self, kind: str) -> Path | None:
        """The folder of a ``/view`` / upload ``type``: output, input or temp; None for anything else."""
        if kind == "output":
            return host_seam.output_dir()
        if kind == "input":
            return self.input_dir
        if kind == "temp":
            return host_seam.temp_dir()
        return None

    def model_lists(self) -> dict[str, Callable[[], list[str]]]:
        return {"loras": host_seam.list_loras, "checkpoints": host_seam.list_checkpoints,
                "diffusers": host_seam.list_diffusers_folders}

    def object_info(self, only: Iterable[str] | None) -> dict[str, Any]:
        from ..nodes.object_info import object_info

        return object_info(self.registry, only=only)

    async def on_startup(self, app: web.Application) -> None:
        for folder in (self.input_dir, host_seam.output_dir()):
            folder.mkdir(parents=True, exist_ok=True)
        await self.hub.start()
        self.worker.start()
        logger.info("input folder %s, output folder %s", self.input_dir, host_seam.output_dir())

    async def on_shutdown(self, app: web.Application) -> None:
        await asyncio.to_thread(self.worker.stop)
        await self.hub.stop()


def create_app(config: ServerConfig | None = None) -> web.Application:
    """An aiohttp application serving ComfyUI's API; starting it starts the prompt worker."""
    config = config or ServerConfig()
    if config.models_dir is not None or config.output_dir is not None:
        host_seam.configure(models_dir=config.models_dir, output_dir=config.output_dir)
    mimetypes.add_type("application/javascript; charset=utf-8", ".js")
    mimetypes.add_type("image/webp", ".webp")

    server = PromptServer(config)
    server.web_root = frontend.locate(config.editor)
    app = web.Application(client_max_size=config.max_upload_size, middlewares=[origin_only_middleware])
    app[SERVER_KEY] = server
    tables = [build_routes(server), pack_routes.build()]
    if server.web_root is not None:
        tables.append(frontend.build_editor_routes(server, server.users))
    # ComfyUI serves every route under /api as well (its frontend calls /api/prompt).
    api_routes = web.RouteTableDef()
    for routes in tables:
        for route in routes:
            if isinstance(route, web.RouteDef):
                api_routes.route(route.method, "/api" + route.path)(route.handler, **route.kwargs)
    app.add_routes(api_routes)
    for routes in tables:
        app.add_routes(routes)
    if config.web_dir is not None and config.web_dir.is_dir():
        app.add_routes([web.static(f"/extensions/{config.extension_name}", config.web_dir)])
    if server.web_root is not None:
        app.add_routes(frontend.static_routes(server.web_root))  # last: "/" is a prefix of every path
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    return app


# -- cross-site requests ------------------------------------------------------------------------


@web.middleware
async def origin_only_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """ComfyUI's guard: a web page must not be able to queue workflows on a server at 127.0.0.1.

    Browsers let any site POST to localhost; such a request carries the site's Origin, which then
    differs from the Host. Checked only when the Host is a loopback address, as ComfyUI does.
    """
    if "Host" in request.headers and "Origin" in request.headers:
        host_domain = request.headers["Host"].lower()
        parsed = urllib.parse.urlparse(request.headers["Origin"])
        origin_domain = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + host_domain)
        loopback = is_loopback(host_parsed.hostname)
        if parsed.port is None:  # an Origin without a port: compare host names only
            host_domain = host_parsed.hostname or ""
        if host_parsed.port is None:
            origin_domain = parsed.hostname or ""
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            logger.warning("request with non matching host and origin %s != %s, returning 403",
                           host_domain, origin_domain)
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or a name) means this machine only (ComfyUI's ``is_loopback``)."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            for *_, sockaddr in socket.getaddrinfo(host, None, family, socket.SOCK_STREAM):
                if not ipaddress.ip_address(sockaddr[0]).is_loopback:
                    return False
                loopback = True
        except socket.gaierror:
            pass
    return loopback


def check_bind(hosts: Iterable[str], allow_remote: bool) -> None:
    """Refuse a non-loopback address unless ``allow_remote``: the API has no authentication."""
    remote = [h or "(all interfaces)" for h in hosts if not is_loopback(h)]
    if remote and not allow_remote:
        raise RemoteBindRefused(
            f"refusing to listen on {', '.join(remote)}: the server has no authentication and anyone "
            "who reaches it can run workflows and write files. Listen on 127.0.0.1 (the default), or "
            "pass --allow-remote to accept connections from other machines.")


# -- running ------------------------------------------------------------------------------------


def run(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    models_dir: str | os.PathLike | None = "models",
    output_dir: str | os.PathLike | None = "output",
    input_dir: str | os.PathLike = "input",
    allow_remote: bool = False,
    **config: Any,
) -> None:
    """Serve until interrupted (Ctrl-C). ``host`` may list several addresses: ``"127.0.0.1,::1"``.

    Raises ``RemoteBindRefused`` before binding anything if an address is not loopback and
    ``allow_remote`` is False. Extra keyword arguments go to ``ServerConfig``.
    """
    hosts = [h.strip() for h in host.split(",")]
    check_bind(hosts, allow_remote)
    cfg = ServerConfig(host=host, port=port, models_dir=models_dir, output_dir=output_dir,
                       input_dir=input_dir, allow_remote=allow_remote, **config)
    app = create_app(cfg)
    try:
        asyncio.run(_serve(app, hosts, port))
    except KeyboardInterrupt:
        logger.info("server stopped")


async def _serve(app: web.Application, hosts: list[str], port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        for address in hosts:
            site = web.TCPSite(runner, address or None, port)
            await site.start()
            shown = f"[{address}]" if ":" in address else (address or "0.0.0.0")
            logger.info("loragraph server listening on http://%s:%d", shown, port)
        stop = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread, Windows
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # Ctrl-C cancels this; SIGTERM sets it: either way the worker is stopped cleanly
    finally:
        await runner.cleanup()
