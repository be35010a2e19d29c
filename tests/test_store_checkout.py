"""The stores' checkout effects: what each does to stock, checkouts, orders and payment
events, all or nothing in the transaction of the cart write that carries it. Every test
runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from server import errors
from server.cart import AddItem, Cart, Op, Product, SetStatus, StartCheckout, Status, apply
from server.config import Settings
from server.metrics import Metrics
from server.protocol import encode
from server.render import patch_msg
from server.store import (
    Archived,
    AttachSession,
    CartWrite,
    Checkout,
    CheckoutLine,
    CheckoutMoved,
    DuplicateEvent,
    Effect,
    Fulfil,
    Order,
    OrderLine,
    ProductChange,
    RecordEvent,
    Release,
    Reserve,
    ShortStock,
    Store,
    open_store,
)
from tests.support import db_query

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
PRODUCTS = [
    Product("tee", "TEE", "Tee", 2000, 5),
    Product("mug", "MUG", "Mug", 500, 2),
    Product("pen", "PEN", "Pen", 150, 100),
]
CATALOG = {p.id: p for p in PRODUCTS}


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
async def store(database_url: str, metrics: Metrics) -> AsyncIterator[Store]:
    opened = await open_store(Settings(database_url=database_url), metrics)
    try:
        await opened.upsert_products(PRODUCTS)
        yield opened
    finally:
        await opened.close()


def write(cart: Cart, op: Op, effects: tuple[Effect, ...] = ()) -> tuple[Cart, CartWrite]:
    new, change = apply(cart, op, CATALOG, NOW, 1800.0)
    patch = encode(patch_msg(new, change, CATALOG, None)).decode()
    return new, CartWrite(new, cart.version, change, patch, effects=effects)


async def cart_holding(store: Store, cart_id: str, lines: list[tuple[str, int]]) -> Cart:
    cart = Cart(id=cart_id, updated_at=NOW)
    for pid, quantity in lines:
        cart, w = write(cart, AddItem(pid, quantity))
        await store.commit(w)
    return cart


def checkout_for(cart: Cart, checkout_id: str, expires: datetime = NOW) -> Checkout:
    lines = tuple(CheckoutLine(x.product_id, x.quantity, x.unit_price_cents) for x in cart.lines)
    return Checkout(
        id=checkout_id,
        cart_id=cart.id,
        cart_version=cart.version,
        provider="demo",
        status="reserved",
        lines=lines,
        amount_cents=sum(x.quantity * x.unit_price_cents for x in lines),
        currency="usd",
        expires_at=expires,
    )


async def reserve(
    store: Store, cart: Cart, checkout_id: str, expires: datetime = NOW
) -> tuple[Cart, Checkout]:
    """StartCheckout with its Reserve effect, as Checkouts.start commits it."""
    new, change = apply(cart, StartCheckout(), CATALOG, NOW, 1800.0)
    checkout = checkout_for(new, checkout_id, expires)
    _, w = write(cart, StartCheckout(), (Reserve(checkout),))
    await store.commit(w)
    return new, checkout


def order_for(checkout: Checkout, amount: int | None = None) -> Order:
    return Order(
        id=f"order-{checkout.id}",
        checkout_id=checkout.id,
        cart_id=checkout.cart_id,
        user_id=None,
        session_id=checkout.session_id,
        payment_intent="pi_1",
        amount_total_cents=checkout.amount_cents if amount is None else amount,
        currency=checkout.currency,
        lines=tuple(
            OrderLine(x.product_id, CATALOG[x.product_id].sku, CATALOG[x.product_id].name,
                      x.quantity, x.unit_price_cents)
            for x in checkout.lines
        ),
    )  # fmt: skip


async def stocks(url: str) -> dict[str, int]:
    return dict(await db_query(url, "SELECT id, stock FROM products"))


async def query(url: str, sql: str) -> list[Any]:
    return await db_query(url, sql)


# --- Reserve -----------------------------------------------------------------------------


async def test_reserve_takes_the_stock_and_locks_the_cart_in_one_write(
    store: Store, database_url: str
) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 2)])
    locked, checkout = await reserve(store, cart, "co-1")
    assert await stocks(database_url) == {"tee": 3, "mug": 0, "pen": 100}
    assert await store.open_checkout("c1") == checkout
    assert await store.load_checkout("co-1") == checkout
    stored = await store.load_cart("c1", NOW)
    assert stored is not None and stored.cart.status is Status.CHECKING_OUT
    assert stored.cart.version == locked.version == checkout.cart_version


async def test_a_short_line_reserves_nothing_and_stores_no_cart_change(
    store: Store, database_url: str
) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 2), ("pen", 1)])
    other = await cart_holding(store, "c2", [("mug", 1)])
    await reserve(store, other, "co-other")
    with pytest.raises(ShortStock) as short:
        await reserve(store, cart, "co-1")
    assert short.value.lines == [{"product_id": "mug", "requested": 2, "available": 1}]
    assert await stocks(database_url) == {"tee": 5, "mug": 1, "pen": 100}  # tee and pen given back
    stored = await store.load_cart("c1", NOW)
    assert stored is not None and stored.cart.version == cart.version
    assert stored.cart.status is Status.ACTIVE
    assert await store.load_checkout("co-1") is None
    assert await query(
        database_url, "SELECT COUNT(*) FROM checkout_items WHERE checkout_id = 'co-1'"
    ) == [(0,)]


async def test_a_line_of_an_archived_product_reserves_nothing(
    store: Store, database_url: str
) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 1)])
    await store.change_product("mug", ProductChange(active=False))
    with pytest.raises(Archived) as archived:
        await reserve(store, cart, "co-1")
    assert archived.value.product_ids == ["mug"]
    assert await stocks(database_url) == {"tee": 5, "mug": 2, "pen": 100}
    assert await store.load_checkout("co-1") is None
    await store.change_product("mug", ProductChange(active=True))
    await reserve(store, cart, "co-1")
    assert await stocks(database_url) == {"tee": 3, "mug": 1, "pen": 100}


async def test_products_are_read_by_id_as_stored_now(store: Store) -> None:
    await store.change_product("mug", ProductChange(stock_delta=-1, active=False))
    found = {p.id: p for p in await store.products_by_id(["mug", "nope", "tee"])}
    assert found == {
        "mug": Product("mug", "MUG", "Mug", 500, 1, None, False),
        "tee": Product("tee", "TEE", "Tee", 2000, 5),
    }


async def test_concurrent_reservations_never_oversell(
    store: Store, database_url: str, metrics: Metrics
) -> None:
    carts = [await cart_holding(store, f"c{n}", [("tee", 1)]) for n in range(12)]
    before = metrics.value("cart_commit_batches_total")
    results = await asyncio.gather(
        *(reserve(store, cart, f"co-{n}") for n, cart in enumerate(carts)), return_exceptions=True
    )
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 5 and len(lost) == 7
    assert all(isinstance(r, ShortStock) for r in lost)
    assert all(r.lines == [{"product_id": "tee", "requested": 1, "available": 0}] for r in lost)
    assert (await stocks(database_url))["tee"] == 0
    assert len(await query(database_url, "SELECT id FROM checkouts")) == 5
    if database_url.startswith("sqlite:"):
        # They went to the writer together: far fewer transactions than writes.
        assert metrics.value("cart_commit_batches_total") - before <= 3


async def test_reservations_of_the_same_products_in_other_orders_never_deadlock(
    store: Store, database_url: str
) -> None:
    # Two products in opposite line orders in concurrent carts: on PostgreSQL each
    # transaction locks the product rows it takes, so taking them in line order would
    # deadlock (and fail one of them as unavailable).
    carts = [
        await cart_holding(store, f"c{n}", [("tee", 1), ("pen", 1)][:: 1 if n % 2 else -1])
        for n in range(10)
    ]
    results = await asyncio.gather(
        *(reserve(store, cart, f"co-{n}") for n, cart in enumerate(carts)), return_exceptions=True
    )
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(lost) == 5, lost
    for short in lost:  # only the line that ran out is named
        assert isinstance(short, ShortStock), short
        assert short.lines == [{"product_id": "tee", "requested": 1, "available": 0}]
    assert await stocks(database_url) == {"tee": 0, "mug": 2, "pen": 95}


async def test_one_reservation_per_cart(store: Store, database_url: str) -> None:
    cart = await cart_holding(store, "c1", [("tee", 1)])
    _, first = await reserve(store, cart, "co-1")
    # A second Reserve for the same cart (a bug elsewhere): refused, no stock taken.
    rogue = Checkout(**{**_fields(first), "id": "co-2"})
    with pytest.raises(errors.Unavailable):
        await store.record(Reserve(rogue))
    assert (await stocks(database_url))["tee"] == 4
    assert await store.load_checkout("co-2") is None


def _fields(checkout: Checkout) -> dict[str, Any]:
    return {name: getattr(checkout, name) for name in checkout.__struct_fields__}


# --- Release -----------------------------------------------------------------------------


async def test_release_gives_every_line_back_once(store: Store, database_url: str) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 1)])
    locked, checkout = await reserve(store, cart, "co-1")
    _, unlock = write(locked, SetStatus(Status.ACTIVE), (Release("co-1"),))
    await store.commit(unlock)
    assert await stocks(database_url) == {"tee": 5, "mug": 2, "pen": 100}
    assert (await store.load_checkout("co-1")).status == "released"  # type: ignore[union-attr]
    assert await store.open_checkout("c1") is None
    with pytest.raises(CheckoutMoved):
        await store.record(Release("co-1"))
    assert await stocks(database_url) == {"tee": 5, "mug": 2, "pen": 100}


async def test_a_duplicate_event_undoes_the_effect_it_came_with(
    store: Store, database_url: str
) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2)])
    await reserve(store, cart, "co-1")
    await store.record(RecordEvent("evt_1", "checkout.session.expired"))
    with pytest.raises(DuplicateEvent):
        await store.record(Release("co-1"), RecordEvent("evt_1", "checkout.session.expired"))
    assert (await stocks(database_url))["tee"] == 3
    assert (await store.load_checkout("co-1")).status == "reserved"  # type: ignore[union-attr]


# --- Fulfil ------------------------------------------------------------------------------


async def test_fulfil_turns_the_reservation_into_one_order(store: Store, database_url: str) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("pen", 3)])
    locked, checkout = await reserve(store, cart, "co-1")
    await store.record(AttachSession("co-1", "cs_1", "https://pay/cs_1"))
    checkout = await store.load_checkout("co-1")  # type: ignore[assignment]
    assert (checkout.session_id, checkout.url) == ("cs_1", "https://pay/cs_1")
    order = order_for(checkout, amount=4000)
    _, done = write(
        locked, SetStatus(Status.CHECKED_OUT, "next"), (Fulfil(order), RecordEvent("e1", "x"))
    )
    await store.commit(done)
    assert await stocks(database_url) == {
        "tee": 3,
        "mug": 2,
        "pen": 97,
    }  # what was reserved is sold
    assert await query(
        database_url,
        "SELECT checkout_id, session_id, payment_intent, amount_total_cents, status FROM orders",
    ) == [("co-1", "cs_1", "pi_1", 4000, "paid")]
    assert await query(
        database_url,
        "SELECT product_id, quantity, unit_price_cents, line_total_cents FROM order_items"
        " ORDER BY product_id",
    ) == [("pen", 3, 150, 450), ("tee", 2, 2000, 4000)]
    assert (await store.load_checkout("co-1")).status == "paid"  # type: ignore[union-attr]
    with pytest.raises(CheckoutMoved):
        await store.record(Fulfil(order_for(checkout)), RecordEvent("e2", "x"))
    assert await query(database_url, "SELECT COUNT(*) FROM orders") == [(1,)]
    assert await query(database_url, "SELECT event_id FROM payment_events") == [("e1",)]
    # The order's event, written with it (and not again by the refused second payment).
    [(cart_id, kind, payload)] = await query(
        database_url, "SELECT cart_id, type, payload FROM cart_events"
    )
    event = json.loads(payload)
    [(order_id, created_at)] = await query(database_url, "SELECT id, created_at FROM orders")
    assert (cart_id, kind) == ("c1", "order_paid")
    assert event == {
        "id": order_id, "cart_id": "c1", "user_id": None, "status": "paid",
        "amount_cents": 4000, "currency": "usd", "payment_intent": "pi_1",
        "created_at": created_at, "type": "order_paid", "at": created_at,
        "items": [
            {"product_id": "tee", "sku": "TEE", "name": "Tee", "quantity": 2,
             "unit_price_cents": 2000},
            {"product_id": "pen", "sku": "PEN", "name": "Pen", "quantity": 3,
             "unit_price_cents": 150},
        ],
    }  # fmt: skip
    assert await store.load_order(order_id) is not None


async def test_paid_after_release_takes_the_stock_again(store: Store, database_url: str) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 1)])
    _, checkout = await reserve(store, cart, "co-1")
    await store.record(Release("co-1"))
    await store.record(Fulfil(order_for(checkout)))
    assert await stocks(database_url) == {"tee": 3, "mug": 1, "pen": 100}
    assert await query(database_url, "SELECT status FROM orders") == [("paid",)]


async def test_paid_after_release_with_the_stock_gone_needs_review(
    store: Store, database_url: str
) -> None:
    cart = await cart_holding(store, "c1", [("tee", 2), ("mug", 2)])
    _, checkout = await reserve(store, cart, "co-1")
    await store.record(Release("co-1"))
    other = await cart_holding(store, "c2", [("mug", 1)])
    await reserve(store, other, "co-2")
    await store.record(Fulfil(order_for(checkout)))
    # tee was there and is taken; mug (2 wanted, 1 left) is not: never below zero.
    assert await stocks(database_url) == {"tee": 3, "mug": 1, "pen": 100}
    assert await query(database_url, "SELECT status FROM orders") == [("needs_review",)]
    [(kind, payload)] = await query(database_url, "SELECT type, payload FROM cart_events")
    assert kind == "order_needs_review"
    assert json.loads(payload)["status"] == "needs_review"
    assert (await store.load_checkout("co-1")).status == "paid"  # type: ignore[union-attr]


async def test_payment_racing_a_release_sells_the_stock_once(
    store: Store, database_url: str
) -> None:
    # The sweeper releasing a checkout while its payment arrives (another process, on
    # PostgreSQL): whichever comes first, the order holds its stock and nothing is given
    # back for a paid checkout.
    checkouts = []
    for n in range(10):
        cart = await cart_holding(store, f"c{n}", [("pen", 2)])
        checkouts.append((await reserve(store, cart, f"co-{n}"))[1])
    assert (await stocks(database_url))["pen"] == 80
    results = await asyncio.gather(
        *(
            effect
            for checkout in checkouts
            for effect in (
                store.record(Release(checkout.id)),
                store.record(Fulfil(order_for(checkout))),
            )
        ),
        return_exceptions=True,
    )
    assert all(r is None or isinstance(r, CheckoutMoved) for r in results), results
    assert (await stocks(database_url))["pen"] == 80
    assert await query(database_url, "SELECT status, count(*) FROM orders GROUP BY status") == [
        ("paid", 10)
    ]


# --- the sweeper's view ------------------------------------------------------------------


async def test_due_checkouts_are_the_reserved_ones_past_expiry_oldest_first(
    store: Store,
) -> None:
    made = {}
    for n, minutes in enumerate([-5, -30, 10, -1]):
        cart = await cart_holding(store, f"c{n}", [("pen", 1)])
        _, made[n] = await reserve(store, cart, f"co-{n}", NOW + timedelta(minutes=minutes))
    await store.record(Release("co-3"))
    due = await store.due_checkouts(NOW, 10)
    assert [c.id for c in due] == ["co-1", "co-0"]
    assert [c.id for c in await store.due_checkouts(NOW, 1)] == ["co-1"]
    assert due[0].lines == made[1].lines
