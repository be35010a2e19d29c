"""The store seam: what rooms and the catalog need from durable storage, chosen by URL."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from msgspec import Struct

from ..cart import Cart, Change, Product
from ..config import ConfigError, Settings
from ..metrics import Metrics


class StaleVersion(Exception):
    """The cart moved on in the store (another process committed first): catch up, retry."""


class AlreadyApplied(Exception):
    """The write's mutation id was applied before, at `version`: replay, do not apply."""

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.version = version


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


class Held(Protocol):
    """One cart held in the store for the length of a block (see Store.hold)."""

    async def load(self, keys_since: datetime) -> StoredCart | None:
        """The cart as stored now: nobody else can move it on until the block ends."""

    async def commit(self, write: CartWrite) -> None:
        """Stage one mutation; durable when the block ends without an error. Raises
        AlreadyApplied or Unavailable (never StaleVersion for a cart that existed)."""


class Store(Protocol):
    async def load_cart(self, cart_id: str, keys_since: datetime) -> StoredCart | None:
        """The cart with its recent patches and mutation ids, or None if never stored."""

    async def commit(self, write: CartWrite) -> None:
        """Durably commit one mutation. Raises StaleVersion, AlreadyApplied, or Unavailable
        when it could not."""

    def hold(self, cart_id: str) -> AbstractAsyncContextManager[Held]:
        """Lock the cart against commits by other processes, to catch up and commit without
        racing them again: the fair path after a StaleVersion. Raises Unavailable. The
        commit is durable only once the block has ended without an error."""

    async def versions(self, cart_ids: list[str]) -> dict[str, int]:
        """The stored version of each of these carts that exists, in one query."""

    async def replay(self, cart_id: str, key: str) -> bytes | None:
        """The stored first answer for a REST idempotency key."""

    async def prune(self, applied_before: datetime) -> int:
        """Forget mutation ids applied before the given time, in bounded batches."""

    async def load_products(self, changed_since: str = "") -> tuple[list[Product], str]:
        """Products updated at or after `changed_since` (all by default), and the latest
        updated_at among them: the `changed_since` for the next call."""

    async def upsert_products(self, products: list[Product]) -> tuple[int, int]:
        """Insert or update products in one transaction; (inserted, updated)."""

    async def ping(self) -> None:
        """Raise if the store cannot be reached."""

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
