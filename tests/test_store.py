"""The stores: durable carts, compare-and-set, holding a cart, idempotency keys, catalog.
Every test that is not about one store's internals runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from server import errors
from server.cart import (
    Absorb,
    AddItem,
    Cart,
    ClearCart,
    Line,
    Op,
    Product,
    RemoveItem,
    SetQuantity,
    SetStatus,
    Status,
    apply,
)
from server.config import SCHEMA_PATH, ConfigError, Settings
from server.metrics import Metrics
from server.protocol import encode
from server.render import patch_msg
from server.store import AlreadyApplied, CartWrite, StaleVersion, Store, open_store
from server.store.carts import TRIM_STEP
from server.store.postgres import PostgresStore
from server.store.sqlite import SQLiteStore
from server.store.writer import MAX_BATCH
from tests.support import POSTGRES_URL, TcpProxy, fresh_schema

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
LONG_AGO = NOW - timedelta(days=365)
ABANDON_AFTER = 1800.0

PRODUCTS = [
    Product("p-001", "TEE-BLK-M", "Black tee (M)", 1999, 100, "/static/img/tee.svg"),
    Product("p-002", "MUG-WHT", "White mug", 500, 100),
    Product("p-003", "PEN-BLU", "Blue pen", 150, 100),
]
CATALOG: dict[str, Product] = {p.id: p for p in PRODUCTS}
# Known to the domain, never stored: a line for it violates the foreign key.
GHOST = Product("ghost", "GHOST", "Not in the products table", 100, 100)
WITH_GHOST: dict[str, Product] = {**CATALOG, GHOST.id: GHOST}

BATCHES = "cart_commit_batches_total"
WRITES = "cart_commit_writes_total"
COMMITS = "cart_commit_seconds"
TRANSACTIONS = "cart_commit_transaction_seconds"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "t.db"


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def store(database_url: str, metrics: Metrics) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url, patch_history=5), metrics)
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def sqlite_store(db_path: Path, metrics: Metrics) -> AsyncIterator[SQLiteStore]:
    opened = await SQLiteStore.open(
        Settings(database_url=f"sqlite:///{db_path}", patch_history=5), metrics
    )
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


def module_of(store: Store) -> Any:
    return sys.modules[type(store).__module__]


async def scalar(url: str, sql: str) -> Any:
    """One value read straight from the database, past the store."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            value = conn.execute(sql).fetchone()[0]
        conn.close()
        return value
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def build(
    cart: Cart,
    op: Op,
    *,
    at: datetime = NOW,
    key: str | None = None,
    response: bytes | None = None,
    request: str | None = None,
    catalog: Mapping[str, Product] = CATALOG,
) -> tuple[Cart, CartWrite]:
    """The next cart and the write that stores it, as a room would make them."""
    new, change = apply(cart, op, catalog, at, ABANDON_AFTER)
    patch = encode(patch_msg(new, change, catalog, "tab-1")).decode()
    write = CartWrite(
        cart=new,
        base_version=cart.version,
        change=change,
        patch=patch,
        key=key,
        response=response,
        request=request,
    )
    return new, write


def fresh(cart_id: str = "cart-1") -> Cart:
    return Cart(id=cart_id, updated_at=NOW)


async def commit_all(
    store: Store, cart: Cart, ops: list[Op], start: datetime = NOW
) -> tuple[Cart, list[CartWrite]]:
    writes = []
    for n, op in enumerate(ops):
        cart, write = build(cart, op, at=start + timedelta(seconds=n), key=f"k{n + 1}")
        await store.commit(write)
        writes.append(write)
    return cart, writes


# --- carts ----------------------------------------------------------------------------


async def test_unknown_cart_loads_as_none(store: Store) -> None:
    assert await store.load_cart("nope", LONG_AGO) is None


async def test_commit_then_load_roundtrip(store: Store) -> None:
    ops: list[Op] = [
        AddItem("p-002", 1),
        AddItem("p-001", 2),
        AddItem("p-003", 3),
        SetQuantity("p-002", 4),
        AddItem("p-001", 1),
    ]
    cart, writes = await commit_all(store, fresh(), ops)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart == cart
    assert stored.cart.version == 5
    assert stored.cart.status is Status.ACTIVE
    assert stored.cart.lines == (
        Line("p-002", 4, 500, 1, NOW),
        Line("p-001", 3, 1999, 2, NOW + timedelta(seconds=1)),
        Line("p-003", 3, 150, 3, NOW + timedelta(seconds=2)),
    )
    assert stored.cart.updated_at == NOW + timedelta(seconds=4)
    assert stored.cart.abandon_at == NOW + timedelta(seconds=4 + ABANDON_AFTER)
    assert stored.patches == [(w.cart.version, w.patch) for w in writes]
    assert stored.keys == {"k1": 1, "k2": 2, "k3": 3, "k4": 4, "k5": 5}


