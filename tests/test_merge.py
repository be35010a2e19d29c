"""Login merge end to end: the anonymous cart poured into the user's (sums, caps, the earlier
price), its tabs moved, the cookie re-issued; bad tokens change nothing; merges that cross
finish without deadlock and agree."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from server.auth import make_user_token
from tests import support
from tests.lifecycle_support import cookie, device, query, unsign
from tests.support import ServerProcess, Tab, rest, sign

AUTH = "cart-auth-secret-for-tests"
DEADLOCK = 20.0  # seconds: concurrent logins that take longer are stuck


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"CART_AUTH_SECRET": AUTH, "CATALOG_REFRESH": "0.2s"}  # DEMO_LOGIN left off
    proc = ServerProcess(tmp_path_factory.mktemp("merge"), env).start()
    yield proc
    proc.stop()


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


async def login(client: httpx.AsyncClient, user: str, **token_args: Any) -> httpx.Response:
    token = make_user_token(user, token_args.pop("secret", AUTH), **token_args)
    return await client.post("/api/cart/login", json={"token": token})


async def add(client: httpx.AsyncClient, product_id: str, quantity: int = 1) -> dict[str, Any]:
    response = await client.post(
        "/api/cart/items", json={"product_id": product_id, "quantity": quantity}
    )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def lines(doc: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(i["product_id"], i["quantity"], i["unit_price_cents"]) for i in doc["items"]]


def status(server: ServerProcess, cart_id: str) -> tuple[str, str | None]:
    [row] = query(server.db, "SELECT status, merged_into FROM cart_sessions WHERE id = ?", cart_id)
    return row[0], row[1]


async def test_login_sums_lines_capped_by_stock_and_the_line_limit(server: ServerProcess) -> None:
    user = new_user()
    async with device(server) as phone, device(server) as laptop:
        first = await login(phone, user)
        assert first.status_code == 200
        user_cart = first.json()
        assert (user_cart["items"], user_cart["status"]) == ([], "active")
        for product_id, quantity in [("p-001", 2), ("p-low", 2), ("p-002", 600)]:
            await add(phone, product_id, quantity)
        for product_id, quantity in [("p-001", 3), ("p-low", 2), ("p-002", 600), ("p-003", 1)]:
            anonymous = await add(laptop, product_id, quantity)
        before = (await phone.get("/api/cart")).json()
        watcher = await Tab.open(server, cookie=cookie(phone))
        await watcher.next("snapshot")

        response = await login(laptop, user)
        assert response.status_code == 200, response.text
        merged = response.json()
        assert merged["id"] == user_cart["id"]
        assert lines(merged) == [
            ("p-001", 5, 199),
            ("p-low", 3, 500),  # 2 + 2, but only 3 in stock
            ("p-002", 999, 299),  # 600 + 600, but a line holds 999
            ("p-003", 1, 399),  # new lines go after the user's
        ]
        assert merged["version"] == before["version"] + 1  # one merge, one version
        # The laptop's cookie now names the user's cart, like the phone's.
        assert cookie(laptop) == cookie(phone) == response.headers["x-cart-id"]
        assert unsign(cookie(laptop)) == user_cart["id"]
        assert "HttpOnly" in response.headers["set-cookie"]
        # The user's other device saw the merge as one patch.
        patch = await watcher.next("patch")
        assert patch["version"] == merged["version"]
        assert patch["item_count"] == 5 + 3 + 999 + 1
        assert {op["item"]["product_id"] for op in patch["ops"]} == {
            "p-001",
            "p-low",
            "p-002",
            "p-003",
        }
        await watcher.close()
    assert status(server, anonymous["id"]) == ("merged", user_cart["id"])
    # Logging in again changes nothing.
    async with rest(server, response.headers["x-cart-id"]) as again:
        repeat = await login(again, user)
        assert (repeat.json()["id"], repeat.json()["version"]) == (merged["id"], merged["version"])


async def wait_price(server: ServerProcess, product_id: str, price: int) -> None:
    async with rest(server) as client:
        deadline = time.monotonic() + 10
        while True:
            products = (await client.get("/api/products")).json()["products"]
            if next(p for p in products if p["id"] == product_id)["price_cents"] == price:
                return
            assert time.monotonic() < deadline, f"{product_id} never reached {price}"
            await asyncio.sleep(0.05)


async def test_login_keeps_the_earlier_price_snapshot(server: ServerProcess) -> None:
    user = new_user()
    old = {p["id"]: p for p in support.test_catalog() if p["id"] in ("p-010", "p-011")}
    async with device(server) as phone, device(server) as laptop:
        await login(phone, user)
        await add(phone, "p-010")  # the user's cart first, at the old price
        await add(laptop, "p-011")  # the anonymous cart first, at the old price
        repriced = [{**p, "price_cents": p["price_cents"] + 1000} for p in old.values()]
        path = server.workdir / "reprice.json"
        path.write_text(json.dumps(repriced))
        result = server.cli("import", str(path))
        assert result.returncode == 0, result.stderr
        await wait_price(server, "p-010", old["p-010"]["price_cents"] + 1000)
        await wait_price(server, "p-011", old["p-011"]["price_cents"] + 1000)
        later = await add(laptop, "p-010")  # then the other cart, at the new price
        assert lines(later)[-1] == ("p-010", 1, 2099)
        assert lines(await add(phone, "p-011"))[-1] == ("p-011", 1, 2199)

        merged = (await login(laptop, user)).json()
    assert lines(merged) == [("p-010", 2, 1099), ("p-011", 2, 1199)]
    by_id = {i["product_id"]: i for i in merged["items"]}
    assert by_id["p-010"]["current_price_cents"] == 2099  # the page can flag the change


async def test_tabs_of_the_anonymous_cart_follow_only_with_the_new_credential(
    server: ServerProcess,
) -> None:
    """The open tabs hear that the cart was merged, but not where to: a tab follows into
    the user's cart only by presenting the credential the login handed out (the browser
    that logged in has it in its cookie); the old id opens a fresh cart, never the user's."""
    user = new_user()
    async with device(server) as laptop:
        anonymous = await add(laptop, "p-004", 2)
        old = cookie(laptop)
        by_cookie = await Tab.open(server, cookie=old)
        by_query = await Tab.open(server, old)
        for tab in (by_cookie, by_query):
            await tab.next("snapshot")
        response = await login(laptop, user)
        assert response.status_code == 200
        user_cart = response.json()
        assert cookie(laptop) == response.headers["x-cart-id"] != old
        for tab in (by_cookie, by_query):
            patch = await tab.next("patch")
            assert patch["ops"] == [{"op": "status", "status": "merged"}]
            moved = await tab.next("moved")
            assert moved == {"type": "moved", "cart_id": None}
        # A tab that edits before it has reconnected is refused: nothing is lost silently.
        await by_query.send({"type": "add", "id": "late", "product_id": "p-001", "quantity": 1})
        refused = await by_query.next("error")
        assert (refused["code"], refused["status"]) == ("cart_locked", "merged")
        for tab in (by_cookie, by_query):
            await tab.close()
        # The browser that logged in reconnects with its cookie: the user's cart.
        follower = await Tab.open(server, cookie=cookie(laptop))
        snapshot = (await follower.next("snapshot"))["cart"]
        assert (snapshot["id"], lines(snapshot)) == (user_cart["id"], [("p-004", 2, 499)])
        # The old id (a copy on another device) opens a fresh, empty cart with a new cookie.
        late = await Tab.open(server, cookie=old)
        fresh = (await late.next("snapshot"))["cart"]
        assert fresh["id"] not in (user_cart["id"], anonymous["id"]) and fresh["items"] == []
        assert late.ws.response is not None
        assert fresh["id"] in late.ws.response.headers["set-cookie"]
        for tab in (follower, late):
            await tab.close()
    assert status(server, anonymous["id"]) == ("merged", user_cart["id"])


