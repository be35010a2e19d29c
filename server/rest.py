"""REST endpoints: the same room.submit as the WebSocket, answered with the cart document."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sys
from collections.abc import Awaitable, Callable

import msgspec
from msgspec import Raw
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from . import errors, listing, merge
from .auth import make_user_token, verify_user_token
from .cart import AddItem, ClearCart, Op, RemoveItem, SetQuantity, Status
from .identity import COOKIE, HEADER, CartRef
from .limits import admit
from .protocol import (
    add_item_decoder,
    demo_login_decoder,
    empty_body_decoder,
    encode,
    login_decoder,
    set_quantity_decoder,
)
from .web import (
    Services,
    cart_response,
    client_address,
    error_response,
    idempotency_key,
    if_match,
    origin_allowed,
    read_body,
    services,
    settle,
)

DEFAULT_WAIT = 25.0
MAX_VERSION = 2**63 - 1  # a version is a signed 64-bit integer in every store


def _ref(request: Request, svc: Services) -> CartRef:
    return svc.ids.resolve(request.headers.get(HEADER), request.cookies.get(COOKIE))


async def products(request: Request) -> Response:
    """The catalog: whole, ?ids=a,b or a page (?limit=&after=); ETag, gzip if large."""
    try:
        return await listing.answer(services(request).hub.catalog.shelf, request)
    except errors.CartError as exc:
        return error_response(exc, request, None)


async def get_cart(request: Request) -> Response:
    svc = services(request)
    ref = await settle(request, svc, _ref(request, svc))
    async with svc.hub.use(ref.cart_id) as room:
        version, body = room.version, room.document()
    if request.headers.get("if-none-match", "").strip() == f'"{version}"':
        response = cart_response(request, b"", ref, version, 304)
        del response.headers["content-type"]
        return response
    return cart_response(request, body, ref, version)


async def _mutate(request: Request, parse: Callable[[Request], Awaitable[Op]]) -> Response:
    svc = services(request)
    ref = _ref(request, svc)
    try:
        _check_origin(request, svc)
        key = idempotency_key(request.headers)
        base = if_match(request.headers)
        op = await parse(request)
        ref = await settle(request, svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            admit(room.rate)
            outcome = await room.submit(
                op,
                key=None if key is None else f"rest:{key}",
                base_version=base,
                respond=True,
                request=None if key is None else _digest(op),
            )
    except errors.CartError as exc:
        svc.metrics.inc("cart_mutations_total", source="rest", result=exc.code)
        return error_response(exc, request, ref)
    svc.metrics.inc("cart_mutations_total", source="rest", result="ok")
    assert outcome.body is not None
    response = cart_response(request, outcome.body, ref, outcome.version)
    if outcome.replayed:
        response.headers["idempotent-replayed"] = "true"
    return response


def _digest(op: Op) -> str:
    """What a request asked, route and body as decoded: the same key for another one is
    refused (idempotency_key_reused), however its JSON was spelled."""
    asked = type(op).__name__.encode() + b":" + msgspec.json.encode(op)
    return hashlib.sha256(asked).hexdigest()[:32]


async def _add(request: Request) -> Op:
    body = await read_body(request, services(request).settings.max_body_bytes, add_item_decoder)
    return AddItem(body.product_id, body.quantity)


async def _set(request: Request) -> Op:
    limit = services(request).settings.max_body_bytes
    body = await read_body(request, limit, set_quantity_decoder)
    return SetQuantity(request.path_params["product_id"], body.quantity)


async def _remove(request: Request) -> Op:
    return RemoveItem(request.path_params["product_id"])


async def _clear(request: Request) -> Op:
    return ClearCart()


async def add_item(request: Request) -> Response:
    return await _mutate(request, _add)


async def set_quantity(request: Request) -> Response:
    return await _mutate(request, _set)


async def remove_item(request: Request) -> Response:
    return await _mutate(request, _remove)


async def clear_cart(request: Request) -> Response:
    return await _mutate(request, _clear)


async def checkout(request: Request) -> Response:
    """Reserve the stock and open a payment session: {"checkout_url", "session_id"}."""
    svc = services(request)
    ref = _ref(request, svc)
    try:
        _check_origin(request, svc)
        base = if_match(request.headers)
        await read_body(request, svc.settings.max_body_bytes, empty_body_decoder, optional=True)
        ref = await settle(request, svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            admit(room.rate)  # a checkout reserves stock and calls the provider
            started = await svc.checkouts.start(room, base, client_address(request))
    except errors.CartError as exc:
        return error_response(exc, request, ref)
    return cart_response(request, encode(started), ref, None)


async def checkout_cancel(request: Request) -> Response:
    """Release the reservation and unlock the cart; the cart document."""
    return await _checkout_step(request, cancel=True)


async def checkout_confirm(request: Request) -> Response:
    """The shopper is back from the payment page: settle now if the provider says paid."""
    return await _checkout_step(request, cancel=False)


async def _checkout_step(request: Request, *, cancel: bool) -> Response:
    svc = services(request)
    ref = _ref(request, svc)
    try:
        _check_origin(request, svc)
        ref = await settle(request, svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            admit(room.rate)  # each may ask the payment provider
            if cancel:
                await svc.checkouts.cancel(room)
            else:
                locked = room.cart.status is Status.CHECKING_OUT
                await svc.checkouts.confirm(room)
                successor = room.cart.merged_into
                if locked and room.cart.status is Status.CHECKED_OUT and successor:
                    # This request paid it: it goes on to the cart that comes next. A
                    # later request with the old id gets a fresh one.
                    ref = CartRef(successor, svc.ids.sign(successor), issued=False)
        ref = await settle(request, svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            version, body = room.version, room.document()
    except errors.CartError as exc:
        return error_response(exc, request, ref)
    return cart_response(request, body, ref, version)


async def login(request: Request) -> Response:
    """Merge the shopper's cart into the user's (made if none); the user's cart."""
    svc = services(request)
    ref = _ref(request, svc)
    try:
        _check_origin(request, svc)
        body = await read_body(request, svc.settings.max_body_bytes, login_decoder)
        user_id = verify_user_token(body.token, svc.auth_secret)
        ref = await settle(request, svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            admit(room.rate)  # a login merges carts: a mutation of this one
        ref = await merge.login(svc.hub, svc.ids, ref, user_id)
        async with svc.hub.use(ref.cart_id) as room:
            version, doc = room.version, room.document()
    except errors.CartError as exc:
        return error_response(exc, request, ref)
    return cart_response(request, doc, ref, version)


async def demo_login(request: Request) -> Response:
    """DEMO_LOGIN=1 only: a user token for any name, so the demo page can show merging."""
    svc = services(request)
    try:
        if not svc.settings.demo_login:
            raise errors.NotFound("the demo login is off (DEMO_LOGIN=1 turns it on)")
        _check_origin(request, svc)
        body = await read_body(request, svc.settings.max_body_bytes, demo_login_decoder)
    except errors.CartError as exc:
        return error_response(exc, request, None)
    token = make_user_token(f"demo:{body.user}", svc.auth_secret)
    return Response(
        encode({"token": token, "user_id": f"demo:{body.user}"}), media_type="application/json"
    )


def _check_origin(request: Request, svc: Services) -> None:
    if not origin_allowed(request, svc.settings):
        raise errors.ForbiddenOrigin("requests from this origin may not change carts")


async def changes(request: Request) -> Response:
    """Long-poll: the patches after ?since=V, waiting up to ?wait= seconds for one."""
    svc = services(request)
    ref = _ref(request, svc)
    try:
        since_param = _param(request, "since", int, MAX_VERSION)
        wait_param = _param(request, "wait", float, sys.float_info.max)  # capped below
        with svc.connections.hold(client_address(request)) as admitted:
            if not admitted:
                raise errors.TooManyConnections(
                    "this address has as many open connections as it may; try again later"
                )
            return await _changes(request, svc, ref, since_param, wait_param)
    except errors.CartError as exc:
        return error_response(exc, request, ref)


async def _changes(
    request: Request, svc: Services, ref: CartRef, since: float | None, wait: float | None
) -> Response:
    cap = svc.settings.long_poll_max_seconds
    wait = min(DEFAULT_WAIT if wait is None else wait, cap)
    asked, ref = ref, await settle(request, svc, ref)
    if ref.cart_id != asked.cart_id:
        since = None  # moved on to another cart: a snapshot of it, never its patches
    async with svc.hub.use(ref.cart_id) as room:
        if since is not None and since > room.version:
            with contextlib.suppress(errors.Unavailable):  # then it gets a snapshot
                await room.catch_up()  # committed by another process, not heard of here yet
        if since is not None:
            await room.wait_past(int(since), wait)
        frames = room.patches_after(int(since)) if since is not None else None
        if frames is None:
            body = encode({"snapshot": Raw(room.document())})
        else:
            body = encode({"version": room.version, "patches": [Raw(f.encode()) for f in frames]})
        return cart_response(request, body, ref, room.version)


def _param(
    request: Request, name: str, parse: Callable[[str], float], limit: float
) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = parse(raw) if raw.isascii() else -1  # int() also reads Arabic-Indic digits
    except ValueError:
        value = -1
    if not 0 <= value <= limit:  # also refuses NaN
        raise errors.InvalidRequest(f"?{name}= must be a number from 0 to {limit:g}, got {raw!r}")
    return value


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


async def readyz(request: Request) -> Response:
    svc = services(request)
    try:
        await asyncio.wait_for(svc.store.ping(), 2.0)
        await asyncio.wait_for(svc.hub.bus.ping(), 2.0)
    except Exception as exc:  # any failure to reach the store or the bus means not ready
        body = encode({"status": "unavailable", "reason": type(exc).__name__})
        return Response(body, 503, media_type="application/json")
    return Response(b'{"status":"ready"}', media_type="application/json")


async def metrics(request: Request) -> Response:
    svc = services(request)
    token = svc.settings.metrics_token
    if token:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error_response(
                errors.Unauthorized("/metrics needs its bearer token"), request, None
            )
    await svc.metrics.collect()
    text = svc.metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
