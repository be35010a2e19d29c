"""The admin API end to end, on a real server over SQLite and over PostgreSQL: the bearer
token and its failure budget, each product route with good and bad input, atomic stock
movements under concurrency, archived products through add and checkout, and orders."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from server.cart import Product
from server.config import Settings
from server.store import ProductChange, open_store
from tests.checkout_support import eventually
from tests.support import ServerProcess, db_query, rest, sign

TOKEN = "admin-token-for-tests-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def shop(
    make_server: Callable[..., ServerProcess], database_url: str
) -> AsyncIterator[ServerProcess]:
    """A server with the admin API on, on SQLite or PostgreSQL."""
    server = make_server({"DATABASE_URL": database_url, "ADMIN_TOKEN": TOKEN}).start()
    yield server


def admin(server: ServerProcess, token: str | None = TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30, trust_env=False)


def new_product(**fields: Any) -> dict[str, Any]:
    return {"sku": "SKU-NEW", "name": "New thing", "price_cents": 1234, "stock": 7, **fields}


async def listed(server: ServerProcess) -> dict[str, dict[str, Any]]:
    async with rest(server) as client:
        products = (await client.get("/api/products")).json()["products"]
    return {p["id"]: p for p in products}


async def stock_in_store(server: ServerProcess, pid: str) -> int:
    [(found,)] = await db_query(
        server.env["DATABASE_URL"], "SELECT stock FROM products WHERE id = ?", pid
    )
    return int(found)


# --- the token ---------------------------------------------------------------------------


async def test_without_admin_token_every_admin_route_is_not_found(server: ServerProcess) -> None:
    async with admin(server) as client:
        answers = [
            await client.put("/api/admin/products/p-001", json=new_product()),
            await client.patch("/api/admin/products/p-001", json={"stock": 1}),
            await client.post("/api/admin/products", json={"products": []}),
            await client.get("/api/admin/orders"),
            await client.get("/api/admin/orders/x"),
        ]
    for response in answers:
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert (await listed(server))["p-001"]["stock"] == 100_000  # nothing changed


async def test_only_the_bearer_token_authorizes(make_server: Callable[..., ServerProcess]) -> None:
    server = make_server({"ADMIN_TOKEN": TOKEN}).start()
    cart_id = sign("3f0b6c52-7a0e-4c7e-9d55-0d4f4a8f8a11")
    refused = {
        "no header": {},
        "another token": {"Authorization": "Bearer admin-token-for-tests-0123456788"},
        "a prefix of it": {"Authorization": f"Bearer {TOKEN[:-1]}"},
        "basic": {"Authorization": f"Basic {TOKEN}"},
        "bare token": {"Authorization": TOKEN},
        "cart id header": {"X-Cart-Id": cart_id},
        "cookie": {"Cookie": f"cart_id={cart_id}; admin={TOKEN}"},
    }
    async with admin(server, None) as client:
        for what, headers in refused.items():
            response = await client.patch(
                "/api/admin/products/p-001", json={"stock": 1}, headers=headers
            )
            assert response.status_code == 401, what
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"].startswith("Bearer")
        ok = await client.patch(
            "/api/admin/products/p-001",
            json={"stock": 5},
            headers={"Authorization": f"bearer  {TOKEN}"},
        )
    assert ok.status_code == 200, ok.text
    assert (await listed(server))["p-001"]["stock"] == 5
    assert TOKEN not in server.log()


async def test_repeated_failures_from_one_address_are_refused_for_a_while(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ADMIN_TOKEN": TOKEN}).start()
    async with admin(server, "wrong-token-wrong-token") as wrong, admin(server) as right:
        codes = [(await wrong.get("/api/admin/orders")).status_code for _ in range(10)]
        assert codes == [401] * 10
        limited = await wrong.get("/api/admin/orders")
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 10
        # Refused before the token is looked at: even the right one, from this address.
        assert (await right.get("/api/admin/orders")).status_code == 429


def test_a_short_admin_token_stops_the_server_at_startup(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ADMIN_TOKEN": "short"}, catalog=False)
    result = server.cli("migrate")
    assert result.returncode == 2
    assert "ADMIN_TOKEN must be at least 16 characters" in result.stderr
    assert "short" not in result.stderr.replace("ADMIN_TOKEN must be", "")


# --- products ------------------------------------------------------------------------------


async def test_put_creates_and_replaces_a_product(shop: ServerProcess) -> None:
    async with admin(shop) as client:
        created = await client.put("/api/admin/products/p-new", json=new_product())
        assert created.status_code == 200, created.text
        assert created.json() == {
            "id": "p-new", "sku": "SKU-NEW", "name": "New thing", "price_cents": 1234,
            "stock": 7, "image_url": None, "active": True,
        }  # fmt: skip
        assert (await listed(shop))["p-new"]["price_cents"] == 1234
        async with rest(shop) as cart:
            added = await cart.post("/api/cart/items", json={"product_id": "p-new"})
            assert added.status_code == 200, added.text

        replaced = await client.put(
            "/api/admin/products/p-new",
            json=new_product(name="Renamed", price_cents=999, image_url="/img/n.svg"),
        )
        assert replaced.status_code == 200
        assert (await listed(shop))["p-new"] == {
            "id": "p-new", "sku": "SKU-NEW", "name": "Renamed", "price_cents": 999,
            "stock": 7, "image_url": "/img/n.svg",
        }  # fmt: skip

        bad = {
            "sku of another product": (new_product(sku="SKU-001"), 422, "invalid_request"),
            "negative price": (new_product(price_cents=-1), 422, "invalid_request"),
            "missing name": ({"sku": "S", "price_cents": 1, "stock": 1}, 422, "invalid_request"),
            "unknown field": (new_product(colour="red"), 422, "invalid_request"),
            "stock as text": (new_product(stock="7"), 422, "invalid_request"),
        }
        for what, (body, status, code) in bad.items():
            response = await client.put("/api/admin/products/p-new", json=body)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code), what
        not_json = await client.put("/api/admin/products/p-new", content=b"{nope")
        assert not_json.status_code == 400
        assert not_json.json()["error"]["code"] == "invalid_json"
        spaced = await client.put("/api/admin/products/a%20b", json=new_product(sku="S2"))
        assert spaced.status_code == 422
    assert (await listed(shop))["p-new"]["name"] == "Renamed"  # none of those changed it
    assert "a b" not in await listed(shop)


async def test_patch_changes_only_what_it_names(shop: ServerProcess) -> None:
    async with admin(shop) as client:
        response = await client.patch("/api/admin/products/p-002", json={"price_cents": 50})
        assert response.status_code == 200, response.text
        assert response.json() == {
            "id": "p-002", "sku": "SKU-002", "name": "Product 2", "price_cents": 50,
            "stock": 100_000, "image_url": "/static/img/2.svg", "active": True,
        }  # fmt: skip
        moved = await client.patch("/api/admin/products/p-002", json={"stock_delta": -99_990})
        assert moved.json()["stock"] == 10
        moved = await client.patch("/api/admin/products/p-002", json={"stock_delta": 5})
        assert moved.json()["stock"] == 15
        both = await client.patch(
            "/api/admin/products/p-002", json={"name": "Two", "stock": 3, "image_url": None}
        )
        assert both.json() == {
            "id": "p-002", "sku": "SKU-002", "name": "Two", "price_cents": 50,
            "stock": 3, "image_url": None, "active": True,
        }  # fmt: skip

        short = await client.patch("/api/admin/products/p-002", json={"stock_delta": -4})
        assert short.status_code == 409
        assert short.json()["error"]["code"] == "insufficient_stock"
        assert short.json()["error"]["available"] == 3
        unknown = await client.patch("/api/admin/products/p-nope", json={"stock_delta": 1})
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "unknown_product"
        for body in ({}, {"stock": 1, "stock_delta": 1}, {"sku": "X"}, {"stock": -1}):
            refused = await client.patch("/api/admin/products/p-002", json=body)
            assert refused.status_code == 422, body
    assert await stock_in_store(shop, "p-002") == 3
    assert (await listed(shop))["p-002"]["stock"] == 3


async def test_fifty_concurrent_stock_movements_leave_exactly_fifty_fewer(
    shop: ServerProcess,
) -> None:
    before = await stock_in_store(shop, "p-003")
    async with admin(shop) as client:
        answers = await asyncio.gather(
            *(
                client.patch("/api/admin/products/p-003", json={"stock_delta": -1})
                for _ in range(50)
            )
        )
    assert [a.status_code for a in answers] == [200] * 50
    # Each movement saw the one before it: every intermediate stock exactly once.
    assert sorted(a.json()["stock"] for a in answers) == list(range(before - 50, before))
    assert await stock_in_store(shop, "p-003") == before - 50


async def test_concurrent_movements_never_take_stock_below_zero(shop: ServerProcess) -> None:
    async with admin(shop) as client:
        await client.patch("/api/admin/products/p-004", json={"stock": 30})
        answers = await asyncio.gather(
            *(
                client.patch("/api/admin/products/p-004", json={"stock_delta": -1})
                for _ in range(50)
            )
        )
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 30 + [409] * 20
    assert await stock_in_store(shop, "p-004") == 0


async def test_bulk_upsert_is_all_or_nothing_and_names_the_bad_row(shop: ServerProcess) -> None:
    rows = [
        {"id": "b-1", "sku": "B-1", "name": "Bulk 1", "price_cents": 100, "stock": 1},
        {"id": "p-005", "sku": "SKU-005", "name": "Five, renamed", "price_cents": 5, "stock": 5},
    ]
    async with admin(shop) as client:
        done = await client.post("/api/admin/products", json={"products": rows})
        assert done.status_code == 200, done.text
        assert done.json() == {"inserted": 1, "updated": 1}
        bad_batches = {
            2: [*rows, {"id": "b-2", "sku": "B-2", "name": "x", "price_cents": -5, "stock": 1}],
            1: [rows[0], {**rows[0], "sku": "B-other"}],  # the same id twice
            3: [*rows, {"id": "b-3", "sku": "B-3", "name": "x", "price_cents": 1, "stock": 1},
                {"id": "b-4", "sku": "SKU-006", "name": "Six's SKU", "price_cents": 1, "stock": 1}],
        }  # fmt: skip
        for index, batch in bad_batches.items():
            changed = [{**row, "name": row["name"] + "!"} for row in batch]
            response = await client.post("/api/admin/products", json={"products": changed})
            assert response.status_code == 422, (index, response.text)
            error = response.json()["error"]
            assert (error["code"], error["index"]) == ("invalid_request", index), error
        empty = await client.post("/api/admin/products", json={"products": []})
        assert empty.status_code == 422
    products = await listed(shop)
    assert products["b-1"]["name"] == "Bulk 1" and products["p-005"]["name"] == "Five, renamed"
    assert "b-3" not in products and "b-2" not in products


# --- archived products ---------------------------------------------------------------------


async def test_an_archived_product_leaves_the_listing_and_cannot_be_added_or_bought(
    shop: ServerProcess,
) -> None:
    async with rest(shop) as shopper, admin(shop) as client:
        held = await shopper.post("/api/cart/items", json={"product_id": "p-010", "quantity": 2})
        signed = held.headers["x-cart-id"]
        await shopper.post(
            "/api/cart/items", json={"product_id": "p-011"}, headers={"X-Cart-Id": signed}
        )
        archived = await client.patch("/api/admin/products/p-010", json={"active": False})
        assert archived.status_code == 200 and archived.json()["active"] is False
        assert "p-010" not in await listed(shop)

        other = await shopper.post("/api/cart/items", json={"product_id": "p-010"})
        assert other.status_code == 409
        assert other.json()["error"]["code"] == "product_unavailable"
        more = await shopper.patch(
            "/api/cart/items/p-010", json={"quantity": 3}, headers={"X-Cart-Id": signed}
        )
        assert more.json()["error"]["code"] == "product_unavailable"

        cart = (await shopper.get("/api/cart", headers={"X-Cart-Id": signed})).json()
        availability = {item["product_id"]: item["available"] for item in cart["items"]}
        assert availability == {"p-010": False, "p-011": True}  # the line stays, flagged

        before = await stock_in_store(shop, "p-011")
        refused = await shopper.post("/api/cart/checkout", headers={"X-Cart-Id": signed})
        assert refused.status_code == 409
        error = refused.json()["error"]
        assert error["code"] == "product_unavailable"
        assert error["lines"] == [{"product_id": "p-010"}]
        assert await stock_in_store(shop, "p-011") == before  # nothing reserved
        cart = (await shopper.get("/api/cart", headers={"X-Cart-Id": signed})).json()
        assert cart["status"] == "active"

        back = await client.patch("/api/admin/products/p-010", json={"active": True})
        assert back.json()["active"] is True
        assert "p-010" in await listed(shop)
        started = await shopper.post("/api/cart/checkout", headers={"X-Cart-Id": signed})
        assert started.status_code == 200, started.text


# --- orders ----------------------------------------------------------------------------------


async def buy(server: ServerProcess, lines: list[tuple[str, int]]) -> str:
    """A cart with these lines, paid on the demo payment page; its cart id."""
    async with rest(server) as client:
        signed = None
        for pid, quantity in lines:
            headers = {"X-Cart-Id": signed} if signed else {}
            body = {"product_id": pid, "quantity": quantity}
            added = await client.post("/api/cart/items", json=body, headers=headers)
            assert added.status_code == 200, added.text
            signed, cart_id = added.headers["x-cart-id"], added.json()["id"]
        assert signed is not None
        started = await client.post("/api/cart/checkout", headers={"X-Cart-Id": signed})
        assert started.status_code == 200, started.text
        paid = await client.post(f"{started.json()['checkout_url']}/pay")
        assert paid.status_code == 303
    return cart_id


async def test_orders_newest_first_paged_filtered_and_one_by_id(shop: ServerProcess) -> None:
    carts = [
        await buy(shop, [("p-020", 2), ("p-021", 1)]),
        await buy(shop, [("p-022", 1)]),
        await buy(shop, [("p-023", 3)]),
    ]
    async with admin(shop) as client:
        everything = (await client.get("/api/admin/orders")).json()
        assert everything["next"] is None
        assert [o["cart_id"] for o in everything["orders"]] == carts[::-1]
        first = everything["orders"][-1]
        assert {k: first[k] for k in ("status", "amount_cents", "currency", "user_id")} == {
            "status": "paid", "amount_cents": 2 * 2099 + 2199, "currency": "usd", "user_id": None,
        }  # fmt: skip
        assert first["items"] == [
            {"product_id": "p-020", "sku": "SKU-020", "name": "Product 20", "quantity": 2,
             "unit_price_cents": 2099},
            {"product_id": "p-021", "sku": "SKU-021", "name": "Product 21", "quantity": 1,
             "unit_price_cents": 2199},
        ]  # fmt: skip
        assert first["created_at"].endswith("Z") and "payment_intent" in first

        seen: list[str] = []
        after = None
        for _ in range(4):
            params = {"limit": "2", **({"after": after} if after else {})}
            page = (await client.get("/api/admin/orders", params=params)).json()
            seen += [o["cart_id"] for o in page["orders"]]
            after = page["next"]
            if after is None:
                break
        assert seen == carts[::-1]

        by_id = await client.get(f"/api/admin/orders/{first['id']}")
        assert by_id.status_code == 200 and by_id.json() == first
        paid = (await client.get("/api/admin/orders", params={"status": "paid"})).json()
        assert len(paid["orders"]) == 3
        review = await client.get("/api/admin/orders", params={"status": "needs_review"})
        assert review.json() == {"orders": [], "next": None}

        missing = await client.get("/api/admin/orders/no-such-order")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "unknown_order"
        for params in (
            {"status": "shipped"},
            {"limit": "0"},
            {"limit": "501"},
            {"limit": "x"},
            {"after": "not a cursor!"},
        ):
            refused = await client.get("/api/admin/orders", params=params)
            assert refused.status_code == 422, params
            assert refused.json()["error"]["code"] == "invalid_request"


async def test_a_checkout_in_a_process_that_has_not_heard_of_the_archiving_is_refused(
    make_server: Callable[..., ServerProcess],
) -> None:
    # Two processes on one SQLite file with no bus between them, re-reading the catalog
    # only every minute: the second still lists the product when the first archives it.
    env = {"ADMIN_TOKEN": TOKEN, "CATALOG_REFRESH": "60s"}
    first = make_server(env).start()
    second = make_server(env, catalog=False).start()
    async with rest(second) as shopper:
        added = await shopper.post("/api/cart/items", json={"product_id": "p-040"})
        signed = added.headers["x-cart-id"]
        async with admin(first) as client:
            await client.patch("/api/admin/products/p-040", json={"active": False})
        assert "p-040" in await listed(second)  # not heard of yet
        refused = await shopper.post("/api/cart/checkout", headers={"X-Cart-Id": signed})
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["lines"] == [{"product_id": "p-040"}]
        # The refusal made it look again (long before its next periodic look).
        await eventually(lambda: listed(second), lambda found: "p-040" not in found, 10)
        cart = (await shopper.get("/api/cart", headers={"X-Cart-Id": signed})).json()
        assert cart["status"] == "active" and cart["items"][0]["available"] is False
    assert await stock_in_store(first, "p-040") == 100_000


async def test_a_database_made_before_archiving_gains_the_active_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # products as schema.sql made them before `active`
        db.execute(
            "CREATE TABLE products (id TEXT PRIMARY KEY, sku TEXT NOT NULL UNIQUE,"
            " name TEXT NOT NULL, price_cents INTEGER NOT NULL, stock INTEGER NOT NULL,"
            " image_url TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
        )
        db.execute("INSERT INTO products VALUES ('old', 'OLD', 'Old', 1, 2, NULL, 'x', 'x')")
    store = await open_store(Settings(database_url=f"sqlite:///{path}"))
    try:
        products, _ = await store.load_products()
        assert products == [Product("old", "OLD", "Old", 1, 2, None, True)]
        archived = await store.change_product("old", ProductChange(active=False))
        assert archived.active is False
    finally:
        await store.close()


def test_the_failure_budget_remembers_a_bounded_number_of_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from starlette.requests import Request

    from server import admin as admin_module
    from server import errors

    monkeypatch.setattr(admin_module, "TRACKED_ADDRESSES", 5)
    gate = admin_module.AdminGate(TOKEN)

    def request(address: str, token: str) -> Request:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        return Request({"type": "http", "headers": headers, "client": (address, 1)})

    for n in range(12):
        with pytest.raises(errors.Unauthorized):
            gate.check(request(f"10.0.0.{n}", "wrong-token-wrong-token"))
        assert len(gate.failures) <= 5
    gate.check(request("10.0.0.99", TOKEN))  # the right token passes, and is not counted
    assert "10.0.0.99" not in gate.failures
