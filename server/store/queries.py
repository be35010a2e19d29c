"""What both stores do the same way: every Store method that is the same statements
run the same way. A store supplies how a plan is run (`_query`, `_change`); the rest,
each in its own driver, is where the databases really differ."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from ..cart import Product
from ..clock import iso, utcnow
from ..protocol import OrderDoc
from . import CartEvent, Checkout, Effect, ProductChange, carts, effects, records, shop
from .sql import Plan, change, fetch

T = TypeVar("T")


class SqlStore:
    async def _query(self, what: str, plan: Plan[T], snapshot: bool = False) -> T:
        """Run a plan of reads; with `snapshot`, PostgreSQL runs them in one snapshot
        (SQLite reads each statement as committed: its writer commits a checkout or an
        order with all its lines at once)."""
        raise NotImplementedError

    async def _change(self, what: str, plan: Plan[T], atomic: bool = True) -> T:
        """Run a plan of writes in one transaction (a one-statement plan with `atomic`
        False may run without one). Raises Unavailable when it could not."""
        raise NotImplementedError

    async def _repeat(self, what: str, sql: str, **params: Any) -> int:
        """Run a bounded delete until it deletes less than its limit: the rows deleted."""
        total = 0
        while True:
            deleted = await self._change(what, change(sql, **params), atomic=False)
            total += deleted
            if deleted < params["limit"]:
                return total

    # --- carts -----------------------------------------------------------------------

    async def record(self, *effects_: Effect) -> None:
        await self._change("store the change", effects.apply_effects(effects_, iso(utcnow())))

    async def versions(self, cart_ids: list[str]) -> dict[str, int]:
        if not cart_ids:
            return {}
        rows = await self._query("read cart versions", fetch(carts.VERSIONS, ids=cart_ids))
        return {cart_id: version for cart_id, version in rows}

    async def replay(self, cart_id: str, key: str) -> tuple[bytes | None, str | None]:
        plan = fetch(carts.REPLAY, cart_id=cart_id, key=key)
        rows = await self._query("read a stored answer", plan)
        if not rows:
            return None, None
        response, request = rows[0]
        return (response.encode() if response is not None else None), request

    async def prune(self, applied_before: datetime) -> int:
        before, limit = iso(applied_before), carts.PRUNE_BATCH
        return await self._repeat(
            "forget old mutation ids", carts.PRUNE_KEYS, before=before, limit=limit
        )

    # --- lifecycle -------------------------------------------------------------------

    async def user_cart(self, user_id: str) -> str | None:
        rows = await self._query("read the user's cart", fetch(carts.USER_CART, user_id=user_id))
        return str(rows[0][0]) if rows else None

    async def due_carts(self, now: datetime, limit: int) -> list[str]:
        return await self._query("read due carts", carts.due_carts(now, limit))

    async def purge_expired(self, finished_before: datetime, limit: int) -> int:
        before = iso(finished_before)
        total = 0
        for sql in carts.PURGES:
            total += await self._repeat("purge expired carts", sql, before=before, limit=limit)
        return total

    async def purge_records(self, before: datetime, undelivered_too: bool, limit: int) -> int:
        total = 0
        for sql in records.RECORD_PURGES:
            total += await self._repeat(
                "purge old records",
                sql,
                before=iso(before),
                undelivered_too=undelivered_too,
                limit=limit,
            )
        return total

    # --- the outbox ------------------------------------------------------------------

    async def claim_events(self, now: datetime, lease: float, limit: int) -> list[CartEvent]:
        return await self._change("claim outbox events", records.claim_events(now, lease, limit))

    async def event_sent(self, event_id: int, delivered: bool, retry_at: datetime) -> None:
        if delivered:
            plan = change(records.DELIVERED, at=iso(utcnow()), id=event_id)
        else:
            plan = change(records.RETRY, at=iso(retry_at), id=event_id)
        await self._change("record an event's delivery", plan, atomic=False)

    async def list_events(self, undelivered: bool, limit: int) -> list[CartEvent]:
        sql = records.UNDELIVERED if undelivered else records.EVENTS
        rows = await self._query("read outbox events", fetch(sql, limit=limit))
        return [CartEvent(*row) for row in rows]

    # --- checkouts -------------------------------------------------------------------

    async def load_checkout(self, checkout_id: str) -> Checkout | None:
        found = await self._checkouts(effects.checkouts("id = :id", id=checkout_id))
        return found[0] if found else None

    async def open_checkout(self, cart_id: str) -> Checkout | None:
        plan = effects.checkouts("cart_id = :cart_id AND status = 'reserved'", cart_id=cart_id)
        found = await self._checkouts(plan)
        return found[0] if found else None

    async def due_checkouts(self, now: datetime, limit: int) -> list[Checkout]:
        where = "status = 'reserved' AND expires_at < :now ORDER BY expires_at LIMIT :limit"
        return await self._checkouts(effects.checkouts(where, now=iso(now), limit=limit))

    async def _checkouts(self, plan: Plan[list[Checkout]]) -> list[Checkout]:
        return await self._query("read checkouts", plan, snapshot=True)

    # --- products and orders ---------------------------------------------------------

    async def load_products(self, changed_since: str = "") -> tuple[list[Product], str]:
        plan = fetch(shop.PRODUCTS_SINCE, since=changed_since)
        rows = await self._query("read products", plan)
        latest = max((row[7] for row in rows), default=changed_since)
        return [shop.product_from_row(row) for row in rows], latest

    async def products_by_id(self, product_ids: list[str]) -> list[Product]:
        rows = await self._query("read products", fetch(shop.PRODUCTS_BY_ID, ids=product_ids))
        return [shop.product_from_row(row) for row in rows]

    async def change_product(self, product_id: str, change_: ProductChange) -> Product:
        plan = shop.change_product(product_id, change_, iso(utcnow()))
        return await self._change("store the product", plan, atomic=False)

    async def list_orders(
        self, status: str | None, limit: int, after: tuple[str, str] | None
    ) -> list[OrderDoc]:
        plan = shop.list_orders(status, limit, after)
        return await self._query("read orders", plan, snapshot=True)

    async def load_order(self, order_id: str) -> OrderDoc | None:
        return await self._query("read an order", shop.load_order(order_id), snapshot=True)

    async def ping(self) -> None:
        await self._query("answer a ping", fetch("SELECT 1"))
