"""GET /api/products: the catalog as shoppers see it (archived products left out), whole,
by ids (what a cart page needs) or a page at a time in id order, with an ETag that is the
same in every process for the same products, and gzip for large answers.

The shelf keeps each listed product encoded on its own and the ids in order, so a change
(a checkout taking stock, say) re-encodes that product only; the whole listing is joined
from those once per change, and hashed and gzipped on a thread (both release the GIL), so
a catalog of 50,000 products does not stop the event loop for the length of a gzip."""

from __future__ import annotations

import asyncio
import bisect
import gzip
import hashlib
from collections.abc import Iterable, Mapping

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
RESORT_OVER = 64  # more new (or archived) products than this at once: sort, do not insert


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


def _products(docs: Iterable[bytes], more: bytes = b"") -> bytes:
    """{"products":[…]…}, as msgspec would encode it, from encoded products."""
    return b'{"products":[' + b",".join(docs) + b"]" + more + b"}"


def _whole(parts: list[bytes]) -> Listed:
    return listed(_products(parts))


class Shelf:
    """The listed (active) products, each encoded, and their ids in order."""

    def __init__(self) -> None:
        self.docs: dict[str, bytes] = {}
        self.ids: list[str] = []  # sorted: the listing's order, and where pages start
        self._whole: asyncio.Future[Listed] | None = None

    def update(self, changed: list[Product]) -> None:
        added: list[str] = []
        removed: list[str] = []
        for p in changed:
            if p.active:
                if p.id not in self.docs:
                    added.append(p.id)
                self.docs[p.id] = encode(product_doc(p))
            elif self.docs.pop(p.id, None) is not None:
                removed.append(p.id)
        if len(added) + len(removed) > RESORT_OVER:
            self.ids = sorted(self.docs)
        else:
            for product_id in removed:
                del self.ids[bisect.bisect_left(self.ids, product_id)]
            for product_id in added:
                bisect.insort(self.ids, product_id)
        self._whole = None

    async def whole(self) -> Listed:
        if self._whole is None:
            parts = [self.docs[i] for i in self.ids]  # taken now; joined on the thread
            self._whole = asyncio.ensure_future(asyncio.to_thread(_whole, parts))
        return await asyncio.shield(self._whole)

    def by_ids(self, ids: list[str]) -> Listed:
        """The named products that are listed, in the order named (unknown ones left out)."""
        return listed(_products(self.docs[i] for i in dict.fromkeys(ids) if i in self.docs))

    def page(self, after: str | None, limit: int) -> Listed:
        start = bisect.bisect_right(self.ids, after) if after is not None else 0
        chunk = self.ids[start : start + limit]
        more = start + limit < len(self.ids)
        following = encode(chunk[-1] if more and chunk else None)
        return listed(_products((self.docs[i] for i in chunk), b',"next":' + following))


async def answer(shelf: Shelf, request: Request) -> Response:
    """The listing the query asks for, 304 if the client holds it, gzipped if large and
    the client takes gzip."""
    found = await _select(shelf, request.query_params)
    headers = {"etag": found.etag, "cache-control": "no-cache", "vary": "accept-encoding"}
    if found.etag in _tags(request.headers.get("if-none-match", "")):
        return Response(status_code=304, headers=headers)
    if found.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
        headers["content-encoding"] = "gzip"
        return Response(found.gzipped, headers=headers, media_type="application/json")
    return Response(found.body, headers=headers, media_type="application/json")


async def _select(shelf: Shelf, params: Mapping[str, str]) -> Listed:
    ids = params.get("ids")
    if ids is not None:
        if "limit" in params or "after" in params:
            raise errors.InvalidRequest("?ids= names products; it takes no ?limit= or ?after=")
        names = [i.strip() for i in ids.split(",") if i.strip()]
        if not 1 <= len(names) <= MAX_IDS:
            raise errors.InvalidRequest(f"?ids= must name 1 to {MAX_IDS} products")
        return shelf.by_ids(names)
    if "limit" in params or "after" in params:
        raw = params.get("limit", str(DEFAULT_LIMIT))
        if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_LIMIT):
            raise errors.InvalidRequest(f"?limit= must be 1 to {MAX_LIMIT}, got {raw!r}")
        return shelf.page(params.get("after") or None, int(raw))
    return await shelf.whole()


def _tags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}
