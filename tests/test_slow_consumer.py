"""A tab that stops reading: the other tabs of its cart still get every patch promptly, and
the server drops it soon after its socket stops taking data, not at the 40 s keepalive."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable

from tests.support import ServerProcess, Tab, rest

SEND_TIMEOUT = 1.0


def never_reading_tab(server: ServerProcess, signed: str) -> socket.socket:
    """A WebSocket client that sends its handshake and then reads nothing at all, with a
    receive buffer as small as the kernel allows so the server's side fills quickly."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)  # before connect: the window
    sock.connect(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /api/cart/ws?cart={signed} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    return sock


async def test_a_tab_that_stops_reading_is_dropped_without_slowing_the_others(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server(
        {"WS_SEND_TIMEOUT": str(SEND_TIMEOUT), "WS_SEND_BUFFER": "16384", "WS_SEND_QUEUE": "64"}
    ).start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    watchers = [await Tab.open(server, signed) for _ in range(2)]
    stuck = never_reading_tab(server, signed)
    driver = await Tab.open(server, signed, client_id="driver")
    for watcher in watchers:
        while (await watcher.next("presence"))["tabs"] < 4:
            pass  # both watchers, the stuck tab and the driver

    sent: dict[int, float] = {}
    latencies: list[float] = []
    dropped_after: float | None = None
    last: int | None = None  # the last version sent, once the driver is done
    began = time.monotonic()

    async def watch(tab: Tab) -> None:
        """Every patch, in order, up to the last one sent; a wrong one fails the test."""
        nonlocal dropped_after
        expected = 1
        while last is None or expected <= last:
            frame = await tab.next(timeout=20)
            if frame["type"] == "presence" and frame["tabs"] == 3 and last is None:
                dropped_after = dropped_after or time.monotonic() - began
            elif frame["type"] == "patch":
                assert frame["version"] == expected, (frame["version"], expected)
                latencies.append(time.monotonic() - sent[expected])
                expected += 1

    watching = [asyncio.create_task(watch(tab)) for tab in watchers]
    try:
        # One add at a time, each ~300 bytes to every tab, until the stuck one is gone
        # (or long past the point it should have been): bounded in count and time.
        for n in range(1, 20_001):
            product = f"p-{n % 100 + 1:03d}"
            sent[n] = time.monotonic()
            await driver.send({"type": "add", "id": f"a{n}", "product_id": product, "quantity": 1})
            assert (await driver.next("ack"))["version"] == n
            if dropped_after is not None and n > 50 or time.monotonic() - began > 20:
                break
            if any(task.done() for task in watching):
                break  # a watcher failed: its error is raised below
        last = n
        # A frame to each watcher after the last patch (the driver leaves: presence), so a
        # watcher that already has every patch sees `last` set and returns.
        await driver.close()
        async with asyncio.timeout(30):
            await asyncio.gather(*watching)  # a watcher's assertion fails the test here
    finally:
        for task in watching:
            task.cancel()
        stuck.close()

    assert dropped_after is not None, "the tab that reads nothing was never dropped"
    assert dropped_after < SEND_TIMEOUT + 6, dropped_after  # the keepalive would take 40 s
    assert "dropped a WebSocket peer" in server.log()
    latencies.sort()
    assert len(latencies) >= 2 * 300  # both watchers saw every patch of a real load
    p99 = latencies[int(len(latencies) * 0.99)]
    assert p99 < 0.25 and latencies[-1] < 1.0, (p99, latencies[-1])
    for tab in watchers:
        await tab.close()
