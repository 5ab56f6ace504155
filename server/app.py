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
writes files; there is no authentication), answers only requests whose Host is loopback (or a name
allowed with ``allow_hosts``, for a reverse proxy: no DNS rebinding), refuses any request whose
Origin is not its own (no cross-site requests, ``null`` included), caps request bodies, and serves
files only from the input, output and temp folders, only media inline (see ``file_routes.py``).
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
from ..graph.events import EXECUTION_ERROR
from ..graph.interrupt import ProgressHookFactory
from . import frontend, pack_routes
from .queue import DEFAULT_HISTORY_SIZE, PromptQueue
from .routes import build_routes
from .sockets import CLIENT_QUEUE_BOUND, SEND_TIMEOUT_S, SocketHub
from .worker import PromptWorker

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8188
MiB = 1024 * 1024
DEFAULT_MAX_UPLOAD_SIZE = 50 * MiB  # any request body (image uploads); ComfyUI's default is 100 MB
DEFAULT_MAX_JSON_SIZE = 10 * MiB  # JSON bodies: a workflow plus the editor's copy of it is well under this
# A new connection that has not sent a whole request head by then is closed (slowloris): a browser
# or script sends one in milliseconds; nginx's client_header_timeout is 60 s, half of it is plenty.
HEADER_TIMEOUT_S = 30.0
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
    # Host names answered besides loopback ones: what a reverse proxy forwards (--allow-host).
    allow_hosts: tuple[str, ...] = ()
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE
    max_json_size: int = DEFAULT_MAX_JSON_SIZE
    history_size: int = DEFAULT_HISTORY_SIZE
    ws_send_timeout_s: float = SEND_TIMEOUT_S  # a websocket client slower than this is dropped
    header_timeout_s: float = HEADER_TIMEOUT_S  # a connection sends its first request head within this
    ws_queue_bound: int = CLIENT_QUEUE_BOUND  # messages waiting for one client before it is dropped
    registry: Mapping[str, type] | None = None  # default: the headless nodes (SaveImage included)
    web_dir: Path | None = field(default_factory=lambda: PACKAGE_WEB_DIR)
    extension_name: str = "loragraph"
    # The visual editor (ComfyUI's frontend, when comfyui-frontend-package is installed; see frontend.py)
    editor: bool = True
    user_dir: str | os.PathLike = "user"  # the editor's settings and saved workflows: {user_dir}/default
    # hook(value, total) per node's progress reports, e.g. the CLI's tqdm bar (graph.interrupt)
    progress_hook_factory: ProgressHookFactory | None = None
    # serve --ray: builds the worker from the PromptServer (scaleout.serve.worker_factory); None: one process
    worker_factory: Callable[[Any], Any] | None = None


SERVER_KEY: web.AppKey[PromptServer] = web.AppKey("loragraph_server")


class PromptServer:
    """The server's state: config, registry, queue, worker, websockets (ComfyUI's ``PromptServer``)."""

    def __init__(self, config: ServerConfig) -> None:
        from ..nodes import HEADLESS_NODE_CLASS_MAPPINGS

        self.config = config
        self.registry: Mapping[str, type] = config.registry or HEADLESS_NODE_CLASS_MAPPINGS
        self.input_dir = Path(config.input_dir).resolve()
        self.hub = SocketHub(config.ws_send_timeout_s, config.ws_queue_bound)
        self.queue = PromptQueue(on_change=self.queue_updated, history_size=config.history_size)
        self.executor = Executor(self.registry, progress_hook_factory=config.progress_hook_factory)
        self.worker = (config.worker_factory(self) if config.worker_factory is not None
                       else PromptWorker(self.queue, self.executor, self.hub))
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
        # No folder is made here: each is created when first written (an upload, SaveImage,
        # the editor's settings), so a server started and stopped leaves the current folder as it was.
        await asyncio.to_thread(host_seam.clean_stale_temps, self.input_dir, self.users.root)
        await self.hub.start()
        self.worker.start()
        logger.info("input folder %s, output folder %s", self.input_dir, host_seam.output_dir())

    async def on_shutdown(self, app: web.Application) -> None:
        self.queue.close()  # no queued prompt starts now; each is reported below, none dropped silently
        _running, pending = self.queue.current_queue()
        self.queue.wipe_queue()
        for _number, prompt_id, _prompt, extra_data, _outputs in pending:
            logger.warning("prompt %s will not run: the server is shutting down", prompt_id)
            client_id = extra_data.get("client_id")
            if client_id:
                self.hub.send_sync(EXECUTION_ERROR, PromptWorker.error_message(
                    prompt_id, None, None, "the server shut down before this prompt ran; queue it again"),
                    client_id)
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
    app = web.Application(client_max_size=config.max_upload_size,
                          middlewares=[guard_middleware])
    app.on_response_prepare.append(_nosniff)
    app[SERVER_KEY] = server
    app[GUARD_KEY] = RequestGuard(config.host, config.allow_remote, config.allow_hosts)
    app[SLOW_KEY] = SlowClientWatch(config.header_timeout_s)
    if config.allow_remote:
        logger.warning("--allow-remote: the API has no authentication; anyone who can reach this server can "
                       "run workflows, read their results and write files")
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


