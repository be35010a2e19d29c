"""Embedding on the shop's own domain, as a new user would: CORS for the listed origins
only, cookies for same-site and cross-site pages, the cart id kept out of URLs, a path
prefix behind a reverse proxy, production-safe defaults, and Idempotency-Key reuse."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx
import pytest
import websockets

from server.config import Settings
from tests.checkout_support import stock
from tests.lifecycle_support import query
from tests.support import ServerProcess, rest

SHOP = "http://shop.test:8080"


def test_demo_payments_and_catalog_are_on_only_for_a_local_first_run() -> None:
    local = Settings.from_env({})
    assert (local.demo_payments, local.demo_catalog) == (True, True)
    postgres = Settings.from_env({"DATABASE_URL": "postgresql://app@db/cart", "CART_SECRET": "s"})
    assert (postgres.demo_payments, postgres.demo_catalog) == (False, False)
    heroku = Settings.from_env({"DYNO": "web.1"})
    assert (heroku.demo_payments, heroku.demo_catalog) == (False, False)
    asked = Settings.from_env({"DYNO": "web.1", "DEMO_PAYMENTS": "1", "DEMO_CATALOG": "1"})
    assert (asked.demo_payments, asked.demo_catalog) == (True, True)


async def test_without_a_payment_provider_checkout_is_503_and_reserves_nothing(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"DEMO_PAYMENTS": "0"}).start()
    async with rest(server) as client:
        add = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 2})
        client.headers["X-Cart-Id"] = add.headers["x-cart-id"]
        before = stock(server, "p-001")
        answer = await client.post("/api/cart/checkout")
        assert answer.status_code == 503
        assert answer.json()["error"]["code"] == "payments_unavailable"
        assert stock(server, "p-001") == before
        assert (await client.get("/api/cart")).json()["status"] == "active"
        assert (await client.get("/checkout/demo/anything")).status_code == 404
    server.stop()
    assert "no payment provider" in server.log()


async def test_the_demo_says_so_loudly_at_start(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server().start()
    server.stop()
    assert "WARNING" in server.log() and "DEMO PAYMENTS ARE ON" in server.log()


# --- CORS and cookies -------------------------------------------------------------------


async def test_cors_answers_the_listed_origins_only(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ALLOWED_ORIGINS": SHOP}).start()
    async with rest(server) as client:
        preflight = await client.options(
            "/api/cart/items",
            headers={
                "Origin": SHOP,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-cart-id, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == SHOP
        assert preflight.headers["access-control-allow-credentials"] == "true"
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert {"x-cart-id", "idempotency-key", "content-type"} <= set(allowed.split(", "))

        added = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"Origin": SHOP}
        )
        assert added.status_code == 200
        assert added.headers["access-control-allow-origin"] == SHOP
        exposed = added.headers["access-control-expose-headers"].lower()
        assert {"x-cart-id", "etag", "retry-after"} <= set(exposed.split(", "))
        module = await client.get("/static/cart-client.js", headers={"Origin": SHOP})
        assert module.status_code == 200
        assert module.headers["access-control-allow-origin"] == SHOP

        other = "http://elsewhere.test"
        refused = await client.options(
            "/api/cart/items",
            headers={"Origin": other, "Access-Control-Request-Method": "POST"},
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        read = await client.get("/api/cart", headers={"Origin": other})
        assert "access-control-allow-origin" not in read.headers
        write = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"Origin": other}
        )
        assert write.status_code == 403


async def test_without_allowed_origins_no_cors_header_is_sent(server: ServerProcess) -> None:
    async with rest(server) as client:
        read = await client.get("/api/cart", headers={"Origin": SHOP})
        assert "access-control-allow-origin" not in read.headers


async def test_the_cookie_fits_the_page_that_asked(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ALLOWED_ORIGINS": SHOP}).start()
    cases = {
        # (Sec-Fetch-Site, https): the attributes the cookie must carry
        ("same-origin", False): ["SameSite=Lax"],
        ("same-site", True): ["SameSite=Lax", "Secure"],
        ("cross-site", True): ["SameSite=None", "Secure", "Partitioned"],
        ("cross-site", False): ["SameSite=Lax"],  # None needs Secure: the client keeps the id
    }
    async with rest(server) as client:
        for (site, https), expected in cases.items():
            headers = {"Origin": SHOP, "Sec-Fetch-Site": site}
            if https:
                headers["X-Forwarded-Proto"] = "https"
            answer = await client.get("/api/cart", headers=headers)
            attributes = [a.strip() for a in answer.headers["set-cookie"].split(";")]
            assert set(expected) <= set(attributes), (site, https, attributes)
            assert ("Secure" in attributes) == https
            assert "HttpOnly" in attributes


async def test_the_socket_takes_the_cart_id_as_a_subprotocol(server: ServerProcess) -> None:
    async with rest(server) as client:
        signed = (await client.post("/api/cart/items", json={"product_id": "p-002"})).headers[
            "x-cart-id"
        ]
    offered = ["cartsync", f"cart-id.{signed}"]
    async with websockets.connect(server.ws_url, subprotocols=offered, proxy=None) as ws:  # type: ignore[arg-type]
        assert ws.subprotocol == "cartsync"
        snapshot = json.loads(await ws.recv())
        assert [i["product_id"] for i in snapshot["cart"]["items"]] == ["p-002"]
    assert signed not in server.log()  # the URL that is logged never held it


# --- behind a reverse proxy, under a path ------------------------------------------------


async def test_the_server_lives_under_root_path(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"ROOT_PATH": "/cart"}).start()
    async with httpx.AsyncClient(base_url=f"{server.url}/cart", trust_env=False) as client:
        page = await client.get("/")
        assert page.status_code == 200 and '<base href="/cart/">' in page.text
        assert 'src="static/app.js"' in page.text
        module = await client.get("/static/cart-client.js")
        assert module.status_code == 200 and "export class CartClient" in module.text
        added = await client.post("/api/cart/items", json={"product_id": "p-001"})
        assert added.status_code == 200
        assert "Path=/cart" in added.headers["set-cookie"]
        client.headers["X-Cart-Id"] = added.headers["x-cart-id"]
        started = (await client.post("/api/cart/checkout")).json()
        assert started["checkout_url"].startswith("/cart/checkout/demo/")
        demo = await client.get(started["checkout_url"].removeprefix("/cart"))
        assert 'href="/cart/static/style.css"' in demo.text
        assert f'action="{started["checkout_url"]}/pay"' in demo.text
        cancelled = await client.post(started["checkout_url"].removeprefix("/cart") + "/cancel")
        assert cancelled.headers["location"] == "/cart/?checkout=cancelled"
    url = f"ws://127.0.0.1:{server.port}/cart/api/cart/ws"
    async with websockets.connect(url, proxy=None) as ws:
        assert json.loads(await ws.recv())["type"] == "snapshot"


@pytest.mark.parametrize("root", ["cart", "/cart/../x", "/a b"])
def test_a_root_path_must_be_a_plain_path(root: str) -> None:
    with pytest.raises(ValueError, match="ROOT_PATH"):
        Settings.from_env({"ROOT_PATH": root})


# --- Idempotency-Key reused for another request ------------------------------------------


async def test_a_key_reused_for_another_request_is_refused(server: ServerProcess) -> None:
    async with rest(server) as client:
        first = await client.post(
            "/api/cart/items",
            json={"product_id": "p-001", "quantity": 2},
            headers={"Idempotency-Key": "order-line-1"},
        )
        assert first.status_code == 200 and "idempotent-replayed" not in first.headers
        client.headers["X-Cart-Id"] = first.headers["x-cart-id"]
        cart_id = first.json()["id"]

        again = await client.post(
            "/api/cart/items",
            content=b'{"quantity": 2,  "product_id": "p-001"}',  # the same, spelled otherwise
            headers={"Idempotency-Key": "order-line-1", "content-type": "application/json"},
        )
        assert again.status_code == 200 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"

        for method, path, body in [
            ("POST", "/api/cart/items", {"product_id": "p-002", "quantity": 2}),
            ("POST", "/api/cart/items", {"product_id": "p-001", "quantity": 3}),
            ("PATCH", "/api/cart/items/p-001", {"quantity": 2}),
            ("DELETE", "/api/cart/items/p-001", None),
        ]:
            reused = await client.request(
                method, path, json=body, headers={"Idempotency-Key": "order-line-1"}
            )
            assert reused.status_code == 422, (method, path)
            assert reused.json()["error"]["code"] == "idempotency_key_reused"
        now = await client.get("/api/cart")
        assert now.json() == first.json()
    assert query(server.db, "SELECT version FROM cart_sessions WHERE id = ?", cart_id) == [(1,)]
