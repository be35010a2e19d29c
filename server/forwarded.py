"""Who the client is behind a trusted proxy: the address and scheme that proxy appended.

A proxy appends the address it received the request from to `X-Forwarded-For`; whatever
stands left of that was written by the client (or by proxies further out) and proves
nothing. So the client is the entry `hops` from the right, where `hops` is the number of
proxies in front of this server (FORWARDED_HOPS), and only when the TCP peer is one of them
(FORWARDED_ALLOW_IPS). uvicorn's own middleware takes the leftmost entry under `'*'`,
which lets every request pick its own address; this one replaces it."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import msgspec
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from . import errors
from .limits import AddressCount
from .ws import SUBPROTOCOL

MEMO = 1024  # peers whose trust is remembered; the memo starts over when full

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The peers whose `X-Forwarded-*` headers are believed: FORWARDED_ALLOW_IPS, checked
    by config."""

    def __init__(self, entries: Iterable[str]) -> None:
        entries = tuple(entries)
        self.everyone = "*" in entries
        self.networks: list[Network] = [
            ipaddress.ip_network(e, strict=False) for e in entries if e != "*"
        ]
        self._known: dict[str | None, bool] = {}

    def __contains__(self, host: str | None) -> bool:
        if self.everyone:
            return True
        # Asked on every request, nearly always of the same few peers (the proxies):
        # an address is parsed and matched once, while the answers fit in the memo.
        known = self._known.get(host)
        if known is None:
            address = _ip(host or "")
            known = address is not None and any(address in net for net in self.networks)
            if len(self._known) >= MEMO:
                self._known.clear()
            self._known[host] = known
        return known


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _host(entry: str) -> str | None:
    """'203.0.113.9', '203.0.113.9:4711', '[2001:db8::1]:443' or '2001:db8::1' -> the
    address in its normal form; anything else -> None."""
    entry = entry.strip()
    if entry.startswith("["):
        entry = entry[1:].partition("]")[0]
    elif entry.count(":") == 1:
        entry = entry.partition(":")[0]
    address = _ip(entry)
    return None if address is None else str(address)


def _pick(values: list[bytes], hops: int) -> str:
    """The entry `hops` from the right of all these comma-separated header lines (the
    leftmost when there are fewer)."""
    entries = [e for e in b",".join(values).decode("latin-1").split(",") if e.strip()]
    return entries[-min(hops, len(entries))] if entries else ""


def forwarded_client(peer: str, headers: Iterable[tuple[bytes, bytes]], hops: int) -> str:
    """The client address a trusted proxy `peer` reports; the peer itself when it reports
    none, or something that is not an address."""
    values = [value for name, value in headers if name == b"x-forwarded-for"]
    return (_host(_pick(values, hops)) if values else None) or peer


def forwarded_scheme(headers: Iterable[tuple[bytes, bytes]], hops: int) -> str | None:
    """'http' or 'https' as the proxy `hops` from here received the request; None if unsaid."""
    values = [value for name, value in headers if name == b"x-forwarded-proto"]
    scheme = _pick(values, hops).strip().lower() if values else ""
    return {"http": "http", "ws": "http", "https": "https", "wss": "https"}.get(scheme)


class ProxyHeaders:
    """ASGI middleware: for requests from a trusted proxy, the scope's client and scheme
    become those the proxy reports, and each request in flight (WebSockets for their
    lifetime) counts against that client's connections (the TCP connection itself is the
    proxy's, and not counted per address)."""

    def __init__(
        self, app: ASGIApp, trusted: TrustedProxies, hops: int, sockets: AddressCount
    ) -> None:
        self.app = app
        self.trusted = trusted
        self.hops = hops
        self.sockets = sockets

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if scope["type"] not in ("http", "websocket") or not peer or peer[0] not in self.trusted:
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        client = forwarded_client(peer[0], headers, self.hops)
        scope["client"] = (client, 0)  # the proxy's own port says nothing about the client
        scheme = forwarded_scheme(headers, self.hops)
        if scheme is not None:
            scope["scheme"] = scheme if scope["type"] == "http" else scheme.replace("http", "ws")
        if not self.sockets.take(client):
            return await _refuse(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            self.sockets.give(client)


async def _refuse(scope: Scope, receive: Receive, send: Send) -> None:
    refusal = errors.TooManyConnections("too many connections from this address")
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        # Accepted, then closed, as the app does: the client sees the code and the reason
        # (a browser that offered subprotocols fails a handshake that picks none).
        offered = scope.get("subprotocols") or []
        chosen = SUBPROTOCOL if SUBPROTOCOL in offered else None
        await send({"type": "websocket.accept", "subprotocol": chosen, "headers": []})
        code = errors.CLOSE_POLICY_VIOLATION
        await send({"type": "websocket.close", "code": code, "reason": refusal.message})
        return
    body = msgspec.json.encode(refusal.body())
    headers = {**refusal.headers(), "connection": "close"}
    await Response(body, refusal.status, headers, "application/json")(scope, receive, send)
