"""catalog: a large catalog through the admin API and GET /api/products, and how fast a
product change reaches the open tabs of the carts holding it.

Loads --products products with the bulk admin route (10,000 per request), then times the
listing whole (plain, gzipped, revalidated with its ETag, and the first answer after a
change, which rebuilds it), a page of 100 and 20 ids; then opens --carts carts holding one
product with --tabs tabs each (spread over the processes given with --url) and changes
that product's price --changes times through the first, timing from sending the PATCH
until every tab has the `catalog` message."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

import httpx
import uvloop
import websockets

from .harness import Target, latency_line, percentiles, report

SERVER_ENV = {"ADMIN_TOKEN": "bench-admin-token-0123456789"}
BATCH = 10_000
TIMEOUT = 30.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--products", type=int, default=50_000, help="products to load")
    parser.add_argument("--requests", type=int, default=20, help="GETs timed per kind")
    parser.add_argument("--changes", type=int, default=50, help="price changes timed")
    parser.add_argument("--carts", type=int, default=10, help="carts holding the product")
    parser.add_argument("--tabs", type=int, default=2, help="tabs per cart")
    parser.add_argument(
        "--admin-token", default=SERVER_ENV["ADMIN_TOKEN"], help="with --url: its ADMIN_TOKEN"
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (1 <= args.products <= 200_000 and 1 <= args.requests <= 1000):
        parser.error("--products 1..200000, --requests 1..1000")
    if not (1 <= args.changes <= 1000 and 1 <= args.carts <= 200 and 1 <= args.tabs <= 20):
        parser.error("--changes 1..1000, --carts 1..200, --tabs 1..20")


def row(n: int) -> dict[str, Any]:
    return {
        "id": f"c-{n:06d}",
        "sku": f"C-{n:06d}",
        "name": f"Catalog product {n} with a name of a usual length",
        "price_cents": 1000 + n % 9000,
        "stock": 1_000_000,
        "image_url": f"/static/img/c-{n:06d}.svg",
    }


async def load(admin: httpx.AsyncClient, count: int) -> float:
    started = time.perf_counter()
    for start in range(0, count, BATCH):
        rows = [row(n) for n in range(start, min(count, start + BATCH))]
        answer = await admin.post("/api/admin/products", json={"products": rows})
        answer.raise_for_status()
    return time.perf_counter() - started


async def timed(
    client: httpx.AsyncClient, requests: int, params: Any = None, headers: Any = None
) -> tuple[list[float], httpx.Response]:
    samples: list[float] = []
    response: httpx.Response | None = None
    for _ in range(requests):
        started = time.perf_counter()
        response = await client.get(
            "/api/products", params=params() if callable(params) else params, headers=headers
        )
        samples.append(time.perf_counter() - started)
        if response.status_code not in (200, 304):
            response.raise_for_status()
    assert response is not None
    return samples, response


async def listing(
    client: httpx.AsyncClient, admin: httpx.AsyncClient, args: argparse.Namespace
) -> dict[str, Any]:
    plain, whole = await timed(client, args.requests, headers={"accept-encoding": "identity"})
    packed, zipped = await timed(client, args.requests, headers={"accept-encoding": "gzip"})
    etag = whole.headers["etag"]
    revalidated, same = await timed(client, args.requests, headers={"if-none-match": etag})
    assert same.status_code == 304
    rebuilt: list[float] = []
    for n in range(min(args.requests, 10)):
        await admin.patch("/api/admin/products/c-000001", json={"price_cents": 2000 + n})
        samples, _ = await timed(client, 1, headers={"accept-encoding": "gzip"})
        rebuilt += samples
    rng = random.Random(1)
    count = args.products

    def page() -> dict[str, str]:
        return {"limit": "100", "after": row(rng.randrange(count))["id"]}

    def ids() -> dict[str, str]:
        return {"ids": ",".join(row(rng.randrange(count))["id"] for _ in range(20))}

    paged, _ = await timed(client, args.requests, page)
    named, _ = await timed(client, args.requests, ids)
    return {
        "listed": len(whole.json()["products"]),
        "whole_bytes": len(whole.content),
        "whole_gzip_bytes": int(zipped.headers["content-length"]),
        "whole_ms": percentiles(plain),
        "whole_gzip_ms": percentiles(packed),
        "whole_304_ms": percentiles(revalidated),
        "whole_after_change_ms": percentiles(rebuilt),
        "page_100_ms": percentiles(paged),
        "ids_20_ms": percentiles(named),
    }


async def live(
    urls: list[str], admin: httpx.AsyncClient, args: argparse.Namespace
) -> dict[str, Any]:
    """The PATCH goes to the first process; tab t of cart c opens on process (c + t) % N."""
    product = "c-000000"
    tabs: list[websockets.ClientConnection] = []
    ws_urls = [url.replace("http", "ws", 1) + "/api/cart/ws" for url in urls]
    async with httpx.AsyncClient(base_url=urls[0], trust_env=False, timeout=TIMEOUT) as shopper:
        for cart in range(args.carts):
            added = await shopper.post("/api/cart/items", json={"product_id": product})
            added.raise_for_status()
            signed = added.headers["x-cart-id"]
            shopper.cookies.clear()
            for tab in range(args.tabs):
                ws_url = ws_urls[(cart + tab) % len(ws_urls)]
                tabs.append(await websockets.connect(f"{ws_url}?cart={signed}", proxy=None))
    try:
        for socket in tabs:
            await next_catalog(socket, until="snapshot")
        samples: list[float] = []
        for n in range(args.changes):
            started = time.perf_counter()
            answer = await admin.patch(
                f"/api/admin/products/{product}", json={"price_cents": 5000 + n}
            )
            answer.raise_for_status()
            await asyncio.gather(*(next_catalog(tab) for tab in tabs))
            samples.append(time.perf_counter() - started)
    finally:
        await asyncio.gather(*(tab.close() for tab in tabs))
    return {
        "tabs": len(tabs),
        "changes": args.changes,
        "change_to_all_tabs_ms": percentiles(samples),
    }


async def next_catalog(tab: websockets.ClientConnection, until: str = "catalog") -> None:
    async with asyncio.timeout(TIMEOUT):
        while json.loads(await tab.recv())["type"] != until:
            pass


async def run(target: Target, args: argparse.Namespace) -> dict[str, Any]:
    bearer = {"authorization": f"Bearer {args.admin_token}"}
    options: dict[str, Any] = {"base_url": target.url, "trust_env": False, "timeout": 120}
    async with (
        httpx.AsyncClient(headers=bearer, **options) as admin,
        httpx.AsyncClient(**options) as client,
    ):
        loaded = await load(admin, args.products)
        result = {"products": args.products, "load_seconds": loaded}
        result |= await listing(client, admin, args)
        result |= await live(target.urls, admin, args)
        result["processes"] = len(target.urls)
    return result


def main(args: argparse.Namespace, target: Target) -> None:
    result = uvloop.run(run(target, args))
    loaded = f"{args.products} loaded by the bulk admin route in {result['load_seconds']:.1f} s"
    report(
        "catalog",
        [
            ("products", loaded),
            ("listing", f"{result['listed']} products, {result['whole_bytes']:,} B,"
             f" gzipped {result['whole_gzip_bytes']:,} B"),
            ("whole, plain", latency_line(result["whole_ms"])),
            ("whole, gzip", latency_line(result["whole_gzip_ms"])),
            ("whole, 304", latency_line(result["whole_304_ms"])),
            ("whole, first after a change", latency_line(result["whole_after_change_ms"])),
            ("page of 100", latency_line(result["page_100_ms"])),
            ("20 ids", latency_line(result["ids_20_ms"])),
            (f"PATCH -> {result['tabs']} tabs on {result['processes']} processes",
             latency_line(result["change_to_all_tabs_ms"])),
        ],
        result,
    )  # fmt: skip
