"""REST end to end against a real server: documents, cookies, every refusal, long-poll.

Every refusal is checked three ways: the status and error body, the cart left exactly as it
was (same version, same items), and the server still answering /healthz.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests import support
from tests.support import ServerProcess, rest, sign

CART_KEYS = {
    "id", "version", "status", "items", "item_count", "subtotal_cents", "currency",
    "total_formatted", "updated_at", "abandon_at",
}  # fmt: skip
ITEM_KEYS = {
    "product_id", "sku", "name", "quantity", "unit_price_cents", "line_total_cents",
    "image_url", "current_price_cents", "available",
}  # fmt: skip
PRODUCT_KEYS = {"id", "sku", "name", "price_cents", "stock", "image_url"}
COOKIE_FLAGS = "; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000"
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
CATALOG = {p["id"]: p for p in support.test_catalog()}


def price(product_id: str) -> int:
    cents: int = CATALOG[product_id]["price_cents"]
    return cents


@dataclass
class Session:
    """A fresh cart and a cookie-less client that names it with X-Cart-Id."""

    client: httpx.AsyncClient
    signed: str
    cart: dict[str, Any]


async def new_cart(server: ServerProcess) -> tuple[str, dict[str, Any]]:
    async with rest(server) as client:
        response = await client.get("/api/cart")
    assert response.status_code == 200, response.text
    return response.headers["x-cart-id"], response.json()


@pytest.fixture
async def s(server: ServerProcess) -> AsyncIterator[Session]:
    signed, cart = await new_cart(server)
    async with rest(server, signed) as client:
        yield Session(client, signed, cart)


async def current(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/api/cart")
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def add(client: httpx.AsyncClient, product_id: str, quantity: int = 1) -> dict[str, Any]:
    response = await client.post(
        "/api/cart/items", json={"product_id": product_id, "quantity": quantity}
    )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def refused(
    client: httpx.AsyncClient,
    response: httpx.Response,
    status: int,
    code: str,
    before: dict[str, Any],
) -> dict[str, Any]:
    """Assert a refusal: status, error shape and code, nothing changed, server alive."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"]
    after = await current(client)
    assert after["id"] == before["id"]
    assert after["version"] == before["version"]
    assert after["items"] == before["items"]
    assert after["status"] == before["status"]
    health = await client.get("/healthz")
    assert health.status_code == 200
    return error


def db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.db, timeout=10)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def forge_cart(server: ServerProcess, status: str, lines: dict[str, int]) -> str:
    """A cart row the server has never seen, written straight into its SQLite file."""
    cart_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    conn = db(server)
    try:
        with conn:
            conn.execute(
                "INSERT INTO cart_sessions (id, status, version, expires_at, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (cart_id, status, 4, iso(now + timedelta(days=30)), iso(now), iso(now)),
            )
            for position, (product_id, quantity) in enumerate(lines.items(), start=1):
                conn.execute(
                    "INSERT INTO cart_items (cart_id, product_id, quantity, price_cents,"
                    " position, added_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (cart_id, product_id, quantity, price(product_id), position, iso(now)),
                )
    finally:
        conn.close()
    return cart_id


# --- catalog and cart documents ---------------------------------------------------------


async def test_products_have_the_documented_shape(server: ServerProcess) -> None:
    async with rest(server) as client:
        response = await client.get("/api/products")
    assert response.status_code == 200
    products = response.json()["products"]
    assert {p["id"] for p in products} == set(CATALOG)
    for product in products:
        assert set(product) == PRODUCT_KEYS, product
        expected = CATALOG[product["id"]]
        assert product["sku"] == expected["sku"]
        assert product["name"] == expected["name"]
        assert product["stock"] == expected["stock"]
        assert product["image_url"] == expected.get("image_url")
        assert product["price_cents"] == expected["price_cents"]


