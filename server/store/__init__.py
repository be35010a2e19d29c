"""The store seam: what rooms and the catalog need from durable storage, chosen by URL."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from msgspec import Struct

from ..cart import Cart, Change, Product
from ..config import ConfigError, Settings
from ..metrics import Metrics
from ..protocol import OrderDoc, OrderEventDoc, OrderItemDoc, encode


class StaleVersion(Exception):
    """The cart moved on in the store (another process committed first): catch up, retry."""


class AlreadyApplied(Exception):
    """The write's mutation id was applied before, at `version`: replay, do not apply."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


class ShortStock(Exception):
    """A reservation found lines the stock cannot cover; nothing was reserved."""

    def __init__(self, lines: list[dict[str, object]]) -> None:
        super().__init__(lines)
        self.lines = lines  # [{"product_id", "requested", "available"}]


class Archived(Exception):
    """A reservation found lines of archived products (`active` 0); nothing was reserved."""

    def __init__(self, product_ids: list[str]) -> None:
        super().__init__(product_ids)
        self.product_ids = product_ids


class ProductConflict(ValueError):
    """A product the store refused (its SKU belongs to another product); nothing stored."""

    def __init__(self, product_id: str, message: str) -> None:
        super().__init__(message)
        self.product_id = product_id


class ProductChange(Struct, frozen=True):
    """A partial update of one product, applied atomically; None leaves a field as it is."""

    name: str | None = None
    price_cents: int | None = None
    stock: int | None = None
    stock_delta: int = 0  # added to the stock (or to `stock`); never below zero
    image_url: str | None = None
    set_image_url: bool = False  # image_url given (None then clears it)
    active: bool | None = None


# REST answers kept for replay per cart: those of its last this many versions. An older
# Idempotency-Key is still never applied twice; its replay answers the cart as it is now.
ANSWERS_PER_CART = 20


class TooManyHolds(Exception):
    """The address that asked already holds as many reservations as it may."""


class CheckoutMoved(Exception):
    """The checkout is no longer in the state the effect expects: re-read and decide."""


class DuplicateEvent(Exception):
    """This payment event id was handled before."""


class CheckoutLine(Struct, frozen=True):
    product_id: str
    quantity: int
    unit_price_cents: int  # what is charged


class Checkout(Struct, frozen=True):
    id: str
    cart_id: str
    cart_version: int  # the version that locked the cart for this checkout
    provider: str
    status: str  # reserved | paid | released
    lines: tuple[CheckoutLine, ...]
    amount_cents: int
    currency: str
    expires_at: datetime
    session_id: str | None = None
    url: str | None = None


class OrderLine(Struct, frozen=True):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class Order(Struct, frozen=True):
    id: str
    checkout_id: str
    cart_id: str
    user_id: str | None
    session_id: str | None
    payment_intent: str | None
    amount_total_cents: int
    currency: str
    lines: tuple[OrderLine, ...]


# Effects: rows written in the same transaction as a cart write (or alone), so a
# reservation, an order or a handled event never exists without the cart state it implies.


class Reserve(Struct, frozen=True):
    """Take the stock of every line (all or nothing, never below zero): ShortStock.
    With a `holder` address: TooManyHolds if that address holds `cap` reservations."""

    checkout: Checkout
    holder: str | None = None
    cap: int = 0


class Release(Struct, frozen=True):
    """Give a reserved checkout's stock back: CheckoutMoved unless it is reserved."""

    checkout_id: str


class Fulfil(Struct, frozen=True):
    """Turn a reservation into an order. A released one (paid after expiry or cancel)
    takes its stock again as far as it is there; the order is then 'needs_review' if
    some is missing. CheckoutMoved if it is already paid."""

    order: Order


class AttachSession(Struct, frozen=True):
    checkout_id: str
    session_id: str
    url: str


class RecordEvent(Struct, frozen=True):
    """Remember a payment event id: DuplicateEvent if it was handled before."""

    event_id: str
    type: str


class Emit(Struct, frozen=True):
    """Queue a lifecycle event in the outbox."""

    cart_id: str
    type: str
    payload: bytes  # JSON


