"""What the PostgreSQL store writes beside a cart in the same transaction: stock
reservations, orders, payment events, outbox events, user carts (the store's Effects),
statement for statement as in sqlite_effects.py."""

from __future__ import annotations

from typing import Any

import asyncpg

from ..clock import iso, parse_iso
from . import (
    Archived,
    AttachSession,
    Checkout,
    CheckoutLine,
    CheckoutMoved,
    CreateCart,
    DuplicateEvent,
    Effect,
    Emit,
    Fulfil,
    Order,
    RecordEvent,
    Release,
    Reserve,
    ShortStock,
    TooManyHolds,
    order_event,
)


def rowcount(status: str) -> int:
    """The row count of a command tag: 'UPDATE 1' -> 1, 'INSERT 0 1' -> 1."""
    return int(status.rsplit(" ", 1)[1])


def checkout_from_row(row: Any, lines: list[CheckoutLine]) -> Checkout:
    id_, cart_id, version, provider, status, amount, currency, expires, session, url = row
    return Checkout(
        id=id_,
        cart_id=cart_id,
        cart_version=version,
        provider=provider,
        status=status,
        lines=tuple(lines),
        amount_cents=amount,
        currency=currency,
        expires_at=parse_iso(expires),
        session_id=session,
        url=url,
    )


async def apply_effects(conn: asyncpg.Connection, effects: tuple[Effect, ...], now: str) -> None:
    for effect in effects:
        match effect:
            case Reserve(checkout, holder, cap):
                await _reserve(conn, checkout, now)
                if holder is not None:
                    await _hold(conn, checkout.id, holder, cap)
            case Release(checkout_id):
                status = await conn.execute(
                    "UPDATE checkouts SET status = 'released', updated_at = $1"
                    " WHERE id = $2 AND status = 'reserved'",
                    now,
                    checkout_id,
                )
                if rowcount(status) != 1:
                    raise CheckoutMoved(checkout_id)
                # Product rows locked in id order, as reservations take them: no deadlock.
                await conn.execute(
                    "SELECT 1 FROM products WHERE id IN (SELECT product_id FROM checkout_items"
                    " WHERE checkout_id = $1) ORDER BY id FOR UPDATE",
                    checkout_id,
                )
                await conn.execute(
                    "UPDATE products SET updated_at = $1, stock = stock + (SELECT quantity"
                    " FROM checkout_items WHERE checkout_id = $2 AND product_id = products.id)"
                    " WHERE id IN (SELECT product_id FROM checkout_items WHERE checkout_id = $2)",
                    now,
                    checkout_id,
                )
            case Fulfil(order):
                await _fulfil(conn, order, now)
            case AttachSession(checkout_id, session_id, url):
                await conn.execute(
                    "UPDATE checkouts SET session_id = $1, url = $2, updated_at = $3 WHERE id = $4",
                    session_id,
                    url,
                    now,
                    checkout_id,
                )
            case Emit(cart_id, kind, payload):
                await conn.execute(
                    "INSERT INTO cart_events (cart_id, type, payload, created_at, next_attempt_at)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    cart_id,
                    kind,
                    payload.decode(),
                    now,
                    now,
                )
            case CreateCart(cart_id, user_id, expires_at):
                # No conflict target: a clash on the id or on the user's open cart (SQLite's
                # IntegrityError) is skipped without voiding the transaction.
                await conn.execute(
                    "INSERT INTO cart_sessions (id, user_id, status, version, expires_at,"
                    " created_at, updated_at) VALUES ($1, $2, 'active', 0, $3, $4, $5)"
                    " ON CONFLICT DO NOTHING",
                    cart_id,
                    user_id,
                    iso(expires_at),
                    now,
                    now,
                )
            case RecordEvent(event_id, kind):
                status = await conn.execute(
                    "INSERT INTO payment_events (event_id, type, received_at) VALUES ($1, $2, $3)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    event_id,
                    kind,
                    now,
                )
                if rowcount(status) != 1:
                    raise DuplicateEvent(event_id)


