"""The shop's side of the SQLite store: atomic product changes (the admin API) and
orders read back for the shop's backend."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from .. import errors
from ..cart import Product
from ..protocol import OrderDoc, OrderItemDoc
from . import ProductChange, product_from_row

# Every field is optional: NULL keeps the column as it is. The stock test is in the
# WHERE clause, so a movement that would take the stock below zero changes nothing.
CHANGE_PRODUCT = (
    "UPDATE products SET name = COALESCE(?1, name), price_cents = COALESCE(?2, price_cents),"
    " stock = COALESCE(?3, stock) + ?4, image_url = CASE WHEN ?5 THEN ?6 ELSE image_url END,"
    " active = COALESCE(?7, active), updated_at = ?8"
    " WHERE id = ?9 AND COALESCE(?3, stock) + ?4 >= 0"
    " RETURNING id, sku, name, price_cents, stock, image_url, active"
)
_ORDER_COLUMNS = (
    "id, cart_id, user_id, status, amount_total_cents, currency, payment_intent, created_at"
)
# Newest first; the cursor is the (created_at, id) of the last order of the previous page.
ORDERS_PAGE = (
    f"SELECT {_ORDER_COLUMNS} FROM orders WHERE (?1 IS NULL OR status = ?1)"
    " AND (?2 IS NULL OR created_at < ?2 OR (created_at = ?2 AND id < ?3))"
    " ORDER BY created_at DESC, id DESC LIMIT ?4"
)
ORDER_ONE = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = ?"
ORDER_ITEMS = (
    "SELECT order_id, product_id, sku, name, quantity, unit_price_cents FROM order_items"
    " WHERE order_id IN (SELECT value FROM json_each(?)) ORDER BY order_id, product_id"
)


def change_product(
    product_id: str, change: ProductChange, now: str, conn: sqlite3.Connection
) -> Product:
    row = conn.execute(
        CHANGE_PRODUCT,
        (
            change.name,
            change.price_cents,
            change.stock,
            change.stock_delta,
            change.set_image_url,
            change.image_url,
            None if change.active is None else int(change.active),
            now,
            product_id,
        ),
    ).fetchone()
    if row is not None:
        return product_from_row(row)
    found = conn.execute("SELECT stock FROM products WHERE id = ?", (product_id,)).fetchone()
    if found is None:
        raise errors.UnknownProduct(f"no product with id {product_id!r}", product_id=product_id)
    raise errors.InsufficientStock(
        f"stock is {found[0]}: a movement of {change.stock_delta} would take it below zero",
        product_id=product_id,
        available=found[0],
    )


Read = Callable[[str, tuple[Any, ...]], Awaitable[list[Any]]]


async def list_orders(
    read: Read, status: str | None, limit: int, after: tuple[str, str] | None
) -> list[OrderDoc]:
    at, last = after if after is not None else (None, None)
    rows = await read(ORDERS_PAGE, (status, at, last, limit))
    items = await read(ORDER_ITEMS, (json.dumps([row[0] for row in rows]),))
    return orders_from_rows(rows, items)


async def load_order(read: Read, order_id: str) -> OrderDoc | None:
    rows = await read(ORDER_ONE, (order_id,))
    found = orders_from_rows(rows, await read(ORDER_ITEMS, (json.dumps([order_id]),)))
    return found[0] if found else None


def orders_from_rows(rows: list[Any], items: list[Any]) -> list[OrderDoc]:
    """Order documents from order rows and the item rows of those orders (both stores)."""
    lines: dict[str, list[OrderItemDoc]] = {}
    for order_id, *item in items:
        lines.setdefault(order_id, []).append(OrderItemDoc(*item))
    return [
        OrderDoc(
            id=row[0],
            cart_id=row[1],
            user_id=row[2],
            status=row[3],
            amount_cents=row[4],
            currency=row[5],
            payment_intent=row[6],
            created_at=row[7],
            items=lines.get(row[0], []),
        )
        for row in rows
    ]
