"""A cart's document as REST answers it and snapshots carry it: encoded once per version
and catalog revision, each line rendered once (render.ItemDocs). Pure: no I/O."""

from __future__ import annotations

from .cart import Cart
from .catalog import Catalog
from .protocol import encode
from .render import ItemDocs, cart_doc


class Documents:
    """One cart's documents: the latest remembered, any other rendered on demand."""

    __slots__ = ("_catalog", "_currency", "_items", "_latest")

    def __init__(self, catalog: Catalog, currency: str) -> None:
        self._catalog = catalog
        self._currency = currency
        self._items = ItemDocs()
        self._latest: tuple[int, int, bytes] | None = None  # (version, revision, doc)

    def of(self, cart: Cart) -> bytes:
        """The document of `cart`, remembered for its version and the catalog's revision."""
        revision = self._catalog.revision
        latest = self._latest
        if latest is not None and latest[0] == cart.version and latest[1] == revision:
            return latest[2]
        doc = self.render(cart)
        self._latest = (cart.version, revision, doc)
        return doc

    def render(self, cart: Cart) -> bytes:
        catalog = self._catalog
        items = self._items.render(cart, catalog.products, catalog.revision)
        return encode(cart_doc(cart, catalog.products, self._currency, items))

    def keep(self, version: int, doc: bytes) -> None:
        """Remember a document rendered already (a REST answer) as the one of `version`."""
        self._latest = (version, self._catalog.revision, doc)