async def test_remove_re_add_and_clear_roundtrip(store: Store) -> None:
    repriced = {**CATALOG, "p-001": Product("p-001", "TEE-BLK-M", "Black tee (M)", 2500, 100)}
    cart, _ = await commit_all(
        store, fresh(), [AddItem("p-001", 1), AddItem("p-002", 1), RemoveItem("p-001")]
    )
    cart, write = build(cart, AddItem("p-001", 2), catalog=repriced)
    await store.commit(write)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart.lines == (
        Line("p-002", 1, 500, 2, NOW + timedelta(seconds=1)),
        Line("p-001", 2, 2500, 4, NOW),  # re-added: a new snapshot, taken at build()'s time
    )
    assert stored.cart == cart

    cart, write = build(cart, ClearCart())
    await store.commit(write)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart.lines == ()
    assert stored.cart.abandon_at is None
    assert stored.cart.version == 5


async def test_lines_added_in_one_version_load_in_the_order_they_were_added(
    store: Store,
) -> None:
    # A login pours lines into a cart in one version: they share a position, and their
    # price snapshots keep their own (unordered) times. The order stays the one they had.
    incoming = (
        Line("p-003", 1, 150, 1, NOW),
        Line("p-001", 1, 1999, 2, NOW - timedelta(days=1)),
        Line("p-002", 1, 500, 3, NOW),
    )
    cart, write = build(fresh(), Absorb(incoming, "u1"))
    await store.commit(write)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert [line.product_id for line in stored.cart.lines] == ["p-003", "p-001", "p-002"]
    assert {line.position for line in stored.cart.lines} == {1}
    assert stored.cart == cart


async def test_status_and_user_roundtrip(store: Store, database_url: str) -> None:
    cart, _ = await commit_all(store, fresh(), [AddItem("p-001", 1)])
    cart, write = build(cart, SetStatus(Status.CHECKING_OUT))
    await store.commit(write)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart.status is Status.CHECKING_OUT
    assert stored.cart.abandon_at is None
    assert stored.cart.lines == (Line("p-001", 1, 1999, 1, NOW),)

    expires_at = await scalar(
        database_url, "SELECT expires_at FROM cart_sessions WHERE id = 'cart-1'"
    )
    assert expires_at == "2026-12-26T10:00:00.000Z"  # updated_at + CART_TTL (30 days)


async def test_load_cart_only_lists_keys_since_the_given_time(store: Store) -> None:
    await commit_all(store, fresh(), [AddItem("p-001", 1), AddItem("p-001", 1)])
    stored = await store.load_cart("cart-1", NOW + timedelta(seconds=1))
    assert stored is not None
    assert stored.keys == {"k2": 2}


async def test_stale_base_version_raises_and_changes_nothing(store: Store) -> None:
    v0 = fresh()
    v1, write1 = build(v0, AddItem("p-001", 1), key="a")
    await store.commit(write1)
    v2, write2 = build(v1, AddItem("p-002", 1), key="b")
    await store.commit(write2)
    before = await store.load_cart("cart-1", LONG_AGO)

    _, stale = build(v1, AddItem("p-003", 1), key="c")
    with pytest.raises(StaleVersion):
        await store.commit(stale)
    _, stale_new = build(v0, AddItem("p-003", 1), key="d")  # base 0: inserts a cart that exists
    with pytest.raises(StaleVersion):
        await store.commit(stale_new)

    after = await store.load_cart("cart-1", LONG_AGO)
    assert after == before
    assert after is not None
    assert after.cart == v2
    assert "c" not in after.keys and "d" not in after.keys
    assert [v for v, _ in after.patches] == [1, 2]


