"""GET /api/products: the catalog as shoppers see it (archived products left out), whole,
by ids (what a cart page needs) or a page at a time in id order, with an ETag that is the
same in every process for the same products, and gzip for large answers."""

from __future__ import annotations

import bisect
import gzip
import hashlib
from collections.abc import Mapping

from msgspec import Struct
from starlette.requests import Request
from starlette.responses import Response

from . import errors
from .cart import Product
from .protocol import ProductDoc, encode

MAX_IDS = 100
DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
GZIP_MIN = 4096  # smaller answers go as they are: compressing them saves little, costs CPU
GZIP_LEVEL = 6


class Page(Struct, frozen=True):
    products: list[ProductDoc]
    next: str | None  # `after` for the next page; null on the last


class Listed(Struct, frozen=True):
    """One answer, ready to send: its body, gzipped body (if large) and ETag."""

    body: bytes
    gzipped: bytes | None
    etag: str


def product_doc(p: Product) -> ProductDoc:
    return ProductDoc(p.id, p.sku, p.name, p.price_cents, p.stock, p.image_url)


def listed(body: bytes) -> Listed:
    # A digest of the body, not the catalog's revision: processes count revisions apart.
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    gzipped = gzip.compress(body, GZIP_LEVEL, mtime=0) if len(body) >= GZIP_MIN else None
    return Listed(body, gzipped, etag)


class Listing:
    """The active products in id order, and the whole listing encoded: made once per
    catalog revision."""

    def __init__(self, products: Mapping[str, Product]) -> None:
        self.products = {p.id: p for p in sorted(products.values(), key=lambda p: p.id) if p.active}
        self.ids = list(self.products)
        self._whole: Listed | None = None

    def whole(self) -> Listed:
        if self._whole is None:
            docs = [product_doc(p) for p in self.products.values()]
            self._whole = listed(encode({"products": docs}))
        return self._whole

    def by_ids(self, ids: list[str]) -> Listed:
        """The named products that are listed, in the order named (unknown ones left out)."""
        found = [self.products[i] for i in dict.fromkeys(ids) if i in self.products]
        return listed(encode({"products": [product_doc(p) for p in found]}))

    def page(self, after: str | None, limit: int) -> Listed:
        start = bisect.bisect_right(self.ids, after) if after is not None else 0
        chunk = self.ids[start : start + limit]
        more = start + limit < len(self.ids)
        docs = [product_doc(self.products[i]) for i in chunk]
        return listed(encode(Page(docs, chunk[-1] if more and chunk else None)))


def answer(listing: Listing, request: Request) -> Response:
    """The listing the query asks for, 304 if the client holds it, gzipped if large and
    the client takes gzip."""
    found = _select(listing, request.query_params)
    headers = {"etag": found.etag, "cache-control": "no-cache", "vary": "accept-encoding"}
    if found.etag in _tags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    if found.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        headers["content-encoding"] = "gzip"
        return Response(found.gzipped, headers=headers, media_type="application/json")
    return Response(found.body, headers=headers, media_type="application/json")


def _select(listing: Listing, params: Mapping[str, str]) -> Listed:
    ids = params.get("ids")
    if ids is not None:
        if "limit" in params or "after" in params:
            raise errors.InvalidRequest("?ids= names products; it takes no ?limit= or ?after=")
        names = [i.strip() for i in ids.split(",") if i.strip()]
        if not 1 <= len(names) <= MAX_IDS:
            raise errors.InvalidRequest(f"?ids= must name 1 to {MAX_IDS} products")
        return listing.by_ids(names)
    if "limit" in params or "after" in params:
        raw = params.get("limit", str(DEFAULT_LIMIT))
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
            raise errors.InvalidRequest(f"?limit= must be 1 to {MAX_LIMIT}, got {raw!r}")
        return listing.page(params.get("after") or None, int(raw))
    return listing.whole()


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
