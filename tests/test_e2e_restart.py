"""Durability: what was acknowledged survives a restart and a kill -9, versions continue,
and tabs resume with ?since= from patches kept in the database."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Callable
from typing import Any

import httpx
import websockets

from server.store.carts import first_kept
from tests.support import ServerProcess, Tab, apply_patch, rest, same_items, sign


async def test_restart_keeps_every_acknowledged_change_and_resumes_tabs(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    tab = await Tab.open(server, signed, client_id="keeper")
    cart = (await tab.next("snapshot"))["cart"]
    for n in range(1, 6):
        await tab.send({"type": "add", "id": f"a{n}", "product_id": f"p-00{n}", "quantity": n})
        cart = apply_patch(cart, await tab.next("patch"))
        assert (await tab.next("ack"))["version"] == n
    seen_by_tab = cart
    await tab.close()
    async with rest(server, signed) as client:  # three more the tab does not see
        for n in range(3):
            response = await client.patch("/api/cart/items/p-001", json={"quantity": 10 + n})
            assert response.status_code == 200
        before = (await client.get("/api/cart")).json()
    server.stop()  # SIGTERM, as a platform sends it
    assert "Application shutdown complete" in server.log()

    server.start()
    async with rest(server, signed) as client:
        after = (await client.get("/api/cart")).json()
    assert after["version"] == before["version"] == 8
    assert same_items(after, before)
    assert [i["product_id"] for i in after["items"]] == [f"p-00{n}" for n in range(1, 6)]

    resumed = await Tab.open(server, signed, since=seen_by_tab["version"], client_id="keeper")
    patches = [await resumed.next() for _ in range(3)]
    assert [p["type"] for p in patches] == ["patch"] * 3  # from the database, not a snapshot
    for patch in patches:
        seen_by_tab = apply_patch(seen_by_tab, patch)
    assert same_items(seen_by_tab, after)

    # The message id applied before the restart is still known: acked again, not re-applied.
    await resumed.send({"type": "add", "id": "a1", "product_id": "p-001", "quantity": 1})
    assert (await resumed.next("ack"))["version"] == 1
    await resumed.send({"type": "add", "id": "a6", "product_id": "p-006", "quantity": 1})
    assert (await resumed.next("patch"))["version"] == 9  # versions continue
    await resumed.close()


class Acks:
    """Versions acknowledged per cart; `reached` is set once `target` acks came in."""

    def __init__(self) -> None:
        self.by_cart: dict[str, list[int]] = {}
        self.target = 0
        self.reached = asyncio.Event()

    def add(self, cart_id: str, version: int) -> None:
        self.by_cart[cart_id].append(version)
        if sum(map(len, self.by_cart.values())) >= self.target:
            self.reached.set()


async def _ws_load(server: ServerProcess, cart: tuple[str, str], acks: Acks) -> None:
    """Add one unit of p-001 at a time over a socket until the server dies; record acks."""
    try:
        tab = await Tab.open(server, cart[1])
        for n in range(100_000):
            await tab.send({"type": "add", "id": f"k{n}", "product_id": "p-001", "quantity": 1})
            acks.add(cart[0], (await tab.next("ack", timeout=5))["version"])
    except (ConnectionError, OSError, websockets.ConnectionClosed, TimeoutError):
        return


async def _rest_load(server: ServerProcess, cart: tuple[str, str], acks: Acks) -> None:
    try:
        async with rest(server, cart[1]) as client:
            for _ in range(100_000):
                response = await client.post("/api/cart/items", json={"product_id": "p-002"})
                if response.status_code != 200:
                    return
                acks.add(cart[0], response.json()["version"])
    except httpx.HTTPError:
        return


def _stored(server: ServerProcess, cart_id: str) -> tuple[int, dict[str, int], list[int]]:
    with sqlite3.connect(server.db) as db:
        (version,) = db.execute(
            "SELECT version FROM cart_sessions WHERE id = ?", (cart_id,)
        ).fetchone()
        lines = dict(
            db.execute(
                "SELECT product_id, quantity FROM cart_items WHERE cart_id = ?", (cart_id,)
            ).fetchall()
        )
        patches = [
            v
            for (v,) in db.execute(
                "SELECT version FROM cart_patches WHERE cart_id = ? ORDER BY version", (cart_id,)
            )
        ]
    return version, lines, patches


async def test_kill_9_under_load_loses_no_acknowledged_mutation(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server()
    rng = random.Random(9)
    carts: list[tuple[str, str]] = []
    acks = Acks()
    for _ in range(3):
        server.start()
        async with rest(server) as client:
            response = await client.get("/api/cart")
            carts.append((response.json()["id"], response.headers["x-cart-id"]))
        acks.by_cart[carts[-1][0]] = []
        acks.target = sum(map(len, acks.by_cart.values())) + rng.randint(40, 200)
        acks.reached.clear()
        tasks = [
            asyncio.create_task(load(server, cart, acks))
            for cart in carts
            for load in (_ws_load, _rest_load)
        ]
        await asyncio.wait_for(acks.reached.wait(), 30)
        server.kill()  # SIGKILL mid-load, while writes are in flight
        await asyncio.gather(*tasks)

        for cart_id, _ in carts:
            version, lines, patches = _stored(server, cart_id)
            versions = acks.by_cart[cart_id]
            assert len(set(versions)) == len(versions)  # no version acknowledged twice
            assert max(versions, default=0) <= version  # every ack is in the store
            # Nothing half-applied: each committed mutation added exactly one unit.
            assert sum(lines.values()) == version
            assert patches == list(range(first_kept(version, 100), version + 1))

    server.start()  # and the server comes back on the same file
    async with rest(server, carts[0][1]) as client:
        doc: dict[str, Any] = (await client.get("/api/cart")).json()
    assert doc["version"] == _stored(server, carts[0][0])[0]


async def test_sigterm_closes_tabs_with_1012_so_they_resume(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    tab = await Tab.open(server, None)
    cart = (await tab.next("snapshot"))["cart"]
    server.stop()  # SIGTERM
    assert await tab.closed() == 1012  # "service restart": reconnect with ?since=
    server.start()
    again = await Tab.open(server, sign(cart["id"]), since=cart["version"])
    assert (await again.next())["type"] == "presence"  # nothing missed, no snapshot needed
    await again.close()
