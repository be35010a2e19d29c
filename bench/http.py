"""Just enough HTTP/1.1 for a load generator: one keep-alive connection, Content-Length
bodies. A full client (httpx) costs more CPU per request than the server under test, on
the same two cores."""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit


class HttpError(Exception):
    """The server answered with something this small client does not read."""


class Conn:
    def __init__(self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.host = host
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Conn:
        parts = urlsplit(url)
        secure = parts.scheme == "https"
        port = parts.port or (443 if secure else 80)
        assert parts.hostname is not None, url
        reader, writer = await asyncio.open_connection(
            parts.hostname, port, ssl=ssl.create_default_context() if secure else None
        )
        return cls(parts.netloc, reader, writer)

    async def request(
        self, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body)."""
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PATCH", "PUT"):
            lines.append(f"content-length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        found: dict[str, str] = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                found[name.strip().lower()] = value.strip()
        if "content-length" not in found:
            raise HttpError(f"{method} {path}: no Content-Length in the answer ({status})")
        return status, found, await self.reader.readexactly(int(found["content-length"]))

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


async def open_carts(url: str, count: int, concurrency: int = 16) -> list[str]:
    """`count` new carts: their signed ids as the server issues them (X-Cart-Id)."""
    signed: list[str] = []
    if count <= 0:
        return signed

    async def worker(share: int) -> None:
        conn = await Conn.open(url)
        try:
            for _ in range(share):
                status, headers, _ = await conn.request("GET", "/api/cart")
                if status != 200:
                    raise HttpError(f"GET /api/cart answered {status}")
                signed.append(headers["x-cart-id"])
        finally:
            await conn.close()

    workers = min(concurrency, count)
    shares = [count // workers + (1 if n < count % workers else 0) for n in range(workers)]
    await asyncio.gather(*(worker(share) for share in shares))
    return signed


async def metric_samples(url: str) -> dict[str, float] | None:
    """Every sample the server's /metrics shows, by its name and labels as written there
    (`name{label="value"}`), or None if it has no /metrics (the floor)."""
    conn = await Conn.open(url)
    try:
        status, _, body = await conn.request("GET", "/metrics")
    finally:
        await conn.close()
    if status != 200:
        return None
    samples: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples
