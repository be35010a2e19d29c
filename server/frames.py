"""The frame path: every server message is encoded once and framed once, and the same
bytes are written straight to each tab's socket; a tab's frames of one loop turn (a
patch and its author's ack, say) leave in one write. Only a socket that pushes back
holds frames here, up to a limit: past it the tab is closed with 1013.

Incoming text messages take the same shortcut: the Sink hands each to a reader as it is
parsed (ws.py's), with no ASGI queue and no task switch between them.

The rest of the server sees a Tab (send, write, close) and never a transport; the
serving layer gives each WebSocket a Sink (serving.StallGuardedProtocol is one)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol

from .errors import CLOSE_TRY_AGAIN_LATER, REASON_FOR_CLOSE

# The ASGI scope extension under which the serving layer offers a connection's Sink.
EXTENSION = "cartsync.frames"
_TEXT = 0x81  # FIN + text opcode; frames from a server are never masked (RFC 6455 5.1)


def text_frame(payload: bytes) -> bytes:
    """One complete WebSocket text frame carrying `payload` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        return bytes((_TEXT, n)) + payload
    if n < 1 << 16:
        return bytes((_TEXT, 126)) + n.to_bytes(2, "big") + payload
    return bytes((_TEXT, 127)) + n.to_bytes(8, "big") + payload


class Sink(Protocol):
    """One WebSocket connection, as the serving layer lets a Tab write to it."""

    def write_frames(self, data: bytes) -> None:
        """Hand complete frames to the socket (dropped once the connection is closing)."""

    def pushing_back(self) -> bool:
        """True while the socket's buffer is over its high-water mark."""

    def close_with(self, code: int, reason: str) -> None:
        """Send the close frame now; the endpoint's next receive is the disconnect."""

    def listen(self, tab: Tab | None) -> None:
        """Tell `tab` when the socket drains (tab.drained) or is lost (tab.lost)."""

    def read_with(self, reader: Callable[[str], None] | None) -> None:
        """Hand each text message to `reader` as it arrives, in order, instead of to the
        endpoint's receive, which still gets binary messages and the disconnect."""

    def hold_reading(self, held: bool) -> None:
        """Read nothing more from the socket (held), or read it again."""


class Tab:
    """One open WebSocket of a cart. Frames are written at the end of the loop turn they
    were sent in; while the socket pushes back they wait here, at most `limit` of them."""

    __slots__ = (
        "client_id",
        "limit",
        "close_code",
        "_sink",
        "_out",
        "_due",
        "_end",
        "_open",
        "_gone",
    )

    def __init__(self, client_id: str, limit: int, sink: Sink) -> None:
        self.client_id = client_id
        self.limit = limit
        self.close_code: int | None = None  # a close this server asked for
        self._sink = sink
        self._out: list[bytes] | None = None  # frames not written yet
        self._due = False  # a write is scheduled for the end of this loop turn
        self._end: tuple[int, str] | None = None  # a close frame waiting behind _out
        self._open = True  # the connection takes frames from this tab
        self._gone: asyncio.Future[None] | None = None  # made only if closed() waits
        sink.listen(self)

    def send(self, payload: bytes) -> None:
        """Send one message to this tab alone."""
        self.write(text_frame(payload))

    def write(self, frame: bytes) -> None:
        """Queue one framed message (the same bytes may go to many tabs)."""
        if self._hold(frame):
            asyncio.get_running_loop().call_soon(self._flush)

    def _hold(self, frame: bytes) -> bool:
        """Keep `frame` for the write at the end of this loop turn; True if that write is
        still to be scheduled."""
        if self.close_code is not None or not self._open:
            return False
        out = self._out
        if out is None:
            out = self._out = []
        elif len(out) >= self.limit:
            # Too slow to keep up: drop what it has not read; it reconnects with ?since=.
            self.close(CLOSE_TRY_AGAIN_LATER)
            return False
        out.append(frame)
        if self._due:
            return False
        self._due = True
        return True

    def close(self, code: int, *, flush: bool = False) -> None:
        """Close the socket with `code`: now, dropping what is not written yet, or (flush)
        after the frames sent so far."""
        if self.close_code is not None:
            return
        self.close_code = code
        if not flush:
            self._out = None
        self._end = (code, REASON_FOR_CLOSE.get(code, ""))
        self._flush()

    def _flush(self) -> None:
        self._due = False
        if not self._open or self._sink.pushing_back():
            return  # gone, or drained() writes them
        out, self._out = self._out, None
        if out:
            self._sink.write_frames(out[0] if len(out) == 1 else b"".join(out))
        if self._end is not None:
            self._sink.close_with(*self._end)
            self._finished()

    def drained(self) -> None:
        """The socket took what it held: write what waited here."""
        if self._out or self._end is not None:
            self._flush()

    def lost(self) -> None:
        """The connection is gone: nothing more is written."""
        self._finished()

    def _finished(self) -> None:
        self._out = self._end = None
        self._sink.listen(None)  # no reference cycle between the connection and its tab
        self._open = False
        if self._gone is not None and not self._gone.done():
            self._gone.set_result(None)

    async def closed(self) -> None:
        """Return once the close frame is written or the connection is gone."""
        if not self._open:
            return
        if self._gone is None:
            self._gone = asyncio.get_running_loop().create_future()
        await self._gone


def broadcast(tabs: Iterable[Tab], payload: bytes) -> None:
    """One message to many tabs: framed once, the same bytes written to each, by one
    callback at the end of the loop turn for all of them."""
    frame = text_frame(payload)
    due = [tab for tab in tabs if tab._hold(frame)]
    if due:
        asyncio.get_running_loop().call_soon(_flush, due)


def _flush(tabs: list[Tab]) -> None:
    for tab in tabs:
        tab._flush()
