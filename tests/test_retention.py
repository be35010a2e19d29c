"""The background purge: old rows of every kind that grows with traffic go, recent ones
stay, on SQLite and on PostgreSQL. The store's clock is driven, never slept on."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import pytest

from server import retention
from server.cart import Product
from server.config import Settings
from server.store import (
    Checkout,
    CheckoutLine,
    Emit,
    RecordEvent,
    Release,
    Reserve,
    Store,
    open_store,
    postgres,
    queries,
    sqlite,
)
from tests.support import db_query

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TTL = 30 * 86400.0
PRODUCTS = [Product("p-1", "SKU-1", "Product 1", 100, 1000)]


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[Clock]:
    clock = Clock()
    # The store stamps rows in its shared methods (queries) and in its driver's own.
    for module in (queries, sqlite if database_url.startswith("sqlite") else postgres):
        monkeypatch.setattr(module, "utcnow", clock)
    yield clock


@pytest.fixture
async def store(database_url: str, clock: Clock) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url))
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


async def count(url: str, table: str) -> int:
    # `table` is one of the literal names below.
    value: int = (await db_query(url, f"SELECT count(*) FROM {table}"))[0][0]
    return value


def checkout(name: str) -> Checkout:
    return Checkout(
        id=name,
        cart_id=f"cart-{name}",
        cart_version=1,
        provider="demo",
        status="reserved",
        lines=(CheckoutLine("p-1", 1, 100),),
        amount_cents=100,
        currency="usd",
        expires_at=NOW + DAY,
    )


async def make_records(store: Store, tag: str) -> None:
    """One of each record at the store's current time: a delivered event, an undelivered
    one, a payment event id, a released checkout and a reserved one."""
    await store.record(Emit(f"c-{tag}", "abandoned", b"{}"), Emit(f"u-{tag}", "expired", b"{}"))
    await store.record(RecordEvent(f"evt-{tag}", "checkout.session.expired"))
    await store.record(Reserve(checkout(f"released-{tag}")), Reserve(checkout(f"open-{tag}")))
    await store.record(Release(f"released-{tag}"))
    events = await store.list_events(undelivered=True, limit=100)
    delivered = next(e for e in events if e.cart_id == f"c-{tag}")
    await store.event_sent(delivered.id, True, NOW)


async def test_old_records_go_and_recent_ones_stay(
    store: Store, clock: Clock, database_url: str
) -> None:
    await make_records(store, "old")
    clock.now = NOW + 20 * DAY
    await make_records(store, "new")
    settings = Settings(database_url=database_url, events_webhook_url="http://hook.example/")

    # 31 days on: the old ones are past EVENTS_TTL (30 d), the new ones are not.
    purged = await retention.purge(store, settings, NOW + 31 * DAY)
    events = await store.list_events(undelivered=False, limit=100)
    # With a webhook, an undelivered event is kept however old: it is still owed.
    assert sorted(e.cart_id for e in events) == ["c-new", "u-new", "u-old"]
    rows = await db_query(database_url, "SELECT event_id FROM payment_events")
    assert [r[0] for r in rows] == ["evt-new"]
    rows = await db_query(database_url, "SELECT id FROM checkouts ORDER BY id")
    assert [r[0] for r in rows] == ["open-new", "open-old", "released-new"]
    assert await count(database_url, "checkout_items") == 3  # with their checkouts
    assert purged == 3  # an event, a payment event id, a checkout (its line by cascade)
    purged = await retention.purge(store, settings, NOW + 31 * DAY)
    assert purged == 0

    # Without a webhook nothing is ever delivered: old events go after EVENTS_TTL too.
    quiet = Settings(database_url=database_url)
    await retention.purge(store, quiet, NOW + 31 * DAY)
    events = await store.list_events(undelivered=False, limit=100)
    assert sorted(e.cart_id for e in events) == ["c-new", "u-new"]
    # Stock held by an open checkout is never purged away.
    products, _ = await store.load_products()
    assert products[0].stock == 1000 - 2


async def test_records_are_purged_in_bounded_batches(
    store: Store, clock: Clock, database_url: str
) -> None:
    await store.record(*(Emit(f"c{n}", "abandoned", b"{}") for n in range(1203)))
    await store.record(*(RecordEvent(f"e{n}", "x") for n in range(1203)))
    clock.now = NOW + 60 * DAY
    batches: list[int] = []
    purge_records = store.purge_records

    async def spy(before: datetime, undelivered_too: bool, limit: int) -> int:
        batches.append(limit)
        return await purge_records(before, undelivered_too, limit)

    store.purge_records = spy  # type: ignore[method-assign]
    settings = Settings(database_url=database_url, events_ttl_seconds=TTL)
    assert await retention.purge(store, settings, clock.now) == 2 * 1203
    assert batches == [retention.BATCH]
    assert await count(database_url, "cart_events") == 0
    assert await count(database_url, "payment_events") == 0


def test_the_purge_runs_hourly_or_sooner_when_a_ttl_is_short() -> None:
    assert retention.period(Settings()) == 3600.0
    assert retention.period(Settings(events_ttl_seconds=60.0)) == 15.0
    assert retention.period(Settings(idempotency_ttl_seconds=2.0)) == 1.0
