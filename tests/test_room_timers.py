"""The room's abandonment timer and the hub's sweeper, in-process on a real SQLite file."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from server import clock
from server.bus.local import LocalBroker
from server.cart import Absorb, AddItem, Product, Status
from server.catalog import Catalog
from server.config import Settings
from server.hub import Hub
from server.metrics import Metrics
from server.store.sqlite import SQLiteStore

PRODUCTS = [Product("p-1", "SKU-1", "Product 1", 100, 10_000)]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """A hub whose background loops are not started: only room timers fire on their own."""
    opened: list[tuple[Hub, SQLiteStore]] = []

    async def make(**overrides: Any) -> Hub:
        settings = Settings(database_url=f"sqlite:///{tmp_path}/cart.db", **overrides)
        store = await SQLiteStore.open(settings)
        await store.upsert_products(PRODUCTS)
        hub = Hub(store, LocalBroker().connect(), Catalog(), settings, Metrics())
        await hub.catalog.refresh(store)
        opened.append((hub, store))
        return hub

    yield make
    for hub, store in opened:
        await hub.close()
        await store.close()


async def wait_status(hub: Hub, cart_id: str, status: Status, timeout: float) -> float:
    started = time.monotonic()
    while hub.rooms[cart_id].cart.status is not status:
        assert time.monotonic() - started < timeout, f"still {hub.rooms[cart_id].cart.status}"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_a_timer_that_runs_early_arms_itself_again(make_hub: Any) -> None:
    hub = await make_hub(abandon_after_seconds=0.3)
    async with hub.use("c") as room:
        await room.submit(AddItem("p-1", 1))
        # What an event loop that rounds timers (uvloop) may do: run it before the wall
        # clock reaches the deadline. The cart is not due yet; it must still be abandoned
        # on time, not left to the next sweep.
        timer = room.timer.handle
        assert timer is not None
        timer.cancel()  # the loop's handle is spent once it has run...
        room.timer.fire()  # ...and this is what it runs
        assert room.timer.task is not None
        await room.timer.task
        assert room.cart.status is Status.ACTIVE
        waited = await wait_status(hub, "c", Status.ABANDONED, 2.0)
        assert waited < 0.5


async def test_edits_keep_one_timer_and_the_cart_is_abandoned_after_the_last(
    make_hub: Any,
) -> None:
    hub = await make_hub(abandon_after_seconds=0.4)
    async with hub.use("c") as room:
        await room.submit(AddItem("p-1", 1))
        armed = room.timer.handle
        for _ in range(3):  # each edit moves the deadline; the timer armed first stays
            await asyncio.sleep(0.1)
            # The edit's deadline counts from when it is applied, which is before its
            # commit returns (a slow disk once put 74 ms between the two): time it from
            # before the call.
            last_edit = time.monotonic()
            await room.submit(AddItem("p-1", 1))
            assert room.timer.handle is armed
        await wait_status(hub, "c", Status.ABANDONED, 2.0)
        # Not at the first deadline (0.4 s after the first add): 0.4 s after the last edit.
        assert time.monotonic() - last_edit >= 0.4 - 0.01


async def test_an_evicted_room_keeps_no_timer(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await make_hub(abandon_after_seconds=60.0, room_idle_seconds=0.0)
    async with hub.use("c") as room:
        await room.submit(AddItem("p-1", 1))
    assert await hub.evict_idle() == 1
    assert room.timer.handle is None
    assert not await room.run_due()  # a late timer task on the evicted room: not re-armed
    assert room.timer.handle is None
    # The deadline passes (the clock moved past it, no timer of the loop could fire yet):
    # nothing fired in memory, the store still says active, for the sweeper to handle.
    monkeypatch.setattr(clock, "offset", timedelta(seconds=61))
    stored = await hub.store.load_cart("c", room.cart.updated_at)
    assert stored is not None and stored.cart.status is Status.ACTIVE
    assert await hub.sweep() == 1
    assert hub.rooms["c"].cart.status is Status.ABANDONED
    assert await hub.sweep() == 0  # once


async def test_closing_the_hub_stops_every_timer_and_lets_a_running_one_finish(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = await make_hub(abandon_after_seconds=60.0)
    for cart_id in ("a", "b"):
        async with hub.use(cart_id) as room:
            await room.submit(AddItem("p-1", 1))
    first, second = hub.rooms["a"], hub.rooms["b"]
    assert first.timer.handle is not None and second.timer.handle is not None
    # The first cart's timer is running (due, its task not yet done) when the hub closes.
    monkeypatch.setattr(clock, "offset", timedelta(seconds=61))
    first.timer.handle.cancel()
    first.timer.fire()
    running = first.timer.task
    assert running is not None and not running.done()
    await hub.close()
    assert running.done() and first.cart.status is Status.ABANDONED
    assert first.timer.handle is None and second.timer.handle is None
    second.timer.arm()  # nothing arms again once closed: the store closes next
    assert second.timer.handle is None


@pytest.mark.parametrize(
    ("abandon_after", "cart_ttl", "period"),
    [
        (1800.0, 30 * 86400.0, 60.0),
        (120.0, 30 * 86400.0, 30.0),
        (0.5, 1e6, 0.25),
        (3600.0, 1.0, 0.25),
    ],
    ids=["defaults", "short-abandon", "floor", "short-ttl"],
)
async def test_the_sweep_period_follows_the_shorter_deadline(
    make_hub: Any, abandon_after: float, cart_ttl: float, period: float
) -> None:
    hub = await make_hub(abandon_after_seconds=abandon_after, cart_ttl_seconds=cart_ttl)
    assert hub.sweep_period() == period


async def test_the_event_of_a_users_cart_names_the_user(make_hub: Any) -> None:
    hub = await make_hub(abandon_after_seconds=0.05)
    async with hub.use("c") as room:
        await room.submit(Absorb((), "user-7"))
        await room.submit(AddItem("p-1", 3))
        await wait_status(hub, "c", Status.ABANDONED, 2.0)
    [event] = await hub.store.list_events(undelivered=True, limit=10)
    payload = json.loads(event.payload)
    assert (event.cart_id, event.type) == ("c", "abandoned")
    assert (payload["user_id"], payload["version"], payload["item_count"]) == ("user-7", 3, 3)
    assert payload["items"] == [{"product_id": "p-1", "quantity": 3, "unit_price_cents": 100}]
