"""The product catalog held in memory; the store is the truth. Each process re-reads the
products changed since its last look every CATALOG_REFRESH, and at once when another
process says on the bus that it changed some; changes are told to whoever listens (the
hub, which tells the tabs of the carts holding them)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from .cart import Product
from .clock import iso, utcnow
from .listing import Shelf
from .store import Store

log = logging.getLogger("server.catalog")

# A product row's updated_at is taken before its transaction commits (up to the store's
# 5 s wait for a connection and a statement or two later), so a refresh may see rows
# stamped earlier than rows it has seen. It reads back this far, whatever the rows say,
# and never further: an import of 50,000 rows at one instant is re-read for this long,
# not on every refresh after. (Other processes' changes come by id over the bus.)
LATE_COMMIT = timedelta(seconds=15)


class Catalog:
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.revision = 0  # bumped on every change: cached cart documents depend on prices
        self._seen = ""  # products updated before this were read already
        self.shelf = Shelf()  # what GET /api/products lists
        self.listeners: list[Callable[[list[Product]], None]] = []
        self._reading: asyncio.Task[None] | None = None
        # Products to re-read (None: all changed lately), gathered while a read runs.
        self._wanted: set[str] | None = set()

    async def refresh(self, store: Store) -> list[Product]:
        """Read products changed since the last refresh; those that differed."""
        started = iso(utcnow() - LATE_COMMIT)
        products, latest = await store.load_products(self._seen)
        self._seen = max(latest, started) if self._seen else latest
        return self.update(products)

    def reread(self, store: Store, product_ids: list[str] | None = None) -> None:
        """Another process changed these products (None: some, or messages were lost):
        read them from the store soon, one read at a time, and once more for what was
        asked meanwhile."""
        if self._wanted is not None:
            if product_ids is None:
                self._wanted = None
            else:
                self._wanted.update(product_ids)
        if self._reading is None:
            self._reading = asyncio.create_task(self._reread(store))

    async def _reread(self, store: Store) -> None:
        try:
            while self._wanted is None or self._wanted:
                wanted, self._wanted = self._wanted, set()
                try:
                    if wanted is None:
                        await self.refresh(store)
                    else:
                        self.update(await store.products_by_id(sorted(wanted)))
                except Exception as exc:  # the periodic refresh tries again
                    log.warning("could not re-read the catalog: %s", exc)
        finally:
            self._reading = None

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
            await asyncio.gather(self._reading, return_exceptions=True)

    def update(self, products: list[Product]) -> list[Product]:
        """Take these products as they are now; those that differed, told to listeners."""
        changed = [p for p in products if self.products.get(p.id) != p]
        if not changed:
            return []
        for product in changed:
            self.products[product.id] = product
        self.shelf.update(changed)
        self.revision += 1
        for listener in self.listeners:
            listener(changed)
        return changed
