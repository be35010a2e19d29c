"""Settings of the service itself: where it listens, what it stores, how processes find
each other, who may call it and what it logs. Declared once each (see variables.py)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .variables import ConfigError, choice, duration, flag, integer, listing, text


def sqlite_path(url: str) -> str:
    """'sqlite:///cart.db' -> 'cart.db'; 'sqlite:////abs/cart.db' -> '/abs/cart.db'."""
    path = url.removeprefix("sqlite:///")
    if not url.startswith("sqlite:///") or not path or path == ":memory:":
        raise ConfigError(f"expected DATABASE_URL like sqlite:///cart.db, got {url!r}")
    return path


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def shown_redacted(raw: str) -> str:
    return repr(redact(raw))


def _scheme(url: str, allowed: tuple[str, ...]) -> str:
    if url.split(":", 1)[0].lower() not in allowed or ":" not in url:
        raise ValueError(url)
    return url


def _database_url(url: str) -> str:
    _scheme(url, ("sqlite", "postgres", "postgresql"))
    if url.lower().startswith("sqlite"):
        try:
            sqlite_path(url)
        except ConfigError:
            raise ValueError(url) from None
    return url


def _redis_url(url: str) -> str:
    return _scheme(url, ("redis", "rediss", "unix", "memory"))


def _origin(origin: str) -> str:
    origin = origin.rstrip("/")
    if not re.fullmatch(r"https?://[^/?#\s]+", origin):
        raise ValueError(origin)
    return origin


def _root_path(path: str) -> str:
    path = path.rstrip("/")
    plain = re.fullmatch(r"(/[A-Za-z0-9._~-]+)+", path)
    if path and (not plain or {".", ".."} & set(path.split("/"))):
        raise ValueError(path)
    return path


def _proxy(entry: str) -> str:
    if entry != "*":
        ipaddress.ip_network(entry, strict=False)
    return entry


@dataclass(frozen=True)
class ServiceSettings:
    # --- where it listens and what it stores ------------------------------------------
    host: str = text("HOST", "address to listen on; also `--host`", "127.0.0.1")
    port: int = integer(
        "PORT", "TCP port to listen on; also `--port`", 8000, minimum=1, maximum=65535
    )
    database_url: str = text(
        "DATABASE_URL",
        "the store: `sqlite:///path` (a relative path is relative to the working directory;"
        " its directory must exist) or `postgresql://user:password@host/db` (also"
        " `postgres://`)",
        "sqlite:///cart.db",
        allowed="sqlite:///path or postgresql://user:password@host/db",
        check=_database_url,
        show=shown_redacted,
    )
    database_pool: int = integer("DATABASE_POOL", "PostgreSQL connections per process", 8)
    sqlite_synchronous: str = choice(
        "SQLITE_SYNCHRONOUS",
        "`FULL` (fsync each commit: durable through power loss), `NORMAL` (durable through a"
        " process crash only) or `EXTRA`",
        "FULL",
        ("FULL", "NORMAL", "EXTRA"),
        upper=True,
    )
    sqlite_busy_timeout_seconds: float = duration(
        "SQLITE_BUSY_TIMEOUT",
        "how long a write waits for a lock held by another program (a backup, a shell)"
        " before it is refused with 503 `unavailable`",
        "5s",
    )
    secret: str = text(
        "CART_SECRET",
        "HMAC key for cart cookies. Unset: one is generated and kept in `<db>.secret` (mode"
        " 0600) so cookies survive restarts, and the log says so. Required when the store is"
        " not SQLite",
        shown="generated",
        secret=True,
        strip=False,  # a key that worked with its spaces keeps working: cookies stay valid
    )
    previous_secrets: str = text(
        "CART_SECRET_PREVIOUS",
        "comma-separated keys `CART_SECRET` had before: ids they signed still open their"
        " carts and are signed anew with `CART_SECRET` (see [Rotating the cart"
        " secret](#rotating-the-cart-secret))",
        secret=True,
    )
    # --- scale-out --------------------------------------------------------------------
    redis_url: str = text(
        "REDIS_URL",
        "fan-out between processes: `redis://` or `rediss://` (TLS). Unset: in-process, for"
        " one process. See [Scaling out](#scaling-out)",
        allowed="a redis:// or rediss:// URL",
        check=_redis_url,
        show=shown_redacted,
    )
    redis_verify_tls: bool = flag(
        "REDIS_VERIFY_TLS",
        "`0` encrypts to a `rediss://` Redis without verifying its certificate (Heroku Redis"
        " uses a self-signed one)",
        True,
    )
    bus_check_seconds: float = duration(
        "BUS_CHECK",
        "how often a process compares its loaded carts' versions with the store (one query),"
        " repairing any whose last bus message was lost",
        "2s",
    )
    presence_ttl_seconds: float = duration(
        "PRESENCE_TTL",
        "a process not heard from for this long no longer counts in `presence` (each"
        " refreshes its counts every third of it)",
        "30s",
    )
    # --- who may call -----------------------------------------------------------------
    allowed_origins: tuple[str, ...] = listing(
        "ALLOWED_ORIGINS",
        "comma-separated extra origins allowed to open the WebSocket and call mutating REST"
        " endpoints (e.g. `https://shop.example`). The own origin is this server's scheme,"
        " host and port: `http://host` does not pass for an https server",
        (),
        allowed="comma-separated origins like https://shop.example",
        item=_origin,
        shown="*(own origin)*",
    )
    allowed_hosts: tuple[str, ...] = listing(
        "ALLOWED_HOSTS",
        "comma-separated `Host` names accepted (`shop.example,*.shop.example`); any other"
        " gets `400` before a route sees it",
        (),
        allowed="comma-separated host names",
        item=str.lower,
        shown="*(any)*",
    )
    forwarded_allow_ips: tuple[str, ...] = listing(
        "FORWARDED_ALLOW_IPS",
        "TCP peers (addresses, networks such as `10.0.0.0/8`, or `'*'`) whose"
        " `X-Forwarded-For` and `X-Forwarded-Proto` are believed; also"
        " `--forwarded-allow-ips`. See [Behind a proxy](#behind-a-proxy)",
        ("127.0.0.1",),
        allowed="'*' or IP addresses and networks (10.0.0.0/8), comma-separated",
        item=_proxy,
        shown="`127.0.0.1`",
    )
    forwarded_hops: int = integer(
        "FORWARDED_HOPS",
        "proxies in front of the server: the client is the `X-Forwarded-For` entry this many"
        " from the right (the one the outermost of them appended)",
        1,
    )
    root_path: str = text(
        "ROOT_PATH",
        "a path prefix (`/cart`) to live under behind a reverse proxy, which may pass the"
        " prefix on or strip it",
        allowed="a path like /cart",
        check=_root_path,
        shown="*(none)*",
    )
    # --- logging ----------------------------------------------------------------------
    log_level: str = choice(
        "LOG_LEVEL",
        "`critical` … `debug`, `trace`. Signed cart ids are blanked in uvicorn's log lines"
        " at every level",
        "info",
        ("critical", "error", "warning", "info", "debug", "trace"),
    )
    access_log: bool = flag(
        "ACCESS_LOG", "access logs are off by default: the router logs requests", False
    )
