"""SQLite store (the embedded default): one file in WAL mode.

Writes go to one writer connection owned by a single thread (writer.py). Every write is
a job; jobs submitted while the previous transaction runs are committed together in the
next one (group commit: one fsync for many carts), each inside its own SAVEPOINT so one
bad write fails alone. A whole batch costs one thread hop each way, not one per
statement, which is why the writer uses the stdlib driver on its own thread rather than
aiosqlite's per-call hops.
Reads use an aiosqlite connection: WAL lets them run beside the writer. Checkpoints run
on a thread and a connection of their own (checkpoints.py), so a commit seldom copies
the WAL into the file itself.

The statements are both stores' (see sql.py); a plan runs on the writer in one job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from asyncio import Future
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import aiosqlite

from .. import errors
from ..backup import hold_open
from ..cart import Product
from ..clock import iso, utcnow
from ..config import SCHEMA_PATH, Settings, sqlite_path
from ..metrics import Metrics
from . import CartWrite, Held, StoredCart, StoreStats
from .carts import EDITS_TRIGGER, EDITS_VIEW, plain, stored_cart, write_cart, write_many
from .carts import PRUNE_BATCH as PRUNE_BATCH
from .checkpoints import Checkpointer
from .queries import SqlStore
from .records import FIGURES
from .shop import PARK_SKUS, SKU_PARK, upsert_each
from .sql import SQLITE, Many, Pair, Params, Plan, Rows, Run, Step
from .writer import Entry, Fail, Joinable, Outcome, Writer

log = logging.getLogger("server.store")
T = TypeVar("T")
# Carts held (see hold) by database file: a commit to a held cart waits for the hold to end.
_held: dict[tuple[str, str], asyncio.Event] = {}


class SQLiteStore(SqlStore):
    ordered_commits = True  # one writer thread takes the jobs in the order they came

    def __init__(self, path: str, settings: Settings, metrics: Metrics) -> None:
        self._path = path
        self._synchronous = settings.sqlite_synchronous
        self._busy = settings.sqlite_busy_timeout_seconds  # seconds a write waits for a lock
        self._history = settings.patch_history
        self._ttl = timedelta(seconds=settings.cart_ttl_seconds)
        self._metrics = metrics
        self._writer: Writer | None = None
        self._reader: aiosqlite.Connection | None = None
        self._checkpoints = Checkpointer(self._connect)
        self._read_lock = asyncio.Lock()  # one read transaction at a time on the reader
        self._unfinished = 0  # writes submitted and not yet committed or failed
        self._open_lock: int | None = None  # shared lock: no restore while this is open
        metrics.gauge("cart_store_writes_pending", lambda: self._unfinished)

    @classmethod
    async def open(cls, settings: Settings, metrics: Metrics | None = None) -> SQLiteStore:
        store = cls(sqlite_path(settings.database_url), settings, metrics or Metrics())
        store._open_lock = hold_open(store._path)
        writer = Writer(asyncio.get_running_loop(), store._settle, store._checkpoints.poke)
        await writer.open(store._open_writer)
        store._writer = writer
        store._checkpoints.start()
        store._reader = await aiosqlite.connect(
            store._path, isolation_level=None, timeout=store._busy
        )
        await store._reader.execute("PRAGMA query_only = ON")
        return store

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")  # validated in Settings
        conn.execute("PRAGMA foreign_keys = ON")
        conn.executescript("BEGIN IMMEDIATE;\n" + SCHEMA_PATH.read_text() + "\nCOMMIT;")
        _add_columns(conn)
        conn.execute(EDITS_VIEW)  # write_many's statement (this connection's own)
        conn.execute(EDITS_TRIGGER)
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A connection of the writer's thread or the checkpoints' (one each)."""
        return sqlite3.connect(self._path, isolation_level=None, timeout=self._busy)

    # --- the writer: group commit (writer.py) ---------------------------------------

    async def _write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(job)  # type: ignore[no-any-return]

    def _submit(self, job: Callable[[sqlite3.Connection], T], failed: Fail = None) -> Future[Any]:
        """Queue `job` for the next transaction: its place in the order is taken now.
        `failed` turns the exception a failed job raised into the one its future gets."""
        assert self._writer is not None, "the store is not open"
        self._unfinished += 1
        return self._writer.submit(job, failed)

    def _settle(self, batch: list[Entry], outcome: Outcome, took: float) -> None:
        """On the loop: a committed (or failed) batch's futures, in the order submitted."""
        if isinstance(outcome, BaseException):
            log.error("SQLite transaction of %d writes failed: %s", len(batch), outcome)
            outcome = [(False, outcome)] * len(batch)
        else:
            self._metrics.inc("cart_commit_batches_total")
            self._metrics.inc("cart_commit_writes_total", len(batch))
            self._metrics.observe("cart_commit_transaction_seconds", took)
        now = time.perf_counter()
        self._unfinished -= len(batch)
        observe = self._metrics.observe
        for (_, fut, started, failed), (ok, value) in zip(batch, outcome, strict=True):
            observe("cart_commit_seconds", now - started)
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(failed(value) if failed is not None else value)

    async def commit(self, write: CartWrite, *more: CartWrite) -> None:
        for cart_id in dict.fromkeys(w.cart.id for w in (write, *more)):
            await self._unheld(cart_id)
        await self._commit(write, *more)

    async def _unheld(self, cart_id: str) -> None:
        while (released := _held.get((self._path, cart_id))) is not None:
            await released.wait()

    def start_commit(self, write: CartWrite) -> Future[None]:
        if (self._path, write.cart.id) in _held:
            # Queued once the hold ends; a later write that overtakes it meanwhile fails
            # the version check and is retried, so the order never breaks.
            return asyncio.ensure_future(self.commit(write))
        return self._submit(self._job(write), partial(_unstored, write))

    async def _commit(self, write: CartWrite, *more: CartWrite) -> None:
        job = partial(self._write_carts, (write, *more)) if more else self._job(write)
        await self._submit(job, partial(_unstored, write))

    def _job(self, write: CartWrite) -> Callable[[sqlite3.Connection], None]:
        if plain(write):
            return _Edit(write, self._ttl, self._history)
        return partial(self._write_carts, (write,))

    def _write_carts(self, writes: tuple[CartWrite, ...], conn: sqlite3.Connection) -> None:
        for write in writes:  # one job: one savepoint for all of them
            drive(write_cart(write, self._ttl, self._history), conn)

    async def _change(self, what: str, plan: Plan[T], atomic: bool = True) -> T:
        # Every job is a transaction (a savepoint in one): `atomic` costs nothing here.
        try:
            return await self._write(partial(drive, plan))
        except sqlite3.Error as exc:
            log.error("SQLite: could not %s: %s", what, exc)
            raise errors.Unavailable(f"the store could not {what}; nothing changed") from exc

    async def _query(self, what: str, plan: Plan[T], snapshot: bool = False) -> T:
        # Reads only: WAL gives each statement its snapshot; the writer never waits.
        result: Any = None
        try:
            while True:
                step = plan.send(result)
                assert isinstance(step, Rows), step
                result = await self._read(step.sql, step.params)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

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

    async def upsert_products(self, products: list[Product]) -> tuple[int, int]:
        return await self._change("store products", _upsert(products, iso(utcnow())))

    async def load_cart(self, cart_id: str, keys_since: datetime) -> StoredCart | None:
        # One statement, so one snapshot and one hop to the reader thread: a cart not in
        # memory is read in a single round trip (the rows are told apart by the tag).
        rows = await self._read(_LOAD_CART, {"cart_id": cart_id, "since": iso(keys_since)})
        head = [r[1:] for r in rows if r[0] == 0]
        if not head:
            return None
        lines = sorted((r for r in rows if r[0] == 1), key=lambda r: (r[4], r[6]))
        return stored_cart(
            cart_id,
            head[0],
            (r[1:6] for r in lines),
            sorted((r[1], r[2]) for r in rows if r[0] == 2),
            sorted(((r[1], r[2]) for r in rows if r[0] == 3), key=lambda k: k[1]),
        )

    async def stats(self) -> StoreStats:
        rows = await self._read(f"SELECT {FIGURES}", {})
        size = sum(
            os.stat(path).st_size
            for path in (self._path, f"{self._path}-wal")
            if os.path.exists(path)
        )
        return StoreStats(size, *rows[0])

    async def _read(self, sql: str, params: Params) -> list[Any]:
        reader = self._reader
        assert reader is not None
        rendered = SQLITE[sql]
        async with self._read_lock:
            return list(await reader.execute_fetchall(rendered.text, rendered.bind(params)))

    async def close(self) -> None:
        if self._writer is not None:
            await self._writer.close()  # after committing what was submitted
        await asyncio.to_thread(self._checkpoints.close)
        if self._reader is not None:
            await self._reader.close()
        if self._open_lock is not None:
            os.close(self._open_lock)
            self._open_lock = None