async def test_repeated_key_raises_already_applied_and_changes_nothing(
    store: Store,
) -> None:
    v1, write1 = build(fresh(), AddItem("p-001", 1), key="m-1")
    await store.commit(write1)
    v2, write2 = build(v1, AddItem("p-002", 1), key="m-2")
    await store.commit(write2)
    before = await store.load_cart("cart-1", LONG_AGO)

    _, again = build(v2, AddItem("p-003", 5), key="m-1")
    with pytest.raises(AlreadyApplied) as info:
        await store.commit(again)
    assert info.value.version == 1

    after = await store.load_cart("cart-1", LONG_AGO)
    assert after == before
    assert after is not None
    assert after.cart.version == 2
    assert after.cart.line("p-003") is None
    assert after.keys == {"m-1": 1, "m-2": 2}


async def test_patch_history_is_trimmed_every_eight_versions_to_the_last_five(
    store: Store,
) -> None:
    # PATCH_HISTORY 5: versions 13 and 21 are the ones whose oldest kept (8, 16) is a
    # multiple of TRIM_STEP; in between, up to seven more are kept.
    assert TRIM_STEP == 8
    cart, writes = await commit_all(store, fresh(), [AddItem("p-001", 1) for _ in range(20)])
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart.version == 20
    assert stored.patches == [(w.cart.version, w.patch) for w in writes[8:]]  # 9 to 20
    _, last = build(cart, AddItem("p-001", 1), at=NOW + timedelta(seconds=20), key="k21")
    await store.commit(last)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.patches == [(w.cart.version, w.patch) for w in [*writes, last][-5:]]
    assert [v for v, _ in stored.patches] == [17, 18, 19, 20, 21]


# --- group commit ---------------------------------------------------------------------


async def test_concurrent_commits_all_land(store: Store, metrics: Metrics) -> None:
    batches, writes = metrics.value(BATCHES), metrics.value(WRITES)
    built = [build(fresh(f"cart-{n}"), AddItem("p-001", n % 5 + 1)) for n in range(50)]
    results = await asyncio.gather(*(store.commit(write) for _, write in built))
    assert results == [None] * 50
    assert metrics.value(WRITES) - writes == 50
    if isinstance(store, SQLiteStore):  # group commit: they share transactions
        assert 1 <= metrics.value(BATCHES) - batches < 50
    for cart, _ in built:
        stored = await store.load_cart(cart.id, LONG_AGO)
        assert stored is not None
        assert stored.cart == cart


async def test_one_failing_write_in_a_batch_fails_alone(store: Store, metrics: Metrics) -> None:
    batches = metrics.value(BATCHES)
    good = [build(fresh(f"good-{n}"), AddItem("p-002", 1)) for n in range(10)]
    bad_cart, bad = build(fresh("bad"), AddItem("ghost", 1), catalog=WITH_GHOST)
    writes = [w for _, w in good[:5]] + [bad] + [w for _, w in good[5:]]

    results = await asyncio.gather(*(store.commit(w) for w in writes), return_exceptions=True)

    if isinstance(store, SQLiteStore):
        # All eleven went into one transaction, so the bad one really shared it.
        assert metrics.value(BATCHES) - batches == 1
    assert isinstance(results[5], errors.Unavailable)
    assert results[:5] + results[6:] == [None] * 10
    assert await store.load_cart(bad_cart.id, LONG_AGO) is None
    for cart, _ in good:
        stored = await store.load_cart(cart.id, LONG_AGO)
        assert stored is not None
        assert stored.cart == cart


async def test_failing_update_of_an_existing_cart_leaves_it_as_it_was(
    store: Store,
) -> None:
    v1, write = build(fresh(), AddItem("p-001", 1), key="a")
    await store.commit(write)
    _, bad = build(v1, AddItem("ghost", 1), catalog=WITH_GHOST, key="b")
    with pytest.raises(errors.Unavailable):
        await store.commit(bad)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart == v1
    assert stored.keys == {"a": 1}
    assert [v for v, _ in stored.patches] == [1]
    # The cart is still writable at version 1.
    v2, write = build(v1, AddItem("p-002", 1))
    await store.commit(write)
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart == v2


