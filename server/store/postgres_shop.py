"""The shop's side of the PostgreSQL store, statement for statement as in sqlite_shop.py:
atomic product changes (the admin API) and orders read back for the shop's backend."""

from __future__ import annotations

import asyncpg

from .. import errors
from ..cart import Product
from ..protocol import OrderDoc
from . import ProductChange, ProductConflict, product_from_row
from .postgres_effects import rowcount
from .sqlite_shop import orders_from_rows

# A row lock, then the WHERE clause evaluated again on the row as committed: concurrent
# movements of one product apply one after the other, and none takes it below zero.
CHANGE_PRODUCT = (
    "UPDATE products SET name = COALESCE($1, name), price_cents = COALESCE($2, price_cents),"
    " stock = COALESCE($3, stock) + $4, image_url = CASE WHEN $5 THEN $6 ELSE image_url END,"
    " active = COALESCE($7, active), updated_at = $8"
    " WHERE id = $9 AND COALESCE($3, stock) + $4 >= 0"
    " RETURNING id, sku, name, price_cents, stock, image_url, active"
)
_ORDER_COLUMNS = (
    "id, cart_id, user_id, status, amount_total_cents, currency, payment_intent, created_at"
)
ORDERS_PAGE = (
    f"SELECT {_ORDER_COLUMNS} FROM orders WHERE ($1::text IS NULL OR status = $1)"
    " AND ($2::text IS NULL OR created_at < $2 OR (created_at = $2 AND id < $3))"
    ' ORDER BY created_at DESC, id COLLATE "C" DESC LIMIT $4'
)
ORDER_ONE = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE id = $1"
ORDER_ITEMS = (
    "SELECT order_id, product_id, sku, name, quantity, unit_price_cents FROM order_items"
    ' WHERE order_id = ANY($1::text[]) ORDER BY order_id, product_id COLLATE "C"'
)


# Every row in one statement; `xmax = 0` tells a row inserted from one updated.
UPSERT_PRODUCTS = (
    "INSERT INTO products (id, sku, name, price_cents, stock, image_url, active, created_at,"
    " updated_at) SELECT u.id, u.sku, u.name, u.price, u.stock, u.image, u.active, $8, $8"
    " FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::integer[],"
    " $6::text[], $7::integer[]) AS u(id, sku, name, price, stock, image, active)"
    " ON CONFLICT (id) DO UPDATE SET sku = excluded.sku, name = excluded.name,"
    " price_cents = excluded.price_cents, stock = excluded.stock, image_url = excluded.image_url,"
    " active = excluded.active, updated_at = excluded.updated_at"
    " RETURNING xmax = 0"
)


async def upsert_products(
    conn: asyncpg.Connection, products: list[Product], now: str
) -> tuple[int, int]:
    """(inserted, updated), in one statement; when it is refused (a SKU another product
    holds), row by row, so that the first bad row is named (ProductConflict)."""
    try:
        async with conn.transaction():  # a savepoint: the row-by-row path may follow
            fresh = await conn.fetch(
                UPSERT_PRODUCTS,
                [p.id for p in products],
                [p.sku for p in products],
                [p.name for p in products],
                [p.price_cents for p in products],
                [p.stock for p in products],
                [p.image_url for p in products],
                [int(p.active) for p in products],
                now,
            )
    except asyncpg.PostgresError:
        return await _one_by_one(conn, products, now)
    inserted = sum(1 for (new,) in fresh if new)
    return inserted, len(products) - inserted


async def _one_by_one(
    conn: asyncpg.Connection, products: list[Product], now: str
) -> tuple[int, int]:
    inserted = updated = 0
    for p in products:
        try:
            status = await conn.execute(
                "UPDATE products SET sku = $1, name = $2, price_cents = $3, stock = $4,"
                " image_url = $5, active = $6, updated_at = $7 WHERE id = $8",
                p.sku,
                p.name,
                p.price_cents,
                p.stock,
                p.image_url,
                int(p.active),
                now,
                p.id,
            )
            if rowcount(status):
                updated += 1
                continue
            await conn.execute(
                "INSERT INTO products (id, sku, name, price_cents, stock, image_url,"
                " active, created_at, updated_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                p.id,
                p.sku,
                p.name,
                p.price_cents,
                p.stock,
                p.image_url,
                int(p.active),
                now,
                now,
            )
            inserted += 1
        except asyncpg.IntegrityConstraintViolationError as exc:
            message = f"product {p.id!r} (sku {p.sku!r}): {exc}"
            raise ProductConflict(p.id, message) from None
    return inserted, updated


async def change_product(
    conn: asyncpg.Connection, product_id: str, change: ProductChange, now: str
) -> Product:
    row = await conn.fetchrow(
        CHANGE_PRODUCT,
        change.name,
        change.price_cents,
        change.stock,
        change.stock_delta,
        change.set_image_url,
        change.image_url,
        None if change.active is None else int(change.active),
        now,
        product_id,
    )
    if row is not None:
        return product_from_row(row)
    stock = await conn.fetchval("SELECT stock FROM products WHERE id = $1", product_id)
    if stock is None:
        raise errors.UnknownProduct(f"no product with id {product_id!r}", product_id=product_id)
    raise errors.InsufficientStock(
        f"stock is {stock}: a movement of {change.stock_delta} would take it below zero",
        product_id=product_id,
        available=stock,
    )


async def read_orders(
    conn: asyncpg.Connection, status: str | None, limit: int, at: str | None, last: str | None
) -> list[OrderDoc]:
    return await _with_items(conn, await conn.fetch(ORDERS_PAGE, status, at, last, limit))


async def read_order(conn: asyncpg.Connection, order_id: str) -> list[OrderDoc]:
    return await _with_items(conn, await conn.fetch(ORDER_ONE, order_id))


async def _with_items(conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> list[OrderDoc]:
    items = await conn.fetch(ORDER_ITEMS, [row[0] for row in rows])
    return orders_from_rows([tuple(r) for r in rows], [tuple(r) for r in items])
