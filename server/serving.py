"""uvicorn, as this server runs it: the app drains before connections are closed on
shutdown, WebSocket peers that stop reading are dropped, and cart ids stay out of the log."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.http11 import Request

from . import collector, frames
from .config import Settings

log = logging.getLogger("server")

DRAIN_SECONDS = 3.0  # in-flight mutations and their acks; uvicorn then has the rest of 10 s
GRACEFUL_SECONDS = 6


class CartServer(uvicorn.Server):
    """On SIGTERM: stop accepting, let the app drain (long-polls answer, in-flight mutations
    commit, tabs get their acks and 1012), then uvicorn's own graceful shutdown. Once
    started, the garbage collector is set up for a long-lived process (server/collector.py)."""

    def __init__(self, config: uvicorn.Config, app: Starlette) -> None:
        super().__init__(config)
        self.app = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        collector.start()  # what start-up made lives as long as the process

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        collector.stop()
        for server in self.servers:
            server.close()  # stop accepting before draining what is open
        drain: Callable[[], Awaitable[None]] | None = getattr(self.app.state, "drain", None)
        if drain is not None and not self.force_exit:
            log.info("draining: answering long-polls, finishing mutations in flight")
            try:
                await asyncio.wait_for(drain(), DRAIN_SECONDS)
            except TimeoutError:
                log.warning("shutdown: tabs still unflushed after %.0f s", DRAIN_SECONDS)
        await super().shutdown(sockets)


class StallGuardedProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, except that a peer which stops reading is dropped, and
    that the app may write ready-made frames to it (a frames.Sink, offered in the scope's
    extensions), skipping the ASGI send path for every frame after the handshake.

    Sends wait while the transport's buffer is over its high-water mark, and a close frame
    waits behind them: a peer that keeps its TCP window shut would hold the socket, its
    buffers and its tab until the keepalive gave up, and even that closes gracefully,
    waiting for the buffer to drain. Here a buffer that has not drained for
    `stall_seconds` aborts the connection."""

    stall_seconds = 5.0
    send_buffer = 256 * 1024
    _stall: asyncio.TimerHandle | None = None
    _tab: frames.Tab | None = None
    _paused = False
    _reader: Callable[[str], None] | None = None
    _holding = False  # the reader holds the socket: not read until it lets go

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Without a cap the kernel grows it to megabytes for a peer that reads nothing.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        super().connection_made(transport)

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if not self.close_sent:  # upgraded: the app's task has not run yet
            self.scope["extensions"][frames.EXTENSION] = self  # type: ignore[assignment]

    def pause_writing(self) -> None:
        super().pause_writing()
        self._paused = True
        if self._stall is None:
            self._stall = self.loop.call_later(self.stall_seconds, self._abort_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._paused = False
        self._cancel_stall()
        if self._tab is not None:
            self._tab.drained()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall()
        super().connection_lost(exc)
        if self._tab is not None:
            self._tab.lost()
        # Two reference cycles would leave a closed connection (~45 objects) to the
        # garbage collector: the scope's extension and this protocol, and websockets'
        # parser generator and its protocol. Broken, reference counting frees it at once.
        scope = getattr(self, "scope", None)  # made only when the handshake succeeded
        if scope is not None:
            scope["extensions"].pop(frames.EXTENSION, None)
        self.conn.parser.close()

    # --- frames.Sink -------------------------------------------------------------------

    def write_frames(self, data: bytes) -> None:
        if not self.close_sent and not self.transport.is_closing():
            self.transport.write(data)

    def pushing_back(self) -> bool:
        return self._paused

    def close_with(self, code: int, reason: str) -> None:
        """What uvicorn does for an ASGI `websocket.close`, without waiting to be writable
        (the caller waited for the frames before it)."""
        if self.close_sent or self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:  # the peer's close came first: the handshake is over
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused or self._holding:  # the peer's close comes next: read it
            self.read_paused = self._holding = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)

    def listen(self, tab: frames.Tab | None) -> None:
        self._tab = tab

    def read_with(self, reader: Callable[[str], None] | None) -> None:
        self._reader = reader

    def hold_reading(self, held: bool) -> None:
        if held == self._holding or self.close_sent or self.transport.is_closing():
            return
        self._holding = held
        if not self.read_paused:  # else uvicorn holds it, until the app takes a message
            (self.transport.pause_reading if held else self.transport.resume_reading)()

    # --- receiving -----------------------------------------------------------------------

    def send_receive_event_to_app(self) -> None:
        """A complete message: a text one to the reader, if there is one; else, as uvicorn
        does, to the app's queue (and the socket is not read until the app takes it)."""
        reader = self._reader
        if reader is None or self.curr_msg_data_type != "text" or self.close_sent:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        try:
            text = data.decode()
        except UnicodeDecodeError:  # uvicorn closes with 1007
            super().send_receive_event_to_app()
            return
        self.frames = []
        reader(text)

    async def receive(self) -> Any:
        """uvicorn's, except that a socket the reader holds stays held."""
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self._holding:
                self.transport.resume_reading()
        return message

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None

    def _abort_stalled(self) -> None:
        self._stall = None
        log.info("dropped a WebSocket peer that read nothing for %g s", self.stall_seconds)
        self.transport.abort()