class CreateCart(Struct, frozen=True):
    """An empty cart row for a user (the successor of a checked-out cart), so the
    user's next login finds it. Skipped if the user has an open cart already."""

    cart_id: str
    user_id: str
    expires_at: datetime


def order_event(order: Order, status: str, now: str) -> Emit:
    """The outbox event written with an order: order_paid or order_needs_review."""
    doc = OrderEventDoc(
        id=order.id,
        cart_id=order.cart_id,
        user_id=order.user_id,
        status=status,
        amount_cents=order.amount_total_cents,
        currency=order.currency,
        payment_intent=order.payment_intent,
        created_at=now,
        items=[
            OrderItemDoc(x.product_id, x.sku, x.name, x.quantity, x.unit_price_cents)
            for x in order.lines
        ],
        type=f"order_{status}",
        at=now,
    )
    return Emit(order.cart_id, doc.type, encode(doc))


Effect = Reserve | Release | Fulfil | AttachSession | RecordEvent | Emit | CreateCart


class CartEvent(Struct, frozen=True):
    id: int
    cart_id: str
    type: str
    payload: str  # JSON
    created_at: str
    delivered_at: str | None
    attempts: int


class StoredCart(Struct, frozen=True):
    cart: Cart
    patches: list[tuple[int, str]]  # (version, patch frame), oldest first
    keys: dict[str, int]  # mutation ids applied within IDEMPOTENCY_TTL -> version


class CartWrite(Struct, frozen=True):
    """One accepted mutation, committed atomically: cart header, lines, patch, mutation id."""

    cart: Cart  # the state after the mutation
    base_version: int  # the version it was applied to: a compare-and-set on the cart row
    change: Change
    patch: str  # the patch frame as sent to tabs, kept for ?since= resume
    key: str | None = None  # the mutation id (REST Idempotency-Key or WS message id)
    response: bytes | None = None  # REST: the first answer, replayed for a repeated key
    effects: tuple[Effect, ...] = ()  # written in the same transaction, after the cart
    request: str | None = None  # REST: a digest of what was asked, to refuse a reused key


class StoreStats(Struct, frozen=True):
    """What an operator watches in the store (see /metrics)."""

    size_bytes: int  # SQLite: the file and its WAL; PostgreSQL: the schema's tables
    outbox_pending: int  # events not yet delivered
    outbox_oldest: str | None  # created_at of the oldest of them
    checkouts_reserved: int  # checkouts holding stock


class Held(Protocol):
    """One cart held in the store for the length of a block (see Store.hold)."""

    async def load(self, keys_since: datetime) -> StoredCart | None:
        """The cart as stored now: nobody else can move it on until the block ends."""

    async def commit(self, write: CartWrite) -> None:
        """Stage one mutation; durable when the block ends without an error. Raises
        AlreadyApplied or Unavailable (never StaleVersion for a cart that existed)."""


class Carts(Protocol):
    """Carts: their writes, compare-and-set on the version, and their reads."""

    # Commits of one cart started in order are stored in that order (one writer queue):
    # a room may then start the next before the last one returns (pipeline.py).
    ordered_commits: bool

    async def load_cart(self, cart_id: str, keys_since: datetime) -> StoredCart | None:
        """The cart with its recent patches and mutation ids, or None if never stored."""

    async def commit(self, write: CartWrite, *more: CartWrite) -> None:
        """Durably commit one mutation (or several carts' at once, all or none). Raises
        StaleVersion, AlreadyApplied, or Unavailable when it could not."""

    def start_commit(self, write: CartWrite) -> asyncio.Future[None]:
        """commit() of one write, begun now: with ordered_commits, a later call for the same
        cart is stored after this one."""

    def hold(self, cart_id: str) -> AbstractAsyncContextManager[Held]:
        """Lock the cart against commits by other processes, to catch up and commit without
        racing them again: the fair path after a StaleVersion. Raises Unavailable. The
        commit is durable only once the block has ended without an error."""

    async def record(self, *effects: Effect) -> None:
        """Durably write effects that change no cart, in one transaction."""

    async def versions(self, cart_ids: list[str]) -> dict[str, int]:
        """The stored version of each of these carts that exists, in one query."""

    async def replay(self, cart_id: str, key: str) -> tuple[bytes | None, str | None]:
        """The stored first answer for a REST idempotency key."""

    async def user_cart(self, user_id: str) -> str | None:
        """The user's open cart (active, abandoned or checking out), if any."""