async def _take_stock(
    conn: asyncpg.Connection, lines: tuple[CheckoutLine, ...], now: str
) -> list[dict[str, object]]:
    """Decrement stock for each line where it suffices; the lines where it did not."""
    short: dict[str, dict[str, object]] = {}
    # Rows taken in id order by every transaction: two carts holding the same products
    # in other orders wait for each other instead of deadlocking.
    for line in sorted(lines, key=lambda x: x.product_id):
        status = await conn.execute(
            "UPDATE products SET stock = stock - $1, updated_at = $2 WHERE id = $3 AND stock >= $1",
            line.quantity,
            now,
            line.product_id,
        )
        if rowcount(status) != 1:
            available = await conn.fetchval(
                "SELECT stock FROM products WHERE id = $1", line.product_id
            )
            short[line.product_id] = {
                "product_id": line.product_id,
                "requested": line.quantity,
                "available": available if available is not None else 0,
            }
    return [short[x.product_id] for x in lines if x.product_id in short]  # in the lines' order


async def _hold(conn: asyncpg.Connection, checkout_id: str, holder: str, cap: int) -> None:
    # Reservations of one address count and insert one at a time, across processes.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"holder:{holder}")
    held = await conn.fetchval(
        "SELECT COUNT(*) FROM checkout_holders h JOIN checkouts c ON c.id = h.checkout_id"
        " WHERE h.address = $1 AND c.status = 'reserved'",
        holder,
    )
    if held >= cap:
        raise TooManyHolds(holder)  # the transaction rolls the reservation back
    await conn.execute(
        "INSERT INTO checkout_holders (checkout_id, address) VALUES ($1, $2)", checkout_id, holder
    )


async def _reserve(conn: asyncpg.Connection, checkout: Checkout, now: str) -> None:
    archived = await conn.fetch(
        "SELECT id FROM products WHERE active = 0 AND id = ANY($1::text[])",
        [x.product_id for x in checkout.lines],
    )
    if archived:
        raise Archived(sorted(row[0] for row in archived))
    short = await _take_stock(conn, checkout.lines, now)
    if short:
        raise ShortStock(short)  # the transaction rolls the other lines back
    await conn.execute(
        "INSERT INTO checkouts (id, cart_id, cart_version, provider, status, amount_cents,"
        " currency, session_id, url, expires_at, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, 'reserved', $5, $6, $7, $8, $9, $10, $11)",
        checkout.id,
        checkout.cart_id,
        checkout.cart_version,
        checkout.provider,
        checkout.amount_cents,
        checkout.currency,
        checkout.session_id,
        checkout.url,
        iso(checkout.expires_at),
        now,
        now,
    )
    await conn.executemany(
        "INSERT INTO checkout_items (checkout_id, product_id, quantity, unit_price_cents)"
        " VALUES ($1, $2, $3, $4)",
        [(checkout.id, x.product_id, x.quantity, x.unit_price_cents) for x in checkout.lines],
    )


async def _fulfil(conn: asyncpg.Connection, order: Order, now: str) -> None:
    # Locked: a release (or another payment) of this checkout in another process waits
    # for this transaction, then finds it paid; SQLite's single writer gives that for free.
    found = await conn.fetchval(
        "SELECT status FROM checkouts WHERE id = $1 FOR UPDATE", order.checkout_id
    )
    if found is None or found == "paid":
        raise CheckoutMoved(order.checkout_id)
    status = "paid"
    if found == "released":  # paid after its stock went back: take it again if it is there
        lines = tuple(
            CheckoutLine(x.product_id, x.quantity, x.unit_price_cents) for x in order.lines
        )
        if await _take_stock(conn, lines, now):
            status = "needs_review"
    await conn.execute(
        "UPDATE checkouts SET status = 'paid', updated_at = $1 WHERE id = $2",
        now,
        order.checkout_id,
    )
    await conn.execute(
        "INSERT INTO orders (id, checkout_id, cart_id, user_id, session_id, payment_intent,"
        " amount_total_cents, currency, status, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        order.id,
        order.checkout_id,
        order.cart_id,
        order.user_id,
        order.session_id,
        order.payment_intent,
        order.amount_total_cents,
        order.currency,
        status,
        now,
    )
    await conn.executemany(
        "INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_cents,"
        " line_total_cents) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            (
                order.id,
                x.product_id,
                x.sku,
                x.name,
                x.quantity,
                x.unit_price_cents,
                x.quantity * x.unit_price_cents,
            )
            for x in order.lines
        ],
    )
    # The shop's backend hears of the order from the outbox, written in this transaction.
    await apply_effects(conn, (order_event(order, status, now),), now)