def stall_guarded(settings: Settings) -> type[StallGuardedProtocol]:
    """The protocol class, configured: uvicorn instantiates it per connection."""
    limits = {
        "stall_seconds": settings.ws_send_timeout_seconds,
        "send_buffer": settings.ws_send_buffer,
    }
    return type("StallGuardedProtocol", (StallGuardedProtocol,), limits)


class RedactCartIds(logging.Filter):
    """A signed cart id is a bearer credential for its cart, and uvicorn logs some: the
    WebSocket path with its `?cart=`, request headers (cookie, X-Cart-Id) at debug, whole
    ASGI scopes at trace. So is a demo checkout's id (its page pays or cancels it), and a
    URL's password. Keep the cart id, blank the rest, before anything is written."""

    _SIGNED = re.compile(
        r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.[A-Za-z0-9_-]+"
    )
    _CART = re.compile(r"(\bcart(?:_id)?=)[^&;\s\"']+", re.IGNORECASE)
    _CHECKOUT = re.compile(r"(/checkout/demo/)[^/?#\s\"']+")
    _PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)[^@\s\"']+@", re.IGNORECASE)
    _HEADERS = {"cookie", "set-cookie", "x-cart-id", "authorization", "stripe-signature"}

    def _clean(self, text: str, decode: bool = True) -> str:
        if decode and "%" in text:  # `?%63art=%61b…` is read as `?cart=ab…`: judge that
            text = unquote(text)
        text = self._SIGNED.sub(r"\1.[redacted]", text)
        text = self._CHECKOUT.sub(r"\1[redacted]", text)
        text = self._PASSWORD.sub(r"\1[redacted]@", text)
        return self._CART.sub(r"\1[redacted]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            # A message with arguments is a format string: its `%` are not escapes.
            record.msg = self._clean(record.msg, decode=not record.args)
        args = record.args
        if isinstance(args, tuple) and args:
            if isinstance(args[0], str) and args[0].lower() in self._HEADERS:
                args = (args[0], "[redacted]", *args[2:])  # websockets: "< %s: %s"
            record.args = tuple(self._arg(arg) for arg in args)
        return True

    def _arg(self, arg: object) -> object:
        if isinstance(arg, str):
            return self._clean(arg)
        if isinstance(arg, dict | list | tuple | bytes):  # scopes and headers at trace level
            text = repr(arg)
            cleaned = self._clean(text)
            return arg if cleaned == text else cleaned
        return arg


def redact_logs() -> None:
    """On uvicorn's loggers, whose records carry request data, and on every handler of
    the root logger, which the server's own loggers (and the libraries') write through."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logging.getLogger(name).addFilter(RedactCartIds())
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactCartIds())
