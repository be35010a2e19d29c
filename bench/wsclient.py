"""Just enough of a WebSocket client (RFC 6455) for a load generator: the upgrade, masked
text frames out, whole text frames in, pong, close. Frames are handed to a callback as they
are parsed, with no task or queue per socket: on two shared cores, a full client library
costs the generator more CPU per frame than the server spends, and its queues add their
own delay to every latency measured."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl
import struct
from collections.abc import Callable
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A zero mask key: masking is then a no-op, and the frame is still valid for any server.
_MASK = b"\x00\x00\x00\x00"
TEXT, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x8, 0x9, 0xA, 0x0


class HandshakeError(Exception):
    """The server did not switch protocols."""


def _frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + _MASK + payload


class WsClient(asyncio.Protocol):
    def __init__(self, request: bytes, key: bytes, on_text: Callable[[bytes], None]) -> None:
        self.request = request
        self.accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.fragments: list[bytes] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.close_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass of it
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            del self.buffer[: end + 4]
            status = head.split("\r\n", 1)[0]
            if " 101 " not in status + " " or self.accept.decode() not in head:
                self.opened.set_exception(HandshakeError(status))
                assert self.transport is not None
                self.transport.close()
                return
            self.upgraded = True
            self.opened.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf = self.buffer
        at = 0
        while len(buf) - at >= 2:
            b0, b1 = buf[at], buf[at + 1]
            size, start = b1 & 0x7F, at + 2
            if size == 126:
                if len(buf) - at < 4:
                    break
                size, start = (buf[at + 2] << 8) | buf[at + 3], at + 4
            elif size == 127:
                if len(buf) - at < 10:
                    break
                size, start = struct.unpack_from("!Q", buf, at + 2)[0], at + 10
            if b1 & 0x80:  # a server never masks; skip the key if one does
                start += 4
            end = start + size
            if end > len(buf):
                break
            payload = bytes(buf[start:end])
            at = end
            opcode = b0 & 0x0F
            if opcode in (TEXT, CONTINUATION):
                if not b0 & 0x80:
                    self.fragments.append(payload)
                    continue
                if self.fragments:
                    payload = b"".join([*self.fragments, payload])
                    self.fragments.clear()
                self.on_text(payload)
            elif opcode == PING:
                self._write(PONG, payload)
            elif opcode == CLOSE:
                self._write(CLOSE, payload[:2])
                assert self.transport is not None
                self.transport.close()
        if at:
            del buf[:at]

    def _write(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing() or self.close_sent:
            return
        if opcode == CLOSE:
            self.close_sent = True
        self.transport.write(_frame(opcode, payload))

    def send(self, text: bytes) -> bool:
        """Queue one text frame; False if the socket is closing."""
        if self.transport is None or self.transport.is_closing() or self.close_sent:
            return False
        self.transport.write(_frame(TEXT, text))
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """The closing handshake, bounded: the socket is dropped after `timeout`."""
        self._write(CLOSE, struct.pack("!H", 1000))
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        except TimeoutError:
            pass
        if self.transport is not None:
            self.transport.close()


async def connect(url: str, on_text: Callable[[bytes], None], timeout: float = 30.0) -> WsClient:
    """Open a WebSocket to `url` (ws://, wss://, or http(s):// of the same host and path)."""
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    host = parts.hostname
    assert host is not None, url
    port = parts.port or (443 if secure else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if secure else None
    async with asyncio.timeout(timeout):
        _, client = await loop.create_connection(
            lambda: WsClient(request, key, on_text), host, port, ssl=context
        )
        await client.opened
    return client
