"""Live catalog: a product's price, stock, name or `active` changing (admin API, import,
a checkout reserving or releasing stock) reaches every open tab of every cart holding it
as a `catalog` message, without a new cart version; on one process, and across three
sharing PostgreSQL and Redis, where GET /api/products follows as well."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from tests.checkout_support import eventually, import_products
from tests.support import REDIS_URL, ServerProcess, Tab, fresh_schema, require_redis, rest
from tests.test_admin import BEARER, TOKEN


async def cart_with(server: ServerProcess, *pids: str) -> tuple[str, dict[str, Any]]:
    """A new cart holding one of each product: its signed id and document."""
    signed = None
    async with rest(server) as client:
        for pid in pids:
            headers = {"X-Cart-Id": signed} if signed else {}
            added = await client.post("/api/cart/items", json={"product_id": pid}, headers=headers)
            assert added.status_code == 200, added.text
            signed, doc = added.headers["x-cart-id"], added.json()
    assert signed is not None
    return signed, doc


async def news(tab: Tab, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of the tab that is not a presence count."""
    while True:
        frame = await tab.next(timeout=timeout)
        if frame["type"] != "presence":
            return frame


async def opened(server: ServerProcess, signed: str) -> Tab:
    tab = await Tab.open(server, signed)
    assert (await news(tab))["type"] == "snapshot"
    return tab


async def patch(server: ServerProcess, pid: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, headers=BEARER, trust_env=False) as admin:
        response = await admin.patch(f"/api/admin/products/{pid}", json=body)
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def item(pid: str, n: int, **changed: Any) -> dict[str, Any]:
    """The catalog entry of test product `n` as the test catalog has it, with changes."""
    base = {"product_id": pid, "name": f"Product {n}", "price_cents": 100 * n + 99}
    return {**base, "stock": 100_000, "active": True, **changed}


async def test_a_change_reaches_only_the_tabs_of_carts_holding_the_product(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ADMIN_TOKEN": TOKEN}).start()
    holder, doc = await cart_with(server, "p-001", "p-002")
    other, _ = await cart_with(server, "p-003")
    tabs = [await opened(server, holder) for _ in range(2)]
    bystander = await opened(server, other)

    started = time.monotonic()
    await patch(server, "p-001", {"price_cents": 555})
    for tab in tabs:
        frame = await news(tab)
        assert frame == {"type": "catalog", "products": [item("p-001", 1, price_cents=555)]}
    print(f"\n[timing] admin PATCH -> both tabs: {(time.monotonic() - started) * 1000:.1f} ms")

    # No cart version, and the next snapshot carries the same value.
    async with rest(server, holder) as client:
        cart = (await client.get("/api/cart")).json()
    assert cart["version"] == doc["version"]
    prices = {i["product_id"]: i["current_price_cents"] for i in cart["items"]}
    assert prices == {"p-001": 555, "p-002": 299}
    assert cart["items"][0]["unit_price_cents"] == 199  # the price the line was added at

    # Archived and sold out, in one bulk change: one message naming both.
    async with httpx.AsyncClient(base_url=server.url, headers=BEARER) as admin:
        rows = [
            {"id": "p-001", "sku": "SKU-001", "name": "Renamed", "price_cents": 555, "stock": 0},
            {"id": "p-002", "sku": "SKU-002", "name": "Product 2", "price_cents": 299,
             "stock": 100_000, "active": False},
            {"id": "p-004", "sku": "SKU-004", "name": "Elsewhere", "price_cents": 1, "stock": 1},
        ]  # fmt: skip
        assert (await admin.post("/api/admin/products", json={"products": rows})).is_success
    for tab in tabs:
        frame = await news(tab)
        assert frame == {
            "type": "catalog",
            "products": [
                item("p-001", 1, name="Renamed", price_cents=555, stock=0),
                item("p-002", 2, active=False),
            ],
        }
    # The bystander's first news is about its own product, not about any of those.
    await patch(server, "p-003", {"stock_delta": -1})
    assert await news(bystander) == {
        "type": "catalog",
        "products": [item("p-003", 3, stock=99_999)],
    }
    async with rest(server) as client:
        metrics = (await client.get("/metrics")).text
    # Two messages to each of the holder's two tabs, one to the bystander's.
    assert "cart_catalog_frames_total 5" in metrics, metrics
    assert 'cart_admin_requests_total{result="ok"} 3' in metrics
    for tab in [*tabs, bystander]:
        await tab.close()


async def test_a_checkout_reserving_and_releasing_stock_tells_the_other_carts(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ADMIN_TOKEN": TOKEN}).start()
    watcher, _ = await cart_with(server, "p-low")
    buyer, _ = await cart_with(server, "p-low")
    tab = await opened(server, watcher)
    async with rest(server, buyer) as client:
        await client.patch("/api/cart/items/p-low", json={"quantity": 3})
        started = await client.post("/api/cart/checkout")
        assert started.status_code == 200, started.text
        frame = await news(tab)
        assert frame["products"] == [
            {
                "product_id": "p-low",
                "name": "Last few",
                "price_cents": 500,
                "stock": 0,
                "active": True,
            }
        ]  # sold out for this shopper while the buyer pays
        assert (await client.post("/api/cart/checkout/cancel")).status_code == 200
    frame = await news(tab)
    assert frame["products"][0]["stock"] == 3
    await tab.close()


async def test_an_import_on_the_command_line_reaches_open_tabs(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    signed, _ = await cart_with(server, "p-007")
    tab = await opened(server, signed)
    product = {"id": "p-007", "sku": "SKU-007", "name": "Product 7", "price_cents": 1, "stock": 2}
    await asyncio.to_thread(import_products, server, [product], "cheaper")
    # Another process wrote it: this one finds it on its next look (CATALOG_REFRESH, 1 s).
    assert (await news(tab, timeout=10))["products"] == [item("p-007", 7, price_cents=1, stock=2)]
    await tab.close()


# --- three processes -------------------------------------------------------------------


@pytest.fixture
async def three(make_server: Callable[..., ServerProcess]) -> AsyncIterator[list[ServerProcess]]:
    """Three servers sharing a fresh PostgreSQL schema and the local Redis. The catalog is
    re-read only every 60 s: whatever arrives sooner came through the bus."""
    await require_redis()
    async with fresh_schema() as url:
        env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "ADMIN_TOKEN": TOKEN}
        env["CATALOG_REFRESH"] = "60s"
        first = await asyncio.to_thread(make_server, env)
        others = [make_server({**env, "DEMO_CATALOG": "0"}, catalog=False) for _ in range(2)]
        servers = [first, *others]
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in servers))
        yield servers
        for server in servers:
            server.stop()


