"""HTTP helpers the server's route tables share: JSON error responses, size-capped bodies, and the
shape of the server object the routes read.

Its own module so that app.py (which builds the app), routes.py (the API) and frontend.py (the
editor's routes and files) can share them without importing each other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from ..base import limits


class Server(Protocol):
    """What the route tables read from the running server (app.py's `PromptServer`)."""

    config: Any  # app.ServerConfig
    hub: Any  # sockets.SocketHub
    queue: Any  # queue.PromptQueue
    worker: Any  # worker.PromptWorker
    registry: Mapping[str, type]
    number: int
    web_root: Path | None

    def queue_info(self) -> dict[str, Any]: ...
    def feature_flags(self) -> dict[str, Any]: ...
    def folder_of(self, kind: str) -> Path | None: ...
    def model_lists(self) -> dict[str, Callable[[], list[str]]]: ...
    def object_info(self, only: Iterable[str] | None) -> dict[str, Any]: ...


def error_response(status: int, error_type: str, message: str, details: str = "") -> web.Response:
    """A JSON error in ComfyUI's ``POST /prompt`` shape: ``{"error": {...}, "node_errors": {}}``."""
    body = {"error": {"type": error_type, "message": message, "details": details or message,
                      "extra_info": {}},
            "node_errors": {}}
    return web.json_response(body, status=status)


class BodyError(Exception):
    """A request body this server will not read; carries the response to send."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


async def read_limited(request: web.Request, limit: int) -> bytes | None:
    """The raw body, or None as soon as it is known to exceed ``limit`` bytes (never read past it)."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


_JSON_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_JSON_POOL_LOCK = threading.Lock()


def _json_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _JSON_POOL
    with _JSON_POOL_LOCK:
        if _JSON_POOL is None:
            _JSON_POOL = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="loragraph-json")
        return _JSON_POOL


async def parse_json(body: bytes) -> Any:
    """``limits.loads(body)`` in the JSON threads (see ``read_json``); raises what it raises."""
    return await asyncio.get_running_loop().run_in_executor(_json_pool(), limits.loads, body)


async def read_json(request: web.Request, limit: int, *, empty_ok: bool = False) -> dict[str, Any]:
    """The request's JSON object body, at most ``limit`` bytes; raises ``BodyError`` (400/413)."""
    too_large = BodyError(error_response(
        413, "body_too_large", f"Request body is larger than the limit of {limit} bytes"))
    body = await read_limited(request, limit)
    if body is None:
        raise too_large
    if not body.strip() and empty_ok:
        return {}
    try:
        # Off the event loop, at most two at a time: /queue and the websockets stay answered while a
        # large body is checked and parsed, and parallel bodies cannot multiply the memory parsing takes.
        # limits.loads refuses NaN/Infinity (they would make /queue and /history invalid JSON) and
        # checks depth and size before parsing.
        data = await parse_json(body)
    except (ValueError, UnicodeDecodeError) as ex:
        raise BodyError(error_response(400, "invalid_json", "Request body is not valid JSON",
                                       str(ex))) from None
    if not isinstance(data, dict):
        raise BodyError(error_response(
            400, "invalid_json", f"Request body must be a JSON object, got {type(data).__name__}"))
    return data


def json_route(handler):
    """Turn a ``BodyError`` raised while reading the body into its response."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BodyError as ex:
            return ex.response

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
