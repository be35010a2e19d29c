"""What the SQLite store writes beside a cart in the same transaction: stock
reservations, orders, payment events, outbox events, user carts (the store's Effects)."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

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


def apply_effects(effects: tuple[Effect, ...], now: str, conn: sqlite3.Connection) -> None:
    for effect in effects:
        match effect:
            case Reserve(checkout, holder, cap):
                _reserve(checkout, now, conn)
                if holder is not None:
                    _hold(checkout.id, holder, cap, conn)
            case Release(checkout_id):
                cur = conn.execute(
                    "UPDATE checkouts SET status = 'released', updated_at = ?"
                    " WHERE id = ? AND status = 'reserved'",
                    (now, checkout_id),
                )
                if cur.rowcount != 1:
                    raise CheckoutMoved(checkout_id)
                conn.execute(
                    "UPDATE products SET updated_at = ?, stock = stock + (SELECT quantity"
                    " FROM checkout_items WHERE checkout_id = ? AND product_id = products.id)"
                    " WHERE id IN (SELECT product_id FROM checkout_items WHERE checkout_id = ?)",
                    (now, checkout_id, checkout_id),
                )
            case Fulfil(order):
                _fulfil(order, now, conn)
            case AttachSession(checkout_id, session_id, url):
                conn.execute(
                    "UPDATE checkouts SET session_id = ?, url = ?, updated_at = ? WHERE id = ?",
                    (session_id, url, now, checkout_id),
                )
            case Emit(cart_id, kind, payload):
                conn.execute(
                    "INSERT INTO cart_events (cart_id, type, payload, created_at, next_attempt_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (cart_id, kind, payload.decode(), now, now),
                )
            case CreateCart(cart_id, user_id, expires_at):
                try:
                    conn.execute(
                        "INSERT INTO cart_sessions (id, user_id, status, version, expires_at,"
                        " created_at, updated_at) VALUES (?, ?, 'active', 0, ?, ?, ?)"
                        " ON CONFLICT (id) DO NOTHING",
                        (cart_id, user_id, iso(expires_at), now, now),
                    )
                except sqlite3.IntegrityError:
                    pass  # the user has an open cart already: their next login finds that
            case RecordEvent(event_id, kind):
                cur = conn.execute(
                    "INSERT INTO payment_events (event_id, type, received_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (event_id) DO NOTHING",
                    (event_id, kind, now),
                )
                if cur.rowcount != 1:
                    raise DuplicateEvent(event_id)


def _take_stock(
    lines: tuple[CheckoutLine, ...], now: str, conn: sqlite3.Connection
) -> list[dict[str, object]]:
    """Decrement stock for each line where it suffices; the lines where it did not."""
    short: list[dict[str, object]] = []
    for line in lines:
        cur = conn.execute(
            "UPDATE products SET stock = stock - ?, updated_at = ? WHERE id = ? AND stock >= ?",
            (line.quantity, now, line.product_id, line.quantity),
        )
        if cur.rowcount != 1:
            row = conn.execute(
                "SELECT stock FROM products WHERE id = ?", (line.product_id,)
            ).fetchone()
            short.append(
                {
                    "product_id": line.product_id,
                    "requested": line.quantity,
                    "available": row[0] if row else 0,
                }
            )
    return short


def _hold(checkout_id: str, holder: str, cap: int, conn: sqlite3.Connection) -> None:
    # One writer: no other reservation slips in between the count and the insert.
    (held,) = conn.execute(
        "SELECT COUNT(*) FROM checkout_holders h JOIN checkouts c ON c.id = h.checkout_id"
        " WHERE h.address = ? AND c.status = 'reserved'",
        (holder,),
    ).fetchone()
    if held >= cap:
        raise TooManyHolds(holder)  # the job's savepoint rolls the reservation back
    conn.execute(
        "INSERT INTO checkout_holders (checkout_id, address) VALUES (?, ?)", (checkout_id, holder)
    )


def _reserve(checkout: Checkout, now: str, conn: sqlite3.Connection) -> None:
    archived = conn.execute(
        "SELECT id FROM products WHERE active = 0 AND id IN (SELECT value FROM json_each(?))",
        (json.dumps([x.product_id for x in checkout.lines]),),
    ).fetchall()
    if archived:
        raise Archived(sorted(row[0] for row in archived))
    short = _take_stock(checkout.lines, now, conn)
    if short:
        raise ShortStock(short)  # the job's savepoint rolls the other lines back
    conn.execute(
        "INSERT INTO checkouts (id, cart_id, cart_version, provider, status, amount_cents,"
        " currency, session_id, url, expires_at, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?, ?)",
        (
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
        ),
    )
    conn.executemany(
        "INSERT INTO checkout_items (checkout_id, product_id, quantity, unit_price_cents)"
        " VALUES (?, ?, ?, ?)",
        [(checkout.id, x.product_id, x.quantity, x.unit_price_cents) for x in checkout.lines],
    )


def _fulfil(order: Order, now: str, conn: sqlite3.Connection) -> None:
    row = conn.execute("SELECT status FROM checkouts WHERE id = ?", (order.checkout_id,)).fetchone()
    if row is None or row[0] == "paid":
        raise CheckoutMoved(order.checkout_id)
    status = "paid"
    if row[0] == "released":  # paid after its stock went back: take it again if it is there
        lines = tuple(
            CheckoutLine(x.product_id, x.quantity, x.unit_price_cents) for x in order.lines
        )
        if _take_stock(lines, now, conn):
            status = "needs_review"
    conn.execute(
        "UPDATE checkouts SET status = 'paid', updated_at = ? WHERE id = ?",
        (now, order.checkout_id),
    )
    conn.execute(
        "INSERT INTO orders (id, checkout_id, cart_id, user_id, session_id, payment_intent,"
        " amount_total_cents, currency, status, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
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
        ),
    )
    conn.executemany(
        "INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_cents,"
        " line_total_cents) VALUES (?, ?, ?, ?, ?, ?, ?)",
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
    apply_effects((order_event(order, status, now),), now, conn)
