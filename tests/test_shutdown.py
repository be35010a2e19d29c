"""SIGTERM, as a platform sends it before it stops a dyno: stop accepting, answer long-polls,
finish the mutations in flight and flush their acks, close tabs with 1012, exit within 10 s."""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from bench.crash import Ledger, new_cart, start_load, verify
from bench.harness import LocalServer
from tests.support import ServerProcess, Tab, rest

EXIT_WITHIN = 10.0  # what a platform allows between SIGTERM and SIGKILL


async def gauge(server: ServerProcess, name: str) -> float:
    async with rest(server) as client:
        text = (await client.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_sigterm_answers_open_long_polls_at_once(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    async with rest(server, signed) as client:
        polls = [
            asyncio.create_task(client.get("/api/cart/changes", params={"since": 0, "wait": 25}))
            for _ in range(3)
        ]
        async with asyncio.timeout(10):
            while await gauge(server, "cart_long_lived_connections") < 3:
                await asyncio.sleep(0.02)  # the polls are parked once the gauge counts them
        began = time.monotonic()
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        responses = await asyncio.gather(*polls)
        answered = time.monotonic() - began
        code = await stopping
        exited = time.monotonic() - began
    for response in responses:
        assert response.status_code == 200
        assert response.json() == {"version": 0, "patches": []}  # nothing new: poll again
    assert answered < 2.0, answered  # not the 25 s they asked for, nor the 10 s budget
    assert exited < 5.0, exited
    assert code == -signal.SIGTERM  # uvicorn re-raises the signal once it has shut down
    assert "Application shutdown complete" in server.log()
    assert "timeout graceful shutdown exceeded" not in server.log()


async def test_a_mutation_in_flight_at_sigterm_is_committed_and_acknowledged_before_1012(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    tab = await Tab.open(server, signed)
    await tab.next("snapshot")
    # Hold the database's write lock: the server's commit waits (busy_timeout), so the
    # mutation is surely in flight when the signal lands.
    blocker = sqlite3.connect(server.db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        await tab.send({"type": "add", "id": "late", "product_id": "p-001", "quantity": 2})
        async with asyncio.timeout(10):
            while await gauge(server, "cart_store_writes_pending") < 1:
                await asyncio.sleep(0.02)
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            while "draining" not in server.log():
                await asyncio.sleep(0.02)
    finally:
        blocker.close()  # the commit goes through now, during the shutdown
    assert await tab.next("ack") == {"type": "ack", "id": "late", "version": 1}
    assert await tab.closed() == 1012
    assert await stopping == -signal.SIGTERM
    with sqlite3.connect(server.db) as db:
        assert db.execute("SELECT product_id, quantity FROM cart_items").fetchall() == [
            ("p-001", 2)
        ]


async def test_sigterm_under_load_acknowledges_exactly_what_it_stored(tmp_path: Path) -> None:
    server = LocalServer(workdir=tmp_path).start()
    ledger = Ledger()
    carts = dict([await new_cart(server.url) for _ in range(3)])
    ledger.expect(150)
    tasks = start_load(server.url, carts, ledger, random.Random(12), "t")
    await asyncio.wait_for(ledger.reached.wait(), 30)
    began = time.monotonic()
    # SIGTERM while six tabs and three REST clients write.
    code = await asyncio.to_thread(server.stop)
    took = time.monotonic() - began
    await asyncio.wait_for(asyncio.gather(*tasks), 30)

    assert code == -signal.SIGTERM
    assert took < EXIT_WITHIN, took
    log = "".join(server.lines)
    assert "Application shutdown complete" in log
    assert "timeout graceful shutdown exceeded" not in log
    assert ledger.closes == [1012] * 6  # every tab told to reconnect elsewhere
    unacknowledged = 0
    for cart in carts:
        found = verify(tmp_path / "bench.db", ledger, cart)  # every ack stored, nothing half-done
        unacknowledged += found["applied_unacked"]
    # The mutations in flight were finished and answered before the sockets closed.
    assert unacknowledged == 0