@pytest.mark.parametrize(
    ("queued", "transactions"),
    [(5, 1), (MAX_BATCH, 1), (2 * MAX_BATCH + 5, 3)],
)
async def test_writes_queued_while_a_batch_commits_share_the_next_ones(
    sqlite_store: SQLiteStore, metrics: Metrics, queued: int, transactions: int
) -> None:
    """The writer's thread takes the next batch itself when a commit ends: whatever was
    queued meanwhile, in the order it came, MAX_BATCH at most in one transaction, each
    job with its own answer."""
    release = threading.Event()
    entered = threading.Event()

    def blocking(conn: sqlite3.Connection) -> str:
        entered.set()
        release.wait(10)
        return "first"

    first = sqlite_store._submit(blocking)
    await asyncio.to_thread(entered.wait, 10)
    batches = metrics.value(BATCHES)
    jobs = [sqlite_store._submit(lambda conn, n=n: n) for n in range(queued)]
    release.set()
    assert await first == "first"
    assert await asyncio.gather(*jobs) == list(range(queued))
    assert metrics.value(BATCHES) - batches == 1 + transactions  # the blocked one first


async def test_a_commit_reports_its_transaction_apart_from_its_wait(
    store: Store, metrics: Metrics
) -> None:
    """cart_commit_transaction_seconds times a store transaction alone; it is part of
    each of its writes' cart_commit_seconds, on both stores."""
    count, spent = metrics.value(TRANSACTIONS + "_count"), metrics.value(TRANSACTIONS + "_sum")
    waited = metrics.value(COMMITS + "_sum")
    await store.commit(build(fresh(), AddItem("p-001", 1))[1])
    assert metrics.value(TRANSACTIONS + "_count") - count == 1
    transaction = metrics.value(TRANSACTIONS + "_sum") - spent
    assert 0 < transaction <= metrics.value(COMMITS + "_sum") - waited


async def test_a_write_that_waits_in_line_waits_outside_its_transaction(
    sqlite_store: SQLiteStore, metrics: Metrics
) -> None:
    """What an operator reads apart in /metrics: a write queued behind a long transaction
    has the wait in its commit time, and its own transaction is only its own."""
    release = threading.Event()
    entered = threading.Event()
    first = sqlite_store._submit(lambda conn: (entered.set(), release.wait(10)))
    await asyncio.to_thread(entered.wait, 10)
    spent, waited = metrics.value(TRANSACTIONS + "_sum"), metrics.value(COMMITS + "_sum")
    queued = asyncio.ensure_future(sqlite_store.commit(build(fresh(), AddItem("p-001", 1))[1]))
    while sqlite_store._unfinished < 2:  # the write is in line behind the held transaction
        await asyncio.sleep(0)
    held_from = time.perf_counter()
    await asyncio.sleep(0.2)  # how long it waits in line: the figure measured below
    held = time.perf_counter() - held_from
    release.set()
    await first
    await queued
    transactions = metrics.value(TRANSACTIONS + "_sum") - spent  # the held one and its own
    commits = metrics.value(COMMITS + "_sum") - waited  # the same two, each from submission
    assert transactions >= held  # the held transaction is timed...
    assert commits - transactions >= held  # ...and the queued write's wait is not in its own


