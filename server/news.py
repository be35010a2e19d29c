"""What processes tell each other over the bus: a cart's commit or presence, and products
changed in the store. Encoded with msgpack; a process drops its own echoes by `origin`."""

from __future__ import annotations

import msgspec

from .cart import Cart


class BusMessage(msgspec.Struct, frozen=True, array_like=True):
    origin: str  # the publishing hub: a process drops its own echoes
    cart_id: str
    version: int  # the sender's version of the cart: a receiver behind it reads the store
    # A commit: the cart after it, its patch frame and mutation id, so that a receiver one
    # version behind takes it without reading the store.
    cart: Cart | None = None
    patch: str | None = None
    key: str | None = None
    tabs: int | None = None  # presence: the sender's open tabs of this cart


class CatalogNews(msgspec.Struct, frozen=True, array_like=True):
    """Products changed in the store: every other process re-reads them now."""

    origin: str
    # The products changed, when they are few: read by id. None (an import): every
    # product changed lately is read.
    product_ids: list[str] | None = None


bus_decoder = msgspec.msgpack.Decoder(BusMessage)
news_decoder = msgspec.msgpack.Decoder(CatalogNews)
bus_encode = msgspec.msgpack.Encoder().encode
CATALOG_CHANNEL = "catalog"
NEWS_IDS = 100  # a change of more products than this is news without their ids


def catalog_news(origin: str, product_ids: list[str]) -> tuple[str, bytes]:
    """(channel, message) telling every process to re-read these products."""
    ids = product_ids if len(product_ids) <= NEWS_IDS else None
    return CATALOG_CHANNEL, bus_encode(CatalogNews(origin, ids))


def channel(cart_id: str) -> str:
    return f"cart:{cart_id}"
