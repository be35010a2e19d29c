"""The shop's backend's API under /api/admin/: products (create, replace, change, bulk)
and orders, behind `Authorization: Bearer <ADMIN_TOKEN>`.

Only the bearer token authorizes: no cookie, no cart id, no Origin. It is compared in
constant time, and an address that keeps presenting wrong ones is refused for a while
before the token is even looked at. Without ADMIN_TOKEN every route here is 404.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .cart import Product
from .importer import ProductRow, row_product
from .limits import TokenBucket
from .protocol import (
    ImageUrl,
    OrderDoc,
    PriceCents,
    ProductDoc,
    ProductKey,
    ProductName,
    Sku,
    StockDelta,
    StockUnits,
    encode,
)
from .store import ProductChange, ProductConflict
from .web import Services, client_address, error_response, read_body, services

# Wrong tokens one address may present: a burst, then one every ten seconds.
FAILURE_BURST = 10
FAILURE_RATE = 0.1
TRACKED_ADDRESSES = 10_000  # past this, addresses whose allowance is whole are forgotten
MAX_BODY_BYTES = 8 * 1024 * 1024  # a bulk upsert of a large catalog; the caller is trusted
MAX_BULK = 10_000
ORDER_STATUSES = ("paid", "needs_review")
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
_BEARER = re.compile(r"Bearer[ \t]+(\S+)[ \t]*", re.IGNORECASE)  # fullmatch only


# --- bodies ----------------------------------------------------------------------------


class ProductBody(Struct, frozen=True, forbid_unknown_fields=True):
    """PUT /api/admin/products/{id}: the whole product."""

    sku: Sku
    name: ProductName
    price_cents: PriceCents
    stock: StockUnits
    image_url: ImageUrl | None = None
    active: bool = True


class BulkBody(Struct, frozen=True, forbid_unknown_fields=True):
    products: Annotated[list[ProductRow], Meta(min_length=1, max_length=MAX_BULK)]


class ProductPatch(Struct, frozen=True, forbid_unknown_fields=True):
    """PATCH /api/admin/products/{id}: any of these; `stock_delta` moves the stock."""

    name: ProductName | UnsetType = UNSET
    price_cents: PriceCents | UnsetType = UNSET
    stock: StockUnits | UnsetType = UNSET
    stock_delta: StockDelta | UnsetType = UNSET
    image_url: ImageUrl | None | UnsetType = UNSET
    active: bool | UnsetType = UNSET


class AdminProduct(ProductDoc, frozen=True):
    active: bool


class BulkResult(Struct, frozen=True):
    inserted: int
    updated: int


class OrderPage(Struct, frozen=True):
    orders: list[OrderDoc]
    next: str | None  # ?after= for the next page; null on the last


_product_decoder = msgspec.json.Decoder(ProductBody)
_bulk_decoder = msgspec.json.Decoder(BulkBody)
_patch_decoder = msgspec.json.Decoder(ProductPatch)


# --- the gate --------------------------------------------------------------------------


class AdminGate:
    """Bearer-token check with a budget of failures per client address."""

    def __init__(self, token: str) -> None:
        # Digests of equal length: compare_digest then leaks nothing about the length.
        self._digest = hashlib.sha256(token.encode()).digest()
        self.failures: dict[str, TokenBucket] = {}

    def check(self, request: Request) -> None:
        address = client_address(request)
        bucket = self.failures.get(address)
        if bucket is not None and bucket.wait() > 0:
            seconds = math.ceil(bucket.wait())
            raise errors.RateLimited(
                f"too many wrong tokens from this address; try again in {seconds} s",
                retry_after=seconds,
            )
        match = _BEARER.fullmatch(request.headers.get("authorization", ""))
        presented = hashlib.sha256(match.group(1).encode() if match else b"").digest()
        if match and hmac.compare_digest(presented, self._digest):
            return
        if bucket is None:
            self._forget_whole()
            bucket = self.failures[address] = TokenBucket(FAILURE_RATE, FAILURE_BURST)
        bucket.take()
        raise errors.Unauthorized("this API needs Authorization: Bearer <ADMIN_TOKEN>")

    def _forget_whole(self) -> None:
        """Keep at most TRACKED_ADDRESSES: first those whose allowance is whole again,
        then the oldest (wrong tokens from that many addresses are a flood, not a guess)."""
        if len(self.failures) >= TRACKED_ADDRESSES:
            for address, bucket in list(self.failures.items()):
                if bucket.wait(FAILURE_BURST) == 0:
                    del self.failures[address]
        while len(self.failures) >= TRACKED_ADDRESSES:
            del self.failures[next(iter(self.failures))]


Handler = Callable[[Request, Services], Awaitable[Response]]


def _admin(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        svc = services(request)
        try:
            if svc.admin is None:
                raise errors.NotFound(f"{request.url.path}: the admin API is off (no ADMIN_TOKEN)")
            svc.admin.check(request)
            response = await handler(request, svc)
        except errors.CartError as exc:
            svc.metrics.inc("cart_admin_requests_total", result=exc.code)
            return error_response(exc, request, None)
        svc.metrics.inc("cart_admin_requests_total", result="ok")
        return response

    endpoint.__name__ = handler.__name__
    return endpoint


def _json(value: object) -> Response:
    headers = {"cache-control": "no-store"}
    return Response(encode(value), media_type="application/json", headers=headers)


def _admin_product(p: Product) -> AdminProduct:
    return AdminProduct(p.id, p.sku, p.name, p.price_cents, p.stock, p.image_url, p.active)


def _product_id(request: Request) -> str:
    product_id: str = request.path_params["product_id"]
    try:
        return msgspec.convert(product_id, ProductKey)
    except msgspec.ValidationError as exc:
        raise errors.InvalidRequest(f"product id {product_id!r}: {exc}") from None


# --- products --------------------------------------------------------------------------


async def _put_product(request: Request, svc: Services) -> Response:
    product_id = _product_id(request)
    body = await read_body(request, MAX_BODY_BYTES, _product_decoder)
    product = Product(
        product_id, body.sku, body.name, body.price_cents, body.stock, body.image_url, body.active
    )
    try:
        await svc.store.upsert_products([product])
    except ProductConflict as exc:
        raise errors.InvalidRequest(str(exc), sku=body.sku) from None
    svc.hub.catalog_changed([product])
    return _json(_admin_product(product))


async def _patch_product(request: Request, svc: Services) -> Response:
    product_id = _product_id(request)
    body = await read_body(request, MAX_BODY_BYTES, _patch_decoder)
    given = {f: v for f in body.__struct_fields__ if (v := getattr(body, f)) is not UNSET}
    if not given:
        raise errors.InvalidRequest(
            "expected at least one of name, price_cents, stock, stock_delta, image_url, active"
        )
    if "stock" in given and "stock_delta" in given:
        raise errors.InvalidRequest("stock sets the stock and stock_delta moves it: give one")
    change = ProductChange(
        name=given.get("name"),
        price_cents=given.get("price_cents"),
        stock=given.get("stock"),
        stock_delta=given.get("stock_delta", 0),
        image_url=given.get("image_url"),
        set_image_url="image_url" in given,
        active=given.get("active"),
    )
    product = await svc.store.change_product(product_id, change)
    svc.hub.catalog_changed([product])
    return _json(_admin_product(product))


async def _bulk_products(request: Request, svc: Services) -> Response:
    try:
        body = await read_body(request, MAX_BODY_BYTES, _bulk_decoder)
    except errors.InvalidRequest as exc:
        found = re.search(r"\$\.products\[(\d+)\]", exc.message)
        if found is None:
            raise
        raise errors.InvalidRequest(exc.message, index=int(found[1])) from None
    first: dict[tuple[str, str], int] = {}
    for index, row in enumerate(body.products):
        for key in (("id", row.id), ("sku", row.sku)):
            if key in first:
                raise errors.InvalidRequest(
                    f"products[{index}]: {key[0]} {key[1]!r} repeats products[{first[key]}]",
                    index=index,
                )
            first[key] = index
    products = [row_product(row) for row in body.products]
    try:
        inserted, updated = await svc.store.upsert_products(products)
    except ProductConflict as exc:
        index = first[("id", exc.product_id)]
        raise errors.InvalidRequest(f"products[{index}]: {exc}", index=index) from None
    svc.hub.catalog_changed(products)
    return _json(BulkResult(inserted, updated))


# --- orders ----------------------------------------------------------------------------


def encode_cursor(order: OrderDoc) -> str:
    raw = f"{order.created_at}\n{order.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, order_id = raw.split("\n")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise errors.InvalidRequest(
            "?after= must be the `next` of a previous page, as it was given"
        ) from None
    return created_at, order_id


async def _list_orders(request: Request, svc: Services) -> Response:
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in ORDER_STATUSES:
        raise errors.InvalidRequest(
            f"?status= must be one of {', '.join(ORDER_STATUSES)}, got {status!r}"
        )
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not (raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT):
        raise errors.InvalidRequest(f"?limit= must be 1 to {MAX_LIMIT}, got {raw_limit!r}")
    limit = int(raw_limit)
    after = decode_cursor(params["after"]) if params.get("after") else None
    orders = await svc.store.list_orders(status, limit, after)
    cursor = encode_cursor(orders[-1]) if len(orders) == limit else None
    return _json(OrderPage(orders, cursor))


async def _get_order(request: Request, svc: Services) -> Response:
    order_id = request.path_params["order_id"]
    order = await svc.store.load_order(order_id)
    if order is None:
        raise errors.UnknownOrder(f"no order with id {order_id!r}", order_id=order_id)
    return _json(order)


put_product = _admin(_put_product)
patch_product = _admin(_patch_product)
bulk_products = _admin(_bulk_products)
list_orders = _admin(_list_orders)
get_order = _admin(_get_order)
