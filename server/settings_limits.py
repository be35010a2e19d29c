"""Limits: sizes, queues, rates and timeouts that keep one client, tab or address from
taking more than its share. Declared once each (see variables.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .variables import choice, duration, integer, rate

KIB = 1024


@dataclass(frozen=True)
class LimitSettings:
    # --- limits -----------------------------------------------------------------------
    max_body_bytes: int = integer(
        "MAX_BODY_BYTES", "larger REST bodies get 413", 16 * KIB, unit="bytes"
    )
    max_frame_bytes: int = integer(
        "MAX_FRAME_BYTES",
        "larger WebSocket text frames get `invalid_message`",
        4 * KIB,
        unit="bytes",
    )
    ws_max_size: int = integer(
        "WS_MAX_SIZE", "larger WebSocket frames close the socket with 1009", 64 * KIB, unit="bytes"
    )
    ws_send_queue: int = integer(
        "WS_SEND_QUEUE",
        "frames that may wait for one tab's socket (while it pushes back) before the tab is"
        " closed with 1013",
        256,
    )
    ws_send_timeout_seconds: float = duration(
        "WS_SEND_TIMEOUT",
        "a WebSocket whose socket has taken no data for this long (the peer stopped reading)"
        " is dropped",
        "5s",
    )
    ws_send_buffer: int = integer(
        "WS_SEND_BUFFER",
        "kernel send buffer per WebSocket (`SO_SNDBUF`): bounds what a stalled peer holds",
        256 * KIB,
        unit="bytes",
    )
    max_tabs_per_cart: int = integer(
        "MAX_TABS_PER_CART",
        "more tabs on one cart are closed with 1008 `too many tabs on this cart`",
        20,
    )
    max_checkouts_per_ip: int = integer(
        "MAX_CHECKOUTS_PER_IP",
        "checkouts holding stock at once per client address (counted in the store, across"
        " processes); past it `429 too_many_checkouts`",
        10,
    )
    new_cart_rate: float = rate(
        "NEW_CART_RATE",
        "new carts per second (token bucket) per client address — requests that name no"
        " cart, or a finished one; past it `429 rate_limited` (a WebSocket: close 1013), and"
        " no cart id is handed out. A household or an office never gets near it; a script"
        " minting a cart per request does",
        5.0,
    )
    new_cart_burst: int = integer(
        "NEW_CART_BURST", "new carts one address may make at once before `NEW_CART_RATE`", 300
    )
    max_connections_per_ip: int = integer(
        "MAX_CONNECTIONS_PER_IP",
        "open WebSockets and long-polls per client address; past it a socket is closed with"
        " 1008 `too many connections from this address`, a long-poll gets `429"
        " too_many_connections`. The client address is the TCP peer's, or behind a trusted"
        " proxy the one it appended ([Behind a proxy](#behind-a-proxy))",
        100,
    )
    max_sockets_per_ip: int = integer(
        "MAX_SOCKETS_PER_IP",
        "TCP connections of any kind per client address: idle, still sending its request,"
        " in a request, WebSocket. Past it a new connection is answered `429` and closed at"
        " once (before its request is read, so a client may see a reset instead). Must be at"
        " least `MAX_CONNECTIONS_PER_IP`",
        200,
        shown="twice `MAX_CONNECTIONS_PER_IP`",
        derive=lambda values: 2 * values["max_connections_per_ip"],
    )
    header_timeout_seconds: float = duration(
        "HEADER_TIMEOUT",
        "the request line and headers must arrive within this (from the connection's start"
        " or the previous response); else `408` and the connection is closed",
        "10s",
    )
    body_timeout_seconds: float = duration(
        "BODY_TIMEOUT",
        "a request's body must be complete within this of its head; else `408` (if nothing"
        " was answered yet) and the connection is closed",
        "60s",
    )
    max_header_bytes: int = integer(
        "MAX_HEADER_BYTES",
        "request line plus headers; over it `431 headers_too_large` and the connection is"
        " closed at once (no more of it is parsed)",
        32 * KIB,
        unit="bytes",
    )
    http_parser: str = choice(
        "HTTP_PARSER",
        "uvicorn's HTTP/1.1 implementation: `httptools` (C, the fast one) or `h11` (pure"
        " Python); the same limits hold with either",
        "httptools",
        ("httptools", "h11"),
    )
    cart_rate: float = rate(
        "CART_RATE_LIMIT",
        "mutations per second per cart (token bucket), shared by all its tabs and REST"
        " callers: more tabs do not mean more allowance",
        50.0,
    )
    cart_burst: int = integer(
        "CART_RATE_BURST", "mutations one cart may make at once before `CART_RATE_LIMIT`", 100
    )
    connection_rate: float = rate(
        "CONNECTION_RATE_LIMIT", "mutations per second per WebSocket connection", 20.0
    )
    connection_burst: int = integer(
        "CONNECTION_RATE_BURST",
        "mutations one WebSocket connection may make at once before `CONNECTION_RATE_LIMIT`",
        40,
    )
    long_poll_max_seconds: float = duration(
        "LONG_POLL_MAX",
        "cap on `?wait=`; keep it under the router's request timeout (Heroku: 30 s)",
        "25s",
    )