async def test_bad_tokens_are_401_and_change_nothing(server: ServerProcess) -> None:
    user = new_user()
    async with device(server) as phone, device(server) as laptop:
        await login(phone, user)
        users_cart = await add(phone, "p-001")
        anonymous = await add(laptop, "p-002")
        good = make_user_token(user, AUTH)
        other = make_user_token(new_user(), AUTH)
        tokens = {
            "expired": make_user_token(user, AUTH, ttl=60, now=time.time() - 120),
            "wrong secret": make_user_token(user, "not-the-secret"),
            "tampered": other.split(".")[0] + "." + good.split(".")[1],
            "garbage": "not a token at all",
            "non-ascii": good.split(".")[0] + ".ünïcode",
        }
        for name, token in tokens.items():
            response = await laptop.post("/api/cart/login", json={"token": token})
            assert response.status_code == 401, (name, response.text)
            assert response.json()["error"]["code"] == "invalid_token", name
            assert unsign(cookie(laptop)) == anonymous["id"], name
        for body in ({"token": ""}, {}, {"token": 7}):
            response = await laptop.post("/api/cart/login", json=body)
            assert response.status_code == 422, body
        after_user = (await phone.get("/api/cart")).json()
        after_anonymous = (await laptop.get("/api/cart")).json()
    assert (after_user["version"], lines(after_user)) == (
        users_cart["version"],
        lines(users_cart),
    )
    assert (after_anonymous["id"], after_anonymous["version"], after_anonymous["status"]) == (
        anonymous["id"],
        anonymous["version"],
        "active",
    )
    assert status(server, anonymous["id"]) == ("active", None)


