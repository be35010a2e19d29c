"""Rooms and the hub, in-process, on a real SQLite file and a real PostgreSQL schema;
several hubs on one store act like several processes."""

from __future__ import annotations

import ast
import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from server import errors
from server import frames as wire
from server.bus import open_bus
from server.bus.local import LocalBroker
from server.cart import AddItem, Product, SetQuantity, SetStatus, Status
from server.catalog import Catalog
from server.config import Settings
from server.errors import CLOSE_TRY_AGAIN_LATER
from server.hub import Hub
from server.metrics import Metrics
from server.store import Store, open_store
from server.store.sqlite import SQLiteStore
from server.transaction import commit_together, together
from tests.support import REDIS_URL, require_redis

PRODUCTS = [Product(f"p-{n}", f"SKU-{n}", f"Product {n}", 100 * n, 10_000) for n in range(1, 6)]


@pytest.fixture
async def make_hub(database_url: str) -> AsyncIterator[Callable[..., Any]]:
    """Hubs over one store; several hubs on one broker act like several processes."""
    settings = Settings(database_url=database_url, room_idle_seconds=0.05)
    broker = LocalBroker()
    opened: list[tuple[Hub, Store]] = []

    async def make(redis: str | None = None, **overrides: Any) -> Hub:
        own = Settings(**{**settings.__dict__, **overrides})
        store = await open_store(own)
        await store.upsert_products(PRODUCTS)
        bus = await open_bus(redis) if redis else broker.connect()
        hub = Hub(store, bus, Catalog(), own, Metrics())
        await hub.start()
        opened.append((hub, store))
        return hub

    yield make
    for hub, store in opened:
        await hub.close()
        await hub.bus.close()
        await store.close()


class Tab(wire.Tab):
    """A frames.Tab that is its own sink: what it writes is unframed into `queue` (text
    frames as str, the close as its code); `pushback` makes it a socket that is full."""

    def __init__(self, client_id: str, limit: int) -> None:
        self.queue: asyncio.Queue[str | int] = asyncio.Queue()
        self.pushback = False
        super().__init__(client_id, limit, self)

    def write_frames(self, data: bytes) -> None:
        while data:
            assert data[0] == 0x81  # one whole text frame, never masked
            size, start = data[1], 2
            if size == 126:
                size, start = int.from_bytes(data[2:4]), 4
            elif size == 127:
                size, start = int.from_bytes(data[2:10]), 10
            self.queue.put_nowait(data[start : start + size].decode())
            data = data[start + size :]

    def pushing_back(self) -> bool:
        return self.pushback

    def close_with(self, code: int, reason: str) -> None:
        self.queue.put_nowait(code)

    def listen(self, tab: wire.Tab | None) -> None:
        pass