async def test_a_change_in_one_process_reaches_tabs_and_listings_of_the_others(
    three: list[ServerProcess],
) -> None:
    signed, _ = await cart_with(three[0], "p-009")
    tabs = [await opened(server, signed) for server in three]
    started = time.monotonic()
    await patch(three[1], "p-009", {"price_cents": 42, "stock_delta": -10})
    expected = item("p-009", 9, price_cents=42, stock=99_990)
    for tab in tabs:
        assert await news(tab) == {"type": "catalog", "products": [expected]}
    elapsed = time.monotonic() - started
    print(f"\n[timing] PATCH on one process -> tabs on all three: {elapsed * 1000:.1f} ms")

    async def listing(server: ServerProcess) -> dict[str, Any]:
        async with rest(server) as client:
            products = (await client.get("/api/products")).json()["products"]
        return next(p for p in products if p["id"] == "p-009")

    for server in three:
        found = await eventually(lambda s=server: listing(s), lambda p: p["price_cents"] == 42)
        assert found["stock"] == 99_990

    # An import on the command line tells the running processes over Redis too (they
    # re-read the catalog on their own only every minute here).
    product = {"id": "p-009", "sku": "SKU-009", "name": "Imported", "price_cents": 7, "stock": 50}
    await asyncio.to_thread(import_products, three[0], [product], "imported")
    imported = item("p-009", 9, name="Imported", price_cents=7, stock=50)
    for tab in tabs:
        assert (await news(tab))["products"] == [imported]

    # A checkout in a third process reserving stock reaches the tabs everywhere too.
    async with rest(three[2], signed) as client:
        assert (await client.post("/api/cart/checkout")).status_code == 200
    for tab in tabs:
        frame = await news(tab)
        if frame["type"] == "patch":  # the cart's own checkout: the status patch first
            frame = await news(tab)
        assert frame["products"][0]["stock"] == 49
    for tab in tabs:
        await tab.close()
