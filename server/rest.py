"""REST endpoints: the same room.submit as the WebSocket, answered with the cart document."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from msgspec import Raw
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from . import errors
from .cart import AddItem, ClearCart, Op, RemoveItem, SetQuantity
from .identity import COOKIE, HEADER, CartRef
from .protocol import add_item_decoder, encode, set_quantity_decoder
from .web import (
    Services,
    cart_response,
    error_response,
    idempotency_key,
    if_match,
    origin_allowed,
    read_body,
    services,
    settle,
)

DEFAULT_WAIT = 25.0
MAX_WAIT = 60.0


def _ref(request: Request, svc: Services) -> CartRef:
    return svc.ids.resolve(request.headers.get(HEADER), request.cookies.get(COOKIE))


async def products(request: Request) -> Response:
    body = services(request).hub.catalog.products_doc()
    return Response(body, media_type="application/json", headers={"cache-control": "no-cache"})


async def get_cart(request: Request) -> Response:
    svc = services(request)
    ref = await settle(svc, _ref(request, svc))
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
        if not origin_allowed(request.headers, svc.settings):
            raise errors.ForbiddenOrigin("requests from this origin may not change carts")
        key = idempotency_key(request.headers)
        base = if_match(request.headers)
        op = await parse(request)
        ref = await settle(svc, ref)
        async with svc.hub.use(ref.cart_id) as room:
            outcome = await room.submit(
                op,
                key=None if key is None else f"rest:{key}",
                base_version=base,
                respond=True,
            )
    except errors.CartError as exc:
        svc.metrics.inc("cart_mutations_total", source="rest", result=exc.code)
        return error_response(exc, request, ref)
    svc.metrics.inc("cart_mutations_total", source="rest", result="ok")
    assert outcome.body is not None
    return cart_response(request, outcome.body, ref, outcome.version)


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


async def changes(request: Request) -> Response:
    """Long-poll: the patches after ?since=V, waiting up to ?wait= seconds for one."""
    svc = services(request)
    ref = _ref(request, svc)
    try:
        since_param = _param(request, "since", int)
        wait_param = _param(request, "wait", float)
    except errors.CartError as exc:
        return error_response(exc, request, ref)
    since = None if since_param is None else int(since_param)
    wait = DEFAULT_WAIT if wait_param is None else min(wait_param, MAX_WAIT)
    ref = await settle(svc, ref)
    async with svc.hub.use(ref.cart_id) as room:
        if since is not None and since > room.version:
            with contextlib.suppress(errors.Unavailable):  # then it gets a snapshot
                await room.catch_up()  # committed by another process, not heard of here yet
        if since is not None:
            await room.wait_past(since, wait)
        frames = room.patches_after(since) if since is not None else None
        if frames is None:
            body = encode({"snapshot": Raw(room.document())})
        else:
            body = encode({"version": room.version, "patches": [Raw(f.encode()) for f in frames]})
        return cart_response(request, body, ref, room.version)


def _param(request: Request, name: str, parse: Callable[[str], float]) -> float | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = parse(raw)
    except ValueError:
        value = -1
    if not 0 <= value < 1e18:  # also refuses NaN
        raise errors.InvalidRequest(f"?{name}= must be a non-negative number, got {raw!r}")
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
    text = services(request).metrics.render()
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