async def test_new_cart_sets_cookie_header_etag_and_full_document(server: ServerProcess) -> None:
    async with rest(server) as client:
        response = await client.get("/api/cart")
    assert response.status_code == 200
    doc = response.json()
    assert set(doc) == CART_KEYS
    assert str(uuid.UUID(doc["id"], version=4)) == doc["id"]
    assert doc["version"] == 0 and doc["status"] == "active"
    assert doc["items"] == [] and doc["item_count"] == 0 and doc["subtotal_cents"] == 0
    assert doc["currency"] == "usd" and doc["total_formatted"] == "$0.00"
    assert ISO_Z.match(doc["updated_at"])
    assert doc["abandon_at"] is None  # nothing in it: nothing to abandon

    signed = response.headers["x-cart-id"]
    assert signed == sign(doc["id"])
    assert response.headers["etag"] == '"0"'
    cookie = response.headers["set-cookie"]
    assert cookie == f"cart_id={signed}{COOKIE_FLAGS}"
    assert "secure" not in cookie.lower()


async def test_cookie_is_secure_when_forwarded_over_https(server: ServerProcess) -> None:
    async with rest(server) as client:
        response = await client.get("/api/cart", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"cart_id={response.headers['x-cart-id']}{COOKIE_FLAGS}")
    assert [part.strip() for part in cookie.split(";")][-1] == "Secure"


async def test_cookie_alone_keeps_the_same_cart(server: ServerProcess) -> None:
    async with rest(server) as first:
        issued = await first.get("/api/cart")
    value = issued.headers["set-cookie"].split(";")[0].removeprefix("cart_id=")
    headers = {"Cookie": f"cart_id={value}"}
    async with rest(server) as client:  # no X-Cart-Id: only the cookie names the cart
        again = await client.get("/api/cart", headers=headers)
        assert again.json()["id"] == issued.json()["id"]
        assert again.headers["x-cart-id"] == value
        added = await client.post("/api/cart/items", json={"product_id": "p-002"}, headers=headers)
        assert added.status_code == 200 and added.json()["id"] == issued.json()["id"]
        later = await client.get("/api/cart", headers=headers)
    assert later.json()["version"] == 1
    assert [i["product_id"] for i in later.json()["items"]] == ["p-002"]


def _tampered(victim: str) -> dict[str, str]:
    signed = sign(victim)
    value, signature = signed.rsplit(".", 1)
    other = str(uuid.uuid4())
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    return {
        "other id, victim's signature": f"{other}.{signature}",
        "flipped signature character": f"{value}.{signature[:middle]}{flipped}"
        f"{signature[middle + 1 :]}",
        "signed with another secret": sign(victim, "some-other-secret"),
        "bare guessed uuid": victim,
        "garbage": "not a cart id at all",
    }


@pytest.mark.parametrize("carrier", ["cookie", "header"])
async def test_forged_cart_ids_get_a_fresh_cart(server: ServerProcess, carrier: str) -> None:
    signed, _ = await new_cart(server)
    async with rest(server, signed) as victim:
        await add(victim, "p-003", 2)
        victim_doc = await current(victim)
    async with rest(server) as client:
        for name, forged in _tampered(victim_doc["id"]).items():
            headers = {"Cookie": f"cart_id={forged}"} if carrier == "cookie" else {}
            if carrier == "header":
                headers = {"X-Cart-Id": forged}
            response = await client.get("/api/cart", headers=headers)
            assert response.status_code == 200, (name, response.text)
            doc = response.json()
            assert doc["id"] != victim_doc["id"], name
            assert doc["items"] == [] and doc["version"] == 0, name
            assert response.headers["x-cart-id"] == sign(doc["id"]), name
            assert response.headers["set-cookie"].startswith(f"cart_id={sign(doc['id'])};")
    async with rest(server, signed) as victim:  # the victim's cart is untouched
        assert await current(victim) == victim_doc


async def test_if_none_match_current_etag_is_304(s: Session) -> None:
    doc = await add(s.client, "p-004")
    same = await s.client.get("/api/cart", headers={"If-None-Match": '"1"'})
    assert same.status_code == 304
    assert same.content == b""
    assert same.headers["etag"] == '"1"'
    stale = await s.client.get("/api/cart", headers={"If-None-Match": '"0"'})
    assert stale.status_code == 200 and stale.json() == doc


# --- adding, setting, removing ----------------------------------------------------------


