"""Wire messages of docs/PROTOCOL.md as msgspec Structs, with one decoder per union."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

MAX_QUANTITY = 999
MAX_LINES = 100

MessageId = Annotated[str, Meta(min_length=1, max_length=64)]
ProductId = Annotated[str, Meta(min_length=1, max_length=64, examples=["p-001"])]
Quantity = Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]
QuantityOrZero = Annotated[int, Meta(ge=0, le=MAX_QUANTITY)]
Version = Annotated[int, Meta(ge=0)]
# A product as the shop defines it (catalog files, the admin API).
ProductKey = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^\S+\Z")]
Sku = Annotated[str, Meta(min_length=1, max_length=64)]
ProductName = Annotated[str, Meta(min_length=1, max_length=200)]
PriceCents = Annotated[int, Meta(ge=0, le=100_000_000)]
StockUnits = Annotated[int, Meta(ge=0, le=1_000_000_000)]
StockDelta = Annotated[int, Meta(ge=-1_000_000_000, le=1_000_000_000)]
ImageUrl = Annotated[str, Meta(max_length=2000)]


# --- client -> server (WebSocket) -------------------------------------------------


class _ClientMessage(Struct, tag_field="type"):
    pass


class AddMsg(_ClientMessage, tag="add"):
    id: MessageId
    product_id: ProductId
    quantity: Quantity
    base_version: Version | None = None


class SetMsg(_ClientMessage, tag="set"):
    id: MessageId
    product_id: ProductId
    quantity: QuantityOrZero
    base_version: Version | None = None


class RemoveMsg(_ClientMessage, tag="remove"):
    id: MessageId
    product_id: ProductId
    base_version: Version | None = None


class ClearMsg(_ClientMessage, tag="clear"):
    id: MessageId
    base_version: Version | None = None


class PingMsg(_ClientMessage, tag="ping"):
    pass


ClientMessage = AddMsg | SetMsg | RemoveMsg | ClearMsg | PingMsg
client_message_decoder = msgspec.json.Decoder(ClientMessage)


# --- REST request bodies ----------------------------------------------------------


class AddItemBody(Struct, frozen=True):
    product_id: ProductId
    quantity: Quantity = 1


class SetQuantityBody(Struct, frozen=True):
    quantity: QuantityOrZero


class EmptyBody(Struct, frozen=True):
    """POST /api/cart/checkout takes `{}`; unknown fields are ignored for forward use."""


class LoginBody(Struct, frozen=True):
    token: Annotated[str, Meta(min_length=1, max_length=2048)]


class DemoLoginBody(Struct, frozen=True):
    user: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,32}\Z")]


add_item_decoder = msgspec.json.Decoder(AddItemBody)
login_decoder = msgspec.json.Decoder(LoginBody)
demo_login_decoder = msgspec.json.Decoder(DemoLoginBody)
empty_body_decoder = msgspec.json.Decoder(EmptyBody)
set_quantity_decoder = msgspec.json.Decoder(SetQuantityBody)


# --- server -> client -------------------------------------------------------------


class ItemDoc(Struct, frozen=True):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int
    image_url: str | None
    current_price_cents: int
    available: bool  # False: the product was archived (or removed); checkout refuses it


class CartDoc(Struct, frozen=True):
    id: str
    version: int
    status: str
    items: list[ItemDoc]
    item_count: int
    subtotal_cents: int
    currency: str
    total_formatted: str
    updated_at: str
    abandon_at: str | None


class ProductDoc(Struct, frozen=True):
    id: str
    sku: str
    name: str
    price_cents: int
    stock: int
    image_url: str | None


class _PatchOp(Struct, tag_field="op"):
    pass


class UpsertOp(_PatchOp, tag="upsert"):
    item: ItemDoc


class RemoveOp(_PatchOp, tag="remove"):
    product_id: str


class StatusOp(_PatchOp, tag="status"):
    status: str


PatchOp = UpsertOp | RemoveOp | StatusOp


class _ServerMessage(Struct, tag_field="type"):
    pass


class SnapshotMsg(_ServerMessage, tag="snapshot"):
    cart: msgspec.Raw  # the room's cached, already encoded cart document


class PatchMsg(_ServerMessage, tag="patch"):
    version: int
    ops: list[PatchOp]
    item_count: int
    subtotal_cents: int
    origin: str | None


class AckMsg(_ServerMessage, tag="ack"):
    id: str
    version: int


class PresenceMsg(_ServerMessage, tag="presence"):
    tabs: int


class MovedMsg(_ServerMessage, tag="moved"):
    # The signed id of the cart to go on with; null after a login merged this cart: the
    # tab reconnects with its own credential, which names the user's cart only in the
    # browser that logged in (a copied anonymous id never leads into an account).
    cart_id: str | None


class PongMsg(_ServerMessage, tag="pong"):
    pass


class CatalogItem(Struct, frozen=True):
    product_id: str
    name: str
    price_cents: int
    stock: int  # units that can still be reserved now
    active: bool


class CatalogMsg(_ServerMessage, tag="catalog"):
    """Products of this cart's lines that changed in the catalog; no cart version."""

    products: list[CatalogItem]


# --- outbox events (CART_EVENTS_WEBHOOK_URL) -----------------------------------------


class EventItem(Struct, frozen=True):
    product_id: str
    quantity: int
    unit_price_cents: int


class CartEventDoc(Struct, frozen=True):
    """The JSON body of a lifecycle event: what a shop needs for a reminder email."""

    type: str  # abandoned | expired
    cart_id: str
    user_id: str | None
    version: int
    item_count: int
    subtotal_cents: int
    currency: str
    items: list[EventItem]
    at: str


# --- the shop's side (admin API, order events) ----------------------------------------


class OrderItemDoc(Struct, frozen=True):
    product_id: str
    sku: str
    name: str
    quantity: int
    unit_price_cents: int


class OrderDoc(Struct, frozen=True):
    id: str
    cart_id: str
    user_id: str | None
    status: str  # paid | needs_review
    amount_cents: int  # what the provider says was paid
    currency: str
    payment_intent: str | None
    created_at: str
    items: list[OrderItemDoc]


class OrderEventDoc(OrderDoc, frozen=True):
    """The JSON body of an order event: the order document, its type and when."""

    type: str  # order_paid | order_needs_review
    at: str


ServerMessage = PatchMsg | SnapshotMsg | AckMsg | PresenceMsg | MovedMsg | PongMsg | CatalogMsg
server_message_decoder = msgspec.json.Decoder(ServerMessage)

encode = msgspec.json.Encoder().encode
# What decoding untrusted JSON may raise: deep nesting overflows the recursion limit.
# Invalid UTF-8 inside a JSON string is a UnicodeDecodeError, not a DecodeError.
DECODE_ERRORS = (msgspec.DecodeError, RecursionError, UnicodeDecodeError)


def error_frame(msg_id: str | None, code: str, message: str, details: dict[str, Any]) -> bytes:
    """{"type":"error","id","code","message",...details}: details vary, so this one is a dict."""
    return encode({"type": "error", "id": msg_id, "code": code, "message": message, **details})
