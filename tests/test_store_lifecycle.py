"""The stores for the cart lifecycle: due carts, the outbox, user carts, the expiry purge.
Every test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server.cart import (
    Abandon,
    Absorb,
    AddItem,
    Cart,
    Expire,
    Op,
    Product,
    RemoveItem,
    SetStatus,
    Status,
    apply,
)
from server.clock import iso
from server.config import Settings
from server.protocol import encode
from server.render import patch_msg
from server.store import CartWrite, CreateCart, Emit, StaleVersion, Store, open_store
from server.store.postgres import PostgresStore
from server.store.sqlite import SQLiteStore
from tests.support import db_query

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
ABANDON_AFTER = 1800.0
TTL = 86400.0
PRODUCTS = [Product(f"p-{n}", f"SKU-{n}", f"Product {n}", 100 * n, 1000) for n in range(1, 4)]
CATALOG = {p.id: p for p in PRODUCTS}
MS = timedelta(milliseconds=1)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url, cart_ttl_seconds=TTL))
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


async def commit(store: Store, cart: Cart, op: Op, at: datetime = NOW, emit: bool = False) -> Cart:
    new, change = apply(cart, op, CATALOG, at, ABANDON_AFTER)
    patch = encode(patch_msg(new, change, CATALOG, None)).decode()
    effects = (Emit(new.id, new.status.value, b'{"n":1}'),) if emit else ()
    await store.commit(CartWrite(new, cart.version, change, patch, None, None, effects))
    return new


async def filled(store: Store, cart_id: str, at: datetime = NOW) -> Cart:
    cart = await commit(store, Cart(id=cart_id, updated_at=at), AddItem("p-1", 1), at)
    return await commit(store, cart, AddItem("p-2", 2), at)


async def count(url: str, sql: str, *params: object) -> int:
    value: int = (await db_query(url, sql, *params))[0][0]
    return value


# --- due carts ----------------------------------------------------------------------------


async def test_due_carts_lists_overdue_abandonment_and_expiry_only(store: Store) -> None:
    due = await filled(store, "due", NOW)
    await filled(store, "later", NOW + timedelta(minutes=1))
    gone = await filled(store, "abandoned", NOW)
    gone = await commit(store, gone, Abandon(), NOW + timedelta(seconds=ABANDON_AFTER))
    unlocked = await commit(store, Cart(id="unlocked", updated_at=NOW), AddItem("p-1", 1))
    await commit(store, unlocked, SetStatus(Status.ACTIVE))  # back from checkout: armed again
    at = NOW + timedelta(seconds=ABANDON_AFTER)
    assert set(await store.due_carts(at, 10)) == {"due", "unlocked"}
    assert await store.due_carts(at - MS, 10) == []
    assert len(await store.due_carts(at, 1)) == 1
    # At the TTL every editable cart is due to expire: the abandoned one as well.
    expiry = await store.due_carts(NOW + timedelta(seconds=TTL + ABANDON_AFTER), 10)
    assert set(expiry) == {"due", "later", "abandoned", "unlocked"}
    assert due.abandon_at == at


async def test_an_empty_cart_is_never_due_for_abandonment(store: Store) -> None:
    cart = await commit(store, Cart(id="c", updated_at=NOW), AddItem("p-1", 1))
    cart = await commit(store, cart, SetStatus(Status.ACTIVE))
    await commit(store, cart, RemoveItem("p-1"))
    assert await store.due_carts(NOW + timedelta(days=0.5), 10) == []


# --- outbox -------------------------------------------------------------------------------


async def test_an_event_is_written_with_its_status_change_or_not_at_all(
    store: Store, database_url: str
) -> None:
    cart = await filled(store, "c")
    at = NOW + timedelta(seconds=ABANDON_AFTER)
    abandoned = await commit(store, cart, Abandon(), at, emit=True)
    with pytest.raises(StaleVersion):  # the same change again: refused, and no second event
        await commit(store, cart, Abandon(), at, emit=True)
    events = await store.list_events(undelivered=False, limit=10)
    assert [(e.cart_id, e.type, e.payload, e.attempts, e.delivered_at) for e in events] == [
        ("c", "abandoned", '{"n":1}', 0, None)
    ]
    assert events[0].created_at == iso(abandoned.updated_at)


async def test_claim_leases_events_and_event_sent_schedules_or_finishes_them(
    store: Store,
) -> None:
    for n in range(3):
        cart = await filled(store, f"c{n}")
        await commit(store, cart, Abandon(), NOW + timedelta(seconds=ABANDON_AFTER), emit=True)
    now = datetime.now(UTC)
    claimed = await store.claim_events(now, 30.0, 2)
    assert [e.cart_id for e in claimed] == ["c0", "c1"]  # oldest first, at most the limit
    assert [e.cart_id for e in await store.claim_events(now, 30.0, 10)] == ["c2"]
    assert await store.claim_events(now, 30.0, 10) == []  # all leased
    first, second = claimed
    await store.event_sent(first.id, True, now)
    await store.event_sent(second.id, False, now + timedelta(seconds=5))
    # The failed one comes back at its retry time, not before; the delivered one never.
    assert await store.claim_events(now + timedelta(seconds=4), 30.0, 10) == []
    again = await store.claim_events(now + timedelta(seconds=5), 30.0, 10)
    assert [(e.id, e.attempts) for e in again] == [(second.id, 1)]
    undelivered = await store.list_events(undelivered=True, limit=10)
    assert [e.cart_id for e in undelivered] == ["c1", "c2"]
    everything = await store.list_events(undelivered=False, limit=10)
    assert everything[0].delivered_at is not None and everything[0].attempts == 1


# --- user carts ---------------------------------------------------------------------------


async def test_one_open_cart_per_user(store: Store) -> None:
    mine = await commit(store, Cart(id="first", updated_at=NOW), Absorb((), "u1"))
    assert await store.user_cart("u1") == "first"
    assert await store.user_cart("u2") is None
    # Another device's cart for the same user, made at the same time: refused as stale.
    with pytest.raises(StaleVersion):
        await commit(store, Cart(id="second", updated_at=NOW), Absorb((), "u1"))
    assert await store.load_cart("second", NOW) is None
    # Once the first is finished the user may have another.
    await commit(store, mine, SetStatus(Status.CHECKED_OUT, "second"))
    assert await store.user_cart("u1") is None
    await commit(store, Cart(id="second", updated_at=NOW), Absorb((), "u1"))
    assert await store.user_cart("u1") == "second"


async def test_create_cart_effect_is_skipped_when_the_user_has_an_open_cart(
    store: Store,
) -> None:
    await store.record(CreateCart("made", "u1", NOW + timedelta(days=1)))
    assert await store.user_cart("u1") == "made"
    await store.record(CreateCart("another", "u1", NOW + timedelta(days=1)))
    assert await store.load_cart("another", NOW) is None
    stored = await store.load_cart("made", NOW)
    assert stored is not None and stored.cart.version == 0
    # The first write to the empty row takes it over (base version 0).
    await commit(store, stored.cart, Absorb((), "u1"))
    again = await store.load_cart("made", NOW)
    assert again is not None and (again.cart.version, again.cart.user_id) == (1, "u1")


# --- expiry and the purge -----------------------------------------------------------------


async def test_purge_deletes_the_rows_of_expired_carts_and_old_finished_carts(
    store: Store, database_url: str
) -> None:
    expired = await filled(store, "expired")
    expired = await commit(store, expired, Expire(TTL, "next"), NOW + timedelta(seconds=TTL))
    await filled(store, "active")
    old_merged = await filled(store, "old-merged")
    await commit(store, old_merged, SetStatus(Status.MERGED, "active"))
    new_merged = await filled(store, "new-merged", NOW + timedelta(days=2))
    await commit(store, new_merged, SetStatus(Status.MERGED, "active"), NOW + timedelta(days=2))
    await db_query(  # an id remembered for the expired cart
        database_url,
        "INSERT INTO applied_mutations (cart_id, key, version, created_at) VALUES (?, ?, ?, ?)",
        "expired",
        "k",
        1,
        iso(NOW),
    )

    async def rows(cart_id: str) -> tuple[int, ...]:
        return tuple(
            [
                await count(
                    database_url, f"SELECT count(*) FROM {table} WHERE {column} = ?", cart_id
                )
                for table, column in (
                    ("cart_sessions", "id"),
                    ("cart_items", "cart_id"),
                    ("cart_patches", "cart_id"),
                    ("applied_mutations", "cart_id"),
                )
            ]
        )

    assert await rows("expired") == (1, 2, 3, 1)
    # Finished carts last changed before the cutoff go entirely; the expired cart keeps its
    # header (a request for it still finds where to go) but not its lines and patches.
    deleted = await store.purge_expired(NOW + timedelta(days=1), limit=2)
    assert deleted == 2 + 3 + 1 + 1
    assert await rows("expired") == (1, 0, 0, 0)
    assert await rows("old-merged") == (0, 0, 0, 0)
    assert await rows("new-merged") == (1, 2, 3, 0)
    assert await rows("active") == (1, 2, 2, 0)
    stored = await store.load_cart("expired", NOW)
    assert stored is not None
    assert (stored.cart.status, stored.cart.lines, stored.cart.merged_into) == (
        Status.EXPIRED,
        (),
        "next",
    )
    assert await store.purge_expired(NOW + timedelta(days=1), limit=2) == 0
    assert expired.status is Status.EXPIRED


async def test_purge_works_in_bounded_batches(
    store: Store, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(7):
        cart = await filled(store, f"e{n}")
        await commit(store, cart, Expire(TTL, f"next-{n}"), NOW + timedelta(seconds=TTL))
    statements: list[str] = []
    async with traced(store, statements, monkeypatch):
        deleted = await store.purge_expired(NOW, limit=5)
    assert deleted == 7 * 2 + 7 * 3  # 14 lines, 21 patches
    deletes = [s for s in statements if s.startswith("DELETE")]
    # Lines: 5 + 5 + 4; patches: 5 x 4 + 1; ids: 0; headers: 0 — each its own transaction.
    assert len(deletes) == 3 + 5 + 1 + 1
    if isinstance(store, SQLiteStore):
        assert statements.count("BEGIN IMMEDIATE") >= len(deletes)
    else:  # no transaction opened around them: each statement commits on its own
        assert not any(s.upper().startswith("BEGIN") for s in statements)
    assert await count(database_url, "SELECT count(*) FROM cart_items") == 0


@contextlib.asynccontextmanager
async def traced(
    store: Store, statements: list[str], monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    """Every statement the store sends to its database meanwhile, in `statements`."""
    if isinstance(store, SQLiteStore):

        async def trace(callback: Callable[[str], object] | None) -> None:
            await store._write(lambda conn: conn.set_trace_callback(callback))

        await trace(statements.append)
        try:
            yield
        finally:
            await trace(None)
        return
    assert isinstance(store, PostgresStore)
    opened = store._connection

    def logged(query: Any) -> None:
        statements.append(query.query)

    @contextlib.asynccontextmanager
    async def connection(what: str) -> AsyncIterator[Any]:
        async with opened(what) as conn:
            conn.add_query_logger(logged)
            try:
                yield conn
            finally:
                conn.remove_query_logger(logged)

    monkeypatch.setattr(store, "_connection", connection)
    yield
