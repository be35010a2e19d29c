"""The connection layer against real servers on raw sockets: who the client is behind a
proxy (X-Forwarded-For), how long and how large a request head may be, how many sockets
one address may hold, and the descriptors kept free for new clients."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState

from server.config import Settings
from server.connections import CONTINUE, OneWrite, guarded_http
from server.forwarded import TrustedProxies
from server.limits import AddressCount
from server.sockets import Sockets
from tests.support import ServerProcess, Tab

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
# Closed by the server once answered: `answer` reads to the close, which keep-alive would
# put off by its 5 s.
HEALTHZ_ONCE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
HALF = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the blank line never comes
# Loopback only, but not a trusted proxy: each 127.0.0.x is a client of its own.
DIRECT = {"FORWARDED_ALLOW_IPS": "192.0.2.1"}
PARSERS = ["httptools", "h11"]


@pytest.fixture(scope="module", params=PARSERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """This module's shared server, once per HTTP parser: the limits hold whichever runs."""
    workdir = tmp_path_factory.mktemp(request.param)
    proc = ServerProcess(workdir, {"HTTP_PARSER": request.param}).start()
    yield proc
    proc.stop()


async def connect(server: ServerProcess, data: bytes = b"", source: str = "127.0.0.1") -> Conn:
    conn = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    if data:
        conn[1].write(data)
        await conn[1].drain()
    return conn


async def answer(conn: Conn, timeout: float = 15.0) -> tuple[int, bytes]:
    """Everything the server sends until it closes: (status, raw bytes); (0, b"") for a
    connection closed without a word."""
    try:
        async with asyncio.timeout(timeout):
            data = await conn[0].read()
    finally:
        conn[1].close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data


async def refused(conn: Conn) -> bool:
    """Closed without being served. The server answers 429 as it closes, but closes at
    once, before reading the request: the kernel may reset the connection instead."""
    try:
        status, raw = await answer(conn)
    except ConnectionResetError:
        return True
    return status == 0 or (status == 429 and b'"too_many_connections"' in raw)


async def first_response(conn: Conn) -> int:
    """The status of one response on a connection that stays open."""
    async with asyncio.timeout(15):
        line = await conn[0].readline()
    return int(line.split(b" ", 2)[1])


@contextlib.asynccontextmanager
async def held(conns: list[Conn]) -> AsyncIterator[list[Conn]]:
    try:
        yield conns
    finally:
        for _, writer in conns:
            writer.close()


async def opened(server: ServerProcess, forwarded: str | None = None) -> Tab:
    tab = await Tab.open(server, headers={"X-Forwarded-For": forwarded} if forwarded else None)
    first = await tab.next()
    assert first["type"] == "snapshot", first
    return tab


def spoof() -> str:
    return f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(256)}"


# Item: behind a trusted proxy, the client is the entry that proxy appended.


async def test_made_up_left_entries_do_not_buy_more_sockets(
    make_server: Callable[..., ServerProcess],
) -> None:
    # Any peer is a trusted proxy, as in the Procfile; it appended 203.0.113.9, and
    # everything left of it is the client's own invention.
    server = make_server({"MAX_CONNECTIONS_PER_IP": "100", "FORWARDED_ALLOW_IPS": "*"}).start()
    tabs = [await opened(server, f"{spoof()}, 203.0.113.9") for _ in range(100)]
    try:
        extra = await Tab.open(server, headers={"X-Forwarded-For": f"{spoof()}, 203.0.113.9"})
        assert await extra.closed() == 1008
        assert extra.close_reason == "too many connections from this address"
        # Another client behind the same proxy is not affected.
        other = await opened(server, "203.0.113.9, 203.0.113.10")
        await other.close()
    finally:
        for tab in tabs:
            await tab.close()


async def test_forwarded_hops_pick_the_entry_that_many_from_the_right(
    make_server: Callable[..., ServerProcess],
) -> None:
    # Two proxies: the outer one appended the client (198.51.100.1), the inner one (the
    # TCP peer) appended the outer one, whose address may vary.
    server = make_server({"MAX_CONNECTIONS_PER_IP": "2", "FORWARDED_HOPS": "2"}).start()
    first = await opened(server, f"{spoof()}, 198.51.100.1, {spoof()}")
    second = await opened(server, f"{spoof()}, 198.51.100.1, {spoof()}")
    third = await Tab.open(
        server, headers={"X-Forwarded-For": f"198.51.100.2, 198.51.100.1, {spoof()}"}
    )
    assert await third.closed() == 1008
    other = await opened(server, f"198.51.100.1, 198.51.100.2, {spoof()}")
    for tab in (first, second, other):
        await tab.close()


