"""The HTTP connection before the app sees a request, and how its answer is written: how
long a request's head may take, how big it may be, and one write for a head and its body.

uvicorn waits forever for a request's headers and parses headers of any size (httptools
buffers them by repeated concatenation: a 100 MB header held the loop for seconds). Here,
per connection:

- the request line and headers must be complete within HEADER_TIMEOUT (408, then closed);
- a request's body must be complete within BODY_TIMEOUT of its head (408, then closed): a
  body that never ends would hold the request, and its cart, forever;
- they may be at most MAX_HEADER_BYTES (431, then closed); the parser is never fed more;
- the connection must be admitted by sockets.Sockets (per address, and the process's
  capacity): refused with 429 or 503 otherwise."""

from __future__ import annotations

import asyncio
import http
from typing import Any

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .config import Settings
from .sockets import ReleasedOnClose, Sockets

LINGER_SECONDS = 2.0  # after a 431: how long the rest of the client's head is read and dropped


def http_response(
    status: int, code: str, message: str, headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole response that closes the connection, with the API's error body."""
    body = msgspec.json.encode({"error": {"code": code, "message": message}})
    head = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
    head += [name + b": " + value for name, value in headers]
    head += [
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


REFUSALS = {
    429: ("too_many_connections", "too many connections from this address"),
    503: ("unavailable", "the server is at its connection limit; try again"),
}


class HeadGuard(asyncio.Protocol):
    """Mixed into uvicorn's HTTP protocols (before them): the guards above. The parser's
    part is to say whether bytes now arriving belong to a request head."""

    sockets: Sockets
    ws: type[asyncio.Protocol] | None = None
    header_timeout = 10.0
    body_timeout = 60.0
    max_header_bytes = 32 * 1024
    # uvicorn's, set by the protocol this is mixed into
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None
    server_state: ServerState
    ws_protocol_class: Any
    cycle: Any  # the request being answered, if any
    flow: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ws_protocol_class = self.ws
        self._head_bytes = 0  # of the current head, fed to the parser so far
        self._timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._dropping = False  # answered and closing: what still arrives is not parsed

    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _head_started(self) -> bool:
        """Some of the awaited head has arrived."""
        raise NotImplementedError

    def _body_pending(self) -> bool:
        """A head has arrived and the rest of its body has not."""
        raise NotImplementedError

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        refused = self.sockets.admit(transport, self.client[0] if self.client else "")
        if refused is not None:
            self._answer(refused, *REFUSALS[refused])
            return
        self._start_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._cancel_body_timer()
        self.sockets.release(self.transport)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and not self._dropping:
            if not self._awaiting_head():  # a body: the app's limits apply
                super().data_received(data)
                if not self._body_pending():
                    self._cancel_body_timer()
                return
            # Never more than the limit to the parser (httptools copies a header each time
            # a piece of it arrives).
            room = self.max_header_bytes - self._head_bytes
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            if piece:
                super().data_received(piece)
            if self.transport.get_protocol() is not self:
                self._head_done()  # upgraded: the WebSocket protocol has it now
                return
            if self.transport.is_closing():
                return
            if not self._awaiting_head():
                self._head_done()
            elif self._head_bytes >= self.max_header_bytes:
                limit = self.max_header_bytes
                message = f"request line and headers over {limit} bytes"
                self._answer(431, "headers_too_large", message, linger=True)

    def _one_write(self, before: Any) -> None:
        """A request just made (not a WebSocket upgrade) answers through OneWrite."""
        cycle = self.cycle
        if cycle is not before and cycle is not None and cycle.scope["method"] != "HEAD":
            cycle.transport = OneWrite(self.transport)

    def _idle(self) -> bool:
        """Waiting for a request head, with no response under way."""
        return self._awaiting_head() and (self.cycle is None or self.cycle.response_complete)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and self._idle():
            self.sockets.set_waiting(self.transport, True)
            if self._timer is None:  # the next head is due within the timeout too
                self._start_timer()

    def _head_done(self) -> None:
        self._cancel_timer()
        self._head_bytes = 0
        self.sockets.set_waiting(self.transport, False)
        if self._body_pending():
            self._start_body_timer()

    def _start_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or not self._body_pending():
            return
        if self.flow.read_paused:  # we stopped reading (a pipelined request, a slow app)
            self._start_body_timer()
            return
        # The app, still reading the body, sees the client gone.
        message = f"request body not complete within {self.body_timeout:g} s"
        self._answer(408, "request_timeout", message, late_body=True)

    def _start_timer(self) -> None:
        self._cancel_timer()
        self._timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if not self._head_started():  # nothing of a request at all: nothing to answer
            self.transport.close()
            return
        message = f"request headers not complete within {self.header_timeout:g} s"
        self._answer(408, "request_timeout", message)

    def _answer(
        self, status: int, code: str, message: str, linger: bool = False, late_body: bool = False
    ) -> None:
        """Answer and close, parsing nothing more. With `linger`, the write side is shut
        at once but what the client is still sending is read (and dropped) for a moment:
        closing with unread data would reset the connection, and the client could lose
        the answer before reading it. A `late_body` is the open request's own: it is
        answered unless the app has begun to answer it."""
        self._dropping = True
        self._cancel_timer()
        self._cancel_body_timer()
        cycle = self.cycle
        if cycle is not None and (
            cycle.response_started if late_body else not cycle.response_complete
        ):
            # No answer of ours can go out in the middle of another (a pipelined head
            # behind a response still being sent) or after the app's own.
            self.transport.close()
            return
        headers = self.server_state.default_headers
        self.transport.write(http_response(status, code, message, headers))
        if linger and self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.abort)
        else:
            self.transport.close()


class GuardedHttpToolsProtocol(HeadGuard, HttpToolsProtocol):
    """uvicorn's httptools protocol (the default), guarded; httptools says where a head
    begins and ends through its callbacks."""

    _in_head = True
    _begun = False
    _in_body = False

    def _awaiting_head(self) -> bool:
        return self._in_head

    def _head_started(self) -> bool:
        return self._begun

    def _body_pending(self) -> bool:
        return self._in_body

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._timer is None:  # a pipelined request, behind one still being answered
            self._start_timer()

    def on_headers_complete(self) -> None:
        self._in_head = self._begun = False
        self._in_body = True
        self._head_done()
        before = self.cycle
        super().on_headers_complete()
        self._one_write(before)

    def on_message_complete(self) -> None:
        self._in_body = False
        self._cancel_body_timer()
        super().on_message_complete()
        self._in_head = True


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # what uvicorn writes before a body is read


class OneWrite:
    """A request's view of its connection: the response's head is held until the first
    write of its body, and both go out in one write. uvicorn writes them apart (with
    either parser), so every answer cost two sends and two TCP segments. A HEAD request
    is not given one; closing sends what is held first."""

    __slots__ = ("_transport", "_head")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None  # b"": held and sent already

    def write(self, data: bytes) -> None:
        head = self._head
        if head is None and data != CONTINUE:  # the first write but a 100: the head
            self._head = data
        elif head:
            self._head = b""
            self._transport.writelines((head, data))
        else:
            self._transport.write(data)

    def close(self) -> None:
        if self._head:
            self._transport.write(self._head)
            self._head = b""
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class GuardedH11Protocol(HeadGuard, H11Protocol):
    """uvicorn's h11 protocol, guarded; h11's state says whether a head is awaited."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Its own limit (uvicorn answers 400 past it) only backs ours up: pipelined
        # requests wait in its buffer while one is answered.
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=2 * self.max_header_bytes)

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()  # makes the request's cycle, if a whole head has come
        self._one_write(before)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _head_started(self) -> bool:
        return bool(self.conn.trailing_data[0])  # what h11 holds of a head it awaits

    def _body_pending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY


PARSERS: dict[str, type[HeadGuard]] = {
    "httptools": GuardedHttpToolsProtocol,
    "h11": GuardedH11Protocol,
}


def guarded_http(
    settings: Settings, sockets: Sockets, ws: type[asyncio.Protocol]
) -> type[HeadGuard]:
    """The HTTP protocol class (HTTP_PARSER), configured: uvicorn instantiates it per
    connection."""
    parser = PARSERS[settings.http_parser]
    released = type(ws.__name__, (ReleasedOnClose, ws), {"sockets": sockets})
    limits = {
        "sockets": sockets,
        "ws": released,
        "header_timeout": settings.header_timeout_seconds,
        "body_timeout": settings.body_timeout_seconds,
        "max_header_bytes": settings.max_header_bytes,
    }
    return type(parser.__name__, (parser,), limits)
