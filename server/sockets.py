"""The websocket clients and the one ordered stream of messages to them (ComfyUI's ``send_sync``).

Messages are ``{"type": event, "data": payload}`` JSON text frames, sent to one client (``sid``)
or, with ``sid=None``, to every client. The worker thread calls ``send_sync``: the message is
encoded there and handed to the event loop with ``call_soon_threadsafe``, and one publishing task
sends them in the order they were made, so a client sees ``executing`` before ``progress`` before
``executed``, exactly as they happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

logger = logging.getLogger(__name__)

# A client that cannot take a message within this time is dropped, so one stalled browser tab
# cannot hold back every other client's progress.
SEND_TIMEOUT_S = 10.0


def encode(event: str, data: Any) -> str:
    """One websocket message; values JSON cannot hold are sent as their ``str``."""
    return json.dumps({"type": event, "data": data}, default=str)


class SocketHub:
    """``sid -> websocket`` plus the publishing task."""

    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._messages: asyncio.Queue[tuple[str, str | None] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind to the running loop and start publishing (the app's startup hook)."""
        self._loop = asyncio.get_running_loop()
        self._messages = asyncio.Queue()
        self._task = asyncio.create_task(self._publish_loop(), name="loragraph-publish")

    async def stop(self) -> None:
        """Stop publishing and close every websocket (the app's shutdown hook)."""
        self._loop = None  # later send_sync calls are dropped
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutdown")
        self.sockets.clear()
        self.metadata.clear()

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue a message from any thread; dropped quietly once the server is shutting down."""
        loop, messages = self._loop, self._messages
        if loop is None or messages is None:
            return
        text = encode(event, data)
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening any more
            loop.call_soon_threadsafe(messages.put_nowait, (text, sid))

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Send now, from the event loop (bypasses the ordered stream; used on connect)."""
        await self._send_text(encode(event, data), sid)

    def add(self, sid: str, ws: web.WebSocketResponse) -> None:
        # A client reconnecting with the same clientId replaces its old socket, as in ComfyUI.
        self.sockets[sid] = ws
        self.metadata[sid] = {"feature_flags": {}}

    def remove(self, sid: str, ws: web.WebSocketResponse) -> None:
        # Only if it is still this socket: the old socket of a reconnected client closing later
        # must not unregister the new one (ComfyUI pops by sid and loses the new socket).
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]
            self.metadata.pop(sid, None)

    async def _publish_loop(self) -> None:
        assert self._messages is not None
        while True:
            item = await self._messages.get()
            if item is None:
                return
            text, sid = item
            await self._send_text(text, sid)

    async def _send_text(self, text: str, sid: str | None) -> None:
        if sid is None:
            targets = list(self.sockets.items())
        elif sid in self.sockets:
            targets = [(sid, self.sockets[sid])]
        else:
            return
        for target_sid, ws in targets:
            if ws.closed:
                continue
            try:
                await asyncio.wait_for(ws.send_str(text), SEND_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.warning("websocket client %s stalled; closing it", target_sid)
                self.remove(target_sid, ws)
                with contextlib.suppress(Exception):
                    await ws.close()
            except ConnectionError as ex:  # the client went away mid-send: nothing to tell anyone
                logger.debug("client %s disconnected: %s", target_sid, ex)
            except (aiohttp.ClientError, RuntimeError) as ex:
                logger.warning("send error to %s: %s", target_sid, ex)