async def test_login_while_the_users_cart_is_checking_out_is_refused_and_changes_nothing(
    server: ServerProcess,
) -> None:
    user = new_user()
    async with device(server) as phone, device(server) as laptop:
        await login(phone, user)
        await add(phone, "p-012")
        started = await phone.post("/api/cart/checkout", json={})
        assert started.status_code == 200, started.text
        locked = (await phone.get("/api/cart")).json()
        assert locked["status"] == "checking_out"
        anonymous = await add(laptop, "p-013")
        response = await login(laptop, user)
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "cart_locked"
        assert unsign(cookie(laptop)) == anonymous["id"]  # still the anonymous cart
        after = (await phone.get("/api/cart")).json()
        assert (after["version"], after["status"]) == (locked["version"], "checking_out")
        cancelled = await phone.post("/api/cart/checkout/cancel")
        assert cancelled.status_code == 200
        # Once the checkout is over, the same login goes through.
        merged = (await login(laptop, user)).json()
    assert [line[0] for line in lines(merged)] == ["p-012", "p-013"]


async def test_demo_login_is_off_unless_enabled(server: ServerProcess) -> None:
    async with rest(server) as client:
        response = await client.post("/api/demo/login", json={"user": "alice"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_one_anonymous_cart_logging_in_as_two_users_at_once(server: ServerProcess) -> None:
    for _ in range(4):  # random ids: the shared cart sorts first in some rounds, last in others
        async with rest(server) as shopper:
            anonymous = await add(shopper, "p-005", 4)
        users = [new_user(), new_user()]
        # Two clients holding the same anonymous cart, each logging in as someone else.
        async with (
            rest(server, sign(anonymous["id"])) as a,
            rest(server, sign(anonymous["id"])) as b,
        ):
            async with asyncio.timeout(DEADLOCK):
                responses = await asyncio.gather(login(a, users[0]), login(b, users[1]))
        assert [r.status_code for r in responses] == [200, 200]
        carts = [r.json() for r in responses]
        # Exactly one of the users got the lines; the other an empty cart of their own.
        full = [c for c in carts if c["items"]]
        assert len(full) == 1 and lines(full[0]) == [("p-005", 4, 599)]
        assert len({c["id"] for c in carts}) == 2
        assert status(server, anonymous["id"]) == ("merged", full[0]["id"])


async def test_a_double_clicked_login_merges_once(server: ServerProcess) -> None:
    for _ in range(3):
        user = new_user()
        async with device(server) as phone:
            await login(phone, user)
            before = await add(phone, "p-009")
        async with rest(server) as shopper:
            anonymous = await add(shopper, "p-009", 2)
        signed = sign(anonymous["id"])
        tab = await Tab.open(server, signed)  # an open tab: the cart must be marked merged
        await tab.next("snapshot")
        async with rest(server, signed) as a, rest(server, signed) as b:
            async with asyncio.timeout(DEADLOCK):
                responses = await asyncio.gather(login(a, user), login(b, user))
        assert [r.status_code for r in responses] == [200, 200]
        assert {r.json()["id"] for r in responses} == {before["id"]}
        final = max((r.json() for r in responses), key=lambda doc: doc["version"])
        # One merge: one version more, the lines counted once, and no empty second write.
        assert final["version"] == before["version"] + 1
        assert lines(final) == [("p-009", 3, 999)]
        assert (await tab.next("moved"))["cart_id"] is None  # follows by its own cookie
        await tab.close()


async def test_crossing_logins_between_two_users_carts_finish_and_move_nothing(
    server: ServerProcess,
) -> None:
    """Each device logs in as the other user (a shared computer, twice at once) while other
    tabs keep editing both carts: the two logins lock the same two rooms, each in its own
    order unless the order is fixed, and the edits keep those locks contended."""
    edits = 15
    for _ in range(6):  # each round a fresh pair: both lock orders occur
        first, second = new_user(), new_user()
        async with device(server) as one, device(server) as two:
            await login(one, first)
            cart_one = await add(one, "p-006")
            await login(two, second)
            cart_two = await add(two, "p-007")

            async def edit(signed: str) -> None:
                async with rest(server, signed) as tab:
                    for _ in range(edits):
                        await add(tab, "p-008")

            async with asyncio.timeout(DEADLOCK):
                *_, to_two, to_one = await asyncio.gather(
                    edit(cookie(one)), edit(cookie(two)), login(one, second), login(two, first)
                )
            assert [to_two.status_code, to_one.status_code] == [200, 200]
            # One user's cart is never poured into another's: the cookies just swap.
            assert to_two.json()["id"] == cart_two["id"]
            assert to_one.json()["id"] == cart_one["id"]
            assert unsign(cookie(one)) == cart_two["id"]
            assert unsign(cookie(two)) == cart_one["id"]
            after_one = (await two.get("/api/cart")).json()
            after_two = (await one.get("/api/cart")).json()
        assert after_one["version"] == cart_one["version"] + edits  # the edits, nothing else
        assert lines(after_one) == [("p-006", 1, 699), ("p-008", edits, 899)]
        assert after_two["version"] == cart_two["version"] + edits
        assert lines(after_two) == [("p-007", 1, 799), ("p-008", edits, 899)]


async def test_many_anonymous_carts_logging_in_to_one_user_at_once(server: ServerProcess) -> None:
    user = new_user()
    async with device(server) as phone:
        await login(phone, user)
        start = await add(phone, "p-020")
    clients = [device(server) for _ in range(8)]
    try:
        for n, client in enumerate(clients):
            await add(client, "p-020")
            await add(client, f"p-{30 + n:03d}", n + 1)
        async with asyncio.timeout(DEADLOCK):
            responses = await asyncio.gather(*(login(client, user) for client in clients))
        assert {r.status_code for r in responses} == {200}
        assert {r.json()["id"] for r in responses} == {start["id"]}
        final = (await clients[0].get("/api/cart")).json()
    finally:
        for client in clients:
            await client.aclose()
    assert final["version"] == start["version"] + 8  # one version per merge
    quantities = {product_id: quantity for product_id, quantity, _ in lines(final)}
    assert quantities == {"p-020": 9, **{f"p-{30 + n:03d}": n + 1 for n in range(8)}}
    open_carts = query(
        server.db,
        "SELECT count(*) FROM cart_sessions WHERE user_id = ? AND status = 'active'",
        user,
    )
    assert open_carts == [(1,)]


async def test_login_during_a_checkout_of_the_anonymous_cart_is_refused(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        added = await add(client, "p-001")
        started = await client.post("/api/cart/checkout", json={})
        assert started.status_code == 200
        refused = await login(client, new_user())
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "cart_locked"
        after = (await client.get("/api/cart")).json()
    assert after["id"] == added["id"]  # still the cart being paid for
    assert after["status"] == "checking_out"
    assert status(server, added["id"]) == ("checking_out", None)