async def test_add_creates_a_line_then_adds_to_it(s: Session) -> None:
    first = await s.client.post("/api/cart/items", json={"product_id": "p-005", "quantity": 2})
    assert first.status_code == 200
    assert first.headers["etag"] == '"1"' and first.json()["version"] == 1
    assert first.headers["x-cart-id"] == s.signed
    second = await s.client.post("/api/cart/items", json={"product_id": "p-006", "quantity": 1})
    third = await s.client.post("/api/cart/items", json={"product_id": "p-005", "quantity": 3})
    assert second.status_code == third.status_code == 200
    doc = third.json()
    assert third.headers["etag"] == f'"{doc["version"]}"' == '"3"'
    assert set(doc) == CART_KEYS
    assert [i["product_id"] for i in doc["items"]] == ["p-005", "p-006"]  # first-added order
    line = doc["items"][0]
    assert set(line) == ITEM_KEYS
    assert line == {
        "product_id": "p-005", "sku": "SKU-005", "name": "Product 5", "quantity": 5,
        "unit_price_cents": price("p-005"), "line_total_cents": 5 * price("p-005"),
        "image_url": "/static/img/5.svg", "current_price_cents": price("p-005"), "available": True,
    }  # fmt: skip
    subtotal = 5 * price("p-005") + price("p-006")
    assert doc["item_count"] == 6 and doc["subtotal_cents"] == subtotal
    assert doc["total_formatted"] == f"${subtotal // 100}.{subtotal % 100:02d}"
    assert ISO_Z.match(doc["abandon_at"])  # an idle non-empty cart will be abandoned
    assert await current(s.client) == doc


async def test_quantity_defaults_to_one(s: Session) -> None:
    response = await s.client.post("/api/cart/items", json={"product_id": "p-007"})
    assert response.status_code == 200
    assert response.json()["items"][0]["quantity"] == 1
    again = await s.client.post("/api/cart/items", json={"product_id": "p-007"})
    assert again.json()["items"][0]["quantity"] == 2


async def test_price_snapshot_survives_a_catalog_price_change(
    make_server: Callable[..., ServerProcess],
) -> None:
    # Its own server, re-reading the catalog often, so the price change shows up quickly.
    server = make_server({"CATALOG_REFRESH": "0.1s"}).start()
    signed, _ = await new_cart(server)
    old = price("p-120")
    async with rest(server, signed) as client:
        doc = await add(client, "p-120", 2)
        assert doc["items"][0]["unit_price_cents"] == old
        conn = db(server)
        try:
            with conn:
                conn.execute(
                    "UPDATE products SET price_cents = ?, updated_at = ? WHERE id = 'p-120'",
                    (old + 1000, iso(datetime.now(UTC) + timedelta(seconds=1))),
                )
        finally:
            conn.close()
        # The server re-reads the catalog on a timer; there is no event to await, so poll.
        deadline = time.monotonic() + 10
        while True:
            products = (await client.get("/api/products")).json()["products"]
            if next(p for p in products if p["id"] == "p-120")["price_cents"] == old + 1000:
                break
            assert time.monotonic() < deadline, "the catalog never picked up the new price"
            await asyncio.sleep(0.05)
        item = (await current(client))["items"][0]
        assert item["unit_price_cents"] == old  # the snapshot
        assert item["current_price_cents"] == old + 1000  # today's price, to flag the change
        assert item["line_total_cents"] == 2 * old
        more = (await add(client, "p-120", 1))["items"][0]
        assert more["unit_price_cents"] == old and more["quantity"] == 3
        fresh, _ = await new_cart(server)
        async with rest(server, fresh) as other:  # a new line takes today's price
            assert (await add(other, "p-120"))["items"][0]["unit_price_cents"] == old + 1000


async def test_patch_sets_the_quantity(s: Session) -> None:
    await add(s.client, "p-008", 2)
    response = await s.client.patch("/api/cart/items/p-008", json={"quantity": 7})
    assert response.status_code == 200
    doc = response.json()
    assert doc["version"] == 2 and response.headers["etag"] == '"2"'
    assert doc["items"][0]["quantity"] == 7 and doc["item_count"] == 7
    lower = await s.client.patch("/api/cart/items/p-008", json={"quantity": 1})
    assert lower.json()["items"][0]["quantity"] == 1