class _Edit(Joinable):
    """A plain edit of a cart (carts.plain): the edits next to it in a batch, of any
    carts, are written together (carts.write_many)."""

    __slots__ = ("write", "ttl", "history")

    def __init__(self, write: CartWrite, ttl: timedelta, history: int) -> None:
        self.write = write
        self.ttl = ttl
        self.history = history

    def __call__(self, conn: sqlite3.Connection) -> None:
        drive(write_cart(self.write, self.ttl, self.history), conn)

    def together(self, conn: sqlite3.Connection, jobs: list[Any]) -> None:
        writes = [job.write for job in jobs]
        drive(write_many(writes, self.ttl, self.history), conn)


class _Held:
    def __init__(self, store: SQLiteStore, cart_id: str) -> None:
        self._store = store
        self._cart_id = cart_id

    async def load(self, keys_since: datetime) -> StoredCart | None:
        return await self._store.load_cart(self._cart_id, keys_since)

    async def commit(self, write: CartWrite) -> None:
        await self._store._commit(write)


def drive(plan: Plan[T], conn: sqlite3.Connection) -> T:
    """Run a plan on the writer, step by step: its result."""
    result: Any = None
    try:
        while True:
            result = _step(plan.send(result), conn)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    finally:
        plan.close()


def _step(step: Step, conn: sqlite3.Connection) -> Any:
    # Tests, not `match` patterns: this runs for every statement of every write.
    if isinstance(step, Run):
        sql = SQLITE[step.sql]
        try:
            return conn.execute(sql.text, sql.bind(step.params)).rowcount
        except sqlite3.IntegrityError as exc:
            if step.refused is None:
                raise
            raise step.refused(exc) from None
    if isinstance(step, Rows):
        sql = SQLITE[step.sql]
        return conn.execute(sql.text, sql.bind(step.params)).fetchall()
    if isinstance(step, Many):
        sql = SQLITE[step.sql]
        conn.executemany(sql.text, map(sql.bind, step.params))
    elif isinstance(step, Pair):
        for each in (SQLITE[step.first], SQLITE[step.then]):
            conn.execute(each.text, each.bind(step.params))
    # A Lock: one writer holds every lock already.
    return None