# -- cross-site requests and DNS rebinding -------------------------------------------------------


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
_LOOPBACK_NAMES = ("localhost", "localhost.")


def _is_loopback_literal(hostname: str) -> bool:
    """A loopback IP address, or the name ``localhost`` (which browsers pin to loopback); no DNS asked."""
    if hostname in _LOOPBACK_NAMES or hostname.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(hostname.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def _split_host(value: str, default_port: int) -> tuple[str, int] | None:
    """``host[:port]`` -> (lower-case host name, port); None when it does not parse."""
    try:
        parts = urllib.parse.urlsplit("//" + value.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or parts.username or parts.password or parts.path or parts.query:
        return None
    return parts.hostname.lower(), port if port is not None else default_port


class RequestGuard:
    """Which Host and Origin headers the server answers (see ``guard_middleware``).

    Host: a loopback address, ``localhost``, a non-wildcard address the server listens on with
    ``allow_remote``, or a name given with ``allow_hosts`` (the name a reverse proxy forwards). Names
    are never resolved: a rebinding attacker's name resolves to 127.0.0.1, so resolving proves nothing.

    Origin, when the request has one: ``http(s)://`` with the very host and port of the request's
    Host (the page was served by this server), or a host in ``allow_hosts`` (a page served through
    the proxy). ``null``, an empty Origin, ``file://`` and every other site are refused.
    """

    def __init__(self, listen: str, allow_remote: bool, allow_hosts: Iterable[str]) -> None:
        self.extra: set[str] = set()
        for name in allow_hosts:
            split = _split_host(name, 0)
            if split is None:
                raise ValueError(f"--allow-host {name!r} is not a host name")
            self.extra.add(split[0])
        self.listening: set[str] = set()
        if allow_remote:
            for address in listen.split(","):
                address = address.strip().strip("[]").lower()
                if address and address not in ("0.0.0.0", "::"):
                    self.listening.add(address)

    def host_allowed(self, hostname: str) -> bool:
        return _is_loopback_literal(hostname) or hostname in self.extra or hostname in self.listening

    def refusal(self, request: web.Request) -> str | None:
        """Why ``request`` is refused, or None when it is answered."""
        host_header = request.headers.get("Host")
        host = None
        if host_header is not None:
            host = _split_host(host_header, _DEFAULT_PORTS.get(request.scheme, 80))
            if host is None or not self.host_allowed(host[0]):
                return (f"Host {host_header!r} is not this server's (a loopback address, or a name given "
                        "with --allow-host)")
        if "Origin" in request.headers:
            origin = request.headers["Origin"]
            try:
                parsed = urllib.parse.urlsplit(origin.strip())
                port = parsed.port
            except ValueError:
                return f"Origin {origin!r} is not a web origin"
            scheme, hostname = parsed.scheme.lower(), (parsed.hostname or "").lower()
            if scheme not in ("http", "https") or not hostname or parsed.path not in ("", "/"):
                return f"Origin {origin!r} is not this server's"
            if hostname in self.extra:
                return None  # a page served through the reverse proxy the user named
            if host is None or (hostname, port if port is not None else _DEFAULT_PORTS[scheme]) != host:
                return f"Origin {origin!r} is not this server's ({host_header or 'no Host'})"
        return None


GUARD_KEY: web.AppKey[RequestGuard] = web.AppKey("loragraph_guard")


@web.middleware
async def guard_middleware(request: web.Request, handler: Callable) -> web.StreamResponse:
    """Refuse cross-site requests (403) and requests for another host name (DNS rebinding, 403).

    A web page may POST to 127.0.0.1 or open a websocket to it: such a request carries the page's
    Origin, which must be this server's own. A page on a rebinding attacker's domain (resolving to
    127.0.0.1) sends that domain as Host, which must be a loopback address or an allowed name.
    ComfyUI compares Host and Origin only when both are present and the Host is loopback, which
    lets ``Origin: null`` and any Host name through; this is stricter.
    """
    request.app[SLOW_KEY].saw_request(request)
    guard = request.app[GUARD_KEY]
    reason = guard.refusal(request)
    if reason is not None:
        logger.warning("refused %s %s: %s", request.method, request.path, reason)
        return web.Response(status=403, text=f"403: {reason}\n")
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


class SlowClientWatch:
    """Closes connections that send no whole request head within ``timeout_s`` of opening (slowloris).

    aiohttp has no such timeout: a connection that trickles its headers, or sends nothing, is kept
    forever. The middleware marks each connection that got a request through; ``watch`` looks at the
    server's open connections and closes the unmarked ones past the limit.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        # keyed by id, holding the handler itself: an id is reused once its handler is gone
        self.first_seen: dict[int, tuple[Any, float]] = {}
        self.served: dict[int, Any] = {}

    def saw_request(self, request: web.Request) -> None:
        self.served[id(request.protocol)] = request.protocol

    async def watch(self, server: web.Server) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(self.timeout_s / 3, 5.0))
            now = loop.time()
            live = {id(handler): handler for handler in server.connections}
            for key, handler in live.items():
                if self.served.get(key) is handler:
                    continue
                seen = self.first_seen.get(key)
                if seen is None or seen[0] is not handler:
                    self.first_seen[key] = seen = (handler, now)
                if now - seen[1] > self.timeout_s and handler.transport:
                    logger.warning("closing a connection that sent no request in %g s", self.timeout_s)
                    handler.transport.abort()
            self.first_seen = {k: v for k, v in self.first_seen.items() if live.get(k) is v[0]}
            self.served = {k: v for k, v in self.served.items() if live.get(k) is v}


SLOW_KEY: web.AppKey[SlowClientWatch] = web.AppKey("loragraph_slow_clients")


def watch_slow_clients(runner: web.AppRunner) -> asyncio.Task[None]:
    """Start closing ``runner``'s connections that send no request head in time (after ``setup``)."""
    assert runner.server is not None, "call runner.setup() first"
    return asyncio.create_task(runner.app[SLOW_KEY].watch(runner.server), name="loragraph-slow-clients")


async def _nosniff(request: web.Request, response: web.StreamResponse) -> None:
    """``X-Content-Type-Options: nosniff`` on every answer: a browser renders only the type we send."""
    response.headers["X-Content-Type-Options"] = "nosniff"


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


def _shown_host(address: str) -> str:
    return f"[{address}]" if ":" in address else (address or "0.0.0.0")


async def _serve(app: web.Application, hosts: list[str], port: int) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    watcher = watch_slow_clients(runner)
    try:
        for address in hosts:
            site = web.TCPSite(runner, address or None, port)
            await site.start()
            shown = _shown_host(address)
            logger.info("loragraph server listening on http://%s:%d", shown, port)
        server = app[SERVER_KEY]
        if server.web_root is not None:
            logger.info("To see the editor go to: http://%s:%d/", _shown_host(hosts[0]), port)
        elif server.config.editor:
            logger.info("no visual editor: pip install 'loragraph[editor]' adds ComfyUI's frontend "
                        "(API only now)")
        stop = asyncio.Event()
        # not the main thread, Windows
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()  # Ctrl-C cancels this; SIGTERM sets it: either way the worker is stopped cleanly
    finally:
        watcher.cancel()
        await runner.cleanup()
