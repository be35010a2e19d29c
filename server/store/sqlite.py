"""SQLite store (the embedded default): one file in WAL mode.

Writes go to one writer connection owned by a single thread. Every write is a job; jobs
submitted while the previous transaction runs are committed together in the next one
(group commit: one fsync for many carts), each inside its own SAVEPOINT so one bad write
fails alone. A whole batch costs one thread hop, not one per statement, which is why the
writer uses the stdlib driver on its own thread rather than aiosqlite's per-call hops.
Reads use an aiosqlite connection: WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import aiosqlite

from .. import errors
from ..backup import hold_open
from ..cart import Cart, Line, Product, Status
from ..clock import iso, parse_iso, utcnow
from ..config import SCHEMA_PATH, Settings, sqlite_path
from ..metrics import Metrics
from ..protocol import OrderDoc
from . import (
    ANSWERS_PER_CART,
    AlreadyApplied,
    CartEvent,
    CartWrite,
    Checkout,
    CheckoutLine,
    Effect,
    Held,
    ProductChange,
    ProductConflict,
    StaleVersion,
    StoredCart,
    StoreStats,
    product_from_row,
)
from .sqlite_effects import apply_effects, checkout_from_row
from .sqlite_shop import change_product, list_orders, load_order

log = logging.getLogger("server.store")
T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]
PRUNE_BATCH = 500
FORGET_OLD_ANSWERS = (
    "UPDATE applied_mutations SET response = NULL"
    " WHERE cart_id = ? AND version <= ? AND response IS NOT NULL"
)
# Carts held (see hold) by database file: a commit to a held cart waits for the hold to end.
_held: dict[tuple[str, str], asyncio.Event] = {}


class SQLiteStore:
    def __init__(self, path: str, settings: Settings, metrics: Metrics) -> None:
        self._path = path
        self._synchronous = settings.sqlite_synchronous
        self._busy = settings.sqlite_busy_timeout_seconds  # seconds a write waits for a lock
        self._history = settings.patch_history
        self._ttl = timedelta(seconds=settings.cart_ttl_seconds)
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._writer: sqlite3.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._read_lock = asyncio.Lock()  # one read transaction at a time on the reader
        self._pending: list[tuple[Job, asyncio.Future[Any], float]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._unfinished = 0  # writes submitted and not yet committed or failed
        self._open_lock: int | None = None  # shared lock: no restore while this is open
        metrics.gauge("cart_store_writes_pending", lambda: self._unfinished)

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics | None = None) -> SQLiteStore:
        store = cls(sqlite_path(settings.database_url), settings, metrics or Metrics())
        store._open_lock = hold_open(store._path)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(store._executor, store._open_writer)
        store._reader = await aiosqlite.connect(
            store._path, isolation_level=None, timeout=store._busy
        )
        await store._reader.execute("PRAGMA query_only = ON")
        return store

    def _open_writer(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # validated in Settings
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript("BEGIN IMMEDIATE;\n" + SCHEMA_PATH.read_text() + "\nCOMMIT;")
        _add_columns(conn)
        self._writer = conn

    # --- the writer: group commit ----------------------------------------------------

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((job, fut, time.perf_counter()))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        self._unfinished += 1
        try:
            return await fut
        finally:
            self._unfinished -= 1

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                jobs = [job for job, _, _ in batch]
                try:
                    results = await loop.run_in_executor(self._executor, self._run_batch, jobs)
                except Exception as exc:  # the transaction failed as a whole: nothing is stored
                    log.error("SQLite transaction of %d writes failed: %s", len(batch), exc)
                    results = [(False, exc)] * len(batch)
                else:
                    self._metrics.inc("cart_commit_batches_total")
                    self._metrics.inc("cart_commit_writes_total", len(batch))
                now = time.perf_counter()
                for (_, fut, started), (ok, value) in zip(batch, results, strict=True):
                    self._metrics.observe("cart_commit_seconds", now - started)
                    if fut.done():
                        continue
                    if ok:
                        fut.set_result(value)
                    else:
                        fut.set_exception(value)
        finally:
            self._flusher = None

    def _run_batch(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        conn = self._writer
        assert conn is not None
        results: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for job in jobs:
                conn.execute("SAVEPOINT job")
                try:
                    results.append((True, job(conn)))
                except Exception as exc:
                    conn.execute("ROLLBACK TO job")
                    results.append((False, exc))
                conn.execute("RELEASE job")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results

    async def commit(self, write: CartWrite, *more: CartWrite) -> None:
        for cart_id in dict.fromkeys(w.cart.id for w in (write, *more)):
            await self._unheld(cart_id)
        await self._commit(write, *more)

    async def _unheld(self, cart_id: str) -> None:
        while (released := _held.get((self._path, cart_id))) is not None:
            await released.wait()

    async def _commit(self, write: CartWrite, *more: CartWrite) -> None:
        try:
            await self._write(partial(self._write_carts, (write, *more)))
        except (StaleVersion, AlreadyApplied):
            raise
        except sqlite3.Error as exc:
            log.error("could not commit cart %s v%d: %s", write.cart.id, write.cart.version, exc)
            raise errors.Unavailable("the change could not be stored; nothing changed") from exc

    def _write_carts(self, writes: tuple[CartWrite, ...], conn: sqlite3.Connection) -> None:
        for write in writes:  # one job: one savepoint for all of them
            self._write_cart(write, conn)

    def _write_cart(self, write: CartWrite, conn: sqlite3.Connection) -> None:
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
            # A cart's first write, or the first on an empty user cart made by CreateCart.
            try:
                cur = conn.execute(
                    "INSERT INTO cart_sessions (user_id, status, version, abandon_at, expires_at,"
                    " merged_into, updated_at, id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id,"
                    " status = excluded.status, version = excluded.version,"
                    " abandon_at = excluded.abandon_at, expires_at = excluded.expires_at,"
                    " merged_into = excluded.merged_into, updated_at = excluded.updated_at"
                    " WHERE cart_sessions.version = 0",
                    (*header, now),
                )
            except sqlite3.IntegrityError:  # the user got an open cart meanwhile: look again
                raise StaleVersion(cart.id) from None
        else:
            cur = conn.execute(
                "UPDATE cart_sessions SET user_id = ?, status = ?, version = ?, abandon_at = ?,"
                " expires_at = ?, merged_into = ?, updated_at = ? WHERE id = ? AND version = ?",
                (*header, write.base_version),
            )
        if cur.rowcount != 1:
            raise StaleVersion(cart.id)
        if write.key is not None:
            cur = conn.execute(
                "INSERT INTO applied_mutations (cart_id, key, version, response, created_at,"
                " request) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (cart_id, key) DO NOTHING",
                (
                    cart.id,
                    write.key,
                    cart.version,
                    write.response.decode() if write.response is not None else None,
                    now,
                    write.request,
                ),
            )
            if cur.rowcount != 1:
                (version,) = conn.execute(
                    "SELECT version FROM applied_mutations WHERE cart_id = ? AND key = ?",
                    (cart.id, write.key),
                ).fetchone()
                raise AlreadyApplied(version)
            if write.response is not None:
                conn.execute(FORGET_OLD_ANSWERS, (cart.id, cart.version - ANSWERS_PER_CART))
        for line in write.change.upserted:
            conn.execute(
                "INSERT INTO cart_items (cart_id, product_id, quantity, price_cents, position,"
                " added_at) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (cart_id, product_id) DO UPDATE SET quantity = excluded.quantity,"
                " price_cents = excluded.price_cents, added_at = excluded.added_at",
                (
                    cart.id,
                    line.product_id,
                    line.quantity,
                    line.unit_price_cents,
                    line.position,
                    iso(line.added_at) if line.added_at else now,
                ),
            )
        if write.change.removed:
            conn.executemany(
                "DELETE FROM cart_items WHERE cart_id = ? AND product_id = ?",
                [(cart.id, product_id) for product_id in write.change.removed],
            )
        conn.execute(
            "INSERT INTO cart_patches (cart_id, version, body) VALUES (?, ?, ?)",
            (cart.id, cart.version, write.patch),
        )
        conn.execute(
            "DELETE FROM cart_patches WHERE cart_id = ? AND version <= ?",
            (cart.id, cart.version - self._history),
        )
        apply_effects(write.effects, now, conn)

    async def record(self, *effects: Effect) -> None:
        try:
            await self._write(partial(apply_effects, effects, iso(utcnow())))
        except sqlite3.Error as exc:
            log.error("could not record %d effects: %s", len(effects), exc)
            raise errors.Unavailable("the change could not be stored; nothing changed") from exc

    @contextlib.asynccontextmanager
    async def hold(self, cart_id: str) -> AsyncIterator[Held]:
        # One process owns the file, so holding the cart in this process is enough (two
        # hubs on one file, as in tests, are the only way to lose a race here at all).
        await self._unheld(cart_id)
        released = _held[(self._path, cart_id)] = asyncio.Event()
        try:
            yield _Held(self, cart_id)
        finally:
            del _held[(self._path, cart_id)]
            released.set()

    async def prune(self, applied_before: datetime) -> int:
        total = 0
        while True:
            deleted = await self._write(partial(_prune_keys, iso(applied_before)))
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    async def upsert_products(self, products: list[Product]) -> tuple[int, int]:
        return await self._write(partial(_upsert_products, products, iso(utcnow())))

    async def change_product(self, product_id: str, change: ProductChange) -> Product:
        return await self._write(partial(change_product, product_id, change, iso(utcnow())))

    async def list_orders(
        self, status: str | None, limit: int, after: tuple[str, str] | None
    ) -> list[OrderDoc]:
        return await list_orders(self._read, status, limit, after)

    async def load_order(self, order_id: str) -> OrderDoc | None:
        return await load_order(self._read, order_id)

    # --- reads -----------------------------------------------------------------------

    async def load_cart(self, cart_id: str, keys_since: datetime) -> StoredCart | None:
        # One statement, so one snapshot and one hop to the reader thread: a cart not in
        # memory is read in a single round trip (the rows are told apart by the tag).
        rows = await self._read(_LOAD_CART, (cart_id, iso(keys_since)))
        head = [r for r in rows if r[0] == 0]
        if not head:
            return None
        _, version, status, user_id, updated_at, abandon_at, merged_into = head[0]
        rest = [r for r in rows if r[0] != 0]
        lines = sorted((r for r in rest if r[0] == 1), key=lambda r: (r[4], r[6]))
        cart = Cart(
            id=cart_id,
            version=version,
            status=Status(status),
            lines=tuple(Line(r[1], r[2], r[3], r[4], parse_iso(r[5])) for r in lines),
            user_id=user_id,
            updated_at=parse_iso(updated_at),
            abandon_at=parse_iso(abandon_at) if abandon_at else None,
            merged_into=merged_into,
        )
        return StoredCart(
            cart=cart,
            patches=sorted((r[1], r[2]) for r in rest if r[0] == 2),
            keys={r[1]: r[2] for r in sorted((r for r in rest if r[0] == 3), key=lambda r: r[2])},
        )

    async def user_cart(self, user_id: str) -> str | None:
        rows = await self._read(
            "SELECT id FROM cart_sessions WHERE user_id = ?"
            " AND status IN ('active', 'checking_out', 'abandoned')",
            (user_id,),
        )
        return str(rows[0][0]) if rows else None

    async def due_carts(self, now: datetime, limit: int) -> list[str]:
        at = iso(now)
        # Two queries, each served by its own partial index.
        abandon = await self._read(
            "SELECT id FROM cart_sessions WHERE abandon_at <= ? AND status = 'active'"
            " ORDER BY abandon_at LIMIT ?",
            (at, limit),
        )
        expire = await self._read(
            "SELECT id FROM cart_sessions WHERE expires_at <= ?"
            " AND status IN ('active', 'abandoned') ORDER BY expires_at LIMIT ?",
            (at, limit),
        )
        return list(dict.fromkeys(row[0] for row in [*expire, *abandon]))[:limit]

    async def purge_expired(self, finished_before: datetime, limit: int) -> int:
        total = 0
        for sql in _PURGES:
            while True:
                params = (iso(finished_before), limit) if sql.count("?") == 2 else (limit,)
                deleted = await self._write(partial(_execute, sql, params))
                total += deleted
                if deleted < limit:
                    break
        return total

    async def purge_records(self, before: datetime, undelivered_too: bool, limit: int) -> int:
        total = 0
        for sql in _RECORD_PURGES:
            params = (
                (iso(before), int(undelivered_too), limit) if "?3" in sql else (iso(before), limit)
            )
            while True:
                deleted = await self._write(partial(_execute, sql, params))
                total += deleted
                if deleted < limit:
                    break
        return total

    async def claim_events(self, now: datetime, lease: float, limit: int) -> list[CartEvent]:
        return await self._write(
            partial(_claim_events, iso(now), iso(now + timedelta(seconds=lease)), limit)
        )

    async def event_sent(self, event_id: int, delivered: bool, retry_at: datetime) -> None:
        now = iso(utcnow())
        if delivered:
            sql = "UPDATE cart_events SET delivered_at = ?, attempts = attempts + 1 WHERE id = ?"
            params: tuple[Any, ...] = (now, event_id)
        else:
            sql = "UPDATE cart_events SET next_attempt_at = ?, attempts = attempts + 1 WHERE id = ?"
            params = (iso(retry_at), event_id)
        await self._write(partial(_execute, sql, params))

    async def list_events(self, undelivered: bool, limit: int) -> list[CartEvent]:
        where = "WHERE delivered_at IS NULL " if undelivered else ""
        rows = await self._read(
            f"SELECT {_EVENT_COLUMNS} FROM cart_events {where}ORDER BY id LIMIT ?", (limit,)
        )
        return [CartEvent(*row) for row in rows]

    async def load_checkout(self, checkout_id: str) -> Checkout | None:
        found = await self._checkouts("id = ?", (checkout_id,))
        return found[0] if found else None

    async def open_checkout(self, cart_id: str) -> Checkout | None:
        found = await self._checkouts("cart_id = ? AND status = 'reserved'", (cart_id,))
        return found[0] if found else None

    async def due_checkouts(self, now: datetime, limit: int) -> list[Checkout]:
        return await self._checkouts(
            "status = 'reserved' AND expires_at < ? ORDER BY expires_at LIMIT ?",
            (iso(now), limit),
        )

    async def _checkouts(self, where: str, params: tuple[Any, ...]) -> list[Checkout]:
        # `where` is one of the literal clauses above; values are always parameters.
        rows = await self._read(f"SELECT {_CHECKOUT_COLUMNS} FROM checkouts WHERE {where}", params)
        found = []
        for row in rows:
            lines = await self._read(
                "SELECT product_id, quantity, unit_price_cents FROM checkout_items"
                " WHERE checkout_id = ? ORDER BY rowid",
                (row[0],),
            )
            found.append(checkout_from_row(row, [CheckoutLine(*line) for line in lines]))
        return found

    async def replay(self, cart_id: str, key: str) -> tuple[bytes | None, str | None]:
        rows = await self._read(
            "SELECT response, request FROM applied_mutations WHERE cart_id = ? AND key = ?",
            (cart_id, key),
        )
        if not rows:
            return None, None
        response, request = rows[0]
        return (response.encode() if response is not None else None), request

    async def load_products(self, changed_since: str = "") -> tuple[list[Product], str]:
        rows = await self._read(
            "SELECT id, sku, name, price_cents, stock, image_url, active, updated_at"
            " FROM products WHERE updated_at >= ? ORDER BY id",
            (changed_since,),
        )
        latest = max((row[7] for row in rows), default=changed_since)
        return [product_from_row(row) for row in rows], latest

    async def products_by_id(self, product_ids: list[str]) -> list[Product]:
        rows = await self._read(
            "SELECT id, sku, name, price_cents, stock, image_url, active FROM products"
            " WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(product_ids),),
        )
        return [product_from_row(row) for row in rows]

    async def versions(self, cart_ids: list[str]) -> dict[str, int]:
        if not cart_ids:
            return {}
        rows = await self._read(
            "SELECT id, version FROM cart_sessions WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(cart_ids),),
        )
        return {cart_id: version for cart_id, version in rows}

    async def ping(self) -> None:
        await self._read("SELECT 1", ())

    async def stats(self) -> StoreStats:
        rows = await self._read(_STATS, ())
        size = sum(
            os.stat(path).st_size
            for path in (self._path, f"{self._path}-wal")
            if os.path.exists(path)
        )
        return StoreStats(size, *rows[0])

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        reader = self._reader
        assert reader is not None
        async with self._read_lock:
            return list(await reader.execute_fetchall(sql, params))

    async def close(self) -> None:
        while self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._reader is not None:
            await self._reader.close()
        if self._writer is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._writer.close)
        self._executor.shutdown(wait=True)
        if self._open_lock is not None:
            os.close(self._open_lock)
            self._open_lock = None


class _Held:
    def __init__(self, store: SQLiteStore, cart_id: str) -> None:
        self._store = store
        self._cart_id = cart_id

    async def load(self, keys_since: datetime) -> StoredCart | None:
        return await self._store.load_cart(self._cart_id, keys_since)

    async def commit(self, write: CartWrite) -> None:
        await self._store._commit(write)


def _prune_keys(before: str, conn: sqlite3.Connection) -> int:
    # Small batches: each is one short write transaction, so carts never wait long.
    cur = conn.execute(
        "DELETE FROM applied_mutations WHERE rowid IN (SELECT rowid FROM applied_mutations"
        " WHERE created_at < ? LIMIT ?)",
        (before, PRUNE_BATCH),
    )
    return cur.rowcount


def _upsert_products(
    products: list[Product], now: str, conn: sqlite3.Connection
) -> tuple[int, int]:
    inserted = updated = 0
    # Park the SKUs of products being updated first, so an import may swap SKUs between
    # them: SQLite checks UNIQUE at every row, not at commit.
    conn.executemany(
        "UPDATE products SET sku = ? WHERE id = ?", [("\x00" + p.id, p.id) for p in products]
    )
    for p in products:
        try:
            cur = conn.execute(
                "UPDATE products SET sku = ?, name = ?, price_cents = ?, stock = ?, image_url = ?,"
                " active = ?, updated_at = ? WHERE id = ?",
                (p.sku, p.name, p.price_cents, p.stock, p.image_url, int(p.active), now, p.id),
            )
            if cur.rowcount:
                updated += 1
                continue
            conn.execute(
                "INSERT INTO products (id, sku, name, price_cents, stock, image_url, active,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (p.id, p.sku, p.name, p.price_cents, p.stock, p.image_url, int(p.active), now, now),
            )
            inserted += 1
        except sqlite3.IntegrityError as exc:
            raise ProductConflict(p.id, f"product {p.id!r} (sku {p.sku!r}): {exc}") from None
    return inserted, updated


_CHECKOUT_COLUMNS = (
    "id, cart_id, cart_version, provider, status, amount_cents, currency, expires_at,"
    " session_id, url"
)


_EVENT_COLUMNS = "id, cart_id, type, payload, created_at, delivered_at, attempts"

# A cart with its lines, patches and recent mutation ids, tagged 0 to 3 (the header first).
_LOAD_CART = (
    "SELECT 0, version, status, user_id, updated_at, abandon_at, merged_into"
    " FROM cart_sessions WHERE id = ?1"
    " UNION ALL SELECT 1, product_id, quantity, price_cents, position, added_at, rowid"
    " FROM cart_items WHERE cart_id = ?1"
    " UNION ALL SELECT 2, version, body, NULL, NULL, NULL, NULL"
    " FROM cart_patches WHERE cart_id = ?1"
    " UNION ALL SELECT 3, key, version, NULL, NULL, NULL, NULL"
    " FROM applied_mutations WHERE cart_id = ?1 AND created_at >= ?2"
)

# Each a short transaction of at most `limit` rows, so carts never wait long for the writer.
_PURGES = (
    "DELETE FROM cart_items WHERE rowid IN (SELECT i.rowid FROM cart_items i"
    " JOIN cart_sessions s ON s.id = i.cart_id WHERE s.status = 'expired' LIMIT ?)",
    "DELETE FROM cart_patches WHERE rowid IN (SELECT p.rowid FROM cart_patches p"
    " JOIN cart_sessions s ON s.id = p.cart_id WHERE s.status = 'expired' LIMIT ?)",
    "DELETE FROM applied_mutations WHERE rowid IN (SELECT m.rowid FROM applied_mutations m"
    " JOIN cart_sessions s ON s.id = m.cart_id WHERE s.status = 'expired' LIMIT ?)",
    "DELETE FROM cart_sessions WHERE id IN (SELECT id FROM cart_sessions"
    " WHERE status IN ('expired', 'merged', 'checked_out') AND updated_at < ? LIMIT ?)",
)


# Both counts are served by partial indexes (pending events, reserved checkouts).
_STATS = (
    "SELECT (SELECT count(*) FROM cart_events WHERE delivered_at IS NULL),"
    " (SELECT min(created_at) FROM cart_events WHERE delivered_at IS NULL),"
    " (SELECT count(*) FROM checkouts WHERE status = 'reserved' AND expires_at > '')"
)

# Records kept for a while after the fact (EVENTS_TTL), oldest first, in short batches.
# Released checkouts only: a paid one is the order's record.
_RECORD_PURGES = (
    "DELETE FROM cart_events WHERE id IN (SELECT id FROM cart_events WHERE created_at < ?1"
    " AND (delivered_at IS NOT NULL OR ?2) ORDER BY id LIMIT ?3)",
    "DELETE FROM payment_events WHERE event_id IN (SELECT event_id FROM payment_events"
    " WHERE received_at < ? LIMIT ?)",
    "DELETE FROM checkouts WHERE id IN (SELECT id FROM checkouts"
    " WHERE status = 'released' AND updated_at < ? LIMIT ?)",
)


def _execute(sql: str, params: tuple[Any, ...], conn: sqlite3.Connection) -> int:
    return conn.execute(sql, params).rowcount


def _claim_events(now: str, until: str, limit: int, conn: sqlite3.Connection) -> list[CartEvent]:
    rows = conn.execute(
        f"SELECT {_EVENT_COLUMNS} FROM cart_events WHERE delivered_at IS NULL"
        " AND next_attempt_at <= ? ORDER BY id LIMIT ?",
        (now, limit),
    ).fetchall()
    # The lease: another sender (another process) skips these until it runs out.
    conn.executemany(
        "UPDATE cart_events SET next_attempt_at = ? WHERE id = ?", [(until, row[0]) for row in rows]
    )
    return [CartEvent(*row) for row in rows]


def _add_columns(conn: sqlite3.Connection) -> None:
    """Columns added after a table was first made: CREATE TABLE IF NOT EXISTS leaves an
    older file's table as it is."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(applied_mutations)")}
    if "request" not in columns:
        try:
            conn.execute("ALTER TABLE applied_mutations ADD COLUMN request TEXT")
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
    columns = {row[1] for row in conn.execute("PRAGMA table_info(products)")}
    if "active" not in columns:
        try:
            conn.execute(
                "ALTER TABLE products ADD COLUMN active INTEGER NOT NULL DEFAULT 1"
                " CHECK (active IN (0, 1))"
            )
        except sqlite3.OperationalError as exc:  # another process added it first
            if "duplicate column" not in str(exc):
                raise
