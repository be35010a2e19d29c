"""What a store writes beside a cart in the same transaction: stock reservations, orders,
payment events, outbox events, user carts (the store's Effects), as plans both run."""

from __future__ import annotations

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
from .sql import Lock, Many, Plan, Rows, Run

RELEASE = (
    "UPDATE checkouts SET status = 'released', updated_at = :now"
    " WHERE id = :id AND status = 'reserved'"
)
# Product rows locked in id order, as reservations take them: no deadlock.
RELEASED_STOCK_LOCK = (
    "SELECT 1 FROM products WHERE id IN (SELECT product_id FROM checkout_items"
    ' WHERE checkout_id = :id) ORDER BY id COLLATE "C" FOR UPDATE'
)
GIVE_BACK_STOCK = (
    "UPDATE products SET updated_at = :now, stock = stock + (SELECT quantity"
    " FROM checkout_items WHERE checkout_id = :id AND product_id = products.id)"
    " WHERE id IN (SELECT product_id FROM checkout_items WHERE checkout_id = :id)"
)
ATTACH_SESSION = (
    "UPDATE checkouts SET session_id = :session_id, url = :url, updated_at = :now WHERE id = :id"
)
EMIT = (
    "INSERT INTO cart_events (cart_id, type, payload, created_at, next_attempt_at)"
    " VALUES (:cart_id, :type, :payload, :now, :now)"
)
# No conflict target: a clash on the id or on the user's open cart is skipped (the user
# has an open cart already: their next login finds that) without voiding the transaction.
CREATE_CART = (
    "INSERT INTO cart_sessions (id, user_id, status, version, expires_at, created_at,"
    " updated_at) VALUES (:id, :user_id, 'active', 0, :expires_at, :now, :now)"
    " ON CONFLICT DO NOTHING"
)
RECORD_EVENT = (
    "INSERT INTO payment_events (event_id, type, received_at) VALUES (:event_id, :type, :now)"
    " ON CONFLICT (event_id) DO NOTHING"
)
TAKE_STOCK = (
    "UPDATE products SET stock = stock - :quantity, updated_at = :now"
    " WHERE id = :id AND stock >= :quantity"
)
STOCK = "SELECT stock FROM products WHERE id = :id"
# Reservations of one address count and insert one at a time, across processes.
HOLDER_LOCK = "SELECT pg_advisory_xact_lock(hashtext(:key))"
HELD = (
    "SELECT COUNT(*) FROM checkout_holders h JOIN checkouts c ON c.id = h.checkout_id"
    " WHERE h.address = :address AND c.status = 'reserved'"
)
HOLD = "INSERT INTO checkout_holders (checkout_id, address) VALUES (:id, :address)"
ARCHIVED = "SELECT id FROM products WHERE active = 0 AND id {in_ids}"
RESERVE = (
    "INSERT INTO checkouts (id, cart_id, cart_version, provider, status, amount_cents,"
    " currency, session_id, url, expires_at, created_at, updated_at)"
    " VALUES (:id, :cart_id, :cart_version, :provider, 'reserved', :amount_cents,"
    " :currency, :session_id, :url, :expires_at, :now, :now)"
)
RESERVE_LINE = (
    "INSERT INTO checkout_items (checkout_id, product_id, quantity, unit_price_cents)"
    " VALUES (:id, :product_id, :quantity, :unit_price_cents)"
)
# Locked: a release (or another payment) of this checkout in another process waits for
# this transaction, then finds it paid.
CHECKOUT_STATUS = "SELECT status FROM checkouts WHERE id = :id{for_update}"
PAID = "UPDATE checkouts SET status = 'paid', updated_at = :now WHERE id = :id"
ADD_ORDER = (
    "INSERT INTO orders (id, checkout_id, cart_id, user_id, session_id, payment_intent,"
    " amount_total_cents, currency, status, created_at) VALUES (:id, :checkout_id,"
    " :cart_id, :user_id, :session_id, :payment_intent, :amount_total_cents, :currency,"
    " :status, :now)"
)
ADD_ORDER_LINE = (
    "INSERT INTO order_items (order_id, product_id, sku, name, quantity, unit_price_cents,"
    " line_total_cents) VALUES (:order_id, :product_id, :sku, :name, :quantity,"
    " :unit_price_cents, :line_total_cents)"
)
CHECKOUT_COLUMNS = (
    "id, cart_id, cart_version, provider, status, amount_cents, currency, expires_at,"
    " session_id, url"
)
CHECKOUT_LINES = (
    "SELECT product_id, quantity, unit_price_cents FROM checkout_items"
    " WHERE checkout_id = :id ORDER BY {seq}"
)