class Retention(Protocol):
    """What is due, and what is past its time: the sweeper's and the purge's."""

    async def due_carts(self, now: datetime, limit: int) -> list[str]:
        """Carts whose abandon_at or expires_at has passed and that still need it."""

    async def prune(self, applied_before: datetime) -> int:
        """Forget mutation ids applied before the given time, in bounded batches."""

    async def purge_expired(self, finished_before: datetime, limit: int) -> int:
        """Delete the lines, patches and ids of expired carts, and finished carts last
        changed before `finished_before`, at most `limit` rows per transaction."""

    async def purge_records(self, before: datetime, undelivered_too: bool, limit: int) -> int:
        """Delete outbox events delivered (or, with `undelivered_too`, any) and payment event
        ids and released checkouts from before `before`, at most `limit` rows per
        transaction."""


class Checkouts(Protocol):
    async def load_checkout(self, checkout_id: str) -> Checkout | None: ...

    async def open_checkout(self, cart_id: str) -> Checkout | None:
        """The cart's reserved checkout, if any."""

    async def due_checkouts(self, now: datetime, limit: int) -> list[Checkout]:
        """Reserved checkouts past their expiry, oldest first."""


class Outbox(Protocol):
    async def claim_events(self, now: datetime, lease: float, limit: int) -> list[CartEvent]:
        """Undelivered events due for a try, leased to the caller for `lease` seconds."""

    async def event_sent(self, event_id: int, delivered: bool, retry_at: datetime) -> None:
        """Mark an event delivered, or count a failed try and schedule the next."""

    async def list_events(self, undelivered: bool, limit: int) -> list[CartEvent]: ...


class Shop(Protocol):
    """The catalog's products and the orders, for the catalog and the admin API."""

    async def load_products(self, changed_since: str = "") -> tuple[list[Product], str]:
        """Products updated at or after `changed_since` (all by default), and the latest
        updated_at among them: the `changed_since` for the next call."""

    async def products_by_id(self, product_ids: list[str]) -> list[Product]:
        """These products as stored now (unknown ids left out)."""

    async def upsert_products(self, products: list[Product]) -> tuple[int, int]:
        """Insert or update products in one transaction; (inserted, updated). Raises
        ProductConflict (nothing stored)."""

    async def change_product(self, product_id: str, change: ProductChange) -> Product:
        """Apply a partial update atomically; the product after it. Raises UnknownProduct,
        or InsufficientStock when a movement would take the stock below zero."""

    async def list_orders(
        self, status: str | None, limit: int, after: tuple[str, str] | None
    ) -> list[OrderDoc]:
        """Orders newest first (of one status, if given), after the (created_at, id)
        cursor, at most `limit`."""

    async def load_order(self, order_id: str) -> OrderDoc | None: ...


class Store(Carts, Retention, Checkouts, Outbox, Shop, Protocol):
    """Everything the server keeps: one of each concern above, in one database."""

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""

    async def stats(self) -> StoreStats: ...

    async def close(self) -> None: ...


async def open_store(settings: Settings, metrics: Metrics | None = None) -> Store:
    """The store for settings.database_url, migrated and ready."""
    url = settings.database_url
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return await SQLiteStore.open(settings, metrics)
    if url.startswith(("postgres://", "postgresql://")):
        from .postgres import PostgresStore

        return await PostgresStore.open(settings, metrics)
    scheme = url.split(":", 1)[0]
    raise ConfigError(
        f"DATABASE_URL scheme {scheme!r} is not supported"
        " (expected sqlite:///path or postgresql://user:password@host/db)"
    )
