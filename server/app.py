"""create_app(settings): the lifespan opens store, bus and hub; routes; static files."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import admin, direct, errors, openapi, payment_pages, rest, ws
from .admin import AdminGate
from .bus import open_bus
from .catalog import Catalog
from .checkout import Checkouts
from .config import STATIC_DIR, Settings
from .hub import Hub
from .identity import CartIds, cart_ids
from .importer import DEMO_CATALOG, read_products
from .limits import AddressRate, ConnectionCounter
from .loopwatch import LoopWatch
from .metrics import Metrics
from .outbox import Outbox
from .payments import open_provider
from .store import open_store
from .vitals import Vitals
from .web import Services, error_response

log = logging.getLogger("server")


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    return Starlette(
        routes=routes(settings),
        lifespan=lifespan(settings),
        middleware=middleware(settings),
        exception_handlers={
            HTTPException: http_error,
            errors.CartError: cart_error,
            Exception: server_error,
        },
    )


def lifespan(settings: Settings) -> Callable[[Starlette], AbstractAsyncContextManager[Any]]:
    """Opens the store, the bus and the hub before the first request; closes them after
    the last, in reverse order."""

    @contextlib.asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[dict[str, Services]]:
        metrics = Metrics()
        warn_ephemeral_disk(settings)
        ids = cart_ids(settings)
        store = await open_store(settings, metrics)
        try:
            bus = await open_bus(settings.redis_url, metrics, settings.redis_verify_tls)
        except BaseException:
            await store.close()
            raise
        catalog = Catalog()
        hub = Hub(store, bus, catalog, settings, metrics, ids.sign)
        checkouts = Checkouts(hub, store, open_provider(settings), settings, metrics)
        outbox = Outbox(store, settings, metrics)
        Vitals(store, metrics)
        watch = LoopWatch(metrics).start()
        try:
            await catalog.refresh(store)
            if not catalog.products and settings.demo_catalog:
                await store.upsert_products(read_products(DEMO_CATALOG))
                await catalog.refresh(store)
                log.info("seeded the demo catalog: %d products", len(catalog.products))
            await hub.start()
            checkouts.start_sweeper()
            outbox.start()
            announce(settings, len(catalog.products), checkouts.provider.name)
            auth = auth_secret(settings, ids)
            connections = ConnectionCounter(settings.max_connections_per_ip)
            metrics.gauge("cart_long_lived_connections", connections.total)
            app.state.drain = hub.drain  # called by serving.CartServer on shutdown
            new_carts = AddressRate(settings.new_cart_rate, settings.new_cart_burst, "new carts")
            gate = AdminGate(settings.admin_token) if settings.admin_token else None
            services = Services(
                settings, hub, ids, store, metrics, checkouts, auth, connections, new_carts, gate
            )
            yield {"services": services}
        finally:
            await watch.close()
            await outbox.close()
            await checkouts.close()
            await hub.close()
            await bus.close()
            await store.close()

    return run


def routes(settings: Settings) -> list[BaseRoute]:
    api_document = openapi.encoded()

    async def openapi_json(request: Request) -> Response:
        return Response(api_document, media_type="application/json")

    return [
        index_route(settings),
        Route("/openapi.json", openapi_json),
        Route("/api/products", rest.products),
        Route("/api/cart", rest.get_cart),
        Route("/api/cart/items", rest.add_item, methods=["POST"]),
        Route("/api/cart/items", rest.clear_cart, methods=["DELETE"]),
        Route("/api/cart/items/{product_id}", rest.set_quantity, methods=["PATCH"]),
        Route("/api/cart/items/{product_id}", rest.remove_item, methods=["DELETE"]),
        Route("/api/cart/changes", rest.changes),
        Route("/api/cart/checkout", rest.checkout, methods=["POST"]),
        Route("/api/cart/checkout/cancel", rest.checkout_cancel, methods=["POST"]),
        Route("/api/cart/checkout/confirm", rest.checkout_confirm, methods=["POST"]),
        Route("/api/cart/login", rest.login, methods=["POST"]),
        Route("/api/demo/login", rest.demo_login, methods=["POST"]),
        Route("/api/admin/products", admin.bulk_products, methods=["POST"]),
        Route("/api/admin/products/{product_id}", admin.put_product, methods=["PUT"]),
        Route("/api/admin/products/{product_id}", admin.patch_product, methods=["PATCH"]),
        Route("/api/admin/orders", admin.list_orders),
        Route("/api/admin/orders/{order_id}", admin.get_order),
        Route("/api/webhooks/stripe", payment_pages.stripe_webhook, methods=["POST"]),
        Route("/checkout/demo/{checkout_id}", payment_pages.demo_page),
        Route("/checkout/demo/{checkout_id}/pay", payment_pages.demo_pay, methods=["POST"]),
        Route("/checkout/demo/{checkout_id}/cancel", payment_pages.demo_cancel, methods=["POST"]),
        WebSocketRoute("/api/cart/ws", ws.cart_socket),
        Route("/healthz", rest.healthz),
        Route("/readyz", rest.readyz),
        Route("/metrics", rest.metrics),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def middleware(settings: Settings) -> list[Middleware]:
    stack = []
    if settings.root_path:
        stack.append(Middleware(UnderRootPath, root_path=settings.root_path))
    if settings.allowed_hosts:  # any other Host header: 400, before any route sees it
        stack.append(Middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts))
    if settings.allowed_origins:
        # A shop page on another origin reads the answers (and loads the client module);
        # writing still passes the Origin check in each endpoint.
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.allowed_origins,
                allow_credentials=True,
                allow_methods=["GET", "POST", "PATCH", "DELETE"],
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=CORS_EXPOSED_HEADERS,
                max_age=3600,
            )
        )
    # Innermost: past the host check, before the exception middleware and the router.
    stack.append(Middleware(direct.Dispatch))
    return stack


def warn_ephemeral_disk(settings: Settings) -> None:
    """On a Heroku dyno the filesystem is wiped at every restart (at least daily): a
    SQLite store loses every cart and order with it. Said loudly, once, at start."""
    if settings.dyno and settings.database_url.startswith("sqlite:"):
        log.warning(
            "!!! DYNO=%s with a SQLite store: this dyno's filesystem is wiped on every"
            " restart, and every cart, order and product in %s goes with it. Add Heroku"
            " Postgres (heroku addons:create heroku-postgresql:essential-0 sets"
            " DATABASE_URL), even for a single dyno. !!!",
            settings.dyno,
            settings.database_url,
        )


CORS_REQUEST_HEADERS = ["content-type", "x-cart-id", "idempotency-key", "if-match", "if-none-match"]
CORS_EXPOSED_HEADERS = ["x-cart-id", "etag", "retry-after", "idempotent-replayed"]


class UnderRootPath:
    """ROOT_PATH behind either kind of reverse proxy: one that passes `/cart/api/…` on as
    it is, and one that strips the prefix (`/api/…`). Routes see the path under it;
    responses build their links and cookie path on it."""

    def __init__(self, app: ASGIApp, root_path: str) -> None:
        self.app = app
        self.root_path = root_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            root, path = self.root_path, scope["path"]
            if path != root and not path.startswith(root + "/"):
                path = root + path
            scope = {**scope, "root_path": root, "path": path}
        await self.app(scope, receive, send)


def announce(settings: Settings, products: int, provider: str) -> None:
    """Say which mode this is in; loudly when anyone could pay without paying."""
    log.info("cart server ready: %d products, %s payments", products, provider)
    if provider == "demo":
        log.warning(
            "DEMO PAYMENTS ARE ON: anyone can 'pay' on /checkout/demo and paid orders are"
            " written. Set STRIPE_SECRET_KEY (and PUBLIC_URL) before taking real orders."
        )
    elif provider == "none":
        log.warning(
            "no payment provider: checkout answers 503 payments_unavailable"
            " (set STRIPE_SECRET_KEY and PUBLIC_URL, or DEMO_PAYMENTS=1 for a demo)"
        )
    if settings.demo_login:
        log.warning("DEMO_LOGIN is on: anyone can sign in as anyone. Never in production.")


def auth_secret(settings: Settings, ids: CartIds) -> str:
    """CART_AUTH_SECRET; for the demo login alone, one derived from the cart secret."""
    if settings.cart_auth_secret or not settings.demo_login:
        return settings.cart_auth_secret
    return ids.derive("demo-login")


# The page passes this policy: no inline script or style, everything from this origin
# (in CSP3 'self' also covers this host's ws:// and wss://).
PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'self'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
}


def index_page(settings: Settings) -> bytes:
    """The demo page, its relative URLs resolved under ROOT_PATH (a <base> element)."""
    page = (STATIC_DIR / "index.html").read_bytes()
    base = f'<head>\n  <base href="{settings.root_path}/">'.encode()
    return page.replace(b"<head>", base, 1)


def index_route(settings: Settings) -> Route:
    page = index_page(settings)

    async def index(request: Request) -> Response:
        return Response(page, media_type="text/html", headers=PAGE_HEADERS)

    return Route("/", index)


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
    response = error_response(
        kind(f"{request.method} {request.url.path}: {exc.detail}"), request, None
    )
    if exc.status_code == 405:  # RFC 9110: say what is allowed, across all routes of the path
        response.headers["allow"] = ", ".join(sorted(_allowed(request)))
    return response


def _allowed(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] != Match.NONE:
            methods |= route.methods or set()
    return methods


async def cart_error(request: Request, exc: Exception) -> Response:
    """A refusal raised outside an endpoint's own handling (the store unreachable while a
    cart is loaded, say): the protocol's error, not a 500."""
    assert isinstance(exc, errors.CartError)
    return error_response(exc, request, None)


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    failure = errors.InternalError("the server failed to answer this request")
    return error_response(failure, request, None)
