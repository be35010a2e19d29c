"""The product catalog held in memory; the store is the truth. Each process re-reads the
products changed since its last look every CATALOG_REFRESH, and at once when another
process says on the bus that it changed some; changes are told to whoever listens (the
hub, which tells the tabs of the carts holding them)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from .cart import Product
from .clock import iso, utcnow
from .listing import Shelf
from .store import Store

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

    async def refresh(self, store: Store) -> list[Product]:
        """Read products changed since the last refresh; those that differed."""
        started = iso(utcnow() - LATE_COMMIT)
        products, latest = await store.load_products(self._seen)
        self._seen = max(latest, started) if self._seen else latest
        return self.update(products)

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