async def test_patch_quantity_zero_removes_the_line(s: Session) -> None:
    await add(s.client, "p-009", 2)
    await add(s.client, "p-010", 1)
    response = await s.client.patch("/api/cart/items/p-009", json={"quantity": 0})
    assert response.status_code == 200
    doc = response.json()
    assert doc["version"] == 3
    assert [i["product_id"] for i in doc["items"]] == ["p-010"]
    assert doc["item_count"] == 1 and doc["subtotal_cents"] == price("p-010")


async def test_delete_item_removes_the_line(s: Session) -> None:
    await add(s.client, "p-011", 2)
    await add(s.client, "p-012", 1)
    response = await s.client.delete("/api/cart/items/p-011")
    assert response.status_code == 200
    doc = response.json()
    assert doc["version"] == 3 and response.headers["etag"] == '"3"'
    assert [i["product_id"] for i in doc["items"]] == ["p-012"]
    assert await current(s.client) == doc


async def test_delete_all_items_empties_the_cart_and_bumps_the_version(s: Session) -> None:
    await add(s.client, "p-013", 2)
    await add(s.client, "p-014", 3)
    response = await s.client.delete("/api/cart/items")
    assert response.status_code == 200
    doc = response.json()
    assert doc["version"] == 3 and response.headers["etag"] == '"3"'
    assert doc["items"] == [] and doc["item_count"] == 0 and doc["subtotal_cents"] == 0
    assert doc["total_formatted"] == "$0.00"
    assert await current(s.client) == doc


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b'{"product_id": "p-001"',
        b"\xff\xfe",
        b'{"pad": ' + b"[" * 5000 + b"]" * 5000 + b', "product_id": "p-001"}',
    ],
    ids=["text", "empty", "truncated", "not utf-8", "deeply nested"],
)
async def test_add_with_a_body_that_is_not_json_is_400(s: Session, body: bytes) -> None:
    before = await add(s.client, "p-015")
    response = await s.client.post(
        "/api/cart/items", content=body, headers={"Content-Type": "application/json"}
    )
    await refused(s.client, response, 400, "invalid_json", before)


INVALID_ADDS: dict[str, Any] = {
    "negative": {"product_id": "p-001", "quantity": -1},
    "zero": {"product_id": "p-001", "quantity": 0},
    "1000": {"product_id": "p-001", "quantity": 1000},
    "float": {"product_id": "p-001", "quantity": 1.5},
    "whole float": {"product_id": "p-001", "quantity": 2.0},
    "string": {"product_id": "p-001", "quantity": "2"},
    "bool": {"product_id": "p-001", "quantity": True},
    "null quantity": {"product_id": "p-001", "quantity": None},
    "huge": {"product_id": "p-001", "quantity": 10**30},
    "missing product_id": {"quantity": 1},
    "empty product_id": {"product_id": "", "quantity": 1},
    "numeric product_id": {"product_id": 1, "quantity": 1},
    "array body": [{"product_id": "p-001", "quantity": 1}],
    "string body": "p-001",
}


@pytest.mark.parametrize("body", list(INVALID_ADDS.values()), ids=list(INVALID_ADDS))
async def test_add_with_a_wrong_shape_is_422(s: Session, body: Any) -> None:
    before = await add(s.client, "p-001")
    response = await s.client.post("/api/cart/items", json=body)
    await refused(s.client, response, 422, "invalid_request", before)


INVALID_SETS: dict[str, Any] = {
    "negative": {"quantity": -1},
    "1000": {"quantity": 1000},
    "float": {"quantity": 1.5},
    "string": {"quantity": "3"},
    "huge": {"quantity": 10**30},
    "missing quantity": {},
    "array body": [3],
}


@pytest.mark.parametrize("body", list(INVALID_SETS.values()), ids=list(INVALID_SETS))
async def test_patch_with_a_wrong_shape_is_422(s: Session, body: Any) -> None:
    before = await add(s.client, "p-016", 2)
    response = await s.client.patch("/api/cart/items/p-016", json=body)
    await refused(s.client, response, 422, "invalid_request", before)