async def test_an_untrusted_peer_s_forwarded_headers_are_ignored(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({**DIRECT, "MAX_CONNECTIONS_PER_IP": "2"}).start()
    tabs = [await opened(server, f"{spoof()}, {spoof()}") for _ in range(2)]
    spoofed = await Tab.open(server, headers={"X-Forwarded-For": f"{spoof()}, {spoof()}"})
    assert await spoofed.closed() == 1008  # all three are 127.0.0.1's
    for tab in tabs:
        await tab.close()
    async with httpx.AsyncClient(base_url=server.url) as client:
        response = await client.get("/api/cart", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert "secure" not in response.headers["set-cookie"].lower()


# Item: request heads must arrive in time; every connection counts per address.


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_head_that_does_not_finish_in_time_is_answered_408_and_closed(
    make_server: Callable[..., ServerProcess], parser: str
) -> None:
    server = make_server({**DIRECT, "HEADER_TIMEOUT": "500ms", "HTTP_PARSER": parser}).start()
    half_line, half_head, silent = await asyncio.gather(
        connect(server, b"GET /heal"), connect(server, HALF), connect(server)
    )
    status, raw = await answer(half_line)
    assert status == 408 and b"connection: close" in raw and b'"request_timeout"' in raw
    assert (await answer(half_head))[0] == 408
    assert await answer(silent) == (0, b"")  # nothing asked, nothing answered: closed
    # On a kept-alive connection, the next head is due in time too.
    reader, writer = await connect(server, HEALTHZ)
    assert await first_response((reader, writer)) == 200
    writer.write(HALF)
    async with asyncio.timeout(15):
        rest = await reader.read()  # the first answer's headers and body, then the 408
    writer.close()
    assert rest.count(b"HTTP/1.1 ") == 1 and b"HTTP/1.1 408 Request Timeout" in rest
    # A request whose head came in time may take longer than that (a long-poll).
    async with httpx.AsyncClient(base_url=server.url) as client:
        cart = await client.get("/api/cart")
        poll = await client.get(
            "/api/cart/changes",
            params={"since": 0, "wait": 1},
            headers={"X-Cart-Id": cart.headers["x-cart-id"]},
        )
    assert poll.status_code == 200
    # So may a WebSocket.
    tab = await Tab.open(server)
    assert (await tab.next())["type"] == "snapshot"
    async with httpx.AsyncClient(base_url=server.url) as client:
        await client.get("/api/cart/changes", params={"since": 0, "wait": 1})
    await tab.send({"type": "ping"})
    assert (await tab.next("pong"))["type"] == "pong"
    await tab.close()


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_body_that_does_not_finish_in_time_is_answered_408_and_applies_nothing(
    make_server: Callable[..., ServerProcess], parser: str
) -> None:
    server = make_server({**DIRECT, "BODY_TIMEOUT": "500ms", "HTTP_PARSER": parser}).start()
    async with httpx.AsyncClient(base_url=server.url) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"].encode()
    body = b'{"product_id": "p-001", "quantity": 1}'
    head = b"POST /api/cart/items HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Cart-Id: " + signed
    head += b"\r\nContent-Type: application/json\r\nContent-Length: "
    # The head is complete; of the body only the first byte ever comes.
    status, raw = await answer(await connect(server, head + b"%d\r\n\r\n{" % len(body)))
    assert status == 408 and b'"request_timeout"' in raw and b"body" in raw
    # A body that came in time is answered, and so is a long-poll behind it on the same
    # connection that outlasts the body's deadline: its timer stopped with the body.
    poll = b"GET /api/cart/changes?since=1&wait=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    poll += b"X-Cart-Id: " + signed + b"\r\nConnection: close\r\n\r\n"
    _, raw = await answer(await connect(server, head + b"%d\r\n\r\n" % len(body) + body + poll))
    assert raw.count(b"HTTP/1.1 201 ") + raw.count(b"HTTP/1.1 200 ") == 2, raw
    assert b"408" not in raw.split(b"\r\n")[0]
    async with httpx.AsyncClient(base_url=server.url) as client:
        cart = (await client.get("/api/cart", headers={"X-Cart-Id": signed.decode()})).json()
    assert cart["version"] == 1 and [x["quantity"] for x in cart["items"]] == [1]


@pytest.mark.parametrize("parser", PARSERS)
async def test_a_stalled_pipelined_head_never_cuts_into_a_response(
    make_server: Callable[..., ServerProcess], parser: str
) -> None:
    server = make_server({**DIRECT, "HEADER_TIMEOUT": "500ms", "HTTP_PARSER": parser}).start()
    async with httpx.AsyncClient(base_url=server.url) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"].encode()
    poll = b"GET /api/cart/changes?since=0&wait=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    poll += b"X-Cart-Id: " + signed + b"\r\n\r\n"
    # A long-poll, and behind it the start of a request that never finishes.
    _, raw = await answer(await connect(server, poll + HALF))
    # Closed before the long-poll answered (httptools times the pipelined head at once),
    # or its whole answer and then the 408 (h11 reads the next head only then): never an
    # answer of the guard's in the middle of another response.
    if raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert rest[length:].startswith(b"HTTP/1.1 408 Request Timeout")


@pytest.mark.parametrize("parser", PARSERS)
async def test_half_open_connections_count_per_address(
    make_server: Callable[..., ServerProcess], parser: str
) -> None:
    limits = {"MAX_CONNECTIONS_PER_IP": "5", "MAX_SOCKETS_PER_IP": "10", "HEADER_TIMEOUT": "60s"}
    limits["HTTP_PARSER"] = parser
    server = make_server({**DIRECT, **limits}).start()
    async with held([await connect(server, HALF[:30]) for _ in range(10)]) as half_open:
        assert await refused(await connect(server, HEALTHZ_ONCE))
        # Another address is served meanwhile.
        status, raw = await answer(await connect(server, HEALTHZ_ONCE, source="127.0.0.2"))
        assert status == 200 and raw.endswith(b'{"status":"ok"}')
        # The held ones were not broken: one finishes its request.
        reader, writer = half_open[0]
        writer.write(HALF[30:] + b"\r\n")
        assert await first_response((reader, writer)) == 200
        writer.close()
        # One closed: room for one more from 127.0.0.1 (once the server has seen it go).
        async with asyncio.timeout(10):
            while await refused(await connect(server, HEALTHZ_ONCE)):
                pass


async def test_at_the_descriptor_limit_the_oldest_idle_connection_makes_room(
    tmp_path: Path,
) -> None:
    # 256 descriptors: 128 kept back for the server itself, 128 for clients.
    server = ServerProcess(tmp_path, {"HEADER_TIMEOUT": "60s"}, open_files=256).start()
    try:
        sources = [f"127.0.0.{2 + n % 50}" for n in range(160)]
        async with held([await connect(server, HALF[:30], s) for s in sources]) as half_open:
            status, _ = await answer(await connect(server, HEALTHZ_ONCE, "127.0.1.1"))
            assert status == 200  # a new client is served
            # The 33 oldest made room (160 + 1 - 128), oldest first; the newest still work.
            for conn in half_open[:33]:
                assert await answer(conn) == (0, b"")
            for reader, writer in half_open[-40:]:
                writer.write(HALF[30:] + b"\r\n")
                assert await first_response((reader, writer)) == 200
        assert "Too many open files" not in server.log()
    finally:
        server.stop()


# Item: request line plus headers over MAX_HEADER_BYTES: 431, closed at once.


def head(pad: int, method: bytes = b"GET", path: bytes = b"/healthz") -> bytes:
    return b"%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: %s\r\n" % (method, path, b"a" * pad)


async def test_headers_over_the_limit_are_answered_431_and_closed(
    server: ServerProcess,
) -> None:
    status, raw = await answer(await connect(server, head(40 * 1024) + b"\r\n"))
    assert status == 431 and b"connection: close" in raw and b'"headers_too_large"' in raw
    # Under the limit, also when two requests on one connection are over it together.
    reader, writer = await connect(server, head(20 * 1024) + b"\r\n" + head(20 * 1024) + b"\r\n")
    assert await first_response((reader, writer)) == 200
    async with asyncio.timeout(10):
        assert b"HTTP/1.1 200 OK" in await reader.readuntil(b"HTTP/1.1 200 OK")
    writer.close()


async def test_a_body_does_not_count_as_headers(server: ServerProcess) -> None:
    body = b'{"product_id": "p-001"}' + b" " * 12_000
    request = head(31 * 1024, b"POST", b"/api/cart/items")
    request += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    status, raw = await answer(
        await connect(server, request.replace(b"HTTP/1.1", b"HTTP/1.0") + body)
    )
    assert status == 200, raw[:300]


async def test_a_large_header_is_refused_without_stalling_others(server: ServerProcess) -> None:
    big = head(2 * 1024 * 1024) + b"\r\n"
    conn = await connect(server)
    conn[1].write(big)  # sent as fast as the server takes it; not awaited yet
    async with httpx.AsyncClient(base_url=server.url) as client:
        health = await client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    status, raw = await answer(conn)
    assert status == 431 and b'"headers_too_large"' in raw


async def test_a_websocket_with_large_headers_under_the_limit_opens(server: ServerProcess) -> None:
    # (websockets itself refuses any one line over 8 KiB)
    pads = {f"X-Pad-{n}": "a" * 6 * 1024 for n in range(4)}
    tab = await Tab.open(server, headers=pads)
    assert (await tab.next())["type"] == "snapshot"
    await tab.close()


async def test_a_websocket_counts_as_a_socket_until_it_closes(
    make_server: Callable[..., ServerProcess],
) -> None:
    # After the upgrade the connection is the WebSocket protocol's; it gives the count back.
    limits = {"MAX_CONNECTIONS_PER_IP": "2", "MAX_SOCKETS_PER_IP": "2", "HEADER_TIMEOUT": "1s"}
    server = make_server({**DIRECT, **limits}).start()
    tabs = [await opened(server) for _ in range(2)]
    # Both sockets of 127.0.0.1 are WebSockets: a new one is refused, and the open tabs
    # outlive the header timeout (a long-poll from elsewhere waits it out).
    assert await refused(await connect(server, HEALTHZ_ONCE))
    elsewhere = httpx.AsyncHTTPTransport(local_address="127.0.0.3")
    async with httpx.AsyncClient(base_url=server.url, transport=elsewhere) as other:
        signed = (await other.get("/api/cart")).headers["x-cart-id"]
        params = {"since": 0, "wait": 1.5}  # nothing changes: it waits it out
        poll = await other.get("/api/cart/changes", params=params, headers={"X-Cart-Id": signed})
    assert poll.status_code == 200
    for tab in tabs:
        await tab.send({"type": "ping"})
        assert (await tab.next("pong"))["type"] == "pong"
        await tab.close()
    async with asyncio.timeout(10):
        while await refused(await connect(server, HEALTHZ_ONCE)):
            pass


# Item: an answer leaves in one write, its head and body together.


class Recording:
    """A transport that keeps what is written to it, one entry per write that sends
    something (h11 ends each answer with an empty one)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        if data:
            self.writes.append(bytes(data))

    def writelines(self, pieces: tuple[bytes, ...]) -> None:
        self.write(b"".join(pieces))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_one_write_holds_the_head_for_the_body_and_passes_the_rest() -> None:
    sent = Recording()
    conn = OneWrite(sent)  # type: ignore[arg-type]
    conn.write(CONTINUE)  # before the body is read: out at once
    conn.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
    assert sent.writes == [CONTINUE]
    conn.write(b"body")
    conn.write(b"more")  # a streamed answer's later chunks: each as it comes
    assert sent.writes == [CONTINUE, b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nbody", b"more"]
    conn.close()
    assert sent.closed and len(sent.writes) == 3


def test_one_write_sends_a_head_held_when_the_answer_ends_by_closing() -> None:
    sent = Recording()
    conn = OneWrite(sent)  # type: ignore[arg-type]
    conn.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    assert not conn.is_closing()
    conn.close()  # the app failed after starting its answer: the head, then closed
    assert sent.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    assert sent.closed and conn.is_closing()


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(
    ("request_head", "writes"),
    [
        # the head and the body in one write
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}", 1),
        # 100 Continue first, as the client waits for it to send the body
        (b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n", 2),
        # a HEAD answer writes no body: its head is not held
        (b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n", 1),
    ],
)
async def test_uvicorn_answers_through_one_write(
    parser: str, request_head: bytes, writes: int
) -> None:
    """The guarded protocol of each parser, in this process on a real socket, with a
    transport that counts the writes of each answer."""
    answered = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "POST":
            await receive()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"15")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
        answered.set()

    settings = Settings.from_env({"CART_SECRET": "x", "HTTP_PARSER": parser})
    sockets = Sockets(AddressCount(10), capacity=10, trusted=TrustedProxies([]))
    protocol_class = guarded_http(settings, sockets, WebSocketsSansIOProtocol)
    config = uvicorn.Config(app, lifespan="off", log_level="warning")
    config.load()
    protocol = protocol_class(config, ServerState(), {})  # type: ignore[call-arg]
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, ours)
    sent = Recording()
    transport.write = sent.write  # type: ignore[method-assign]
    try:
        protocol.data_received(request_head)
        if b"100-continue" in request_head:
            await asyncio.sleep(0)  # the app asks for the body: uvicorn says continue
            assert sent.writes == [CONTINUE]
            protocol.data_received(b"{}")
        async with asyncio.timeout(5):
            await answered.wait()
    finally:
        transport.abort()
        theirs.close()
    assert len(sent.writes) == writes, sent.writes
    answer = sent.writes[-1]
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n" if request_head.startswith(b"HEAD") else b'{"status":"ok"}')
