"""Writes in flight (server/pipeline.py): a cart's next mutation is applied on top of the
ones being committed and joins their group commit, yet tabs and callers only ever hear
of stored writes, in version order."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import Any

import pytest

from server import errors
from server.cart import AddItem
from server.store import CartWrite, carts
from server.store import sqlite as sqlite_store
from server.store.sql import Plan
from server.store.sqlite import SQLiteStore
from tests.test_room import Tab, frames, make_hub

__all__ = ["make_hub"]  # the fixture, shared with test_room

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def counter(store: SQLiteStore, name: str) -> float:
    return store._metrics.value(name)


@SQLITE
async def test_a_carts_writes_in_flight_share_group_commits(make_hub: Any) -> None:
    hub = await make_hub()
    tab = Tab("t", limit=1000)
    async with hub.use("burst") as room:
        room.join(tab, None)
        outcomes = await asyncio.gather(
            *(room.submit(AddItem("p-1", 1), key=f"k{n}") for n in range(50))
        )
    assert sorted(o.version for o in outcomes) == list(range(1, 51))
    # One cart, so only writes in flight together can have shared a transaction.
    store = hub.store
    assert isinstance(store, SQLiteStore)
    assert counter(store, "cart_commit_batches_total") < counter(store, "cart_commit_writes_total")
    patches = [f["version"] for f in await frames(tab) if f["type"] == "patch"]
    assert patches == list(range(1, 51))
    stored = await store.load_cart("burst", room.cart.updated_at)
    assert stored is not None and stored.cart == room.cart


@SQLITE
async def test_a_failed_write_in_flight_takes_down_nothing_stored_and_sends_nothing_unstored(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await make_hub()
    store = hub.store
    assert isinstance(store, SQLiteStore)
    attempts: list[str | None] = []

    def write_cart(write: CartWrite, *args: Any) -> Plan[None]:
        attempts.append(write.key)
        if write.key == "bad":
            raise sqlite3.OperationalError("disk I/O error")
        return (yield from carts.write_cart(write, *args))

    def write_many(writes: list[CartWrite], *args: Any) -> Plan[bool]:
        # Together, a batch holding the bad write fails as a whole and is written again
        # one write at a time, so that only the bad one fails.
        attempts.extend(write.key for write in writes)
        if any(write.key == "bad" for write in writes):
            raise sqlite3.OperationalError("disk I/O error")
        return (yield from carts.write_many(writes, *args))

    monkeypatch.setattr(sqlite_store, "write_cart", write_cart)
    monkeypatch.setattr(sqlite_store, "write_many", write_many)
    tabs = [Tab(f"t{n}", limit=1000) for n in range(3)]
    keys = [f"k{n}" for n in range(10)] + ["bad"] + [f"k{n}" for n in range(10, 20)]
    async with hub.use("faulty") as room:
        for tab in tabs:
            room.join(tab, None)
        results = await asyncio.gather(
            *(room.submit(AddItem("p-2" if key == "bad" else "p-1", 1), key=key) for key in keys),
            return_exceptions=True,
        )
    failed = [
        key for key, result in zip(keys, results, strict=True) if isinstance(result, Exception)
    ]
    assert failed == ["bad"] and isinstance(results[10], errors.Unavailable)
    # The writes behind it were in flight on top of it: refused by the store, then retried.
    assert len(attempts) > len(keys)
    assert sorted(r.version for r in results if not isinstance(r, Exception)) == list(range(1, 21))
    assert [line.product_id for line in room.cart.lines] == ["p-1"]
    for tab in tabs:
        patches = [f for f in await frames(tab) if f["type"] == "patch"]
        assert [p["version"] for p in patches] == list(range(1, 21))
        assert all(p["item_count"] == n for n, p in enumerate(patches, 1))
    stored = await store.load_cart("faulty", room.cart.updated_at)
    assert stored is not None and stored.cart == room.cart and "bad" not in stored.keys


@SQLITE
async def test_many_tabs_on_many_carts_interleaved_see_every_version_once_in_order(
    make_hub: Any,
) -> None:
    hub = await make_hub()
    carts = [f"many-{n}" for n in range(6)]
    tabs = {cart: [Tab(f"{cart}-{n}", limit=10_000) for n in range(4)] for cart in carts}

    acked: dict[str, list[int]] = {cart: [] for cart in carts}

    async def writer(room: Any, tab: Tab, n: int) -> None:
        outcome = await room.submit(AddItem(f"p-{n % 5 + 1}", 1), origin=tab.client_id)
        acked[room.cart.id].append(outcome.version)

    async def transaction(room: Any) -> None:
        async with room.transaction() as tx:  # waits for the writes in flight
            stored = await hub.store.load_cart(room.cart.id, room.cart.updated_at)
            assert stored.cart == tx.cart if stored is not None else tx.cart.version == 0

    async with contextlib.AsyncExitStack() as stack, asyncio.timeout(30):
        rooms = {cart: await stack.enter_async_context(hub.use(cart)) for cart in carts}
        for cart in carts:
            for tab in tabs[cart]:
                rooms[cart].join(tab, None)
        await asyncio.gather(
            *(
                writer(rooms[cart], tabs[cart][n % 4], n) if n % 10 else transaction(rooms[cart])
                for n in range(60)
                for cart in carts
            )
        )
    for cart in carts:
        room = rooms[cart]
        assert sorted(acked[cart]) == list(range(1, 55)) and room.version == 54
        for tab in tabs[cart]:
            versions = [f["version"] for f in await frames(tab) if f["type"] == "patch"]
            assert versions == list(range(1, 55))
        stored = await hub.store.load_cart(cart, room.cart.updated_at)
        assert stored is not None and stored.cart == room.cart


@SQLITE
async def test_a_write_whose_caller_is_cancelled_is_still_taken_once_stored(
    make_hub: Any,
) -> None:
    hub = await make_hub()
    tab = Tab("t", limit=100)
    async with hub.use("cancelled") as room:
        room.join(tab, None)
        submit = asyncio.create_task(room.submit(AddItem("p-1", 1), key="gone"))
        await asyncio.sleep(0)  # it ran up to its commit, which is in flight
        assert room.busy and room.version == 0
        submit.cancel()
        async with room.transaction() as tx:
            assert tx.cart.version == 1
        assert [f["version"] for f in await frames(tab) if f["type"] == "patch"] == [1]
        again = await room.submit(AddItem("p-1", 1), key="gone")
        assert again.replayed and again.version == 1
