"""What the REST and WebSocket endpoints share: services, origins, which cart a request
holds, bounded bodies, and cart responses."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, TypeVar

import msgspec
from msgspec import Struct
from starlette.datastructures import Headers
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from . import errors
from .cart import FINISHED
from .checkout import Checkouts
from .config import Settings
from .hub import Hub
from .identity import CartIds, CartRef, set_cookie_header
from .limits import AddressRate, ConnectionCounter
from .metrics import Metrics
from .protocol import DECODE_ERRORS
from .store import Store

if TYPE_CHECKING:
    from .admin import AdminGate

T = TypeVar("T")
_ETAG = re.compile(r'\s*(?:W/)?"?(\d{1,18})"?\s*')
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces


class Services(Struct, frozen=True):
    """Everything the lifespan opened, handed to endpoints as request state."""

    settings: Settings
    hub: Hub
    ids: CartIds
    store: Store
    metrics: Metrics
    checkouts: Checkouts
    auth_secret: str  # verifies user tokens; empty: login is off
    connections: ConnectionCounter
    new_carts: AddressRate
    admin: AdminGate | None = None  # the admin API's token check; None: ADMIN_TOKEN unset

    def __repr__(self) -> str:
        # Request state is logged whole at trace level: never the secret.
        return f"Services(settings={self.settings!r}, auth_secret=[redacted])"


def client_address(conn: HTTPConnection) -> str:
    """The client's address: the TCP peer's, or behind a proxy in FORWARDED_ALLOW_IPS the
    one that proxy appended to X-Forwarded-For (forwarded.ProxyHeaders), so a client
    cannot pick its own."""
    return conn.client.host if conn.client is not None else ""


def services(conn: HTTPConnection) -> Services:
    found: Services = conn.state.services
    return found


def origin_allowed(conn: HTTPConnection, settings: Settings) -> bool:
    """Our own origin (scheme, host and port), or one listed in ALLOWED_ORIGINS.

    A request with no Origin carries no ambient cookie that another site could be
    borrowing, unless a browser says it comes from another site (Sec-Fetch-Site), as some
    send no Origin on a cross-site request."""
    headers = conn.headers
    origin = headers.get("origin")
    if origin is None:
        return headers.get("sec-fetch-site") != "cross-site"
    origin = origin.rstrip("/")
    if origin in settings.allowed_origins or "*" in settings.allowed_origins:
        return True
    host = headers.get("host", "")
    # Browsers send the origin lowercase: `HTTP://HOST` or `http://` for an https server
    # is not our page.
    own = f"{'https' if is_secure(conn) else 'http'}://{host.lower()}"
    return bool(host) and origin == own


def cart_cookie(conn: HTTPConnection, signed: str) -> str:
    """The Set-Cookie value for this request: cross-site attributes when a browser says
    the page that asked is on another site (Sec-Fetch-Site), same-site ones otherwise."""
    cross_site = conn.headers.get("sec-fetch-site") == "cross-site"
    path = conn.scope.get("root_path") or "/"
    return set_cookie_header(signed, is_secure(conn), cross_site, path)


def is_secure(conn: HTTPConnection) -> bool:
    # The scheme a trusted proxy reports (X-Forwarded-Proto) is in the scope already.
    return conn.scope["scheme"] in ("https", "wss")


async def settle(conn: HTTPConnection, svc: Services, ref: CartRef) -> CartRef:
    """The cart a request uses: the one its signed id names, or a fresh one when that is
    finished (merged, checked out, expired). A signed id opens its own cart and nothing
    else: a successor is handed only to the request that made it and to the tabs open at
    that moment. Fresh carts count against the address's NEW_CART_RATE."""
    if not ref.issued:
        async with svc.hub.use(ref.cart_id) as room:
            if room.cart.status not in FINISHED:
                return ref
        ref = svc.ids.new()
    svc.new_carts.admit(client_address(conn))
    return ref


async def read_body(
    request: Request, limit: int, decoder: msgspec.json.Decoder[T], *, optional: bool = False
) -> T:
    """Decode a JSON body of at most `limit` bytes: 413, 400 (not JSON) or 422 (wrong shape).
    An `optional` body may be left out entirely; it then reads as `{}`."""
    length = request.headers.get("content-length", "")
    if length.isascii() and length.isdigit() and int(length) > limit:
        raise errors.PayloadTooLarge(f"the body is over {limit} bytes", limit=limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise errors.PayloadTooLarge(f"the body is over {limit} bytes", limit=limit)
    if optional and not body.strip():
        body = bytearray(b"{}")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise errors.InvalidRequest(str(exc)) from None
    except DECODE_ERRORS as exc:
        raise errors.InvalidJson(f"the body is not JSON: {exc}") from None


def idempotency_key(headers: Headers) -> str | None:
    key = headers.get("idempotency-key")
    if key is None:
        return None
    if not _TOKEN.fullmatch(key):
        raise errors.InvalidRequest("Idempotency-Key must be 1 to 255 printable ASCII characters")
    return key


def if_match(headers: Headers) -> int | None:
    """The version an If-Match names; None for absent or '*'; -1 (never current) for junk."""
    value = headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    match = _ETAG.fullmatch(value)
    return int(match.group(1)) if match else -1


def cart_response(
    conn: HTTPConnection, body: bytes, ref: CartRef, version: int | None, status: int = 200
) -> Response:
    raw = [(b"x-cart-id", ref.signed.encode("latin-1")), (b"cache-control", b"no-store")]
    if status >= 200 and status not in (204, 304):
        raw.append((b"content-length", b"%d" % len(body)))
    raw.append((b"content-type", b"application/json"))
    if version is not None:
        raw.append((b"etag", b'"%d"' % version))
    # Sent every time: the 30-day expiry slides with each visit.
    raw.append((b"set-cookie", cart_cookie(conn, ref.signed).encode("latin-1")))
    return _Prebuilt(body, status, raw)


class _Prebuilt(Response):
    """A response whose header lines are built as bytes in one go (every mutation is
    answered with one), not from a mapping and then edited through MutableHeaders."""

    def __init__(self, body: bytes, status: int, raw_headers: list[tuple[bytes, bytes]]) -> None:
        self.body = body
        self.status_code = status
        self.background = None
        self.raw_headers = raw_headers


def error_response(exc: errors.CartError, conn: HTTPConnection, ref: CartRef | None) -> Response:
    body = msgspec.json.encode(exc.body())
    # A fresh id is handed out only with a cart: kept from a refusal, it would be a cart
    # made past NEW_CART_RATE (a request refused before that count was taken).
    if ref is None or ref.issued:
        response = Response(body, exc.status, media_type="application/json")
    else:
        response = cart_response(conn, body, ref, None, exc.status)
    response.headers.update(exc.headers())
    return response
