"""cold: carts with 20 lines that are not in memory (the server restarted, or evicted them
as idle); time from starting the WebSocket connect to its first frame, the snapshot, one
cart at a time. Then the same carts again, warm, for the floor of handshake + encode."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import msgspec
import uvloop

from .harness import LocalServer, Target, latency_line, percentiles, products, report
from .http import Conn, HttpError, metric_samples
from .rig import connect


class Doc(msgspec.Struct):
    item_count: int
    items: list[msgspec.Raw]


class First(msgspec.Struct):
    type: str
    cart: Doc | None = None


_first = msgspec.json.Decoder(First).decode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carts", type=int, default=500)
    parser.add_argument("--lines", type=int, default=20, help="lines in each cart")
    parser.add_argument(
        "--evict-wait",
        type=float,
        default=120.0,
        help="with --url: wait up to this long for the server to evict the rooms (run it"
        " with ROOM_IDLE=1s); without --url the server is restarted instead",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (0 < args.carts <= 20_000 and 0 < args.lines <= 100 and 0 <= args.evict_wait <= 600):
        parser.error("--carts 1..20000, --lines 1..100, --evict-wait 0..600")


async def fill(
    url: str, ids: list[str], carts: int, lines: int, concurrency: int = 16
) -> list[str]:
    """`carts` carts of `lines` lines each, through REST; their signed ids."""
    signed: list[str] = []

    async def worker(share: int) -> None:
        conn = await Conn.open(url)
        try:
            for _ in range(share):
                cart: str | None = None
                for line in range(lines):
                    headers = {"content-type": "application/json"}
                    if cart is not None:
                        headers["x-cart-id"] = cart
                    body = f'{{"product_id":"{ids[line]}","quantity":1}}'.encode()
                    status, answer, _ = await conn.request("POST", "/api/cart/items", headers, body)
                    if status != 200:
                        raise HttpError(f"POST /api/cart/items answered {status}")
                    cart = answer["x-cart-id"]
                assert cart is not None
                signed.append(cart)
        finally:
            await conn.close()

    workers = min(concurrency, carts)
    await asyncio.gather(
        *(worker(carts // workers + (n < carts % workers)) for n in range(workers))
    )
    return signed


async def rooms_loaded(url: str) -> int | None:
    """The server's cart_rooms_loaded gauge, if /metrics answers."""
    samples = await metric_samples(url)
    loaded = None if samples is None else samples.get("cart_rooms_loaded")
    return None if loaded is None else int(loaded)


async def wait_evicted(url: str, before: int | None, seconds: float) -> int | None:
    """Poll /metrics until the rooms are gone (back to `before`) or `seconds` pass."""
    deadline = time.perf_counter() + seconds
    loaded = await rooms_loaded(url)
    while loaded is not None and before is not None and loaded > before:
        if time.perf_counter() > deadline:
            break
        await asyncio.sleep(0.5)
        loaded = await rooms_loaded(url)
    return loaded


async def first_snapshot(url: str, cart: str, client_id: str, lines: int) -> tuple[float, bool]:
    """Seconds from starting the connect to the first frame; whether it was the right one."""
    first: asyncio.Future[tuple[float, bytes]] = asyncio.get_running_loop().create_future()

    def on_text(raw: bytes) -> None:
        if not first.done():
            first.set_result((time.perf_counter(), raw))

    started = time.perf_counter()
    ws = await connect(url, cart, client_id, on_text)
    try:
        arrived, raw = await asyncio.wait_for(first, 30)
    finally:
        await ws.close()
    elapsed = arrived - started
    frame = _first(raw)
    return elapsed, frame.type == "snapshot" and frame.cart is not None and len(
        frame.cart.items
    ) == lines


async def measure(url: str, signed: list[str], lines: int) -> tuple[list[float], list[float], int]:
    """Each cart cold, then at once again warm (before any idle eviction), one at a time:
    cold times, warm times, wrong first frames."""
    cold: list[float] = []
    warm: list[float] = []
    wrong = 0
    for n, cart in enumerate(signed):
        for times, name in ((cold, "c"), (warm, "w")):
            elapsed, right = await first_snapshot(url, cart, f"{name}{n}", lines)
            times.append(elapsed)
            wrong += not right
    return cold, warm, wrong


def main(args: argparse.Namespace, target: Target) -> None:
    ids = products(target.url, args.lines)
    if len(ids) < args.lines:
        sys.exit(f"{target.url} lists {len(ids)} products; {args.lines} lines need as many")
    before = uvloop.run(rooms_loaded(target.url))
    started = time.perf_counter()
    signed = uvloop.run(fill(target.url, ids, args.carts, args.lines))
    fill_seconds = time.perf_counter() - started
    if isinstance(target.server, LocalServer):  # cold is no --floor mode
        target.server.restart()
        how, loaded = "server restarted", uvloop.run(rooms_loaded(target.url))
    else:
        how = f"waited for idle eviction (up to {args.evict_wait:g} s)"
        loaded = uvloop.run(wait_evicted(target.url, before, args.evict_wait))
    cold_ok = loaded is not None and loaded <= (before or 0)
    if not cold_ok:
        print(
            f"WARNING: {loaded} rooms still loaded (was {before}): some carts may be warm;"
            " run the server with ROOM_IDLE=1s, or without --url",
            file=sys.stderr,
        )
    cold, warm, wrong = uvloop.run(measure(target.url, signed, args.lines))
    result: dict[str, Any] = {
        "carts": args.carts,
        "lines": args.lines,
        "how": how,
        "rooms_loaded_before_measuring": loaded,
        "confirmed_cold": cold_ok,
        "fill_seconds": fill_seconds,
        "cold_ms": percentiles(cold),
        "warm_ms": percentiles(warm),
        "wrong_snapshots": wrong,
    }
    report(
        "cold",
        [
            ("carts", f"{args.carts} x {args.lines} lines, filled by REST in {fill_seconds:.1f} s"),
            ("made cold by", f"{how}; rooms loaded then: {loaded}"),
            ("connect -> snapshot, cold", latency_line(result["cold_ms"])),
            ("connect -> snapshot, warm", latency_line(result["warm_ms"])),
            ("wrong snapshots", str(result["wrong_snapshots"])),
        ],
        result,
    )