def _upsert(products: list[Product], now: str) -> Plan[tuple[int, int]]:
    yield Run(PARK_SKUS, {"park": SKU_PARK, "ids": [p.id for p in products]})
    return (yield from upsert_each(products, now))


# A cart with its lines, patches and recent mutation ids, tagged 0 to 3 (the header first).
_LOAD_CART = (
    "SELECT 0, version, status, user_id, updated_at, abandon_at, merged_into"
    " FROM cart_sessions WHERE id = :cart_id"
    " UNION ALL SELECT 1, product_id, quantity, price_cents, position, added_at, rowid"
    " FROM cart_items WHERE cart_id = :cart_id"
    " UNION ALL SELECT 2, version, body, NULL, NULL, NULL, NULL"
    " FROM cart_patches WHERE cart_id = :cart_id"
    " UNION ALL SELECT 3, key, version, NULL, NULL, NULL, NULL"
    " FROM applied_mutations WHERE cart_id = :cart_id AND created_at >= :since"
)


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


def _unstored(write: CartWrite, exc: Exception) -> Exception:
    """What a caller of commit() gets for a failed write: the store's refusals as they
    are, a database error as Unavailable."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    log.error("could not commit cart %s v%d: %s", write.cart.id, write.cart.version, exc)
    unavailable = errors.Unavailable("the change could not be stored; nothing changed")
    unavailable.__cause__ = exc
    return unavailable