def apply_effects(effects: tuple[Effect, ...], now: str) -> Plan[None]:
    for effect in effects:
        match effect:
            case Reserve(checkout, holder, cap):
                yield from _reserve(checkout, now)
                if holder is not None:
                    yield from _hold(checkout.id, holder, cap)
            case Release(checkout_id):
                if (yield Run(RELEASE, {"now": now, "id": checkout_id})) != 1:
                    raise CheckoutMoved(checkout_id)
                yield Lock(RELEASED_STOCK_LOCK, {"id": checkout_id})
                yield Run(GIVE_BACK_STOCK, {"now": now, "id": checkout_id})
            case Fulfil(order):
                yield from _fulfil(order, now)
            case AttachSession(checkout_id, session_id, url):
                params = {"session_id": session_id, "url": url, "now": now, "id": checkout_id}
                yield Run(ATTACH_SESSION, params)
            case Emit(cart_id, kind, payload):
                params = {"cart_id": cart_id, "type": kind, "payload": payload.decode()}
                yield Run(EMIT, {**params, "now": now})
            case CreateCart(cart_id, user_id, expires_at):
                params = {"id": cart_id, "user_id": user_id, "expires_at": iso(expires_at)}
                yield Run(CREATE_CART, {**params, "now": now})
            case RecordEvent(event_id, kind):
                params = {"event_id": event_id, "type": kind, "now": now}
                if (yield Run(RECORD_EVENT, params)) != 1:
                    raise DuplicateEvent(event_id)


def _take_stock(lines: tuple[CheckoutLine, ...], now: str) -> Plan[list[dict[str, object]]]:
    """Decrement stock for each line where it suffices; the lines where it did not."""
    short: dict[str, dict[str, object]] = {}
    # Rows taken in id order by every transaction: two carts holding the same products
    # in other orders wait for each other instead of deadlocking.
    for line in sorted(lines, key=lambda x: x.product_id):
        params = {"quantity": line.quantity, "now": now, "id": line.product_id}
        if (yield Run(TAKE_STOCK, params)) != 1:
            found = yield Rows(STOCK, {"id": line.product_id})
            short[line.product_id] = {
                "product_id": line.product_id,
                "requested": line.quantity,
                "available": found[0][0] if found else 0,
            }
    return [short[x.product_id] for x in lines if x.product_id in short]  # in the lines' order


def _hold(checkout_id: str, holder: str, cap: int) -> Plan[None]:
    yield Lock(HOLDER_LOCK, {"key": f"holder:{holder}"})
    held = yield Rows(HELD, {"address": holder})
    if held[0][0] >= cap:
        raise TooManyHolds(holder)  # the transaction (or savepoint) rolls the reservation back
    yield Run(HOLD, {"id": checkout_id, "address": holder})


def _reserve(checkout: Checkout, now: str) -> Plan[None]:
    archived = yield Rows(ARCHIVED, {"ids": [x.product_id for x in checkout.lines]})
    if archived:
        raise Archived(sorted(row[0] for row in archived))
    short = yield from _take_stock(checkout.lines, now)
    if short:
        raise ShortStock(short)  # the transaction (or savepoint) rolls the other lines back
    yield Run(
        RESERVE,
        {
            "id": checkout.id,
            "cart_id": checkout.cart_id,
            "cart_version": checkout.cart_version,
            "provider": checkout.provider,
            "amount_cents": checkout.amount_cents,
            "currency": checkout.currency,
            "session_id": checkout.session_id,
            "url": checkout.url,
            "expires_at": iso(checkout.expires_at),
            "now": now,
        },
    )
    yield Many(
        RESERVE_LINE,
        [
            {"id": checkout.id, "product_id": x.product_id, "quantity": x.quantity}
            | {"unit_price_cents": x.unit_price_cents}
            for x in checkout.lines
        ],
    )


def _fulfil(order: Order, now: str) -> Plan[None]:
    found = yield Rows(CHECKOUT_STATUS, {"id": order.checkout_id})
    if not found or found[0][0] == "paid":
        raise CheckoutMoved(order.checkout_id)
    status = "paid"
    if found[0][0] == "released":  # paid after its stock went back: take it again if it is there
        lines = tuple(
            CheckoutLine(x.product_id, x.quantity, x.unit_price_cents) for x in order.lines
        )
        if (yield from _take_stock(lines, now)):
            status = "needs_review"
    yield Run(PAID, {"now": now, "id": order.checkout_id})
    head = {f: getattr(order, f) for f in ("id", "checkout_id", "cart_id", "user_id")}
    paid = {f: getattr(order, f) for f in ("session_id", "payment_intent", "currency")}
    total = {"amount_total_cents": order.amount_total_cents, "status": status, "now": now}
    yield Run(ADD_ORDER, head | paid | total)
    yield Many(
        ADD_ORDER_LINE,
        [
            {"order_id": order.id, "product_id": x.product_id, "sku": x.sku, "name": x.name}
            | {"quantity": x.quantity, "unit_price_cents": x.unit_price_cents}
            | {"line_total_cents": x.quantity * x.unit_price_cents}
            for x in order.lines
        ],
    )
    # The shop's backend hears of the order from the outbox, written in this transaction.
    yield from apply_effects((order_event(order, status, now),), now)


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


def checkouts(where: str, **params: Any) -> Plan[list[Checkout]]:
    """Checkouts with their lines; `where` is one of the stores' literal clauses, values
    are always parameters."""
    rows = yield Rows(f"SELECT {CHECKOUT_COLUMNS} FROM checkouts WHERE {where}", params)
    found = []
    for row in rows:
        lines = yield Rows(CHECKOUT_LINES, {"id": row[0]})
        found.append(checkout_from_row(row, [CheckoutLine(*line) for line in lines]))
    return found
