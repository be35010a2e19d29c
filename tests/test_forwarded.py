"""The client behind a trusted proxy, the proxied-request count per address, and the
process-wide socket count: pure logic and the ASGI middleware, without a server."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from server.forwarded import MEMO, ProxyHeaders, TrustedProxies, forwarded_client, forwarded_scheme
from server.limits import AddressCount
from server.sockets import Sockets, capacity


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", v.encode()) for v in values]


@pytest.mark.parametrize(
    ("values", "hops", "client"),
    [
        (["6.6.6.6, 203.0.113.9"], 1, "203.0.113.9"),
        (["203.0.113.9"], 1, "203.0.113.9"),
        (["6.6.6.6, 198.51.100.1, 203.0.113.9"], 2, "198.51.100.1"),
        (["6.6.6.6", "198.51.100.1, 203.0.113.9"], 2, "198.51.100.1"),  # several lines: one list
        (["203.0.113.9"], 3, "203.0.113.9"),  # fewer entries than hops: the outermost
        (["6.6.6.6, 203.0.113.9:4711"], 1, "203.0.113.9"),
        (["6.6.6.6, [2001:db8::1]:443"], 1, "2001:db8::1"),
        (["6.6.6.6, 2001:DB8:0::1"], 1, "2001:db8::1"),  # one spelling per address
        (["6.6.6.6, unknown"], 1, "10.0.0.2"),  # not an address: the peer
        (["6.6.6.6, "], 1, "6.6.6.6"),  # empty entries are skipped
        ([""], 1, "10.0.0.2"),
        ([], 1, "10.0.0.2"),
    ],
)
def test_the_client_is_the_entry_hops_from_the_right(
    values: list[str], hops: int, client: str
) -> None:
    assert forwarded_client("10.0.0.2", xff(*values), hops) == client


@pytest.mark.parametrize(
    ("values", "scheme"),
    [
        (["https"], "https"),
        (["HTTP"], "http"),
        (["wss"], "https"),
        (["http, https"], "https"),
        (["https, http"], "http"),  # the proxy nearest to us had it over http
        (["gopher"], None),
        ([], None),
    ],
)
def test_the_scheme_is_the_one_the_proxy_received(values: list[str], scheme: str | None) -> None:
    headers = [(b"x-forwarded-proto", v.encode()) for v in values]
    assert forwarded_scheme(headers, 1) == scheme


def test_trusted_proxies() -> None:
    trusted = TrustedProxies(["127.0.0.1", "10.1.0.0/16", "::1"])
    assert "127.0.0.1" in trusted and "10.1.200.3" in trusted and "::1" in trusted
    assert "10.2.0.1" not in trusted and "127.0.0.2" not in trusted
    assert "" not in trusted and None not in trusted and "localhost" not in trusted
    anyone = TrustedProxies(["*"])
    assert "192.0.2.77" in anyone and "2001:db8::5" in anyone


def test_trusted_proxies_answer_alike_from_memory_and_past_its_size() -> None:
    trusted = TrustedProxies(["10.1.0.0/16"])
    asked = [f"10.{n % 3}.0.{n % 250}" for n in range(MEMO * 2 + 7)]
    first = [a in trusted for a in asked]
    assert [a in trusted for a in asked] == first == [a.startswith("10.1.") for a in asked]


async def test_proxied_requests_count_per_forwarded_client() -> None:
    """Through a trusted proxy the TCP connection is the proxy's: each request counts
    against the client it forwards, while it runs, and one over the limit is refused."""
    release = asyncio.Event()
    seen: list[tuple[str, int]] = []
    entered: asyncio.Queue[None] = asyncio.Queue()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["client"])
        entered.put_nowait(None)
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    count = AddressCount(2)
    middleware = ProxyHeaders(app, TrustedProxies(["10.0.0.1"]), 1, count)
    sent: list[list[dict[str, Any]]] = []

    async def request(peer: str, forwarded: str) -> None:
        scope = {
            "type": "http",
            "client": (peer, 5000),
            "scheme": "http",
            "headers": xff(forwarded) + [(b"x-forwarded-proto", b"https")],
        }
        messages: list[dict[str, Any]] = []
        sent.append(messages)

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b""}

        await middleware(scope, receive, send)

    running = [asyncio.create_task(request("10.0.0.1", f"6.6.6.{n}, 203.0.113.9")) for n in (1, 2)]
    for _ in running:
        await entered.get()  # both are inside the app, waiting
    assert seen == [("203.0.113.9", 0), ("203.0.113.9", 0)]
    assert count.open == {"203.0.113.9": 2}
    await request("10.0.0.1", "203.0.113.9")  # a third from the same client: refused
    assert sent[2][0]["status"] == 429
    assert (b"retry-after", b"5") in sent[2][0]["headers"]
    assert b'"too_many_connections"' in sent[2][1]["body"]
    # Not a trusted peer: its header is ignored, and it is not counted here (the
    # connection layer counts it by its TCP address).
    direct = asyncio.create_task(request("192.0.2.5", "203.0.113.9"))
    await entered.get()
    assert seen[-1] == ("192.0.2.5", 5000) and count.open == {"203.0.113.9": 2}
    release.set()
    await asyncio.gather(*running, direct)
    assert count.open == {}
    assert [m[0]["status"] for m in sent] == [200, 200, 429, 200]


def fake_transport() -> asyncio.BaseTransport:
    class Fake:
        closed = False

        def close(self) -> None:
            self.closed = True

        def is_closing(self) -> bool:
            return self.closed

    return cast(asyncio.BaseTransport, Fake())


def test_at_capacity_the_oldest_waiting_connection_goes() -> None:
    sockets = Sockets(AddressCount(2), capacity=3, trusted=TrustedProxies(["10.0.0.1"]))
    a, b, c, d, e = (fake_transport() for _ in range(5))
    assert sockets.admit(a, "192.0.2.1") is None
    assert sockets.admit(b, "192.0.2.1") is None
    assert sockets.admit(c, "192.0.2.1") == 429
    assert sockets.admit(c, "10.0.0.1") is None  # a trusted proxy: not counted per address
    sockets.set_waiting(a, False)  # a is in a request: not closed to make room
    assert sockets.admit(d, "192.0.2.2") is None
    assert b.is_closing() and not a.is_closing() and b not in sockets.open
    assert sockets.per_address.open == {"192.0.2.1": 1, "192.0.2.2": 1}
    sockets.set_waiting(c, False)
    sockets.set_waiting(d, False)
    assert sockets.admit(e, "192.0.2.3") == 503  # none waiting: the new one is refused
    for transport in (a, c, d, a):  # released twice: counted once
        sockets.release(transport)
    assert sockets.open == {} and sockets.per_address.open == {}


def test_capacity_keeps_a_margin() -> None:
    assert capacity(20_000) == 20_000 - 128
    assert capacity(256) == 128
    assert capacity(100) == 50


async def test_a_proxied_websocket_over_the_limit_is_accepted_then_closed_1008() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app never sees it")

    count = AddressCount(1)
    count.take("203.0.113.9")  # the client holds its one socket already
    middleware = ProxyHeaders(app, TrustedProxies(["*"]), 1, count)
    scope = {
        "type": "websocket",
        "client": ("10.0.0.1", 5000),
        "scheme": "ws",
        "headers": xff("6.6.6.6, 203.0.113.9"),
        "subprotocols": ["cartsync", "cart-id.abc"],
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await middleware(scope, receive, send)
    # The subprotocol the browser offered is picked (else its handshake fails), never the
    # one carrying the cart id; then the protocol's close code and reason.
    assert sent[0] == {"type": "websocket.accept", "subprotocol": "cartsync", "headers": []}
    assert sent[1]["type"] == "websocket.close" and sent[1]["code"] == 1008
    assert sent[1]["reason"] == "too many connections from this address"
    assert count.open == {"203.0.113.9": 1}
