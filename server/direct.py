"""The routes that carry mutations (the WebSocket and the REST item routes), dispatched
straight from the ASGI scope by the innermost middleware. They answer their own errors,
so Starlette's exception middleware, router and route wrappers are not on their path;
the middleware configured outside this one (the host check) still is."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from . import errors, rest, ws
from .web import error_response

log = logging.getLogger("server")

Endpoint = Callable[[Request], Awaitable[Response]]
SOCKET = "/api/cart/ws"
ITEMS = "/api/cart/items"
_ITEM = ITEMS + "/"
_ON_ITEMS: dict[str, Endpoint] = {"POST": rest.add_item, "DELETE": rest.clear_cart}
_ON_ITEM: dict[str, Endpoint] = {"PATCH": rest.set_quantity, "DELETE": rest.remove_item}


class Dispatch:
    """Mutation routes to their handlers here; every other request on to Starlette."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = route(scope)
        await (self.app if handler is None else handler)(scope, receive, send)


def route(scope: Scope) -> ASGIApp | None:
    """The handler of a mutation route, or None: Starlette serves everything else (other
    methods too, with its 405 and Allow)."""
    kind = scope["type"]
    if kind not in ("http", "websocket"):
        return None
    path, root = scope["path"], scope.get("root_path", "")
    if root:  # ROOT_PATH: the routes are under it, as Starlette's router reads them
        if not path.startswith(root + "/"):
            return None
        path = path[len(root) :]
    if kind == "websocket":
        return _socket if path == SOCKET else None
    if path == ITEMS:
        endpoint = _ON_ITEMS.get(scope["method"])
    elif path.startswith(_ITEM) and "/" not in path[len(_ITEM) :] and len(path) > len(_ITEM):
        endpoint = _ON_ITEM.get(scope["method"])
        scope["path_params"] = {"product_id": path[len(_ITEM) :]}
    else:
        return None
    return None if endpoint is None else _Http(endpoint)


async def _socket(scope: Scope, receive: Receive, send: Send) -> None:
    await ws.cart_socket(WebSocket(scope, receive, send))


class _Http:
    __slots__ = ("endpoint",)

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        try:
            response = await self.endpoint(request)
        except errors.CartError as exc:  # raised before the endpoint knew the cart
            response = error_response(exc, request, None)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.url.path)
            failure = errors.InternalError("the server failed to answer this request")
            response = error_response(failure, request, None)
        await response(scope, receive, send)
