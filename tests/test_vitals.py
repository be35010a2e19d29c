"""What an operator watches: the store's figures in /metrics, on both stores and live."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from server.cart import Product
from server.config import Settings
from server.store import Checkout, CheckoutLine, Emit, Reserve, Store, open_store
from tests.support import ServerProcess, rest

PRODUCTS = [Product("p-1", "SKU-1", "Product 1", 100, 1000)]


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url))
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


async def test_stats_count_the_outbox_backlog_and_checkouts_holding_stock(store: Store) -> None:
    empty = await store.stats()
    assert (empty.outbox_pending, empty.outbox_oldest, empty.checkouts_reserved) == (0, None, 0)
    assert empty.size_bytes > 0
    await store.record(Emit("a", "abandoned", b"{}"), Emit("b", "expired", b"{}"))
    first = (await store.list_events(undelivered=True, limit=10))[0]
    await store.event_sent(first.id, True, datetime.now(UTC))
    checkout = Checkout(
        "co-1",
        "a",
        1,
        "demo",
        "reserved",
        (CheckoutLine("p-1", 1, 100),),
        100,
        "usd",
        datetime.now(UTC) + timedelta(minutes=30),
    )
    await store.record(Reserve(checkout))
    stats = await store.stats()
    assert stats.outbox_pending == 1 and stats.checkouts_reserved == 1
    pending = (await store.list_events(undelivered=True, limit=10))[0]
    assert stats.outbox_oldest == pending.created_at


def gauge(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(f"{name} ")]
    return float(line.split()[1])


async def test_metrics_show_database_size_backlog_reserved_checkouts_and_loop_lag(
    server: ServerProcess,
) -> None:
    async with rest(server) as client:
        before = (await client.get("/metrics")).text
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
    async with rest(server, signed) as client:
        assert (await client.post("/api/cart/items", json={"product_id": "p-001"})).is_success
        assert (await client.post("/api/cart/checkout", json={})).is_success
        text = (await client.get("/metrics")).text
    assert gauge(text, "cart_checkouts_reserved") == gauge(before, "cart_checkouts_reserved") + 1
    assert gauge(text, "cart_database_bytes") > 0
    assert gauge(text, "cart_outbox_pending") >= 0
    assert gauge(text, "cart_outbox_oldest_seconds") >= 0
    assert 0 <= gauge(text, "cart_event_loop_lag_seconds") < 5
    assert gauge(text, "cart_gc_pause_seconds") >= 0
    assert "# TYPE cart_database_bytes gauge" in text
