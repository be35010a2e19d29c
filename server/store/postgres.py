"""PostgreSQL store (scale-out): several processes share one database through a pool.

The same schema and the same semantics as the SQLite store, statement for statement (the
SQL below mirrors sqlite.py with $n placeholders), so the two behave identically:
timestamps are the same ISO text, a cart write is one transaction with a compare-and-set
on the cart row's version, and any failure to reach the database is Unavailable, so
nothing is acknowledged that was not stored.

Each commit is its own transaction: PostgreSQL groups the fsyncs of concurrent commits
itself. Two processes racing on one cart meet at the row: the second UPDATE waits for the
first to commit, then finds the version moved (StaleVersion). The loser takes `hold`: it
locks the row (SELECT ... FOR UPDATE), reads what it missed and commits in the same
transaction, so a busy process cannot starve another one of a cart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from .. import errors
from ..cart import Cart, Line, Product, Status
from ..clock import iso, parse_iso, utcnow
from ..config import SCHEMA_PATH, Settings
from ..metrics import Metrics
from . import AlreadyApplied, CartWrite, Held, StaleVersion, StoredCart

log = logging.getLogger("server.store")
PRUNE_BATCH = 500
# Whatever stops a statement from reaching the database or finishing there.
DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
ACQUIRE_TIMEOUT = 5.0  # a pool exhausted or a database unreachable for this long: Unavailable
CONNECT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
# Taken while the schema is applied: processes starting at once migrate one at a time.
MIGRATION_LOCK = zlib.crc32(b"cartsync schema")
# SKUs of the products an import updates are parked under this prefix first, so that the
# import may swap SKUs between them (PostgreSQL text cannot hold NUL, SQLite's prefix).
SKU_PARK = "\x01"


def _rowcount(status: str) -> int:
    """The row count of a command tag: 'UPDATE 1' -> 1, 'INSERT 0 1' -> 1."""
    return int(status.rsplit(" ", 1)[1])


class PostgresStore:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, metrics: Metrics) -> None:
        self._pool = pool
        self._history = settings.patch_history
        self._ttl = timedelta(seconds=settings.cart_ttl)
        self._metrics = metrics

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics | None = None) -> PostgresStore:
        pool = await asyncpg.create_pool(
            settings.database_url,
            min_size=1,
            max_size=settings.database_pool,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            server_settings={"application_name": "cartsync"},
            reset=_keep_session,
        )
        store = cls(pool, settings, metrics or Metrics())
        try:
            await store._migrate()
        except BaseException:
            await pool.close()
            raise
        return store

    async def _migrate(self) -> None:
        # schema.sql is written in what SQLite and PostgreSQL share, so it applies as it is.
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(SCHEMA_PATH.read_text())

    @contextlib.asynccontextmanager
    async def _connection(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; losing the database on the way is Unavailable."""
        try:
            async with self._pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                yield conn
        except DB_ERRORS as exc:
            log.error("PostgreSQL: could not %s: %s: %s", what, type(exc).__name__, exc)
            raise errors.Unavailable(f"the store could not {what}; nothing changed") from exc

    # --- carts -----------------------------------------------------------------------

    async def commit(self, write: CartWrite) -> None:
        started = time.perf_counter()
        async with self._connection("store the change") as conn, conn.transaction():
            await self._write_cart(conn, write)
        self._metrics.inc("cart_commit_batches_total")
        self._metrics.inc("cart_commit_writes_total")
        self._metrics.observe("cart_commit_seconds", time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def hold(self, cart_id: str) -> AsyncIterator[Held]:
        async with self._connection("store the change") as conn, conn.transaction():
            yield _Held(self, conn, cart_id)

    async def _write_cart(self, conn: asyncpg.Connection, write: CartWrite) -> None:
        cart = write.cart
        now = iso(cart.updated_at)
        header = (
            cart.user_id,
            cart.status.value,
            cart.version,
            iso(cart.abandon_at) if cart.abandon_at else None,
            iso(cart.updated_at + self._ttl),
            cart.merged_into,
            now,
            cart.id,
        )
        if write.base_version == 0:
            status = await conn.execute(
                "INSERT INTO cart_sessions (user_id, status, version, abandon_at, expires_at,"
                " merged_into, updated_at, id, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
                *header,
                now,
            )
        else:
            status = await conn.execute(
                "UPDATE cart_sessions SET user_id = $1, status = $2, version = $3,"
                " abandon_at = $4, expires_at = $5, merged_into = $6, updated_at = $7"
                " WHERE id = $8 AND version = $9",
                *header,
                write.base_version,
            )
        if _rowcount(status) != 1:
            raise StaleVersion(cart.id)
        if write.key is not None:
            status = await conn.execute(
                "INSERT INTO applied_mutations (cart_id, key, version, response, created_at)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cart_id, key) DO NOTHING",
                cart.id,
                write.key,
                cart.version,
                write.response.decode() if write.response is not None else None,
                now,
            )
            if _rowcount(status) != 1:
                version = await conn.fetchval(
                    "SELECT version FROM applied_mutations WHERE cart_id = $1 AND key = $2",
                    cart.id,
                    write.key,
                )
                raise AlreadyApplied(version)
        if write.change.upserted:
            await conn.executemany(
                "INSERT INTO cart_items (cart_id, product_id, quantity, price_cents, position,"
                " added_at) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = excluded.quantity",
                [
                    (
                        cart.id,
                        line.product_id,
                        line.quantity,
                        line.unit_price_cents,
                        line.position,
                        now,
                    )
                    for line in write.change.upserted
                ],
            )
        if write.change.removed:
            await conn.executemany(
                "DELETE FROM cart_items WHERE cart_id = $1 AND product_id = $2",
                [(cart.id, product_id) for product_id in write.change.removed],
            )
        # SQLite's two statements in one round trip: the patch, and the trim of old ones.
        await conn.execute(
            "WITH trimmed AS (DELETE FROM cart_patches WHERE cart_id = $1 AND version <= $4)"
            " INSERT INTO cart_patches (cart_id, version, body) VALUES ($1, $2, $3)",
            cart.id,
            cart.version,
            write.patch,
            cart.version - self._history,
        )

    async def load_cart(self, cart_id: str, keys_since: datetime) -> StoredCart | None:
        async with (
            self._connection("read the cart") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),  # one snapshot
        ):
            head = await conn.fetchrow(
                "SELECT version, status, user_id, updated_at, abandon_at, merged_into"
                " FROM cart_sessions WHERE id = $1",
                cart_id,
            )
            if head is None:
                return None
            return await _read_cart(conn, cart_id, head, keys_since)

    async def versions(self, cart_ids: list[str]) -> dict[str, int]:
        if not cart_ids:
            return {}
        async with self._connection("read cart versions") as conn:
            rows = await conn.fetch(
                "SELECT id, version FROM cart_sessions WHERE id = ANY($1::text[])", cart_ids
            )
        return {row[0]: row[1] for row in rows}

    async def replay(self, cart_id: str, key: str) -> bytes | None:
        async with self._connection("read a stored answer") as conn:
            response = await conn.fetchval(
                "SELECT response FROM applied_mutations WHERE cart_id = $1 AND key = $2",
                cart_id,
                key,
            )
        return response.encode() if response is not None else None

    async def prune(self, applied_before: datetime) -> int:
        total = 0
        while True:
            # Small batches: each is one short transaction, so carts never wait long.
            async with self._connection("forget old mutation ids") as conn:
                status = await conn.execute(
                    "DELETE FROM applied_mutations WHERE ctid = ANY(ARRAY(SELECT ctid"
                    " FROM applied_mutations WHERE created_at < $1 LIMIT $2))",
                    iso(applied_before),
                    PRUNE_BATCH,
                )
            deleted = _rowcount(status)
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    # --- products --------------------------------------------------------------------

    async def load_products(self, changed_since: str = "") -> tuple[list[Product], str]:
        async with self._connection("read products") as conn:
            rows = await conn.fetch(
                "SELECT id, sku, name, price_cents, stock, image_url, updated_at FROM products"
                ' WHERE updated_at >= $1 ORDER BY id COLLATE "C"',  # SQLite's (binary) order
                changed_since,
            )
        latest = max((row[6] for row in rows), default=changed_since)
        return [Product(*tuple(row)[:6]) for row in rows], latest

    async def upsert_products(self, products: list[Product]) -> tuple[int, int]:
        now = iso(utcnow())
        inserted = updated = 0
        async with self._connection("store products") as conn, conn.transaction():
            await conn.execute(
                "UPDATE products SET sku = $1 || id WHERE id = ANY($2::text[])",
                SKU_PARK,
                [p.id for p in products],
            )
            for p in products:
                try:
                    status = await conn.execute(
                        "UPDATE products SET sku = $1, name = $2, price_cents = $3, stock = $4,"
                        " image_url = $5, updated_at = $6 WHERE id = $7",
                        p.sku,
                        p.name,
                        p.price_cents,
                        p.stock,
                        p.image_url,
                        now,
                        p.id,
                    )
                    if _rowcount(status):
                        updated += 1
                        continue
                    await conn.execute(
                        "INSERT INTO products (id, sku, name, price_cents, stock, image_url,"
                        " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                        p.id,
                        p.sku,
                        p.name,
                        p.price_cents,
                        p.stock,
                        p.image_url,
                        now,
                        now,
                    )
                    inserted += 1
                except asyncpg.IntegrityConstraintViolationError as exc:
                    raise ValueError(f"product {p.id!r} (sku {p.sku!r}): {exc}") from None
        return inserted, updated

    # --- the rest --------------------------------------------------------------------

    async def ping(self) -> None:
        async with self._connection("answer a ping") as conn:
            await conn.fetchval("SELECT 1")

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._pool.close(), COMMAND_TIMEOUT)
        except TimeoutError:
            self._pool.terminate()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Nothing to reset between uses: the store sets no session state, listens to nothing
    and takes only transaction-scoped locks (asyncpg still rolls back an open transaction).
    The default reset would cost a round trip on every release."""


class _Held:
    """A cart row locked by one open transaction (PostgresStore.hold)."""

    def __init__(self, store: PostgresStore, conn: asyncpg.Connection, cart_id: str) -> None:
        self._store = store
        self._conn = conn
        self._cart_id = cart_id

    async def load(self, keys_since: datetime) -> StoredCart | None:
        head = await self._conn.fetchrow(
            "SELECT version, status, user_id, updated_at, abandon_at, merged_into"
            " FROM cart_sessions WHERE id = $1 FOR UPDATE",
            self._cart_id,
        )
        if head is None:
            return None
        # Every cart write updates this row, so holding it keeps the rest still too.
        return await _read_cart(self._conn, self._cart_id, head, keys_since)

    async def commit(self, write: CartWrite) -> None:
        await self._store._write_cart(self._conn, write)


async def _read_cart(
    conn: asyncpg.Connection, cart_id: str, head: Any, keys_since: datetime
) -> StoredCart:
    lines = await conn.fetch(
        "SELECT product_id, quantity, price_cents, position FROM cart_items"
        " WHERE cart_id = $1 ORDER BY position",
        cart_id,
    )
    patches = await conn.fetch(
        "SELECT version, body FROM cart_patches WHERE cart_id = $1 ORDER BY version", cart_id
    )
    keys = await conn.fetch(
        "SELECT key, version FROM applied_mutations"
        " WHERE cart_id = $1 AND created_at >= $2 ORDER BY version",
        cart_id,
        iso(keys_since),
    )
    version, status, user_id, updated_at, abandon_at, merged_into = head
    cart = Cart(
        id=cart_id,
        version=version,
        status=Status(status),
        lines=tuple(Line(*row) for row in lines),
        user_id=user_id,
        updated_at=parse_iso(updated_at),
        abandon_at=parse_iso(abandon_at) if abandon_at else None,
        merged_into=merged_into,
    )
    return StoredCart(
        cart=cart,
        patches=[(v, body) for v, body in patches],
        keys={key: v for key, v in keys},
    )