async def next_frame(tab: Tab, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of `kind` queued to the tab (others are skipped)."""
    async with asyncio.timeout(timeout):
        while True:
            item = await tab.queue.get()
            frame = {"type": "close", "code": item} if isinstance(item, int) else json.loads(item)
            if frame["type"] == kind:
                return frame


async def presence_reaches(tab: Tab, count: int) -> None:
    while (await next_frame(tab, "presence"))["tabs"] != count:
        pass


async def frames(tab: Tab) -> list[dict[str, Any]]:
    """What the tab has been written so far, once the current loop turn's write is out."""
    await asyncio.sleep(0)
    out = []
    while not tab.queue.empty():
        item = tab.queue.get_nowait()
        out.append({"close": item} if isinstance(item, int) else json.loads(item))
    return out


async def test_concurrent_submits_get_contiguous_versions_in_one_order(make_hub: Any) -> None:
    hub = await make_hub()
    tab = Tab("t", limit=1000)
    async with hub.use("cart-1") as room:
        room.join(tab, None)
        outcomes = await asyncio.gather(
            *(room.submit(AddItem(f"p-{n % 5 + 1}", 1), key=f"k{n}") for n in range(100))
        )
    assert sorted(o.version for o in outcomes) == list(range(1, 101))
    patches = [f for f in await frames(tab) if f["type"] == "patch"]
    assert [p["version"] for p in patches] == list(range(1, 101))
    assert room.cart.item_count == 100 and patches[-1]["item_count"] == 100


async def test_a_transaction_keeps_every_other_mutation_out_until_it_ends(
    make_hub: Any,
) -> None:
    hub = await make_hub()
    async with hub.use("tx") as room:
        async with room.transaction() as tx:
            await tx.apply(AddItem("p-1", 1))
            waiting = asyncio.create_task(room.submit(AddItem("p-2", 1)))
            await asyncio.sleep(0)  # the submit runs up to the lock and waits there
            assert room.busy and not waiting.done()
            await tx.apply(SetQuantity("p-1", 3))  # nothing came between the two steps
            assert [line.product_id for line in tx.cart.lines] == ["p-1"]
        assert (await waiting).version == 3
        assert not room.busy


async def test_transactions_of_two_rooms_taken_crosswise_never_deadlock(make_hub: Any) -> None:
    hub = await make_hub()
    async with hub.use("pair-a") as a, hub.use("pair-b") as b:

        async def move(source: Any, target: Any) -> None:
            for _ in range(20):
                async with together(source, target) as (src, tgt):
                    await asyncio.sleep(0)  # the other pair is now waiting for its locks
                    assert await commit_together(
                        (tgt, tgt.prepare(AddItem("p-1", 1))),
                        (src, src.prepare(AddItem("p-2", 1))),
                    )

        async with asyncio.timeout(10):
            await asyncio.gather(move(a, b), move(b, a))
        assert a.version == b.version == 40
        assert a.cart.item_count == b.cart.item_count == 40


async def test_a_joint_commit_another_process_overtook_writes_nothing_and_catches_up(
    make_hub: Any,
) -> None:
    one, other = await make_hub(), await make_hub()
    async with one.use("j-a") as a, one.use("j-b") as b, other.use("j-b") as b_there:
        await a.submit(AddItem("p-1", 1))
        async with together(a, b) as (tx_a, tx_b):
            writes = (
                (tx_a, tx_a.prepare(AddItem("p-1", 1))),
                (tx_b, tx_b.prepare(AddItem("p-2", 1))),
            )
            await b_there.submit(AddItem("p-3", 1))  # "another process" commits b first
            assert not await commit_together(*writes)
            assert (a.version, b.version) == (1, 1)  # nothing of the joint commit landed
            assert [line.product_id for line in b.cart.lines] == ["p-3"]  # read again
        stored = await one.store.load_cart("j-a", a.cart.updated_at)
        assert stored is not None and stored.cart.version == 1


def test_the_room_lock_is_taken_in_room_and_transaction_only() -> None:
    server = Path(__file__).resolve().parent.parent / "server"
    owners = {"room.py", "transaction.py"}
    takers = {
        str(path.relative_to(server))
        for path in server.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in ("lock", "_lock")
    }
    assert takers <= owners and "room.py" in takers


# It fills a SQLite file; PostgreSQL out of reach is in test_store and test_scale.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_failed_commit_acknowledges_nothing_and_recovers(make_hub: Any) -> None:
    hub = await make_hub()
    store = hub.store
    assert isinstance(store, SQLiteStore)
    tab = Tab("t", limit=100)

    # A real SQLITE_FULL: the file may not grow.
    def pages(limit: int | None) -> Callable[[sqlite3.Connection], None]:
        def run(conn: sqlite3.Connection) -> None:
            count = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {limit or count}")

        return run

    async with hub.use("cart-full") as room:
        room.join(tab, None)
        await room.submit(AddItem("p-1", 1))
        await frames(tab)
        await store._write(pages(None))
        with pytest.raises(errors.Unavailable):
            for n in range(200):  # fill whatever room is left in the last page
                await room.submit(AddItem("p-2", 1), key=f"fill-{n}" + "x" * 2000)
        version = room.version
        sent = await frames(tab)
        assert all(f["version"] <= version for f in sent if f["type"] == "patch")
        await store._write(pages(1 << 30))
        outcome = await room.submit(AddItem("p-3", 1))
        assert outcome.version == version + 1
    fresh = await store.load_cart("cart-full", keys_since=room.cart.updated_at)
    assert fresh is not None and fresh.cart.version == version + 1


async def test_slow_tab_is_closed_without_holding_back_the_others(make_hub: Any) -> None:
    hub = await make_hub()
    slow, fast = Tab("slow", limit=5), Tab("fast", limit=1000)
    slow.pushback = True  # its socket is full: frames wait in the tab
    async with hub.use("cart-slow") as room:
        room.join(slow, None)
        room.join(fast, None)
        for _ in range(10):
            await room.submit(AddItem("p-1", 1))
    assert slow.close_code == CLOSE_TRY_AGAIN_LATER
    assert await frames(slow) == []  # the close frame waits for the socket too
    slow.pushback = False
    slow.drained()
    assert await frames(slow) == [{"close": CLOSE_TRY_AGAIN_LATER}]  # its backlog was dropped
    versions = [f["version"] for f in await frames(fast) if f["type"] == "patch"]
    assert versions == list(range(1, 11))


async def test_two_hubs_share_a_cart_through_bus_and_store(make_hub: Any) -> None:
    a, b = await make_hub(), await make_hub()
    tab_a, tab_b = Tab("a", 1000), Tab("b", 1000)
    async with a.use("shared") as room_a, b.use("shared") as room_b:
        room_a.join(tab_a, None)
        room_b.join(tab_b, None)
        # Both "processes" mutate the same cart at once: compare-and-set in the store puts
        # them in one order; the loser catches up and applies on top.
        await asyncio.gather(
            *(room.submit(AddItem("p-1", 1)) for room in (room_a, room_b) for _ in range(25))
        )
        await room_a.catch_up()  # whichever lost the last race reads the rest now
        await room_b.catch_up()
        assert room_a.version == room_b.version == 50
        assert room_a.cart == room_b.cart
        assert room_a.cart.item_count == 50
    for tab in (tab_a, tab_b):
        cart_versions = [f["version"] for f in await frames(tab) if f["type"] == "patch"]
        assert cart_versions == list(range(1, 51))  # each tab: every version once, in order


async def test_a_commit_in_one_hub_reaches_tabs_of_the_other_via_the_bus(make_hub: Any) -> None:
    a, b = await make_hub(), await make_hub()
    tab_b = Tab("b", 1000)
    async with a.use("c") as room_a, b.use("c") as room_b:
        room_b.join(tab_b, None)
        await frames(tab_b)
        await room_a.submit(AddItem("p-2", 3))
        async with asyncio.timeout(5):
            patch = json.loads(await tab_b.queue.get())  # delivered by b's bus listener
        assert patch["type"] == "patch" and patch["version"] == 1
        assert room_b.cart.lines[0].quantity == 3


async def test_idle_rooms_are_evicted_and_reload_the_same(make_hub: Any) -> None:
    hub = await make_hub()
    async with hub.use("idle") as room:
        await room.submit(AddItem("p-4", 2))
        await room.submit(SetStatus(Status.CHECKING_OUT))
    tab = Tab("t", 10)
    async with hub.use("kept") as kept:
        kept.join(tab, None)
    async with hub.use("busy"):
        for room in hub.rooms.values():  # as if ROOM_IDLE had passed for all of them
            room.last_used -= 1.0
        assert await hub.evict_idle() == 1
    assert "idle" not in hub.rooms and "busy" in hub.rooms  # in use: never evicted
    assert "kept" in hub.rooms  # a tab is connected: never evicted either
    async with hub.use("idle") as again:
        assert again.version == 2 and again.cart.status is Status.CHECKING_OUT
        with pytest.raises(errors.CartLocked):
            await again.submit(SetQuantity("p-4", 1))


async def test_long_poll_waits_for_the_next_version(make_hub: Any) -> None:
    hub = await make_hub()
    async with hub.use("poll") as room:
        waiter = asyncio.create_task(room.wait_past(0, 5))
        await asyncio.sleep(0)
        assert not waiter.done()
        await room.submit(AddItem("p-1", 1))
        await asyncio.wait_for(waiter, 1)
        started = time.monotonic()
        await room.wait_past(1, 0.05)  # nothing happens: returns after the timeout
        assert time.monotonic() - started >= 0.05


async def test_replayed_key_returns_first_answer(make_hub: Any) -> None:
    hub = await make_hub()
    async with hub.use("idem") as room:
        first = await room.submit(AddItem("p-1", 1), key="rest:k", respond=True)
        await room.submit(AddItem("p-1", 1))
        again = await room.submit(AddItem("p-1", 5), key="rest:k", respond=True)
        assert again.replayed and again.version == first.version and again.body == first.body
        assert room.cart.item_count == 2
        room.keys.clear()  # beyond the in-memory window: the store's key still refuses it
        once_more = await room.submit(AddItem("p-1", 5), key="rest:k", respond=True)
        assert once_more.replayed and once_more.body == first.body
        assert room.cart.item_count == 2


async def test_tabs_in_another_process_follow_a_finished_cart_to_its_successor(
    make_hub: Any,
) -> None:
    a, b = await make_hub(), await make_hub()
    tab_a, tab_b = Tab("a", 1000), Tab("b", 1000)
    async with a.use("paid") as room_a, b.use("paid") as room_b:
        await room_a.submit(AddItem("p-1", 1))
        await room_b.catch_up()
        room_a.join(tab_a, None)
        room_b.join(tab_b, None)
        await room_a.submit(SetStatus(Status.CHECKED_OUT, successor="next-cart"))
        await room_b.catch_up()  # what the bus message makes it do
    for tab in (tab_a, tab_b):
        got = [f for f in await frames(tab) if f["type"] in ("patch", "moved")]
        assert got[-2]["type"] == "patch" and got[-2]["ops"] == [
            {"op": "status", "status": "checked_out"}
        ]
        assert got[-1] == {"type": "moved", "cart_id": "next-cart"}  # hubs here sign with str


async def test_presence_counts_the_tabs_of_every_hub(make_hub: Any) -> None:
    a, b = await make_hub(), await make_hub()
    tab_a1, tab_a2, tab_b = Tab("a1", 100), Tab("a2", 100), Tab("b", 100)
    async with a.use("p") as room_a, b.use("p") as room_b:
        room_a.join(tab_a1, None)
        room_a.join(tab_a2, None)
        room_b.join(tab_b, None)
        await presence_reaches(tab_b, 3)
        await presence_reaches(tab_a1, 3)
        assert room_a.presence.count == room_b.presence.count == 3
        room_a.leave(tab_a2)
        await presence_reaches(tab_b, 2)
        # A process not heard from for PRESENCE_TTL is gone (killed, or cut off).
        room_b.presence.forget_before(time.monotonic() + 1)
        assert (await next_frame(tab_b, "presence"))["tabs"] == 1
        assert room_b.presence.count == 1


async def test_a_lost_bus_message_is_repaired_by_the_version_check(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_hub(), await make_hub()
    tab_b = Tab("b", 1000)
    async with a.use("lost") as room_a, b.use("lost") as room_b:
        room_b.join(tab_b, None)
        await frames(tab_b)
        monkeypatch.setattr(a.bus, "publish", lambda channel, message: None)  # never arrives
        await room_a.submit(AddItem("p-1", 2))
        await room_a.submit(AddItem("p-2", 1))
        assert room_b.version == 0
        assert await b.check_versions() == 1
        patches = [await next_frame(tab_b, "patch") for _ in range(2)]
        assert [p["version"] for p in patches] == [1, 2]
        assert room_b.cart == room_a.cart
        assert await b.check_versions() == 0


async def test_an_overtaken_bus_message_is_read_from_the_store_in_order(
    make_hub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await make_hub(), await make_hub()
    tab_b = Tab("b", 1000)
    sent: list[tuple[str, bytes]] = []
    async with a.use("late") as room_a, b.use("late") as room_b:
        room_b.join(tab_b, None)
        await frames(tab_b)
        monkeypatch.setattr(a.bus, "publish", lambda *message: sent.append(message))
        for n in range(1, 4):
            await room_a.submit(AddItem("p-1", n))
        inbox = b.bus._inbox  # type: ignore[attr-defined]
        for message in (sent[2], sent[0], sent[1]):  # version 3 overtakes 1 and 2
            inbox.put_nowait(message)
        patches = [await next_frame(tab_b, "patch") for _ in range(3)]
        assert [p["version"] for p in patches] == [1, 2, 3]  # each once, in order
        assert room_b.cart == room_a.cart


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_hubs_over_redis_and_postgres_share_a_cart(make_hub: Any) -> None:
    await require_redis()
    a, b = await make_hub(redis=REDIS_URL), await make_hub(redis=REDIS_URL)
    cart_id = f"redis-{uuid.uuid4()}"  # Redis channels are global: a name of its own
    tab_a, tab_b = Tab("a", 1000), Tab("b", 1000)
    async with a.use(cart_id) as room_a, b.use(cart_id) as room_b:
        room_a.join(tab_a, None)
        room_b.join(tab_b, None)
        outcomes = await asyncio.gather(
            *(room.submit(AddItem("p-1", 1)) for room in (room_a, room_b) for _ in range(25))
        )
        assert sorted(o.version for o in outcomes) == list(range(1, 51))
        for tab in (tab_a, tab_b):
            versions = []
            while not versions or versions[-1] < 50:
                versions.append((await next_frame(tab, "patch"))["version"])
            assert versions == list(range(1, 51))  # every version once, in order, no reload
        assert room_a.cart == room_b.cart
        assert room_a.cart.item_count == 50
