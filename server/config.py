"""Settings, read once from the environment."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

PACKAGE_DIR = Path(__file__).resolve().parent
# Installed wheels carry static/ and schema.sql inside the package; a source checkout
# keeps them at the repository root.
_ROOT = PACKAGE_DIR if (PACKAGE_DIR / "schema.sql").exists() else PACKAGE_DIR.parent
SCHEMA_PATH = _ROOT / "schema.sql"
STATIC_DIR = _ROOT / "static"

MIN_ADMIN_TOKEN = 16
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds from '0.5s', '30m', '2h', '30d', '250ms' or a bare number of seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*", text)
    if not match:
        raise ValueError(f"expected a duration like '30m', '0.5s' or '30d', got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


class ConfigError(ValueError):
    """A setting in the environment has a value the server cannot use."""


def sqlite_path(url: str) -> str:
    """'sqlite:///cart.db' -> 'cart.db'; 'sqlite:////abs/cart.db' -> '/abs/cart.db'."""
    path = url.removeprefix("sqlite:///")
    if not url.startswith("sqlite:///") or not path or path == ":memory:":
        raise ConfigError(f"expected DATABASE_URL like sqlite:///cart.db, got {url!r}")
    return path


DATABASE_SCHEMES = ("sqlite", "postgres", "postgresql")
REDIS_SCHEMES = ("redis", "rediss", "unix", "memory")


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _scheme(name: str, url: str, allowed: tuple[str, ...], example: str) -> str:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in allowed:
        raise ConfigError(
            f"{name} scheme {scheme!r} is not supported (expected {example}): {redact(url)!r}"
        )
    return url


def forwarded_allow_ips(raw: str) -> tuple[str, ...]:
    """'*', or comma-separated addresses and networks: '10.0.0.1, 10.1.0.0/16'."""
    entries = tuple(e.strip() for e in raw.split(",") if e.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                "FORWARDED_ALLOW_IPS must be '*' or IP addresses and networks (10.0.0.0/8),"
                f" comma-separated; got {entry!r}"
            ) from None
    return entries


@dataclass(frozen=True)
class Settings:
    # URLs may carry a password: never in a repr (settings are logged at trace level).
    database_url: str = field(default="sqlite:///cart.db", repr=False)
    # HMAC secret for cart cookies. Empty: generated once and kept next to the database.
    # Never in a repr: settings end up in logged ASGI state at trace level.
    secret: str = field(default="", repr=False)
    # Extra origins allowed to open the WebSocket and call mutating REST endpoints;
    # the server's own origin (same host) is always allowed.
    allowed_origins: tuple[str, ...] = ()
    # Host headers accepted (starlette's TrustedHostMiddleware); empty: any.
    allowed_hosts: tuple[str, ...] = ()
    # The path prefix the server lives under behind a reverse proxy ("/cart"); "" at /.
    root_path: str = ""
    # Bearer token /metrics asks for; empty: /metrics is open.
    metrics_token: str = field(default="", repr=False)
    currency: str = "usd"
    max_body_bytes: int = 16 * 1024
    max_frame_bytes: int = 4 * 1024  # larger text frames get invalid_message
    ws_max_size: int = 64 * 1024  # larger frames close the socket with 1009
    ws_send_queue: int = 256  # frames queued for one tab before it is closed with 1013
    # A peer whose socket has not taken data for this long is dropped (it stopped reading).
    ws_send_timeout: float = 5.0
    # Kernel send buffer per WebSocket (SO_SNDBUF): bounds what a stalled peer holds and
    # how soon it is noticed; cart frames are small, so this costs no throughput.
    ws_send_buffer: int = 256 * 1024
    max_tabs_per_cart: int = 20
    max_connections_per_ip: int = 100  # open WebSockets and long-polls from one address
    # TCP connections of any kind from one address (idle, half-open, WebSocket); from
    # the environment it defaults to twice MAX_CONNECTIONS_PER_IP.
    max_sockets_per_ip: int = 200
    header_timeout: float = 10.0  # a request line and headers must arrive within this
    body_timeout: float = 60.0  # and its body within this of the head
    max_header_bytes: int = 32 * 1024  # request line plus headers; larger: 431
    # Proxies whose X-Forwarded-For and -Proto are believed ('*': any peer), and how many
    # stand in front of the server: the client is the entry that many from the right.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1",)
    forwarded_hops: int = 1
    http_parser: str = "httptools"  # or "h11": pure Python, slower; the same limits apply
    # Checkouts holding stock at once per client address: one address cannot hoard it.
    max_checkouts_per_ip: int = 10
    # New carts per second (and burst) per client address: far above the first visits of
    # a household or an office behind one address, far below a script minting a cart
    # per request (which the purge of untouched carts then has to clean up).
    new_cart_rate: float = 5.0
    new_cart_burst: int = 300
    # Mutations per second (and burst) per cart, shared by its tabs and REST callers, and
    # per WebSocket connection. Far above what a person clicks; bots and loops hit them.
    cart_rate: float = 50.0
    cart_burst: int = 100
    connection_rate: float = 20.0
    connection_burst: int = 40
    long_poll_max: float = 25.0  # ?wait= is capped at this: under Heroku's 30 s router timeout
    patch_history: int = 100
    room_idle_seconds: float = 60.0
    abandon_after: float = 30 * 60.0
    cart_ttl: float = 30 * 86400.0
    idempotency_ttl: float = 86400.0
    # Outbox events (delivered ones; all of them without a webhook), payment event ids and
    # released checkouts are deleted this long after the fact.
    events_ttl: float = 30 * 86400.0
    # How often each process re-reads products changed meanwhile (by the CLI import, or
    # another process whose bus message was lost): GET /api/products is this fresh.
    catalog_refresh_seconds: float = 1.0
    sqlite_synchronous: str = "FULL"
    sqlite_busy_timeout: float = 5.0  # waiting this long for a lock held elsewhere: 503
    database_pool: int = 8  # PostgreSQL connections per process
    # Scale-out: empty for in-process fan-out (one process holds every tab of a cart).
    redis_url: str = field(default="", repr=False)
    # Heroku Redis serves TLS with a self-signed certificate: 0 encrypts without verifying.
    redis_verify_tls: bool = True
    # How often each process compares its loaded rooms with the store (repairs a room whose
    # last bus message was lost) when the bus is shared.
    bus_check_seconds: float = 2.0
    # Tab counts of other processes not refreshed within this are dropped (a process that
    # died); each process refreshes its own every third of it.
    presence_ttl_seconds: float = 30.0
    # The demo catalog and demo payments: on by default only where a first run happens
    # (SQLite, not on a platform); a PostgreSQL store or DYNO needs them asked for.
    demo_catalog: bool = True
    demo_payments: bool = True
    access_log: bool = False
    log_level: str = "info"
    # Checkout. Without a Stripe key the built-in demo payment provider is used.
    stripe_secret_key: str = field(default="", repr=False)
    stripe_webhook_secret: str = field(default="", repr=False)
    stripe_api_base: str = ""  # a stand-in for api.stripe.com (tests, stripe-mock)
    public_url: str = ""  # where shoppers come back to; default: the request's own base URL
    checkout_expires: float = 30 * 60.0
    checkout_price: str = "snapshot"  # charge the price shown in the cart, or today's
    # Lifecycle and login.
    cart_auth_secret: str = field(default="", repr=False)  # verifies user tokens
    demo_login: bool = False  # mint user tokens for the demo page: never in production
    events_webhook_url: str = field(default="", repr=False)
    events_secret: str = field(default="", repr=False)
    # The shop's backend: bearer token of /api/admin/. Empty: the admin API answers 404.
    admin_token: str = field(default="", repr=False)
    dyno: str = ""  # set by Heroku (web.1, …): its filesystem is wiped on every restart

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables, naming any bad value."""
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        def number(name: str, default: int) -> int:
            raw = get(name, str(default))
            if not (raw.isascii() and raw.isdigit()) or int(raw) <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
            return int(raw)

        def rate(name: str, default: float) -> float:
            raw = get(name, str(default))
            try:
                value = float(raw)
            except ValueError:
                value = 0.0
            if not 0 < value < float("inf"):
                raise ConfigError(f"{name} must be a positive number per second, got {raw!r}")
            return value

        def duration(name: str, default: float) -> float:
            try:
                return parse_duration(get(name, str(default)))
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None

        def flag(name: str, default: bool) -> bool:
            raw = get(name, "1" if default else "0").lower()
            if raw not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ConfigError(f"{name} must be 1 or 0, got {raw!r}")
            return raw in {"1", "true", "yes", "on"}

        synchronous = get("SQLITE_SYNCHRONOUS", "FULL").upper()
        if synchronous not in {"FULL", "NORMAL", "EXTRA"}:
            raise ConfigError(
                f"SQLITE_SYNCHRONOUS must be FULL, NORMAL or EXTRA, got {synchronous!r}"
            )
        log_level = get("LOG_LEVEL", cls.log_level).lower()
        if log_level not in {"critical", "error", "warning", "info", "debug", "trace"}:
            levels = "critical, error, warning, info, debug or trace"
            raise ConfigError(f"LOG_LEVEL must be {levels}, got {log_level!r}")
        parser = get("HTTP_PARSER", cls.http_parser).lower()
        if parser not in {"httptools", "h11"}:
            raise ConfigError(f"HTTP_PARSER must be httptools or h11, got {parser!r}")
        price = get("CHECKOUT_PRICE", cls.checkout_price).lower()
        if price not in {"snapshot", "current"}:
            raise ConfigError(f"CHECKOUT_PRICE must be snapshot or current, got {price!r}")
        events_url = get("CART_EVENTS_WEBHOOK_URL", "")
        events_secret = env.get("CART_EVENTS_SECRET", "").strip()
        if events_url and not re.match(r"https?://[^/?#\s]+", events_url):
            # Caught here, not as a delivery failure retried forever.
            raise ConfigError(
                f"CART_EVENTS_WEBHOOK_URL must be an http:// or https:// URL, got {events_url!r}"
            )
        if events_url and not events_secret:
            raise ConfigError("CART_EVENTS_WEBHOOK_URL is set: CART_EVENTS_SECRET must be too")
        admin_token = env.get("ADMIN_TOKEN", "").strip()
        if admin_token and len(admin_token) < MIN_ADMIN_TOKEN:
            # Guessable within the failure rate limit's allowance; said at once.
            raise ConfigError(
                f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN} characters"
                f" (got {len(admin_token)}); python -c 'import secrets;"
                " print(secrets.token_urlsafe(32))' makes one"
            )
        redis = get("REDIS_URL", cls.redis_url)
        database_url = _scheme(
            "DATABASE_URL",
            get("DATABASE_URL", cls.database_url),
            DATABASE_SCHEMES,
            "sqlite:///path or postgresql://user:password@host/db",
        )
        # A local first run gets a working demo; a deploy that forgot its Stripe key must
        # not let anyone "pay", nor show made-up products.
        first_run = database_url.lower().startswith("sqlite") and not env.get("DYNO")
        header_timeout = duration("HEADER_TIMEOUT", cls.header_timeout)
        if header_timeout <= 0:
            raise ConfigError("HEADER_TIMEOUT must be more than 0 s")
        body_timeout = duration("BODY_TIMEOUT", cls.body_timeout)
        if body_timeout <= 0:
            raise ConfigError("BODY_TIMEOUT must be more than 0 s")
        connections = number("MAX_CONNECTIONS_PER_IP", cls.max_connections_per_ip)
        sockets = number("MAX_SOCKETS_PER_IP", 2 * connections)
        if sockets < connections:
            raise ConfigError(
                f"MAX_SOCKETS_PER_IP ({sockets}) must be at least MAX_CONNECTIONS_PER_IP"
                f" ({connections}): every WebSocket and long-poll is a socket too"
            )
        public_url = get("PUBLIC_URL", "").rstrip("/")
        if public_url and not re.fullmatch(r"https?://[^/?#\s]+(/[^?#\s]*)?", public_url):
            raise ConfigError(f"PUBLIC_URL must be an http:// or https:// URL, got {public_url!r}")
        if env.get("STRIPE_SECRET_KEY", "").strip() and not public_url:
            # Stripe's success and cancel URLs are absolute: never built from a Host header.
            raise ConfigError("STRIPE_SECRET_KEY is set: PUBLIC_URL must be too (https://shop…)")
        root_path = get("ROOT_PATH", "").rstrip("/")
        plain = re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", root_path)
        if root_path and (not plain or {".", ".."} & set(root_path.split("/"))):
            raise ConfigError(f"ROOT_PATH must be a path like /cart, got {root_path!r}")
        hosts = tuple(h.strip().lower() for h in get("ALLOWED_HOSTS", "").split(",") if h.strip())
        origins = tuple(
            o.strip().rstrip("/") for o in get("ALLOWED_ORIGINS", "").split(",") if o.strip()
        )
        return cls(
            database_url=database_url,
            secret=env.get("CART_SECRET", ""),
            allowed_origins=origins,
            allowed_hosts=hosts,
            root_path=root_path,
            metrics_token=env.get("METRICS_TOKEN", "").strip(),
            currency=get("CURRENCY", cls.currency).lower(),
            max_body_bytes=number("MAX_BODY_BYTES", cls.max_body_bytes),
            max_frame_bytes=number("MAX_FRAME_BYTES", cls.max_frame_bytes),
            ws_max_size=number("WS_MAX_SIZE", cls.ws_max_size),
            ws_send_queue=number("WS_SEND_QUEUE", cls.ws_send_queue),
            ws_send_timeout=duration("WS_SEND_TIMEOUT", cls.ws_send_timeout),
            ws_send_buffer=number("WS_SEND_BUFFER", cls.ws_send_buffer),
            max_tabs_per_cart=number("MAX_TABS_PER_CART", cls.max_tabs_per_cart),
            max_connections_per_ip=connections,
            max_sockets_per_ip=sockets,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            max_header_bytes=number("MAX_HEADER_BYTES", cls.max_header_bytes),
            forwarded_allow_ips=forwarded_allow_ips(get("FORWARDED_ALLOW_IPS", "127.0.0.1")),
            forwarded_hops=number("FORWARDED_HOPS", cls.forwarded_hops),
            http_parser=parser,
            max_checkouts_per_ip=number("MAX_CHECKOUTS_PER_IP", cls.max_checkouts_per_ip),
            new_cart_rate=rate("NEW_CART_RATE", cls.new_cart_rate),
            new_cart_burst=number("NEW_CART_BURST", cls.new_cart_burst),
            cart_rate=rate("CART_RATE_LIMIT", cls.cart_rate),
            cart_burst=number("CART_RATE_BURST", cls.cart_burst),
            connection_rate=rate("CONNECTION_RATE_LIMIT", cls.connection_rate),
            connection_burst=number("CONNECTION_RATE_BURST", cls.connection_burst),
            long_poll_max=duration("LONG_POLL_MAX", cls.long_poll_max),
            patch_history=number("PATCH_HISTORY", cls.patch_history),
            room_idle_seconds=duration("ROOM_IDLE", cls.room_idle_seconds),
            abandon_after=duration("ABANDON_AFTER", cls.abandon_after),
            cart_ttl=duration("CART_TTL", cls.cart_ttl),
            idempotency_ttl=duration("IDEMPOTENCY_TTL", cls.idempotency_ttl),
            events_ttl=duration("EVENTS_TTL", cls.events_ttl),
            catalog_refresh_seconds=duration("CATALOG_REFRESH", cls.catalog_refresh_seconds),
            sqlite_synchronous=synchronous,
            sqlite_busy_timeout=duration("SQLITE_BUSY_TIMEOUT", cls.sqlite_busy_timeout),
            database_pool=number("DATABASE_POOL", cls.database_pool),
            redis_url=_scheme("REDIS_URL", redis, REDIS_SCHEMES, "redis:// or rediss://")
            if redis
            else "",
            redis_verify_tls=flag("REDIS_VERIFY_TLS", cls.redis_verify_tls),
            bus_check_seconds=duration("BUS_CHECK", cls.bus_check_seconds),
            presence_ttl_seconds=duration("PRESENCE_TTL", cls.presence_ttl_seconds),
            demo_catalog=flag("DEMO_CATALOG", first_run),
            demo_payments=flag("DEMO_PAYMENTS", first_run),
            access_log=flag("ACCESS_LOG", cls.access_log),
            log_level=log_level,
            stripe_secret_key=env.get("STRIPE_SECRET_KEY", "").strip(),
            stripe_webhook_secret=env.get("STRIPE_WEBHOOK_SECRET", "").strip(),
            stripe_api_base=get("STRIPE_API_BASE", "").rstrip("/"),
            public_url=public_url,
            checkout_expires=duration("CHECKOUT_EXPIRES", cls.checkout_expires),
            checkout_price=price,
            cart_auth_secret=env.get("CART_AUTH_SECRET", "").strip(),
            demo_login=flag("DEMO_LOGIN", cls.demo_login),
            events_webhook_url=events_url,
            events_secret=events_secret,
            admin_token=admin_token,
            dyno=get("DYNO", ""),
        )
