"""create_app(settings): the lifespan opens store, bus and hub; routes; static files."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from . import errors, rest, ws
from .bus import open_bus
from .catalog import Catalog
from .config import STATIC_DIR, Settings
from .hub import Hub
from .identity import CartIds, load_secret
from .importer import DEMO_CATALOG, read_products
from .metrics import Metrics
from .store import open_store
from .web import Services, error_response

log = logging.getLogger("server")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        metrics = Metrics()
        ids = CartIds(load_secret(settings))
        store = await open_store(settings, metrics)
        try:
            bus = await open_bus(settings.redis_url, metrics, settings.redis_verify_tls)
        except BaseException:
            await store.close()
            raise
        catalog = Catalog()
        hub = Hub(store, bus, catalog, settings, metrics)
        try:
            await catalog.refresh(store)
            if not catalog.products and settings.demo_catalog:
                await store.upsert_products(read_products(DEMO_CATALOG))
                await catalog.refresh(store)
                log.info("seeded the demo catalog: %d products", len(catalog.products))
            await hub.start()
            log.info("cart server ready: %d products", len(catalog.products))
            yield {"services": Services(settings, hub, ids, store, metrics)}
        finally:
            await hub.close()
            await bus.close()
            await store.close()

    routes = [
        Route("/", index),
        Route("/api/products", rest.products),
        Route("/api/cart", rest.get_cart),
        Route("/api/cart/items", rest.add_item, methods=["POST"]),
        Route("/api/cart/items", rest.clear_cart, methods=["DELETE"]),
        Route("/api/cart/items/{product_id}", rest.set_quantity, methods=["PATCH"]),
        Route("/api/cart/items/{product_id}", rest.remove_item, methods=["DELETE"]),
        Route("/api/cart/changes", rest.changes),
        WebSocketRoute("/api/cart/ws", ws.cart_socket),
        Route("/healthz", rest.healthz),
        Route("/readyz", rest.readyz),
        Route("/metrics", rest.metrics),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    return Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )


# The page passes this policy: no inline script or style, everything from this origin
# (in CSP3 'self' also covers this host's ws:// and wss://).
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)


_HTTP_ERRORS: dict[int, type[errors.CartError]] = {
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
}


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 in the protocol's error shape."""
    assert isinstance(exc, HTTPException)
    kind = _HTTP_ERRORS.get(exc.status_code)
    if kind is None:
        return Response(exc.detail, exc.status_code, headers=exc.headers)
    return error_response(kind(f"{request.method} {request.url.path}: {exc.detail}"), request, None)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    failure = errors.InternalError("the server failed to answer this request")
    return error_response(failure, request, None)