async def test_patch_with_a_body_that_is_not_json_is_400(s: Session) -> None:
    before = await add(s.client, "p-016", 2)
    response = await s.client.patch(
        "/api/cart/items/p-016", content=b"{quantity: 3}", headers={"Content-Type": "text/plain"}
    )
    await refused(s.client, response, 400, "invalid_json", before)


async def test_unknown_product_is_404(s: Session) -> None:
    before = await add(s.client, "p-017")
    response = await s.client.post("/api/cart/items", json={"product_id": "p-999"})
    error = await refused(s.client, response, 404, "unknown_product", before)
    assert error["product_id"] == "p-999"


@pytest.mark.parametrize(
    ("product_id", "held", "quantity", "available"),
    [("p-low", 0, 4, 3), ("p-low", 2, 2, 1), ("p-none", 0, 1, 0)],
)
async def test_insufficient_stock_is_409_with_available(
    s: Session, product_id: str, held: int, quantity: int, available: int
) -> None:
    before = await add(s.client, "p-018")
    if held:
        before = await add(s.client, product_id, held)
    response = await s.client.post(
        "/api/cart/items", json={"product_id": product_id, "quantity": quantity}
    )
    error = await refused(s.client, response, 409, "insufficient_stock", before)
    assert error["product_id"] == product_id
    assert error["available"] == available


async def test_patch_above_stock_is_409(s: Session) -> None:
    before = await add(s.client, "p-low", 1)
    response = await s.client.patch("/api/cart/items/p-low", json={"quantity": 4})
    error = await refused(s.client, response, 409, "insufficient_stock", before)
    assert error["product_id"] == "p-low" and error["available"] == 3
    allowed = await s.client.patch("/api/cart/items/p-low", json={"quantity": 3})
    assert allowed.status_code == 200 and allowed.json()["items"][0]["quantity"] == 3


async def test_the_hundred_and_first_line_is_409_too_many_lines(s: Session) -> None:
    products = [f"p-{n:03d}" for n in range(1, 101)]
    answers = await asyncio.gather(
        *(s.client.post("/api/cart/items", json={"product_id": p}) for p in products)
    )
    assert [a.status_code for a in answers] == [200] * 100
    before = await current(s.client)
    assert before["version"] == 100 and len(before["items"]) == 100
    response = await s.client.post("/api/cart/items", json={"product_id": "p-101"})
    error = await refused(s.client, response, 409, "too_many_lines", before)
    assert error["max_lines"] == 100
    existing = await s.client.post("/api/cart/items", json={"product_id": "p-050"})
    assert existing.status_code == 200  # an existing line still grows
    assert existing.json()["version"] == 101


async def test_a_line_over_999_is_409_quantity_limit(s: Session) -> None:
    before = await add(s.client, "p-019", 999)
    response = await s.client.post("/api/cart/items", json={"product_id": "p-019"})
    error = await refused(s.client, response, 409, "quantity_limit", before)
    assert error["max_quantity"] == 999
    assert error["product_id"] == "p-019"

    await s.client.patch("/api/cart/items/p-019", json={"quantity": 500})
    before = await current(s.client)
    response = await s.client.post("/api/cart/items", json={"product_id": "p-019", "quantity": 500})
    error = await refused(s.client, response, 409, "quantity_limit", before)
    assert error["max_quantity"] == 999


async def test_patch_a_product_not_in_the_cart_is_404(s: Session) -> None:
    before = await add(s.client, "p-020")
    for quantity in (3, 0):
        response = await s.client.patch("/api/cart/items/p-021", json={"quantity": quantity})
        error = await refused(s.client, response, 404, "not_in_cart", before)
        assert error["product_id"] == "p-021"


async def test_delete_a_product_not_in_the_cart_is_404(s: Session) -> None:
    before = await add(s.client, "p-022")
    response = await s.client.delete("/api/cart/items/p-023")
    error = await refused(s.client, response, 404, "not_in_cart", before)
    assert error["product_id"] == "p-023"