async def test_close_commits_what_was_submitted(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/c.db")
    store = await SQLiteStore.open(settings)
    await store.upsert_products(list(CATALOG.values()))
    built = [build(fresh(f"cart-{n}"), AddItem("p-001", 1)) for n in range(20)]
    pending = [store.start_commit(write) for _, write in built]
    await store.close()
    assert all(f.done() and f.exception() is None for f in pending)
    with pytest.raises(RuntimeError, match="closed"):
        store.start_commit(built[0][1])
    reopened = await SQLiteStore.open(settings)
    try:
        for cart, _ in built:
            stored = await reopened.load_cart(cart.id, LONG_AGO)
            assert stored is not None and stored.cart == cart
    finally:
        await reopened.close()


# --- idempotency keys -----------------------------------------------------------------


async def test_replay_returns_the_stored_response(store: Store) -> None:
    body = b'{"id":"cart-1","version":1}'
    v1, write = build(fresh(), AddItem("p-001", 1), key="rest-1", response=body, request="d1")
    await store.commit(write)
    _, write = build(v1, AddItem("p-001", 1), key="ws-1")
    await store.commit(write)
    assert await store.replay("cart-1", "rest-1") == (body, "d1")
    assert await store.replay("cart-1", "ws-1") == (None, None)
    assert await store.replay("cart-1", "never") == (None, None)
    assert await store.replay("other-cart", "rest-1") == (None, None)


async def test_an_older_file_gains_the_request_column(tmp_path: Path) -> None:
    """A database made before Idempotency-Key digests were stored opens, and works."""
    path = tmp_path / "old.db"
    old_schema = SCHEMA_PATH.read_text().replace(
        "    request    TEXT,", "    -- (no request column yet)"
    )
    assert "request    TEXT" not in old_schema
    with sqlite3.connect(path) as conn:
        conn.executescript(old_schema)
    store = await open_store(Settings(database_url=f"sqlite:///{path}"))
    try:
        await store.upsert_products(list(CATALOG.values()))
        _, write = build(fresh(), AddItem("p-001", 1), key="k", response=b"{}", request="d")
        await store.commit(write)
        assert await store.replay("cart-1", "k") == (b"{}", "d")
    finally:
        await store.close()


async def test_prune_deletes_only_keys_older_than_the_cutoff(store: Store) -> None:
    old = NOW - timedelta(days=2)
    ops: list[Op] = [AddItem("p-001", 1) for _ in range(4)]
    cart, _ = await commit_all(store, fresh(), ops[:2], start=old)  # k1, k2 two days ago
    for n, op in enumerate(ops[2:], start=3):
        cart, write = build(cart, op, at=NOW + timedelta(seconds=n), key=f"k{n}")
        await store.commit(write)

    assert await store.prune(NOW - timedelta(days=1)) == 2
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.keys == {"k3": 3, "k4": 4}
    assert stored.cart.version == 4
    assert await store.prune(NOW - timedelta(days=1)) == 0


async def test_prune_goes_through_more_than_one_batch(store: Store) -> None:
    count = module_of(store).PRUNE_BATCH + 20
    old = NOW - timedelta(days=2)
    built = [build(fresh(f"c-{n}"), AddItem("p-003", 1), at=old, key="k") for n in range(count)]
    await asyncio.gather(*(store.commit(w) for _, w in built))
    _, recent = build(fresh("recent"), AddItem("p-003", 1), key="k")
    await store.commit(recent)

    assert await store.prune(NOW - timedelta(days=1)) == count
    for cart_id in ("c-0", f"c-{count - 1}"):
        stored = await store.load_cart(cart_id, LONG_AGO)
        assert stored is not None
        assert stored.keys == {}
    stored = await store.load_cart("recent", LONG_AGO)
    assert stored is not None
    assert stored.keys == {"k": 1}


# --- products -------------------------------------------------------------------------


async def test_upsert_products_reports_inserted_and_updated(store: Store) -> None:
    changed = Product("p-001", "TEE-BLK-M", "Black tee (M)", 2499, 7, None)
    new = Product("p-004", "CAP-RED", "Red cap", 999, 3)
    assert await store.upsert_products([changed, new]) == (1, 1)
    products, _ = await store.load_products()
    assert {p.id: p for p in products} == {**CATALOG, "p-001": changed, "p-004": new}


async def test_upsert_products_sku_clash_names_the_product_and_changes_nothing(
    store: Store,
) -> None:
    before, _ = await store.load_products()
    new = Product("p-004", "CAP-RED", "Red cap", 999, 3)
    clash = Product("p-005", "MUG-WHT", "Another mug", 100, 1)
    with pytest.raises(ValueError, match="p-005") as info:
        await store.upsert_products([new, clash])
    assert "MUG-WHT" in str(info.value)
    after, _ = await store.load_products()
    assert after == before


async def test_load_products_with_a_high_water_mark(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    t1 = datetime(2030, 1, 1, 0, 0, 1, tzinfo=UTC)
    t2, t3 = t1 + timedelta(seconds=1), t1 + timedelta(seconds=2)
    clock = iter([t1, t2, t3])
    monkeypatch.setattr(module_of(store), "utcnow", lambda: next(clock))

    await store.upsert_products(
        [Product("q-1", "Q1", "One", 100, 1), Product("q-2", "Q2", "Two", 200, 2)]
    )  # t1
    everything, mark = await store.load_products()
    assert {p.id for p in everything} == {"p-001", "p-002", "p-003", "q-1", "q-2"}
    assert mark == "2030-01-01T00:00:01.000Z"

    await store.upsert_products([Product("q-2", "Q2", "Two", 250, 2)])  # t2
    changed, mark2 = await store.load_products("2030-01-01T00:00:01.500Z")
    assert changed == [Product("q-2", "Q2", "Two", 250, 2)]
    assert mark2 == "2030-01-01T00:00:02.000Z"

    await store.upsert_products([Product("q-3", "Q3", "Three", 300, 3)])  # t3
    changed, mark3 = await store.load_products(mark2)
    assert {p.id for p in changed} <= {"q-2", "q-3"}
    assert Product("q-3", "Q3", "Three", 300, 3) in changed
    assert "q-1" not in {p.id for p in changed}
    assert mark3 == "2030-01-01T00:00:03.000Z"

    nothing, mark4 = await store.load_products("2030-01-01T00:00:03.001Z")
    assert nothing == []
    assert mark4 == "2030-01-01T00:00:03.001Z"


async def test_upsert_products_may_swap_skus(store: Store) -> None:
    swapped = [
        Product("p-001", "MUG-WHT", "Black tee (M)", 1999, 100),
        Product("p-002", "TEE-BLK-M", "White mug", 500, 100),
    ]
    assert await store.upsert_products(swapped) == (0, 2)
    products, _ = await store.load_products()
    assert {p.id: p.sku for p in products} == {
        "p-001": "MUG-WHT",
        "p-002": "TEE-BLK-M",
        "p-003": "PEN-BLU",
    }


# --- several processes ----------------------------------------------------------------


async def test_versions_reads_many_carts_in_one_call(store: Store) -> None:
    await commit_all(store, fresh("a"), [AddItem("p-001", 1)] * 3)
    await commit_all(store, fresh("b"), [AddItem("p-002", 1)])
    assert await store.versions(["a", "b", "never"]) == {"a": 3, "b": 1}
    assert await store.versions([]) == {}


async def test_hold_keeps_other_commits_out_until_it_ends(store: Store, database_url: str) -> None:
    v1, write = build(fresh(), AddItem("p-001", 1))
    await store.commit(write)
    other = await open_store(Settings(database_url=database_url, patch_history=5))
    try:
        _, racing = build(v1, AddItem("p-002", 1), key="theirs")
        async with store.hold("cart-1") as held:
            stored = await held.load(LONG_AGO)
            assert stored is not None and stored.cart == v1
            racer = asyncio.create_task(other.commit(racing))  # another process, same cart
            done, _ = await asyncio.wait([racer], timeout=0.3)
            assert not done  # it waits for the hold
            v2, mine = build(v1, AddItem("p-003", 2), key="mine")
            await held.commit(mine)
        with pytest.raises(StaleVersion):  # it lost, and knows it: it will catch up
            await racer
    finally:
        await other.close()
    stored = await store.load_cart("cart-1", LONG_AGO)
    assert stored is not None
    assert stored.cart == v2
    assert stored.keys == {"mine": 2}


async def test_hold_of_a_cart_never_stored_loads_none(store: Store) -> None:
    async with store.hold("new-cart") as held:
        assert await held.load(LONG_AGO) is None
        cart, write = build(fresh("new-cart"), AddItem("p-001", 1))
        await held.commit(write)
    stored = await store.load_cart("new-cart", LONG_AGO)
    assert stored is not None and stored.cart == cart


async def test_postgres_hold_commits_nothing_when_the_block_fails() -> None:
    async with fresh_schema() as url:
        store = await open_store(Settings(database_url=url))
        try:
            await store.upsert_products(PRODUCTS)
            v1, write = build(fresh(), AddItem("p-001", 1))
            await store.commit(write)
            with pytest.raises(RuntimeError):
                async with store.hold("cart-1") as held:
                    _, write = build(v1, AddItem("p-002", 1))
                    await held.commit(write)
                    raise RuntimeError("the room failed after staging the write")
            stored = await store.load_cart("cart-1", LONG_AGO)
            assert stored is not None and stored.cart == v1
        finally:
            await store.close()


async def test_postgres_processes_starting_at_once_migrate_one_at_a_time() -> None:
    async with fresh_schema() as url:
        settings = Settings(database_url=url)
        stores = await asyncio.gather(*(PostgresStore.open(settings) for _ in range(4)))
        try:
            await stores[0].upsert_products(PRODUCTS)
            products, _ = await stores[3].load_products()
            assert products == PRODUCTS
        finally:
            await asyncio.gather(*(s.close() for s in stores))


async def test_postgres_out_of_reach_is_unavailable_and_recovers() -> None:
    async with fresh_schema() as url:
        host_port = POSTGRES_URL.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        proxy = await TcpProxy(host, int(port)).start()
        store = await open_store(
            Settings(database_url=url.replace(host_port, f"127.0.0.1:{proxy.port}"))
        )
        try:
            await store.upsert_products(PRODUCTS)
            v1, write = build(fresh(), AddItem("p-001", 1))
            await store.commit(write)
            await proxy.cut()
            v2, write = build(v1, AddItem("p-002", 1))
            with pytest.raises(errors.Unavailable):
                await store.commit(write)
            with pytest.raises(errors.Unavailable):
                await store.load_cart("cart-1", LONG_AGO)
            with pytest.raises(errors.Unavailable):
                await store.ping()
            await proxy.restore()
            await store.ping()
            await store.commit(write)  # nothing of the failed attempt was stored
            stored = await store.load_cart("cart-1", LONG_AGO)
            assert stored is not None and stored.cart == v2
        finally:
            await store.close()
            await proxy.cut()


async def test_unknown_database_scheme_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ConfigError, match="'mysql' is not supported"):
        await open_store(Settings(database_url="mysql://localhost/cart"))


# --- pragmas --------------------------------------------------------------------------


async def writer_pragma(store: SQLiteStore, name: str) -> object:
    return await store._write(lambda conn: conn.execute(f"PRAGMA {name}").fetchone()[0])


async def test_wal_mode_and_full_synchronous_by_default(
    sqlite_store: SQLiteStore, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        conn.close()
    assert await writer_pragma(sqlite_store, "synchronous") == 2  # FULL
    assert await writer_pragma(sqlite_store, "foreign_keys") == 1
    await sqlite_store.ping()


async def test_synchronous_follows_the_setting(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/n.db", sqlite_synchronous="NORMAL")
    store = await SQLiteStore.open(settings)
    try:
        assert await writer_pragma(store, "synchronous") == 1  # NORMAL
    finally:
        await store.close()


async def test_data_survives_reopening(database_url: str, store: Store) -> None:
    cart, _ = await commit_all(store, fresh(), [AddItem("p-001", 2)])
    other = await open_store(Settings(database_url=database_url))
    try:
        stored = await other.load_cart("cart-1", LONG_AGO)
        assert stored is not None
        assert stored.cart == cart
    finally:
        await other.close()


# --- edits written together (SQLite: carts.write_many) -------------------------------


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every cart row in the file, in key order: what a write leaves, past the store."""
    queries = {
        "carts": "SELECT * FROM cart_sessions ORDER BY id",
        "lines": "SELECT * FROM cart_items ORDER BY cart_id, product_id",
        "patches": "SELECT * FROM cart_patches ORDER BY cart_id, version",
        "keys": "SELECT * FROM applied_mutations ORDER BY cart_id, key",
    }
    with sqlite3.connect(path) as conn:
        rows = {name: conn.execute(sql).fetchall() for name, sql in queries.items()}
    conn.close()
    return rows


async def test_edits_written_together_leave_the_rows_written_one_at_a_time(
    tmp_path: Path, metrics: Metrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.store import sqlite as sqlite_module

    runs: list[int] = []
    write_many = sqlite_module.write_many
    alone_now = False

    def counted(writes: list[CartWrite], *args: Any) -> Any:
        runs.append(len(writes))
        if alone_now:  # refused before a row is written: write_cart writes it alone
            raise RuntimeError("one at a time")
        return (yield from write_many(writes, *args))

    monkeypatch.setattr(sqlite_module, "write_many", counted)
    carts = {name: fresh(name) for name in ("a", "b", "c")}
    firsts, edits = [], []
    for name in carts:
        carts[name], write = build(carts[name], AddItem("p-001", 1), key=f"{name}0")
        firsts.append(write)
    script: list[tuple[str, Op]] = [
        ("a", AddItem("p-002", 2)),
        ("b", RemoveItem("p-001")),
        ("a", RemoveItem("p-001")),
        ("c", SetQuantity("p-001", 4)),
        ("a", AddItem("p-001", 3)),  # dropped, then put again: a new line
        ("b", AddItem("p-003", 1)),
        ("c", ClearCart()),
        ("b", SetQuantity("p-003", 2)),
        ("c", AddItem("p-002", 1)),
        ("a", SetQuantity("p-002", 5)),
        ("b", RemoveItem("p-003")),  # put, then dropped
    ]
    for n, (name, op) in enumerate(script, 1):
        at = NOW + timedelta(seconds=n)
        response = b'{"answer": %d}' % n if n % 3 == 0 else None
        carts[name], write = build(carts[name], op, at=at, key=f"k{n}", response=response)
        edits.append(write)

    stores = []
    for name in ("together", "alone"):
        settings = Settings(database_url=f"sqlite:///{tmp_path / name}.db", patch_history=3)
        stores.append(await SQLiteStore.open(settings, metrics))
    together, alone = stores
    try:
        for store in stores:
            await store.upsert_products(PRODUCTS)
            for write in firsts:
                await store.commit(write)
        batches = metrics.value(BATCHES)
        # Submitted in one loop turn: one transaction, one run of edits together.
        await asyncio.gather(*(together.start_commit(write) for write in edits))
        assert metrics.value(BATCHES) - batches == 1 and runs == [len(edits)]
        alone_now = True
        for write in edits:
            await alone.commit(write)
        assert runs == [len(edits)] + [1] * len(edits)  # each tried, and written alone
        for cart in carts.values():
            stored = await together.load_cart(cart.id, LONG_AGO)
            assert stored is not None and stored.cart == cart
    finally:
        for store in stores:
            await store.close()
    assert dump(tmp_path / "together.db") == dump(tmp_path / "alone.db")


async def test_a_batch_of_edits_is_one_statement_in_its_own_transaction(
    sqlite_store: SQLiteStore, metrics: Metrics
) -> None:
    # Each statement is a trip into SQLite that waits to take the GIL back: five edits of
    # five carts are one insert into the view whose trigger writes them, with no BEGIN,
    # savepoint or COMMIT around it.
    carts = [fresh(f"cart-{n}") for n in range(5)]
    edits = []
    for n, cart in enumerate(carts):
        cart, write = build(cart, AddItem("p-001", 1), key=f"first-{n}")
        await sqlite_store.commit(write)
        edits.append(build(cart, AddItem("p-002", 1), key=f"next-{n}")[1])
    statements: list[str] = []
    await sqlite_store._write(lambda conn: conn.set_trace_callback(statements.append))
    batches = metrics.value(BATCHES)
    await asyncio.gather(*(sqlite_store.start_commit(write) for write in edits))
    assert metrics.value(BATCHES) - batches == 1
    await sqlite_store._write(lambda conn: conn.set_trace_callback(None))
    # Between the transactions of the jobs that trace: the trace names the statement
    # again for each statement of its trigger.
    start = statements.index("COMMIT") + 1
    batch = set(statements[start : statements.index("BEGIN IMMEDIATE", start)])
    assert [sql[:40] for sql in batch] == ["INSERT INTO edits (heads, keys, answers,"]
    for cart in carts:
        stored = await sqlite_store.load_cart(cart.id, LONG_AGO)
        assert stored is not None and stored.cart.version == 2
        assert [line.product_id for line in stored.cart.lines] == ["p-001", "p-002"]


async def test_an_edit_refused_among_edits_written_together_fails_alone(
    sqlite_store: SQLiteStore, metrics: Metrics
) -> None:
    carts = [fresh(f"cart-{n}") for n in range(4)]
    for n, cart in enumerate(carts):
        carts[n], write = build(cart, AddItem("p-001", 1), key="first")
        await sqlite_store.commit(write)
    good = [build(cart, AddItem("p-002", 1), key=f"good-{n}") for n, cart in enumerate(carts)]
    _, repeated = build(carts[2], AddItem("p-003", 1), key="first")  # an applied key
    _, stale = build(carts[0], AddItem("p-003", 1))  # version 1, which good[0] moves on
    writes = [good[0][1], good[1][1], repeated, good[2][1], stale, good[3][1]]
    batches = metrics.value(BATCHES)
    results = await asyncio.gather(
        *(sqlite_store.start_commit(w) for w in writes), return_exceptions=True
    )
    assert metrics.value(BATCHES) - batches == 1
    assert isinstance(results[2], AlreadyApplied) and results[2].version == 1
    assert isinstance(results[4], StaleVersion)
    assert [results[n] for n in (0, 1, 3, 5)] == [None] * 4
    for cart, _ in good:
        stored = await sqlite_store.load_cart(cart.id, LONG_AGO)
        assert stored is not None and stored.cart.version == 2
