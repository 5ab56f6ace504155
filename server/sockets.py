"""The websocket clients and the one ordered stream of messages to them (ComfyUI's ``send_sync``).

Messages are ``{"type": event, "data": payload}`` JSON text frames, sent to one client (``sid``)
or, with ``sid=None``, to every client. The worker thread calls ``send_sync``: the message is
encoded there and handed to the event loop with ``call_soon_threadsafe``, and one publishing task
puts them, in the order they were made, into each client's own bounded outbox; one sending task
per client drains its outbox. So a client sees ``executing`` before ``progress`` before
``executed``, exactly as they happened, and a client that stops reading holds back nobody but
itself: it is dropped once its outbox is full or one send outlasts the timeout (docs/CONTRACT.md,
"Websocket fan-out").
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

# A client that cannot take one message within this time is dropped: a browser tab that is alive
# reads a frame in milliseconds, so 10 s only ever catches a client that stopped reading.
SEND_TIMEOUT_S = 10.0
# Messages waiting for one client before it is dropped: a 1,000-step prompt sends ~1,000 progress
# messages in a burst, and 4,096 small frames (under 1 MB) bound what a stalled client can pin.
CLIENT_QUEUE_BOUND = 4096


def encode(event: str, data: Any) -> str:
    """One websocket message; values JSON cannot hold are sent as their ``str``."""
    return json.dumps({"type": event, "data": data}, default=str)


class _Client:
    """One connected websocket: its outbox and the task that sends from it."""

    __slots__ = ("outbox", "task", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None,
                 bound: int) -> None:
        self.ws = ws
        self.transport = transport
        self.outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=bound)
        self.task: asyncio.Task[None] | None = None


class SocketHub:
    """``sid -> websocket`` plus the publishing task and one sending task per client."""

    def __init__(self, send_timeout_s: float = SEND_TIMEOUT_S, queue_bound: int = CLIENT_QUEUE_BOUND) -> None:
        self.send_timeout_s = send_timeout_s
        self.queue_bound = queue_bound
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.metadata: dict[str, dict[str, Any]] = {}
        self._clients: dict[str, _Client] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._messages: asyncio.Queue[tuple[str, str | None] | None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Bind to the running loop and start publishing (the app's startup hook)."""
        self._loop = asyncio.get_running_loop()
        self._messages = asyncio.Queue()
        self._task = asyncio.create_task(self._publish_loop(), name="loragraph-publish")

    async def stop(self, drain_s: float = 2.0) -> None:
        """Send what is queued (for at most ``drain_s``), stop publishing and close every websocket
        (the app's shutdown hook): the last messages say why prompts end."""
        deadline = asyncio.get_running_loop().time() + drain_s
        while (((self._messages is not None and not self._messages.empty())
                or any(not c.outbox.empty() for c in self._clients.values()))
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.01)
        self._loop = None  # later send_sync calls are dropped
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sid, client in list(self._clients.items()):
            self._forget(sid, client)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    client.ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutdown"), 1.0)
            _abort(client)
        self.sockets.clear()
        self.metadata.clear()

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        """Queue a message from any thread; dropped quietly once the server is shutting down."""
        loop, messages = self._loop, self._messages
        if loop is None or messages is None:
            return
        if sid is not None and not isinstance(sid, str):  # a client id is a string; nothing else names one
            logger.warning("dropped a %s message for a client id that is not a string: %r", event, sid)
            return
        text = encode(event, data)
        with contextlib.suppress(RuntimeError):  # the loop closed under us: nobody is listening any more
            loop.call_soon_threadsafe(messages.put_nowait, (text, sid))

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        """Send from the event loop, ahead of the stream's queued messages (used on connect)."""
        self._deliver(encode(event, data), sid)

    def add(self, sid: str, ws: web.WebSocketResponse,
            transport: asyncio.BaseTransport | None = None) -> None:
        """Register ``ws`` under ``sid`` and start its sending task (call from the event loop).

        ``transport`` (the request's) lets a stalled client be cut off at once, without the close
        handshake it would never answer.
        """
        # A client reconnecting with the same clientId replaces its old socket, as in ComfyUI.
        old = self._clients.get(sid)
        if old is not None:
            self._forget(sid, old)
        client = _Client(ws, transport, self.queue_bound)
        client.task = asyncio.create_task(self._send_loop(sid, client), name=f"loragraph-ws-{sid[:16]}")
        self._clients[sid] = client
        self.sockets[sid] = ws
        self.metadata[sid] = {"feature_flags": {}}

    def remove(self, sid: str, ws: web.WebSocketResponse) -> None:
        # Only if it is still this socket: the old socket of a reconnected client closing later
        # must not unregister the new one (ComfyUI pops by sid and loses the new socket).
        client = self._clients.get(sid)
        if client is not None and client.ws is ws:
            self._forget(sid, client)

    def _forget(self, sid: str, client: _Client) -> None:
        if self._clients.get(sid) is client:
            del self._clients[sid]
            self.sockets.pop(sid, None)
            self.metadata.pop(sid, None)
        if client.task is not None and client.task is not asyncio.current_task():
            client.task.cancel()

    def _drop(self, sid: str, client: _Client, why: str) -> None:
        """Cut a client off: it is forgotten, its pending messages discarded, its connection aborted."""
        logger.warning("websocket client %s %s; closing it", sid, why)
        self._forget(sid, client)
        _abort(client)

    async def _publish_loop(self) -> None:
        assert self._messages is not None
        while True:
            item = await self._messages.get()
            if item is None:
                return
            text, sid = item
            try:
                self._deliver(text, sid)
            except Exception:  # one bad message must not end the stream for every client
                logger.exception("could not deliver a websocket message to %r", sid)
            # Let the sending tasks run between messages: a burst must not fill a reading client's outbox.
            await asyncio.sleep(0)

    def _deliver(self, text: str, sid: str | None) -> None:
        if sid is None:
            targets = list(self._clients.items())
        elif isinstance(sid, str) and sid in self._clients:
            targets = [(sid, self._clients[sid])]
        else:
            return
        for target_sid, client in targets:
            try:
                client.outbox.put_nowait(text)
            except asyncio.QueueFull:
                self._drop(target_sid, client, f"fell {self.queue_bound} messages behind")

    async def _send_loop(self, sid: str, client: _Client) -> None:
        while True:
            text = await client.outbox.get()
            if client.ws.closed:
                self._forget(sid, client)
                return
            try:
                await asyncio.wait_for(client.ws.send_str(text), self.send_timeout_s)
            except asyncio.TimeoutError:
                self._drop(sid, client, f"took no message for {self.send_timeout_s:g} s")
                return
            except ConnectionError as ex:  # the client went away mid-send: nothing to tell anyone
                logger.debug("client %s disconnected: %s", sid, ex)
                self._forget(sid, client)
                return
            except (aiohttp.ClientError, RuntimeError) as ex:
                logger.warning("send error to %s: %s", sid, ex)
                self._forget(sid, client)
                return


def _abort(client: _Client) -> None:
    if client.transport is not None:
        with contextlib.suppress(Exception):
            client.transport.abort()