async def test_a_cart_checking_out_is_locked(server: ServerProcess) -> None:
    cart_id = forge_cart(server, "checking_out", {"p-024": 2})
    async with rest(server, sign(cart_id)) as client:
        before = await current(client)
        assert before["id"] == cart_id and before["status"] == "checking_out"
        assert before["version"] == 4
        assert [(i["product_id"], i["quantity"]) for i in before["items"]] == [("p-024", 2)]
        attempts = [
            client.post("/api/cart/items", json={"product_id": "p-025"}),
            client.post("/api/cart/items", json={"product_id": "p-024"}),
            client.patch("/api/cart/items/p-024", json={"quantity": 5}),
            client.delete("/api/cart/items/p-024"),
            client.delete("/api/cart/items"),
        ]
        for attempt in attempts:
            error = await refused(client, await attempt, 409, "cart_locked", before)
            assert error["status"] == "checking_out"


async def test_a_checked_out_cart_is_replaced_by_a_fresh_one(server: ServerProcess) -> None:
    cart_id = forge_cart(server, "checked_out", {"p-026": 1})
    async with rest(server, sign(cart_id)) as client:
        response = await client.get("/api/cart")
        assert response.status_code == 200
        doc = response.json()
        assert doc["id"] != cart_id
        assert doc["version"] == 0 and doc["items"] == [] and doc["status"] == "active"
        assert response.headers["x-cart-id"] == sign(doc["id"]) != sign(cart_id)
        assert response.headers["set-cookie"].startswith(f"cart_id={sign(doc['id'])};")


# --- Idempotency-Key and If-Match ---------------------------------------------------------


