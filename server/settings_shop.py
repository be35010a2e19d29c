"""Settings of the shop: currency, demo mode, cart lifetimes, sign-in, lifecycle events,
the admin API and payments. Declared once each (see variables.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .currencies import ISO_4217
from .settings_service import shown_redacted
from .variables import choice, duration, flag, integer, text

MIN_ADMIN_TOKEN = 16
# Shorter and a shopper still filling the cart finds it replaced by an empty one.
MIN_CART_TTL = "1m"
_TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _http_url(url: str) -> str:
    """An absolute http(s) URL, without a trailing slash."""
    url = url.rstrip("/")
    if not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", url):
        raise ValueError(url)
    return url


def _currency(code: str) -> str:
    if code.lower() not in ISO_4217:
        raise ValueError(code)
    return code.lower()


def _admin_token(token: str) -> str:
    # Guessable within the failure rate limit's allowance when short; said at once.
    if len(token) < MIN_ADMIN_TOKEN:
        raise ValueError(token)
    return token


def _first_run(values: Mapping[str, Any]) -> bool:
    """A local first run gets a working demo; a deploy that forgot its Stripe key must
    not let anyone "pay", nor show made-up products."""
    return str(values["database_url"]).lower().startswith("sqlite") and not values["dyno"]


_TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True)
class ShopSettings:
    # --- the shop ---------------------------------------------------------------------
    currency: str = text(
        "CURRENCY",
        "ISO 4217 code of the prices, shown in the cart document and `total_formatted`",
        "usd",
        allowed="a 3-letter ISO 4217 currency code such as usd, eur or gbp",
        check=_currency,
    )
    dyno: str = text(
        "DYNO",
        "set by Heroku (`web.1`, …): its filesystem is wiped on every restart, so a SQLite"
        " store there is warned about and the demo catalog and payments default to off",
    )
    demo_catalog: bool = flag(
        "DEMO_CATALOG",
        "seed the 20-product demo catalog when the products table is empty. Off by default"
        " with a PostgreSQL store or on a platform (`DYNO` set)",
        True,
        shown="`1` on SQLite, else `0`",
        derive=_first_run,
    )
    demo_payments: bool = flag(
        "DEMO_PAYMENTS",
        'the demo payment provider when `STRIPE_SECRET_KEY` is unset: anyone can "pay". Off'
        " by default with a PostgreSQL store or on a platform (`DYNO` set); then, without"
        " Stripe, checkout answers `503 payments_unavailable`. The start-up log says which"
        " mode it is in, with a warning when it is a demo",
        True,
        shown="`1` on SQLite, else `0`",
        derive=_first_run,
    )
    patch_history: int = integer("PATCH_HISTORY", "patches kept per cart for `?since=` resume", 100)
    room_idle_seconds: float = duration(
        "ROOM_IDLE", "how long an unused room with no tab stays in memory", "60s"
    )
    abandon_after_seconds: float = duration(
        "ABANDON_AFTER",
        "idle time after the last change of a non-empty cart before it becomes `abandoned`"
        " (one outbox event per idle period; see [Cart lifecycle](#cart-lifecycle))",
        "30m",
    )
    cart_ttl_seconds: float = duration(
        "CART_TTL",
        f"idle time after which an editable cart becomes `expired` (at least {MIN_CART_TTL}:"
        " a shorter one replaces carts shoppers are still filling); finished carts' rows are"
        " deleted this long after their last change",
        "30d",
        minimum=MIN_CART_TTL,
    )
    idempotency_ttl_seconds: float = duration(
        "IDEMPOTENCY_TTL", "how long mutation ids and idempotency keys are remembered", "24h"
    )
    events_ttl_seconds: float = duration(
        "EVENTS_TTL",
        "how long delivered outbox events (all of them when no webhook is set), handled"
        " payment event ids and released checkouts are kept"
        " ([clean-up](#expiry-and-clean-up))",
        "30d",
    )
    catalog_refresh_seconds: float = duration(
        "CATALOG_REFRESH",
        "how often each process re-reads products changed meanwhile (by `python -m server"
        " import`, or by another process whose bus message was lost); changes made through a"
        " process reach the others at once over the bus",
        "1s",
    )
    # --- sign-in, lifecycle events, the shop's backend --------------------------------
    cart_auth_secret: str = text(
        "CART_AUTH_SECRET",
        "HMAC key of user tokens ([format](#user-tokens)). Unset: `POST /api/cart/login`"
        " answers `401 invalid_token`",
        secret=True,
    )
    demo_login: bool = flag(
        "DEMO_LOGIN",
        "`1` enables `POST /api/demo/login`, which mints a token for any name: for the demo"
        " page only, never in production",
        False,
    )
    events_webhook_url: str = text(
        "CART_EVENTS_WEBHOOK_URL",
        "the `http(s)://` URL lifecycle events are POSTed to, signed. Unset: they stay in the"
        " outbox for `python -m server events`",
        # Caught here, not as a delivery failure retried forever.
        allowed="an http:// or https:// URL",
        check=_http_url,
        show=shown_redacted,
    )
    events_secret: str = text(
        "CART_EVENTS_SECRET",
        "HMAC key of the `Cart-Signature` header; the server refuses to start with a URL and"
        " no secret",
        shown="*(required with the URL)*",
        secret=True,
    )
    admin_token: str = text(
        "ADMIN_TOKEN",
        "bearer token of the [admin API](#the-shops-backend-admin-api) (at least"
        f' {MIN_ADMIN_TOKEN} characters; `python -c "import secrets;'
        ' print(secrets.token_urlsafe(32))"`). Unset: every `/api/admin/` route answers'
        " `404 not_found`",
        allowed=f"at least {MIN_ADMIN_TOKEN} characters ({_TOKEN_RECIPE} makes one)",
        check=_admin_token,
        secret=True,
    )
    metrics_token: str = text(
        "METRICS_TOKEN",
        "`/metrics` then answers only `Authorization: Bearer <token>` (else `401 unauthorized`)",
        secret=True,
    )
    # --- checkout and payments --------------------------------------------------------
    stripe_secret_key: str = text(
        "STRIPE_SECRET_KEY",
        "`sk_test_…` / `sk_live_…`: checkout goes through Stripe Checkout. Unset: the"
        " built-in demo payment page if `DEMO_PAYMENTS` is on, else no checkout",
        secret=True,
    )
    stripe_webhook_secret: str = text(
        "STRIPE_WEBHOOK_SECRET",
        "`whsec_…`, the signing secret of the webhook endpoint (or the one `stripe listen`"
        " prints). Unset: every webhook is refused with 400",
        secret=True,
    )
    public_url: str = text(
        "PUBLIC_URL",
        "the shop's public base URL (`https://shop.example`): Stripe's success and cancel"
        " URLs and the demo checkout URL are built on it. Required with `STRIPE_SECRET_KEY`"
        " (the server refuses to start without it). Unset, the demo provider's URLs are"
        " relative (`/checkout/demo/…`): an absolute URL is never built from the client's"
        " `Host` header",
        allowed="an http:// or https:// URL",
        check=_http_url,
    )
    checkout_expires_seconds: float = duration(
        "CHECKOUT_EXPIRES", "how long a checkout holds its stock before it is released", "30m"
    )
    checkout_price: str = choice(
        "CHECKOUT_PRICE",
        "`snapshot`: charge the price in the cart (as first added); `current`: charge"
        " today's catalog price",
        "snapshot",
        ("snapshot", "current"),
    )
    stripe_api_base: str = text(
        "STRIPE_API_BASE",
        "another Stripe API host: a local stand-in in tests, or `stripe-mock`",
        allowed="an http:// or https:// URL",
        check=_http_url,
        shown="`https://api.stripe.com`",
    )
