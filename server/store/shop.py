"""The shop's side of the stores: the catalog's products, atomic product changes (the
admin API), and orders read back for the shop's backend."""

from __future__ import annotations

from functools import partial
from typing import Any

from .. import errors
from ..cart import Product
from ..protocol import OrderDoc, OrderItemDoc
from . import ProductChange, ProductConflict
from .sql import Plan, Rows, Run

PRODUCT_COLUMNS = "id, sku, name, price_cents, stock, image_url, active"
PRODUCTS_SINCE = (
    f"SELECT {PRODUCT_COLUMNS}, updated_at FROM products WHERE updated_at >= :since"
    " ORDER BY id{bytewise}"
)
PRODUCTS_BY_ID = f"SELECT {PRODUCT_COLUMNS} FROM products WHERE id {{in_ids}}"
# SKUs of the products an import updates are parked under this prefix first, so that the
# import may swap SKUs between them (UNIQUE is checked at every row; PostgreSQL text
# cannot hold NUL).
SKU_PARK = "\x01"
PARK_SKUS = "UPDATE products SET sku = :park || id WHERE id {in_ids}"
UPDATE_PRODUCT = (
    "UPDATE products SET sku = :sku, name = :name, price_cents = :price_cents,"
    " stock = :stock, image_url = :image_url, active = :active, updated_at = :now"
    " WHERE id = :id"
)
INSERT_PRODUCT = (
    "INSERT INTO products (id, sku, name, price_cents, stock, image_url, active, created_at,"
    " updated_at) VALUES (:id, :sku, :name, :price_cents, :stock, :image_url, :active,"
    " :now, :now)"
)
# Every field is optional: NULL keeps the column as it is. The stock test is in the
# WHERE clause, so a movement that would take the stock below zero changes nothing (in
# PostgreSQL the clause is evaluated again on the row as committed, after its lock).
CHANGE_PRODUCT = (
    "UPDATE products SET name = COALESCE(:name, name),"
    " price_cents = COALESCE(:price_cents, price_cents),"
    " stock = COALESCE(:stock, stock) + :delta,"
    " image_url = CASE WHEN :set_image_url THEN :image_url ELSE image_url END,"
    " active = COALESCE(:active, active), updated_at = :now"
    f" WHERE id = :id AND COALESCE(:stock, stock) + :delta >= 0 RETURNING {PRODUCT_COLUMNS}"
)
STOCK = "SELECT stock FROM products WHERE id = :id"
_ORDER_COLUMNS = (
    "id, cart_id, user_id, status, amount_total_cents, currency, payment_intent, created_at"
)
# Newest first; the cursor is the (created_at, id) of the last order of the previous page.
ORDERS_PAGE = (
    f"SELECT {_ORDER_COLUMNS} FROM orders WHERE (CAST(:status AS TEXT) IS NULL"
    " OR status = :status) AND (CAST(:at AS TEXT) IS NULL OR created_at < :at"
    " OR (created_at = :at AND id < :last))"
    " ORDER BY created_at DESC, id{bytewise} DESC LIMIT :limit"
)
ORDER_ONE = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = :id"
ORDER_ITEMS = (
    "SELECT order_id, product_id, sku, name, quantity, unit_price_cents FROM order_items"
    " WHERE order_id {in_ids} ORDER BY order_id, product_id{bytewise}"
)


def product_from_row(row: Any) -> Product:
    """(id, sku, name, price_cents, stock, image_url, active, ...) -> Product."""
    return Product(row[0], row[1], row[2], row[3], row[4], row[5], bool(row[6]))


def upsert_each(products: list[Product], now: str) -> Plan[tuple[int, int]]:
    """Update or insert product by product (their SKUs parked before): (inserted,
    updated). ProductConflict names the first product refused."""
    inserted = updated = 0
    for p in products:
        refused = partial(_conflict, p)
        params = {"id": p.id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents}
        params |= {"stock": p.stock, "image_url": p.image_url, "active": int(p.active)}
        if (yield Run(UPDATE_PRODUCT, params | {"now": now}, refused)):
            updated += 1
        else:
            yield Run(INSERT_PRODUCT, params | {"now": now}, refused)
            inserted += 1
    return inserted, updated


def _conflict(p: Product, exc: Exception) -> ProductConflict:
    return ProductConflict(p.id, f"product {p.id!r} (sku {p.sku!r}): {exc}")


def change_product(product_id: str, change: ProductChange, now: str) -> Plan[Product]:
    rows = yield Rows(
        CHANGE_PRODUCT,
        {
            "name": change.name,
            "price_cents": change.price_cents,
            "stock": change.stock,
            "delta": change.stock_delta,
            "set_image_url": change.set_image_url,
            "image_url": change.image_url,
            "active": None if change.active is None else int(change.active),
            "now": now,
            "id": product_id,
        },
    )
    if rows:
        return product_from_row(rows[0])
    found = yield Rows(STOCK, {"id": product_id})
    if not found:
        raise errors.UnknownProduct(f"no product with id {product_id!r}", product_id=product_id)
    raise errors.InsufficientStock(
        f"stock is {found[0][0]}: a movement of {change.stock_delta} would take it below zero",
        product_id=product_id,
        available=found[0][0],
    )


def list_orders(
    status: str | None, limit: int, after: tuple[str, str] | None
) -> Plan[list[OrderDoc]]:
    at, last = after if after is not None else (None, None)
    params = {"status": status, "at": at, "last": last, "limit": limit}
    return (yield from _with_items((yield Rows(ORDERS_PAGE, params))))


def load_order(order_id: str) -> Plan[OrderDoc | None]:
    found = yield from _with_items((yield Rows(ORDER_ONE, {"id": order_id})))
    return found[0] if found else None


def _with_items(rows: list[Any]) -> Plan[list[OrderDoc]]:
    items = yield Rows(ORDER_ITEMS, {"ids": [row[0] for row in rows]})
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
