"""Cart lifecycle end to end, on real server processes: the abandonment timer (once per idle
period, across restarts, for carts not in memory), expiry with its fresh cart, the outbox."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from server.cart import AddItem, Cart, Product, apply
from server.clock import iso, utcnow
from server.config import Settings
from server.protocol import encode
from server.render import patch_msg
from server.store import CartWrite
from server.store.sqlite import SQLiteStore
from tests.lifecycle_support import cookie, device, epoch, events, query, unsign, until
from tests.support import ServerProcess, Tab, passes, rest

# Every e2e timing below is printed (pytest -s) and quoted in the README.
STATUS_ABANDONED = [{"op": "status", "status": "abandoned"}]


def report(what: str, seconds: float) -> None:
    print(f"\n[timing] {what}: {seconds * 1000:.0f} ms")


async def add(tab: Tab, msg_id: str, product_id: str, quantity: int = 1) -> dict[str, Any]:
    """Add over the socket; the patch it made (its ack follows it)."""
    await tab.send({"type": "add", "id": msg_id, "product_id": product_id, "quantity": quantity})
    patch = await tab.next("patch")
    assert (await tab.next("ack"))["version"] == patch["version"]
    return patch


async def test_abandonment_fires_once_per_idle_period_and_an_edit_rearms_it(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ABANDON_AFTER": "0.5s"}).start()
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    cart_id = unsign(signed)
    tab = await Tab.open(server, signed)
    assert (await tab.next("snapshot"))["cart"]["abandon_at"] is None
    # Carts that are empty when they go idle are never abandoned: one emptied, one only seen.
    async with rest(server) as other:  # keeps its cookie: one cart
        await other.post("/api/cart/items", json={"product_id": "p-002"})
        emptied = (await other.delete("/api/cart/items")).json()
        assert (emptied["version"], emptied["items"]) == (2, [])
    async with rest(server) as viewer:
        untouched = (await viewer.get("/api/cart")).json()

    added = time.monotonic()  # before the add: its deadline counts from before its ack
    await add(tab, "a1", "p-001", 2)
    patch = await tab.next("patch", timeout=5)
    report("abandonment after ABANDON_AFTER=0.5s (idle -> status patch)", time.monotonic() - added)
    assert patch["version"] == 2 and patch["ops"] == STATUS_ABANDONED
    assert time.monotonic() - added >= 0.45  # not before its time
    [event] = events(server.db, cart_id)
    assert event["type"] == "abandoned" and event["delivered_at"] is None
    assert event["payload"] == {
        "type": "abandoned",
        "cart_id": cart_id,
        "user_id": None,
        "version": 2,
        "item_count": 2,
        "subtotal_cents": 2 * 199,
        "currency": "usd",
        "items": [{"product_id": "p-001", "quantity": 2, "unit_price_cents": 199}],
        "at": event["created_at"],
    }
    async with rest(server, signed) as client:
        doc = (await client.get("/api/cart")).json()
    assert (doc["status"], doc["version"], doc["abandon_at"]) == ("abandoned", 2, None)

    # Idle for five more sweeps (four whole ones, two periods): still one event, no frame.
    await passes([server], "cart_sweeps_total", 5)
    assert len(events(server.db, cart_id)) == 1
    assert sum(frame["type"] == "patch" for frame in tab.log) == 2

    # An edit re-activates the cart in its own patch and arms the timer again.
    patch = await add(tab, "a2", "p-002")
    assert patch["version"] == 3
    assert patch["ops"][-1] == {"op": "status", "status": "active"}
    patch = await tab.next("patch", timeout=5)
    assert patch["version"] == 4 and patch["ops"] == STATUS_ABANDONED
    first, second = events(server.db, cart_id)
    assert second["payload"]["version"] == 4 and second["payload"]["item_count"] == 3
    assert epoch(second["created_at"]) - epoch(first["created_at"]) >= 0.5

    assert events(server.db, emptied["id"]) == []
    assert events(server.db, untouched["id"]) == []
    assert len(events(server.db)) == 2
    await tab.close()

    # `python -m server events` lists them, one JSON object per line, oldest first.
    listed = server.cli("events", "--undelivered")
    assert listed.returncode == 0, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(x["cart_id"], x["type"], x["payload"]["version"]) for x in lines] == [
        (cart_id, "abandoned", 2),
        (cart_id, "abandoned", 4),
    ]
    assert server.cli("events", "--limit", "1").stdout.count("\n") == 1


async def test_a_deadline_passed_while_the_server_was_down_fires_once_after_start(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ABANDON_AFTER": "1.5s"}).start()
    async with rest(server) as client:
        doc = (await client.post("/api/cart/items", json={"product_id": "p-003"})).json()
        signed = client.cookies.get("cart_id") or ""
    deadline = epoch(doc["abandon_at"])
    server.stop()  # SIGTERM, well before the deadline
    assert time.time() < deadline - 0.5
    assert events(server.db) == []
    assert query(server.db, "SELECT status FROM cart_sessions WHERE id = ?", doc["id"]) == [
        ("active",)
    ]
    await asyncio.sleep(max(0.0, deadline - time.time()) + 0.2)  # down past the deadline

    started = time.time()
    server.start()
    ready = time.time()
    [event] = await until(lambda: events(server.db, doc["id"]), 5, "the overdue event")
    report(
        "restart -> overdue abandonment event (from spawning the process)",
        epoch(event["created_at"]) - started,
    )
    report("server ready -> overdue abandonment event", epoch(event["created_at"]) - ready)
    assert event["payload"]["version"] == 2
    tab = await Tab.open(server, signed)
    snapshot = (await tab.next("snapshot"))["cart"]
    assert (snapshot["status"], snapshot["version"]) == ("abandoned", 2)
    await passes([server], "cart_sweeps_total", 4)  # a few sweeps later: still exactly once
    assert len(events(server.db, doc["id"])) == 1
    assert not any(frame["type"] == "patch" for frame in tab.log)
    await tab.close()


async def test_the_sweeper_abandons_a_thousand_carts_not_in_memory(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ABANDON_AFTER": "4s"}).start()  # sweeps every 1 s
    period = 1.0
    count = 1000
    # Written by another process straight into the file: no room of the server holds them.
    settings = Settings(database_url=f"sqlite:///{server.db}")
    store = await SQLiteStore.open(settings)
    catalog = {"p-001": Product("p-001", "SKU-001", "Product 1", 199, 100_000)}
    now = datetime.now(UTC)
    due_in = 1.5
    writes = []
    for n in range(count):
        cart = Cart(id=f"00000000-0000-4000-8000-{n:012d}", updated_at=now)
        new, change = apply(cart, AddItem("p-001", 1 + n % 3), catalog, now, due_in)
        patch = encode(patch_msg(new, change, catalog, None)).decode()
        writes.append(CartWrite(new, 0, change, patch))
    try:
        await asyncio.gather(*(store.commit(w) for w in writes))
    finally:
        await store.close()
    deadline = (now + timedelta(seconds=due_in)).timestamp()
    assert time.time() < deadline, "writing the carts took longer than their idle period"

    def all_swept() -> list[dict[str, Any]] | None:
        found = events(server.db)
        return found if len(found) >= count else None

    found = await until(all_swept, period + 20, f"{count} abandonment events")
    created = sorted(epoch(e["created_at"]) for e in found)
    report(f"deadline -> first of {count} events", created[0] - deadline)
    report(f"deadline -> last of {count} events", created[-1] - deadline)
    report(f"one sweep of {count} carts (first -> last event)", created[-1] - created[0])
    assert len(found) == count and len({e["cart_id"] for e in found}) == count
    assert created[0] >= deadline - 0.002  # ms-rounded timestamps
    assert created[0] - deadline <= period + 0.3  # picked up by the next sweep
    statuses = query(server.db, "SELECT status, count(*) FROM cart_sessions GROUP BY status")
    assert statuses == [("abandoned", count)]
    # One pass takes them all, batch after batch with no wait between: a pass that stopped
    # after its first batch would leave a gap of a whole period before the next one.
    gaps = [b - a for a, b in zip(created, created[1:], strict=False)]
    assert max(gaps) < period / 2, max(gaps)
    assert created[-1] - created[0] < 10.0  # a sanity bound; the timing above is the measure
    server.stop()
    assert "timer of cart" not in server.log()


async def test_an_expired_cart_moves_its_tabs_and_requests_to_a_fresh_cart(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"CART_TTL": "1m", "ABANDON_AFTER": "1h"}).start()
    async with device(server) as browser:
        old = (await browser.post("/api/cart/items", json={"product_id": "p-004"})).json()
        old_signed = cookie(browser)
        server.stop()
        # CART_TTL is a minute at least: the cart is made to have been idle for all but 2 s
        # of it, and the sweeper, which expires carts, to look every 0.25 s (a quarter of
        # the shorter deadline; this cart's abandon_at stays an hour away).
        server.env["ABANDON_AFTER"] = "1s"
        server.start()
        idle = utcnow() - timedelta(seconds=60 - 2)
        aged = "UPDATE cart_sessions SET updated_at = ?, expires_at = ? WHERE id = ?"
        query(server.db, aged, iso(idle), iso(idle + timedelta(seconds=60)), old["id"])
        tab = await Tab.open(server, old_signed)
        await tab.next("snapshot")
        patch = await tab.next("patch", timeout=5)
        assert patch["version"] == 2
        assert patch["ops"] == [{"op": "status", "status": "expired"}]
        moved = await tab.next("moved")
        fresh_id = unsign(moved["cart_id"])
        assert fresh_id != old["id"]
        [event] = events(server.db, old["id"])
        assert event["type"] == "expired" and event["payload"]["items"] == [
            {"product_id": "p-004", "quantity": 1, "unit_price_cents": 499}
        ]

        # The old cookie now opens a fresh, empty cart of its own (a signed id opens its
        # own cart and nothing else), and the cookie follows.
        response = await browser.get("/api/cart")
        doc = response.json()
        assert doc["id"] not in (fresh_id, old["id"])
        assert (doc["version"], doc["items"], doc["status"]) == (0, [], "active")
        assert unsign(cookie(browser)) == doc["id"]
        follower = await Tab.open(server, moved["cart_id"])  # the tab that was open follows
        assert (await follower.next("snapshot"))["cart"]["id"] == fresh_id
        late = await Tab.open(server, old_signed)  # a tab that still holds the old cart
        assert (await late.next("snapshot"))["cart"]["id"] not in (fresh_id, old["id"])
        for socket in (tab, follower, late):
            await socket.close()

    # The hourly purge (called here directly) drops the expired cart's lines and patches;
    # its header stays until CART_TTL later, so the old cookie still reads as finished.
    assert query(server.db, "SELECT count(*) FROM cart_items WHERE cart_id = ?", old["id"]) == [
        (1,)
    ]
    store = await SQLiteStore.open(Settings(database_url=f"sqlite:///{server.db}"))
    try:
        purged = await store.purge_expired(datetime.now(UTC) - timedelta(seconds=1), 500)
    finally:
        await store.close()
    assert purged == 1 + 2  # one line, two patches
    for table in ("cart_items", "cart_patches", "applied_mutations"):
        rows = query(server.db, f"SELECT count(*) FROM {table} WHERE cart_id = ?", old["id"])
        assert rows == [(0,)], table
    async with rest(server, old_signed) as client:
        assert (await client.get("/api/cart")).json()["id"] not in (fresh_id, old["id"])
