"""The product catalog held in memory; the store is the truth and is re-read every few
seconds, so an import or a price change made by another process shows up on its own."""

from __future__ import annotations

from msgspec import structs

from .cart import Product
from .protocol import ProductDoc, encode
from .store import Store


class Catalog:
    def __init__(self) -> None:
        self.products: dict[str, Product] = {}
        self.revision = 0  # bumped on every change: cached cart documents depend on prices
        self._seen = ""  # high-water mark of products.updated_at already read
        self._doc: bytes | None = None

    async def refresh(self, store: Store) -> bool:
        """Read products changed since the last refresh; True if anything differed."""
        products, self._seen = await store.load_products(self._seen)
        return self.update(products)

    def update(self, products: list[Product]) -> bool:
        changed = [p for p in products if self.products.get(p.id) != p]
        if not changed:
            return False
        for product in changed:
            self.products[product.id] = product
        self.revision += 1
        self._doc = None
        return True

    def products_doc(self) -> bytes:
        """GET /api/products, encoded once per catalog revision."""
        if self._doc is None:
            products = sorted(self.products.values(), key=lambda p: p.id)
            self._doc = encode({"products": [ProductDoc(**structs.asdict(p)) for p in products]})
        return self._doc