async def test_the_same_idempotency_key_applies_once(s: Session) -> None:
    headers = {"Idempotency-Key": "order-line-1"}
    body = {"product_id": "p-027", "quantity": 2}
    first = await s.client.post("/api/cart/items", json=body, headers=headers)
    second = await s.client.post("/api/cart/items", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"] == '"1"'
    doc = await current(s.client)
    assert doc["version"] == 1 and doc["items"][0]["quantity"] == 2


async def test_different_idempotency_keys_apply_twice(s: Session) -> None:
    body = {"product_id": "p-028", "quantity": 2}
    first = await s.client.post("/api/cart/items", json=body, headers={"Idempotency-Key": "a"})
    second = await s.client.post("/api/cart/items", json=body, headers={"Idempotency-Key": "b"})
    assert first.json()["version"] == 1 and second.json()["version"] == 2
    assert (await current(s.client))["items"][0]["quantity"] == 4


async def test_an_idempotency_key_belongs_to_one_cart(server: ServerProcess, s: Session) -> None:
    headers = {"Idempotency-Key": "shared-key-123"}
    body = {"product_id": "p-029"}
    first = await s.client.post("/api/cart/items", json=body, headers=headers)
    assert first.status_code == 200
    signed, _ = await new_cart(server)
    async with rest(server, signed) as other:
        response = await other.post("/api/cart/items", json=body, headers=headers)
        assert response.status_code == 200
        assert response.json()["id"] != first.json()["id"]
        assert response.json()["version"] == 1
        assert (await current(other))["items"][0]["product_id"] == "p-029"


@pytest.mark.parametrize("key", ["has space", "x" * 256, ""])
async def test_a_malformed_idempotency_key_is_422(s: Session, key: str) -> None:
    before = await add(s.client, "p-030")
    response = await s.client.post(
        "/api/cart/items", json={"product_id": "p-030"}, headers={"Idempotency-Key": key}
    )
    await refused(s.client, response, 422, "invalid_request", before)


async def test_if_match_with_the_current_version_applies(s: Session) -> None:
    await add(s.client, "p-031")
    response = await s.client.post(
        "/api/cart/items", json={"product_id": "p-032"}, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 200 and response.json()["version"] == 2
    patched = await s.client.patch(
        "/api/cart/items/p-032", json={"quantity": 4}, headers={"If-Match": '"2"'}
    )
    assert patched.status_code == 200 and patched.headers["etag"] == '"3"'


@pytest.mark.parametrize("if_match", ['"1"', '"99"', "junk"])
async def test_if_match_with_a_stale_version_is_412_with_the_cart(
    s: Session, if_match: str
) -> None:
    await add(s.client, "p-033")
    before = await add(s.client, "p-034")
    response = await s.client.post(
        "/api/cart/items", json={"product_id": "p-035"}, headers={"If-Match": if_match}
    )
    error = await refused(s.client, response, 412, "version_conflict", before)
    assert error["version"] == 2
    assert error["cart"] == before


async def test_a_body_over_16_kib_is_413(s: Session) -> None:
    before = await add(s.client, "p-036")
    big = {"product_id": "p-036", "quantity": 1, "note": "x" * (17 * 1024)}
    response = await s.client.post("/api/cart/items", json=big)
    error = await refused(s.client, response, 413, "payload_too_large", before)
    assert error["limit"] == 16 * 1024
    fits = {"product_id": "p-036", "quantity": 1, "note": "x" * (15 * 1024)}
    assert (await s.client.post("/api/cart/items", json=fits)).status_code == 200


async def test_a_chunked_body_over_16_kib_is_413(s: Session) -> None:
    before = await add(s.client, "p-037")

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"product_id": "p-037", "quantity": 1, "note": "'
        for _ in range(18):
            yield b"x" * 1024
        yield b'"}'

    response = await s.client.post(
        "/api/cart/items", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    await refused(s.client, response, 413, "payload_too_large", before)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:1"])
async def test_a_mutation_from_a_foreign_origin_is_403(s: Session, origin: str) -> None:
    before = await add(s.client, "p-038")
    headers = {"Origin": origin}
    attempts = [
        s.client.post("/api/cart/items", json={"product_id": "p-039"}, headers=headers),
        s.client.patch("/api/cart/items/p-038", json={"quantity": 5}, headers=headers),
        s.client.delete("/api/cart/items/p-038", headers=headers),
        s.client.delete("/api/cart/items", headers=headers),
    ]
    for attempt in attempts:
        await refused(s.client, await attempt, 403, "forbidden_origin", before)


async def test_a_mutation_from_the_servers_own_origin_is_accepted(
    server: ServerProcess, s: Session
) -> None:
    response = await s.client.post(
        "/api/cart/items", json={"product_id": "p-040"}, headers={"Origin": server.url}
    )
    assert response.status_code == 200 and response.json()["version"] == 1


# --- long-poll ----------------------------------------------------------------------------


async def test_changes_return_at_once_when_the_cart_is_past_since(s: Session) -> None:
    await add(s.client, "p-041", 2)
    await add(s.client, "p-042")
    started = time.monotonic()
    response = await s.client.get("/api/cart/changes", params={"since": 0, "wait": 20})
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"version", "patches"} and body["version"] == 2
    patches = body["patches"]
    assert [p["version"] for p in patches] == [1, 2]
    assert all(p["type"] == "patch" and p["origin"] is None for p in patches)
    assert patches[0]["ops"][0]["op"] == "upsert"
    assert patches[0]["ops"][0]["item"]["product_id"] == "p-041"
    assert patches[1]["item_count"] == 3
    later = await s.client.get("/api/cart/changes", params={"since": 1, "wait": 20})
    assert [p["version"] for p in later.json()["patches"]] == [2]


async def test_changes_wait_for_a_change_by_another_client(
    server: ServerProcess, s: Session
) -> None:
    await add(s.client, "p-043")
    poll = asyncio.create_task(s.client.get("/api/cart/changes", params={"since": 1, "wait": 20}))
    try:
        done, _ = await asyncio.wait({poll}, timeout=0.5)
        assert not done, "the long-poll returned before anything changed"
        async with rest(server, s.signed) as other:
            await add(other, "p-044", 3)
        response = await asyncio.wait_for(poll, 10)
    finally:
        poll.cancel()
    assert response.status_code == 200
    body = response.json()
    assert body["version"] == 2
    [patch] = body["patches"]
    assert patch["version"] == 2 and patch["origin"] is None
    assert patch["ops"][0]["item"]["product_id"] == "p-044"
    assert patch["ops"][0]["item"]["quantity"] == 3


async def test_changes_with_nothing_happening_return_empty_after_wait(s: Session) -> None:
    await add(s.client, "p-045")
    started = time.monotonic()
    response = await s.client.get("/api/cart/changes", params={"since": 1, "wait": 0.2})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json() == {"version": 1, "patches": []}
    assert 0.15 <= elapsed < 5


@pytest.mark.parametrize("since", ["-1", "abc", "1.5", ""])
async def test_changes_with_a_bad_since_are_422(s: Session, since: str) -> None:
    before = await add(s.client, "p-046")
    response = await s.client.get("/api/cart/changes", params={"since": since, "wait": 0})
    await refused(s.client, response, 422, "invalid_request", before)


async def test_changes_since_a_version_too_old_return_a_snapshot(s: Session) -> None:
    products = [f"p-{n:03d}" for n in range(1, 9)]
    for n in range(101):  # the server keeps the last 100 patches
        response = await s.client.post("/api/cart/items", json={"product_id": products[n % 8]})
        assert response.status_code == 200
    doc = await current(s.client)
    assert doc["version"] == 101
    old = await s.client.get("/api/cart/changes", params={"since": 0, "wait": 0})
    assert old.status_code == 200
    assert old.json() == {"snapshot": doc}
    kept = await s.client.get("/api/cart/changes", params={"since": 1, "wait": 0})
    assert [p["version"] for p in kept.json()["patches"]] == list(range(2, 102))
    future = await s.client.get("/api/cart/changes", params={"since": 500, "wait": 20})
    assert future.json() == {"snapshot": doc}


# --- operations and routing -----------------------------------------------------------------


async def test_health_readiness_and_metrics(server: ServerProcess) -> None:
    async with rest(server) as client:
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
        await client.post("/api/cart/items", json={"product_id": "p-047"})
        metrics = await client.get("/metrics")
    assert health.status_code == 200
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert "# TYPE cart_mutations_total counter" in text
    samples = [line for line in text.splitlines() if line.startswith("cart_mutations_total{")]
    assert any('result="ok"' in line and 'source="rest"' in line for line in samples)
    for line in samples:
        float(line.rsplit(" ", 1)[1])  # every sample ends in a number


@pytest.mark.parametrize("path", ["/api/nope", "/api/cart/items/p-001/extra", "/nothing"])
async def test_an_unknown_route_is_404_in_the_error_shape(server: ServerProcess, path: str) -> None:
    async with rest(server) as client:
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/json")
        error = response.json()["error"]
        assert error["code"] == "not_found" and error["message"]
        assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
async def test_an_item_route_takes_one_path_segment(s: Session, method: str) -> None:
    # The item routes are dispatched before Starlette's router (server/direct.py): they
    # must match exactly what the router's {product_id} would.
    before = await add(s.client, "p-047")
    response = await s.client.request(method, "/api/cart/items/p-047/x", json={"quantity": 1})
    await refused(s.client, response, 404, "not_found", before)


@pytest.mark.parametrize(
    ("method", "path"),
    [("PUT", "/api/cart/items"), ("GET", "/api/cart/items"), ("POST", "/api/cart"),
     ("POST", "/api/cart/items/p-001"), ("DELETE", "/api/products")],
)  # fmt: skip
async def test_a_wrong_method_is_405_in_the_error_shape(s: Session, method: str, path: str) -> None:
    before = await add(s.client, "p-048")
    response = await s.client.request(method, path, json={"product_id": "p-048"})
    await refused(s.client, response, 405, "method_not_allowed", before)


async def test_the_page_and_its_assets_are_served_with_a_strict_policy(
    server: ServerProcess,
) -> None:
    async with rest(server) as client:
        page = await client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert '<script type="module" src="static/app.js"></script>' in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        for asset in ("/static/app.js", "/static/style.css", "/static/img/black-tee.svg"):
            assert (await client.get(asset)).status_code == 200, asset
        # Browsers run a module script only when it is served as JavaScript.
        for module in ("/static/app.js", "/static/cart-client.js"):
            answer = await client.get(module)
            assert answer.status_code == 200, module
            assert "javascript" in answer.headers["content-type"], module
