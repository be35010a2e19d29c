"""churn: anonymous shoppers arrive at a steady rate, make a few edits (some start a
checkout and walk away from it), and are gone; the server runs with its TTLs shortened so
that weeks of carts pass in minutes. Every few seconds it prints the database size, the row
count of every table that grows with traffic and the server's RSS: they must level off."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
import uuid
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import uvloop

from .harness import LocalServer, products, report
from .sampler import TABLES, Sample, mb, sample

OWN_SERVER = True  # the shortened TTLs are the point: --url does not apply
# Weeks of carts in minutes: every deadline the purge depends on, shortened (CART_TTL to
# the least it may be).
SHORT = {
    "ABANDON_AFTER": "2s",
    "CART_TTL": "1m",
    "IDEMPOTENCY_TTL": "10s",
    "EVENTS_TTL": "20s",
    "CHECKOUT_EXPIRES": "5s",
    "ROOM_IDLE": "2s",
}
IN_FLIGHT = 200  # shoppers at once, at most: a slow server slows arrivals, not memory
# Every shopper is a stranger: carts are named by X-Cart-Id, never by a shared cookie.
NO_COOKIES = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
SETTLE = 1.10  # "levelled off": the last third peaks within 10 % of the middle third


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=20.0, help="shoppers arriving per second")
    parser.add_argument("--edits", type=int, default=3, help="edits per shopper")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between samples")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.minutes <= 60 or not 0 < args.rate <= 200 or not 1 <= args.edits <= 20:
        parser.error("a run is bounded: --minutes 0..60, --rate 0..200, --edits 1..20")
    if not 1 <= args.every <= 60:
        parser.error("--every 1..60 seconds")


async def shopper(client: httpx.AsyncClient, n: int, ids: list[str], edits: int) -> str:
    """One anonymous visit; 'ok', or what went wrong."""
    response = await client.get("/api/cart")
    signed = response.headers["x-cart-id"]
    headers = {"x-cart-id": signed}
    for e in range(edits):
        product = ids[(n + e) % len(ids)]
        key = {"idempotency-key": uuid.uuid4().hex}
        if e % 3 == 2:
            body: dict[str, Any] = {"quantity": 2}
            response = await client.patch(
                f"/api/cart/items/{ids[n % len(ids)]}", json=body, headers=headers | key
            )
        else:
            body = {"product_id": product, "quantity": 1}
            response = await client.post("/api/cart/items", json=body, headers=headers | key)
        if response.status_code != 200:
            return f"edit {response.status_code}"
    if n % 10 == 0:  # starts paying, then walks away: the reservation expires
        response = await client.post("/api/cart/checkout", json={}, headers=headers)
        if response.status_code != 200:
            return f"checkout {response.status_code}"
    return "ok"


async def run(args: argparse.Namespace, server: LocalServer) -> tuple[list[Sample], dict[str, int]]:
    assert server.proc is not None
    ids = products(server.url, 10)
    outcomes: dict[str, int] = {}
    samples: list[Sample] = []
    started = time.monotonic()
    stop_at = started + args.minutes * 60
    slots = asyncio.Semaphore(IN_FLIGHT)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
    async with httpx.AsyncClient(
        base_url=server.url, timeout=30, trust_env=False, limits=limits, cookies=NO_COOKIES
    ) as client:

        async def visit(n: int) -> None:
            try:
                result = await shopper(client, n, ids, args.edits)
            except httpx.HTTPError as exc:
                result = type(exc).__name__
            finally:
                slots.release()
            outcomes[result] = outcomes.get(result, 0) + 1

        async def sampler() -> None:
            while time.monotonic() < stop_at:
                s = await sample(server.url, server.proc.pid, started, server.dir / "bench.db")  # type: ignore[union-attr]
                samples.append(s)
                print(line(s), flush=True)
                await asyncio.sleep(args.every)

        print(header(), flush=True)
        watcher = asyncio.create_task(sampler())
        visits: set[asyncio.Task[None]] = set()
        for n in itertools.count():
            due = started + n / args.rate
            if due >= stop_at:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await slots.acquire()
            task = asyncio.create_task(visit(n))
            visits.add(task)
            task.add_done_callback(visits.discard)
        await asyncio.gather(*visits)
        await watcher
    return samples, outcomes


def header() -> str:
    short = {"cart_sessions": "carts", "applied_mutations": "keys", "checkout_items": "co_items"}
    names = "".join(f"{short.get(t, t.removeprefix('cart_')):>10}" for t in TABLES)
    return f"{'t (s)':>6} {'RSS MB':>7} {'DB MB':>6}{names}"


def line(s: Sample) -> str:
    rows = "".join(f"{s.rows[t]:>10}" for t in TABLES)
    return f"{s.at:>6.0f} {mb(s.rss):>7} {mb(s.gauges.get('cart_database_bytes', 0)):>6}{rows}"


def levelled(samples: list[Sample], read: Any) -> bool:
    """The last third of the run peaks within SETTLE of the middle third."""
    third = len(samples) // 3
    if third < 1:
        return False
    middle = max(read(s) for s in samples[third : 2 * third])
    last = max(read(s) for s in samples[2 * third :])
    return bool(last <= middle * SETTLE + 64)  # + a little: near-empty tables jitter


def main(args: argparse.Namespace, target: object) -> None:
    server = LocalServer(SHORT).start()
    try:
        samples, outcomes = uvloop.run(run(args, server))
    finally:
        server.remove()
    checks = {t: levelled(samples, lambda s, t=t: s.rows[t]) for t in TABLES}
    checks["database size"] = levelled(samples, lambda s: s.gauges["cart_database_bytes"])
    checks["RSS"] = levelled(samples, lambda s: s.rss)
    flat = all(checks.values())
    last = samples[-1]
    report(
        "churn",
        [
            ("shoppers", f"{sum(outcomes.values())} at {args.rate:g}/s, {args.edits} edits each"),
            ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))),
            ("TTLs", ", ".join(f"{k}={v}" for k, v in SHORT.items())),
            (
                "at the end",
                f"RSS {mb(last.rss)} MB, DB {mb(last.gauges['cart_database_bytes'])} MB",
            ),
            ("levelled off", "yes" if flat else f"NO: {[k for k, v in checks.items() if not v]}"),
        ],
        {
            "minutes": args.minutes,
            "rate": args.rate,
            "outcomes": outcomes,
            "levelled": checks,
            "samples": [
                {"t": round(s.at), "rss": s.rss, "fds": s.fds, **s.gauges, **s.rows}
                for s in samples
            ],
        },
    )
    if not flat:
        raise SystemExit(1)
