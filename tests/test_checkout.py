"""Checkout end to end with the built-in demo payment provider (no payment settings at
all): the payment page, Pay and Cancel, every tab told, the cart locked while it is paid
for, a fresh cart afterwards, refusals, and the price policy."""

from __future__ import annotations

import asyncio
import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.checkout_support import (
    cart_with,
    checkouts_of,
    eventually,
    import_products,
    order_lines,
    orders_of,
    product,
    product_stock,
    rows,
    server_with,
    stock,
)
from tests.lifecycle_support import unsign
from tests.support import ServerProcess, Tab, rest

EXTRA = [product(f"d-{n}", 6, 1000 + n, f"Demo item {n}") for n in range(1, 13) if n != 3]
EXTRA.append(product("d-3", 20, 1003, "Demo item 3"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = server_with(tmp_path_factory.mktemp("demo"), extra=EXTRA).start()
    yield proc
    proc.stop()


async def start(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.post("/api/cart/checkout", json={})
    assert response.status_code == 200, response.text
    started: dict[str, Any] = response.json()
    return started


async def frame(tab: Tab) -> dict[str, Any]:
    """The next frame that is not a presence count or catalog news (stock reserved)."""
    while True:
        found = await tab.next()
        if found["type"] not in ("presence", "catalog"):
            return found


def status_of(patch: dict[str, Any]) -> str | None:
    assert patch["type"] == "patch", patch
    found = [op["status"] for op in patch["ops"] if op["op"] == "status"]
    return found[0] if found else None


# --- the demo payment page -------------------------------------------------------------


async def test_the_demo_checkout_pays_on_its_own_page(server: ServerProcess) -> None:
    client, _, doc = await cart_with(server, [("d-1", 2), ("p-002", 1)])
    async with client:
        started = await start(client)
        checkout_id = started["session_id"]
        # Relative: never built from the Host header a client writes.
        assert started["checkout_url"] == f"/checkout/demo/{checkout_id}"
        assert checkouts_of(server, doc["id"]) == [(checkout_id, "reserved", checkout_id)]
        assert stock(server, "d-1") == 4

        page = await client.get(started["checkout_url"])
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        text = page.text
        assert 'id="pay"' in text and 'id="cancel"' in text
        assert "Demo item 1" in text and "Product 2" in text
        assert "<strong>$23.01</strong>" in text  # 2 x $10.01 + $2.99, the snapshot total
        assert f'action="/checkout/demo/{checkout_id}/pay"' in text

        paid = await client.post(f"{started['checkout_url']}/pay")
        assert paid.status_code == 303
        assert paid.headers["location"] == f"/?checkout=success&session_id={checkout_id}"
        (order,) = orders_of(server, doc["id"])
        assert (order["amount_total_cents"], order["status"], order["session_id"]) == (
            2 * 1001 + 299,
            "paid",
            checkout_id,
        )
        assert order_lines(server, order["id"]) == [
            ("d-1", "SKU-D-1", "Demo item 1", 2, 1001, 2002),
            ("p-002", "SKU-002", "Product 2", 1, 299, 299),
        ]
        assert stock(server, "d-1") == 4  # sold
        assert rows(server, "SELECT status FROM cart_sessions WHERE id = ?", (doc["id"],)) == [
            ("checked_out",)
        ]

        # The page now says it is over; a second Pay (a double submit) changes nothing
        # and still lands on the success page.
        closed = await client.get(started["checkout_url"])
        assert 'id="closed"' in closed.text and 'id="pay"' not in closed.text
        again = await client.post(f"{started['checkout_url']}/pay")
        assert again.status_code == 303
        assert "checkout=success" in again.headers["location"]
        assert len(orders_of(server, doc["id"])) == 1

        fresh = (await client.get("/api/cart")).json()
        assert fresh["id"] != doc["id"] and fresh["items"] == [] and fresh["version"] == 0


async def test_cancel_on_the_demo_page_gives_the_stock_back(server: ServerProcess) -> None:
    client, _, doc = await cart_with(server, [("d-2", 6)])
    async with client:
        started = await start(client)
        assert stock(server, "d-2") == 0
        assert await product_stock(client, "d-2") == 0
        cancelled = await client.post(f"{started['checkout_url']}/cancel")
        assert cancelled.status_code == 303
        assert cancelled.headers["location"] == "/?checkout=cancelled"
        assert stock(server, "d-2") == 6
        assert await product_stock(client, "d-2") == 6
        cart = (await client.get("/api/cart")).json()
        assert cart["status"] == "active" and cart["items"] == doc["items"]

        # Paying the cancelled checkout afterwards: no order, nothing taken.
        late = await client.post(f"{started['checkout_url']}/pay")
        assert late.status_code == 303 and "checkout=cancelled" in late.headers["location"]
        assert orders_of(server, doc["id"]) == []
        assert stock(server, "d-2") == 6
        assert "released" in (await client.get(started["checkout_url"])).text
        # The unlocked cart takes edits again.
        edit = await client.patch("/api/cart/items/d-2", json={"quantity": 5})
        assert edit.status_code == 200, edit.text


async def test_a_stale_page_cannot_cancel_a_newer_checkout(server: ServerProcess) -> None:
    client, _, doc = await cart_with(server, [("d-8", 1)])
    async with client:
        old = await start(client)
        assert (await client.post("/api/cart/checkout/cancel")).status_code == 200
        new = await start(client)
        stale = await client.post(f"{old['checkout_url']}/cancel")
        assert stale.status_code == 303
        assert [c[1] for c in checkouts_of(server, doc["id"])] == ["released", "reserved"]
        assert (await client.get("/api/cart")).json()["status"] == "checking_out"
        assert stock(server, "d-8") == 5
        assert (await client.post(f"{new['checkout_url']}/pay")).status_code == 303
        assert len(orders_of(server, doc["id"])) == 1


async def test_pay_racing_cancel_ends_one_way_only(server: ServerProcess) -> None:
    """Pay and Cancel pressed at the same moment (two tabs): either an order and a
    checked-out cart, or no order and the stock back; never an order for stock that
    was given back."""
    for n in range(10):
        client, _, doc = await cart_with(server, [("d-3", 1)])
        async with client:
            url = (await start(client))["checkout_url"]
            if n % 2:
                pay, cancel = await asyncio.gather(
                    client.post(f"{url}/pay"), client.post(f"{url}/cancel")
                )
            else:  # Cancel pressed a moment before Pay
                cancel, pay = await asyncio.gather(
                    client.post(f"{url}/cancel"), client.post(f"{url}/pay")
                )
            assert pay.status_code == cancel.status_code == 303
            orders = orders_of(server, doc["id"])
            (status,) = rows(server, "SELECT status FROM cart_sessions WHERE id = ?", (doc["id"],))
            if orders:
                assert status == ("checked_out",)
                assert "checkout=success" in pay.headers["location"]
                assert [o["status"] for o in orders] == ["paid"]
            else:
                assert status == ("active",)
                assert "checkout=cancelled" in pay.headers["location"]
            sold = sum(
                q
                for (q,) in rows(
                    server, "SELECT quantity FROM order_items WHERE product_id = 'd-3'"
                )
            )
            assert stock(server, "d-3") == 20 - sold, n


async def test_the_demo_page_refuses_strangers(server: ServerProcess) -> None:
    client, _, _ = await cart_with(server, [("p-003", 1)])
    async with client:
        url = (await start(client))["checkout_url"]
        missing = await client.get("/checkout/demo/no-such-checkout")
        assert missing.status_code == 404
        foreign = await client.post(f"{url}/pay", headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        assert foreign.json()["error"]["code"] == "forbidden_origin"
        assert (await client.get("/api/cart")).json()["status"] == "checking_out"


# --- REST --------------------------------------------------------------------------------


async def test_an_empty_cart_cannot_check_out(server: ServerProcess) -> None:
    async with rest(server) as client:
        signed = (await client.get("/api/cart")).headers["x-cart-id"]
        response = await client.post("/api/cart/checkout", json={}, headers={"X-Cart-Id": signed})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "empty_cart"
        cart = await client.get("/api/cart", headers={"X-Cart-Id": signed})
        assert cart.json()["status"] == "active" and cart.json()["version"] == 0
        assert checkouts_of(server, cart.json()["id"]) == []
        # A request that names no cart and is refused is handed no cart id.
        client.cookies.clear()
        fresh = await client.post("/api/cart/checkout", json={})
        assert fresh.status_code == 409 and "x-cart-id" not in fresh.headers


async def test_a_short_line_reserves_nothing(server: ServerProcess) -> None:
    first, _, _ = await cart_with(server, [("d-4", 5)])
    second, _, doc = await cart_with(server, [("d-5", 2), ("d-4", 2)])
    async with first, second:
        await start(first)
        refused = await second.post("/api/cart/checkout", json={})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "insufficient_stock"
        assert error["lines"] == [{"product_id": "d-4", "requested": 2, "available": 1}]
        assert (stock(server, "d-4"), stock(server, "d-5")) == (1, 6)  # d-5 not held
        cart = (await second.get("/api/cart")).json()
        assert cart["status"] == "active" and cart["version"] == doc["version"]
        assert checkouts_of(server, doc["id"]) == []
        # Still editable: take what is left, and it goes through.
        assert (await second.patch("/api/cart/items/d-4", json={"quantity": 1})).status_code == 200
        await start(second)
        assert (stock(server, "d-4"), stock(server, "d-5")) == (0, 4)


async def test_if_match_checks_out_only_the_cart_the_shopper_saw(server: ServerProcess) -> None:
    client, _, seen = await cart_with(server, [("d-9", 1)])
    async with client:
        # Another tab adds a line after this one rendered the cart.
        edit = await client.post("/api/cart/items", json={"product_id": "d-10", "quantity": 2})
        assert edit.status_code == 200
        stale = await client.post(
            "/api/cart/checkout", json={}, headers={"If-Match": f'"{seen["version"]}"'}
        )
        assert stale.status_code == 412, stale.text
        error = stale.json()["error"]
        assert error["code"] == "version_conflict" and error["version"] == seen["version"] + 1
        assert len(error["cart"]["items"]) == 2
        assert (stock(server, "d-9"), stock(server, "d-10")) == (6, 6)
        assert checkouts_of(server, seen["id"]) == []
        current = await client.post(
            "/api/cart/checkout", json={}, headers={"If-Match": f'"{seen["version"] + 1}"'}
        )
        assert current.status_code == 200, current.text
        assert (stock(server, "d-9"), stock(server, "d-10")) == (5, 4)


async def test_rest_cancel_releases_and_unlocks(server: ServerProcess) -> None:
    client, _, doc = await cart_with(server, [("d-6", 3)])
    async with client:
        await start(client)
        locked = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 1})
        assert locked.status_code == 409 and locked.json()["error"]["code"] == "cart_locked"
        response = await client.post("/api/cart/checkout/cancel")
        assert response.status_code == 200
        assert response.json()["status"] == "active"
        assert response.json()["version"] == doc["version"] + 2
        assert stock(server, "d-6") == 6
        assert [c[1] for c in checkouts_of(server, doc["id"])] == ["released"]


# --- tabs --------------------------------------------------------------------------------


async def test_every_tab_follows_the_checkout_and_moves_to_the_fresh_cart(
    server: ServerProcess,
) -> None:
    client, signed, doc = await cart_with(server, [("d-7", 1)])
    tabs = [await Tab.open(server, signed) for _ in range(2)]
    async with client:
        try:
            for tab in tabs:
                assert (await frame(tab))["type"] == "snapshot"

            started = await start(client)
            for tab in tabs:
                assert status_of(await frame(tab)) == "checking_out"
            await tabs[0].send({"type": "add", "id": "m1", "product_id": "p-001", "quantity": 1})
            error = await frame(tabs[0])
            assert error["type"] == "error" and error["id"] == "m1"
            assert error["code"] == "cart_locked"

            assert (await client.post("/api/cart/checkout/cancel")).status_code == 200
            for tab in tabs:
                assert status_of(await frame(tab)) == "active"
            await tabs[0].send({"type": "add", "id": "m2", "product_id": "p-001", "quantity": 1})
            for tab in tabs:
                assert (await frame(tab))["ops"][0]["item"]["product_id"] == "p-001"
            assert (await frame(tabs[0]))["type"] == "ack"

            started = await start(client)
            for tab in tabs:
                assert status_of(await frame(tab)) == "checking_out"
            assert (await client.post(f"{started['checkout_url']}/pay")).status_code == 303
            moved = []
            for tab in tabs:
                assert status_of(await frame(tab)) == "checked_out"
                moved.append(await frame(tab))
            assert moved[0] == moved[1] and moved[0]["type"] == "moved"
            successor = moved[0]["cart_id"]

            # The tabs open at that moment moved on; a later request with the old id gets
            # a fresh cart of its own, not the one the tabs moved to.
            late = await client.get("/api/cart")
            assert late.json()["id"] not in (doc["id"], unsign(successor))
            assert late.json()["items"] == []
        finally:
            for tab in tabs:
                await tab.close()

        tab = await Tab.open(server, successor)
        try:
            snapshot = await frame(tab)
            assert snapshot["cart"]["id"] == unsign(successor)
            assert snapshot["cart"]["status"] == "active" and snapshot["cart"]["items"] == []
            await tab.send({"type": "add", "id": "n1", "product_id": "p-001", "quantity": 2})
            assert (await frame(tab))["type"] == "patch"
            assert (await frame(tab))["type"] == "ack"
        finally:
            await tab.close()
        async with rest(server, successor) as moved_client:
            after = await moved_client.get("/api/cart")
        assert [i["quantity"] for i in after.json()["items"]] == [2]


async def test_a_reservation_survives_a_restart(tmp_path: Path) -> None:
    server = server_with(tmp_path, extra=[product("kept", 4, 800)]).start()
    try:
        client, signed, doc = await cart_with(server, [("kept", 3)])
        async with client:
            started = await start(client)
        server.stop()
        server.start()
        async with rest(server, signed) as client:
            cart = (await client.get("/api/cart")).json()
            assert cart["status"] == "checking_out" and cart["version"] == doc["version"] + 1
            assert await product_stock(client, "kept") == 1
            assert await start(client) == started  # the same session, nothing reserved twice
            assert stock(server, "kept") == 1
            assert (await client.post(f"{started['checkout_url']}/pay")).status_code == 303
            assert len(orders_of(server, doc["id"])) == 1
    finally:
        server.stop()


# --- price policy -------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "charged"), [("snapshot", 1000), ("current", 1500)])
async def test_the_price_policy_decides_what_is_charged(
    tmp_path: Path, policy: str, charged: int
) -> None:
    env = {"CHECKOUT_PRICE": policy, "CATALOG_REFRESH": "0.1s"}
    server = server_with(tmp_path, env, [product("pp", 10, 1000)]).start()
    try:
        client, _, doc = await cart_with(server, [("pp", 2)])
        async with client:
            assert doc["items"][0]["unit_price_cents"] == 1000
            import_products(server, [product("pp", 10, 1500)], "reprice")
            await eventually(
                lambda: client.get("/api/cart"),
                lambda r: r.json()["items"][0]["current_price_cents"] == 1500,
            )
            started = await start(client)
            page = (await client.get(started["checkout_url"])).text
            assert html.escape(f"${2 * charged / 100:.2f}") in page
            assert (await client.post(f"{started['checkout_url']}/pay")).status_code == 303
            (order,) = orders_of(server, doc["id"])
            assert order["amount_total_cents"] == 2 * charged
            assert [line[4] for line in order_lines(server, order["id"])] == [charged]
    finally:
        server.stop()
