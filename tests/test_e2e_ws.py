"""WebSocket end to end against a real server: frames, patches, acks, refusals, closes.

A refusal is checked by its error frame, by the tab staying quiet (a ping's pong is the very
next frame: no patch slipped in), and by the cart over REST being exactly as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets

from tests.support import ServerProcess, Tab, counter, rest, sign

PRICE = {f"p-{n:03d}": 100 * n + 99 for n in range(1, 121)} | {"p-low": 500, "p-none": 700}


async def new_cart(server: ServerProcess) -> str:
    async with rest(server) as client:
        response = await client.get("/api/cart")
    assert response.status_code == 200
    return response.headers["x-cart-id"]


async def current(server: ServerProcess, signed: str) -> dict[str, Any]:
    async with rest(server, signed) as client:
        response = await client.get("/api/cart")
    assert response.status_code == 200
    doc: dict[str, Any] = response.json()
    return doc


async def rest_add(server: ServerProcess, signed: str, product_id: str, quantity: int = 1) -> None:
    async with rest(server, signed) as client:
        response = await client.post(
            "/api/cart/items", json={"product_id": product_id, "quantity": quantity}
        )
    assert response.status_code == 200, response.text


async def assert_unchanged(server: ServerProcess, signed: str, before: dict[str, Any]) -> None:
    after = await current(server, signed)
    assert after["id"] == before["id"]
    assert after["version"] == before["version"]
    assert after["items"] == before["items"]
    async with rest(server) as client:
        assert (await client.get("/healthz")).status_code == 200


@contextlib.asynccontextmanager
async def tab(server: ServerProcess, signed: str | None = None, **kw: Any) -> AsyncIterator[Tab]:
    """An open tab, closed at the end whatever happens."""
    opened = await Tab.open(server, signed, **kw)
    try:
        yield opened
    finally:
        await opened.close()


async def ready(opened: Tab) -> dict[str, Any]:
    """Read the opening snapshot and presence; the cart document."""
    first = await opened.next()
    assert first["type"] == "snapshot", first
    assert (await opened.next())["type"] == "presence"
    cart: dict[str, Any] = first["cart"]
    return cart


async def frame(opened: Tab) -> dict[str, Any]:
    """The next frame that is not a presence count."""
    while True:
        found = await opened.next()
        if found["type"] != "presence":
            return found


async def quiet(opened: Tab) -> None:
    """Nothing is pending for this tab: a ping's pong comes next."""
    await opened.send({"type": "ping"})
    assert await frame(opened) == {"type": "pong"}


def set_cookie(opened: Tab) -> str | None:
    """The Set-Cookie header of the tab's handshake response."""
    response = opened.ws.response
    assert response is not None
    value: str | None = response.headers.get("set-cookie")
    return value


def item(product_id: str, quantity: int) -> dict[str, Any]:
    n = int(product_id[2:])
    return {
        "product_id": product_id, "sku": f"SKU-{n:03d}", "name": f"Product {n}",
        "quantity": quantity, "unit_price_cents": PRICE[product_id],
        "line_total_cents": quantity * PRICE[product_id], "image_url": f"/static/img/{n}.svg",
        "current_price_cents": PRICE[product_id], "available": True,
    }  # fmt: skip


# --- opening -----------------------------------------------------------------------------


async def test_snapshot_first_then_presence(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-001", 2)
    expected = await current(server, signed)
    async with tab(server, signed) as t:
        assert t.ws.request is not None
        assert "origin" not in t.ws.request.headers  # no Origin: not a browser, allowed
        first = await t.next()
        assert first == {"type": "snapshot", "cart": expected}
        assert await t.next() == {"type": "presence", "tabs": 1}


async def test_cart_parameter_selects_the_cart(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-002", 3)
    async with tab(server, signed) as t:
        cart = await ready(t)
        assert cart == await current(server, signed)
        assert cart["items"][0]["quantity"] == 3
        assert set_cookie(t) is None  # nothing new to issue


async def test_cookie_selects_the_cart(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-003", 4)
    async with tab(server, cookie=signed) as t:
        cart = await ready(t)
        assert cart == await current(server, signed)
        await t.send({"type": "add", "id": "c1", "product_id": "p-003", "quantity": 1})
        assert (await frame(t))["type"] == "patch"
        assert await frame(t) == {"type": "ack", "id": "c1", "version": 2}
    assert (await current(server, signed))["items"][0]["quantity"] == 5


async def test_no_cart_gets_a_fresh_cart_and_a_cookie(server: ServerProcess) -> None:
    other = await new_cart(server)
    await rest_add(server, other, "p-004")
    async with tab(server) as first, tab(server) as second:
        carts = [await ready(first), await ready(second)]
        cookies = [set_cookie(t) for t in (first, second)]
    assert carts[0]["id"] != carts[1]["id"]
    for cart, cookie in zip(carts, cookies, strict=True):
        assert cart["id"] not in other
        assert cart["version"] == 0 and cart["items"] == []
        assert cookie == (
            f"cart_id={sign(cart['id'])}; HttpOnly; SameSite=Lax; Path=/; Max-Age=2592000"
        )
        assert (await current(server, sign(cart["id"])))["id"] == cart["id"]


async def test_forged_cart_parameter_gets_a_fresh_cart(server: ServerProcess) -> None:
    victim = await new_cart(server)
    await rest_add(server, victim, "p-005", 2)
    victim_id = (await current(server, victim))["id"]
    for forged in (victim_id, sign(victim_id, "another-secret")):
        async with tab(server, forged) as t:
            cart = await ready(t)
            assert cart["id"] != victim_id and cart["items"] == []
            assert (set_cookie(t) or "").startswith(f"cart_id={sign(cart['id'])};")


async def test_a_foreign_origin_is_closed_with_1008(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-006")
    before = await current(server, signed)
    async with tab(server, signed, origin="http://evil.example") as t:
        assert await t.closed() == 1008
        assert t.log == []  # not even a snapshot leaked out
    await assert_unchanged(server, signed, before)


async def test_the_servers_own_origin_is_allowed(server: ServerProcess) -> None:
    signed = await new_cart(server)
    async with tab(server, signed, origin=server.url) as t:
        assert (await ready(t))["id"] == (await current(server, signed))["id"]
        await t.send({"type": "add", "id": "o1", "product_id": "p-007", "quantity": 1})
        assert (await frame(t))["type"] == "patch"
        assert await frame(t) == {"type": "ack", "id": "o1", "version": 1}


async def test_ping_gets_a_pong(server: ServerProcess) -> None:
    async with tab(server, await new_cart(server)) as t:
        await ready(t)
        await t.send({"type": "ping"})
        assert await t.next() == {"type": "pong"}


# --- mutations: patch to every tab, then ack to the author --------------------------------


async def two_tabs(server: ServerProcess, signed: str) -> tuple[Tab, Tab]:
    author = await Tab.open(server, signed, client_id="author")
    await ready(author)
    other = await Tab.open(server, signed, client_id="other-tab")
    await ready(other)
    assert (await author.next("presence"))["tabs"] == 2
    return author, other


async def mutate(author: Tab, other: Tab, message: dict[str, Any], version: int) -> dict[str, Any]:
    """Send; assert the author gets the patch then the ack, and the other tab the same patch."""
    await author.send(message)
    patch = await frame(author)
    assert patch["type"] == "patch" and patch["version"] == version
    assert patch["origin"] == "author"
    assert await frame(author) == {"type": "ack", "id": message["id"], "version": version}
    assert await frame(other) == patch
    return patch


async def test_add_sends_a_patch_to_every_tab_then_an_ack(server: ServerProcess) -> None:
    signed = await new_cart(server)
    author, other = await two_tabs(server, signed)
    try:
        add = {"type": "add", "id": "a1", "product_id": "p-010", "quantity": 2}
        patch = await mutate(author, other, add, 1)
        assert patch == {
            "type": "patch", "version": 1, "ops": [{"op": "upsert", "item": item("p-010", 2)}],
            "item_count": 2, "subtotal_cents": 2 * PRICE["p-010"], "origin": "author",
        }  # fmt: skip
        again = {"type": "add", "id": "a2", "product_id": "p-010", "quantity": 3}
        patch = await mutate(author, other, again, 2)
        assert patch["ops"] == [{"op": "upsert", "item": item("p-010", 5)}]
        assert patch["item_count"] == 5
        cart = await current(server, signed)
        assert cart["version"] == 2 and cart["items"] == [item("p-010", 5)]
    finally:
        await author.close()
        await other.close()


async def test_set_sends_an_upsert_patch(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-011", 2)
    await rest_add(server, signed, "p-012", 1)
    author, other = await two_tabs(server, signed)
    try:
        message = {"type": "set", "id": "s1", "product_id": "p-011", "quantity": 7}
        patch = await mutate(author, other, message, 3)
        assert patch["ops"] == [{"op": "upsert", "item": item("p-011", 7)}]
        assert patch["item_count"] == 8
        assert patch["subtotal_cents"] == 7 * PRICE["p-011"] + PRICE["p-012"]
        assert (await current(server, signed))["items"][0]["quantity"] == 7
    finally:
        await author.close()
        await other.close()


async def test_set_zero_sends_a_remove_patch(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-013", 2)
    await rest_add(server, signed, "p-014", 1)
    author, other = await two_tabs(server, signed)
    try:
        message = {"type": "set", "id": "z1", "product_id": "p-013", "quantity": 0}
        patch = await mutate(author, other, message, 3)
        assert patch["ops"] == [{"op": "remove", "product_id": "p-013"}]
        assert patch["item_count"] == 1 and patch["subtotal_cents"] == PRICE["p-014"]
        assert [i["product_id"] for i in (await current(server, signed))["items"]] == ["p-014"]
    finally:
        await author.close()
        await other.close()


async def test_remove_sends_a_remove_patch(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-015", 2)
    await rest_add(server, signed, "p-016", 3)
    author, other = await two_tabs(server, signed)
    try:
        message = {"type": "remove", "id": "r1", "product_id": "p-016"}
        patch = await mutate(author, other, message, 3)
        assert patch["ops"] == [{"op": "remove", "product_id": "p-016"}]
        assert patch["item_count"] == 2 and patch["subtotal_cents"] == 2 * PRICE["p-015"]
        assert [i["product_id"] for i in (await current(server, signed))["items"]] == ["p-015"]
    finally:
        await author.close()
        await other.close()


async def test_clear_sends_a_remove_for_every_line(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-017", 2)
    await rest_add(server, signed, "p-018", 3)
    author, other = await two_tabs(server, signed)
    try:
        patch = await mutate(author, other, {"type": "clear", "id": "c1"}, 3)
        assert sorted(op["product_id"] for op in patch["ops"]) == ["p-017", "p-018"]
        assert all(op["op"] == "remove" for op in patch["ops"])
        assert patch["item_count"] == 0 and patch["subtotal_cents"] == 0
        cart = await current(server, signed)
        assert cart["items"] == [] and cart["version"] == 3
    finally:
        await author.close()
        await other.close()


async def test_a_rest_mutation_reaches_the_tab_with_origin_null(server: ServerProcess) -> None:
    signed = await new_cart(server)
    async with tab(server, signed, client_id="watcher") as t:
        await ready(t)
        await rest_add(server, signed, "p-019", 2)
        patch = await frame(t)
        assert patch == {
            "type": "patch", "version": 1, "ops": [{"op": "upsert", "item": item("p-019", 2)}],
            "item_count": 2, "subtotal_cents": 2 * PRICE["p-019"], "origin": None,
        }  # fmt: skip
        await quiet(t)  # no ack: the tab did not author it


# --- refusals ------------------------------------------------------------------------------

INVALID: dict[str, tuple[str | bytes, str | None]] = {
    "not json": ("this is not json", None),
    "truncated json": ('{"type": "add", "id": "t1"', None),
    "json array": ('[{"type": "ping"}]', None),
    "json string": ('"ping"', None),
    "no type": ('{"id": "n1", "product_id": "p-020", "quantity": 1}', "n1"),
    "unknown type": ('{"type": "explode", "id": "u1"}', "u1"),
    "quantity as string": ('{"type": "add", "id": "q1", "product_id": "p-020", "quantity": "2"}',
                           "q1"),
    "quantity as float": ('{"type": "add", "id": "f1", "product_id": "p-020", "quantity": 1.5}',
                          "f1"),
    "quantity zero": ('{"type": "add", "id": "z1", "product_id": "p-020", "quantity": 0}', "z1"),
    "quantity 1000": ('{"type": "set", "id": "k1", "product_id": "p-020", "quantity": 1000}',
                      "k1"),
    "negative set": ('{"type": "set", "id": "m1", "product_id": "p-020", "quantity": -1}', "m1"),
    "id as number": ('{"type": "add", "id": 5, "product_id": "p-020", "quantity": 1}', None),
    "product_id as number": ('{"type": "remove", "id": "p1", "product_id": 20}', "p1"),
    "missing product_id": ('{"type": "add", "id": "x1", "quantity": 1}', "x1"),
    "missing id": ('{"type": "clear"}', None),
    "base_version as string": ('{"type": "clear", "id": "b1", "base_version": "1"}', "b1"),
    "binary frame": (b'{"type": "clear", "id": "bin1"}', None),
    "deeply nested": ("[" * 3000, None),
    "deeply nested object": ('{"type": "clear", "id": "d1", "pad": ' + "[" * 3000 + "]" * 3000
                             + "}", None),
    "text over 4 KiB": (json.dumps({"type": "clear", "id": "big1", "pad": "x" * 4200}), None),
    "text over 4 KiB in bytes only": (
        json.dumps({"type": "clear", "id": "big2", "pad": "€" * 1400}, ensure_ascii=False),
        None,
    ),
}  # fmt: skip


@pytest.mark.parametrize(("raw", "msg_id"), list(INVALID.values()), ids=list(INVALID))
async def test_an_invalid_frame_gets_invalid_message(
    server: ServerProcess, raw: str | bytes, msg_id: str | None
) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-020", 2)
    before = await current(server, signed)
    async with tab(server, signed) as t:
        await ready(t)
        await t.send(raw)
        error = await frame(t)
        assert error["type"] == "error" and error["code"] == "invalid_message", error
        assert isinstance(error["message"], str) and error["message"]
        if msg_id is not None:
            assert error["id"] == msg_id
        await quiet(t)  # still open, and nothing was applied
    await assert_unchanged(server, signed, before)


async def test_the_4_kib_limit_is_on_the_frame_not_the_message(server: ServerProcess) -> None:
    signed = await new_cart(server)
    async with tab(server, signed) as t:
        await ready(t)
        await t.send(json.dumps({"type": "ping", "pad": "x" * 3900}))  # under 4096 bytes
        assert await frame(t) == {"type": "pong"}


async def test_a_frame_over_64_kib_closes_with_1009(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-021")
    before = await current(server, signed)
    async with tab(server, signed) as t:
        await ready(t)
        big = {"type": "add", "id": "huge", "product_id": "p-021", "quantity": 1}
        await t.send(json.dumps({**big, "pad": "x" * (100 * 1024)}))
        assert await t.closed() == 1009
        assert not [f for f in t.log if f["type"] in ("patch", "ack")]
    await assert_unchanged(server, signed, before)


async def test_invalid_frames_past_the_burst_close_with_1008(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-022")
    before = await current(server, signed)
    async with tab(server, signed) as t:
        await ready(t)
        for n in range(10):  # the burst is tolerated: each gets its error frame
            await t.send(f"junk {n}")
        for _ in range(10):
            assert (await frame(t))["code"] == "invalid_message"
        await quiet(t)
        with contextlib.suppress(websockets.ConnectionClosed):
            for n in range(5):
                await t.send(f"more junk {n}")
        assert await t.closed() == 1008
    await assert_unchanged(server, signed, before)


DOMAIN_ERRORS: dict[str, tuple[dict[str, Any], str, dict[str, Any]]] = {
    "unknown product": (
        {"type": "add", "product_id": "p-nope", "quantity": 1}, "unknown_product",
        {"product_id": "p-nope"},
    ),
    "insufficient stock": (  # 1 of the 3 is in the cart already: 2 more can be added
        {"type": "add", "product_id": "p-low", "quantity": 3}, "insufficient_stock",
        {"product_id": "p-low", "available": 2},
    ),
    "sold out": (
        {"type": "add", "product_id": "p-none", "quantity": 1}, "insufficient_stock",
        {"product_id": "p-none", "available": 0},
    ),
    "set above stock": (
        {"type": "set", "product_id": "p-low", "quantity": 4}, "insufficient_stock",
        {"product_id": "p-low", "available": 3},
    ),
    "set not in cart": (
        {"type": "set", "product_id": "p-024", "quantity": 2}, "not_in_cart",
        {"product_id": "p-024"},
    ),
    "set zero not in cart": (
        {"type": "set", "product_id": "p-024", "quantity": 0}, "not_in_cart",
        {"product_id": "p-024"},
    ),
    "remove not in cart": (
        {"type": "remove", "product_id": "p-024"}, "not_in_cart", {"product_id": "p-024"},
    ),
    "quantity limit": (
        {"type": "add", "product_id": "p-023", "quantity": 2}, "quantity_limit",
        {"product_id": "p-023", "max_quantity": 999},
    ),
}  # fmt: skip


@pytest.mark.parametrize(
    ("message", "code", "details"), list(DOMAIN_ERRORS.values()), ids=list(DOMAIN_ERRORS)
)
async def test_a_domain_error_comes_back_as_an_error_frame(
    server: ServerProcess, message: dict[str, Any], code: str, details: dict[str, Any]
) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-023", 998)
    await rest_add(server, signed, "p-low", 1)
    before = await current(server, signed)
    async with tab(server, signed) as t:
        await ready(t)
        await t.send({**message, "id": "bad-1"})
        error = await frame(t)
        assert error["type"] == "error" and error["id"] == "bad-1"
        assert error["code"] == code and error["message"]
        assert {k: error[k] for k in details} == details
        await quiet(t)
        # The refused id was not consumed: a valid message with it is then applied.
        await t.send({"type": "add", "id": "bad-1", "product_id": "p-025", "quantity": 1})
        assert (await frame(t))["type"] == "patch"
        assert await frame(t) == {"type": "ack", "id": "bad-1", "version": before["version"] + 1}
    assert (await current(server, signed))["items"][:2] == before["items"]


async def test_a_stale_base_version_is_a_version_conflict(server: ServerProcess) -> None:
    signed = await new_cart(server)
    await rest_add(server, signed, "p-026")
    await rest_add(server, signed, "p-027")
    before = await current(server, signed)
    async with tab(server, signed) as t:
        await ready(t)
        stale = {"type": "add", "id": "v1", "product_id": "p-028", "quantity": 1}
        await t.send({**stale, "base_version": 1})
        error = await frame(t)
        assert error["type"] == "error" and error["id"] == "v1"
        assert error["code"] == "version_conflict" and error["version"] == 2
        assert error["cart"] == before
        await quiet(t)
        await assert_unchanged(server, signed, before)

        await t.send({**stale, "id": "v2", "base_version": 2})
        patch = await frame(t)
        assert patch["type"] == "patch" and patch["version"] == 3
        assert await frame(t) == {"type": "ack", "id": "v2", "version": 3}
    assert [i["product_id"] for i in (await current(server, signed))["items"]] == [
        "p-026", "p-027", "p-028",
    ]  # fmt: skip


async def test_a_repeated_message_id_is_acked_again_not_reapplied(server: ServerProcess) -> None:
    signed = await new_cart(server)
    async with tab(server, signed, client_id="dup-tab") as t:
        await ready(t)
        message = {"type": "add", "id": "once", "product_id": "p-029", "quantity": 2}
        await t.send(message)
        assert (await frame(t))["version"] == 1
        assert await frame(t) == {"type": "ack", "id": "once", "version": 1}
        await rest_add(server, signed, "p-030")  # the cart moves on meanwhile
        assert (await frame(t))["version"] == 2
        await t.send(message)
        assert await frame(t) == {"type": "ack", "id": "once", "version": 1}
        await quiet(t)  # no second patch
    cart = await current(server, signed)
    assert cart["version"] == 2 and cart["items"][0]["quantity"] == 2


async def test_a_repeated_message_id_after_a_reconnect_is_not_reapplied(
    server: ServerProcess,
) -> None:
    signed = await new_cart(server)
    message = {"type": "add", "id": "m-1", "product_id": "p-031", "quantity": 3}
    async with tab(server, signed, client_id="phone") as t:
        await ready(t)
        await t.send(message)
        assert (await frame(t))["type"] == "patch"
        assert await frame(t) == {"type": "ack", "id": "m-1", "version": 1}
    async with tab(server, signed, client_id="phone") as t:  # the same tab, reconnected
        assert (await ready(t))["version"] == 1
        await t.send(message)
        assert await frame(t) == {"type": "ack", "id": "m-1", "version": 1}
        await quiet(t)
    assert (await current(server, signed))["items"][0]["quantity"] == 3
    async with tab(server, signed, client_id="laptop") as t:  # ids are per client
        await ready(t)
        await t.send(message)
        assert (await frame(t))["type"] == "patch"
        assert await frame(t) == {"type": "ack", "id": "m-1", "version": 2}
    assert (await current(server, signed))["items"][0]["quantity"] == 6


async def test_a_tab_closed_by_the_server_does_not_break_the_cart(server: ServerProcess) -> None:
    """After a 1008 close for junk, other tabs of the cart keep working."""
    signed = await new_cart(server)
    async with tab(server, signed) as good, tab(server, signed) as bad:
        await ready(good)
        await ready(bad)
        with contextlib.suppress(websockets.ConnectionClosed):
            for n in range(40):
                await bad.send(b"\x00" + bytes([n]))
        assert await bad.closed() == 1008
        while (await good.next("presence"))["tabs"] != 1:
            pass  # first the count with both tabs, then the one after the close
        await good.send({"type": "add", "id": "g1", "product_id": "p-032", "quantity": 1})
        assert (await frame(good))["type"] == "patch"
        assert await frame(good) == {"type": "ack", "id": "g1", "version": 1}
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        assert (await client.get("/readyz")).status_code == 200


async def test_a_since_that_is_not_a_plain_number_gets_a_snapshot(server: ServerProcess) -> None:
    signed = await new_cart(server)
    for since in ("\u00b2", "-1", "1e3"):  # a superscript two is a digit to str.isdigit
        t = await Tab.open(server, signed, client_id="since", since=None)
        await t.close()
        url = f"{server.ws_url}?cart={signed}&since={since}"
        async with websockets.connect(url, proxy=None) as ws:
            first = json.loads(await ws.recv())
            assert first["type"] == "snapshot", since


async def commit_figures(server: ServerProcess) -> tuple[float, float]:
    """(transactions, writes) the server's SQLite writer has committed, from /metrics."""
    return (
        await counter(server, "cart_commit_batches_total"),
        await counter(server, "cart_commit_writes_total"),
    )


async def test_one_tabs_burst_is_applied_in_order_and_shares_group_commits(
    server: ServerProcess,
) -> None:
    """A tab's next mutation does not wait for the commit of the one before it: sent at
    once, they are applied in the order sent, acked in that order, and committed in
    fewer transactions than mutations."""
    signed = await new_cart(server)
    async with tab(server, signed) as author:
        await ready(author)
        batches, writes = await commit_figures(server)
        burst = 40
        for n in range(burst):
            await author.send(
                {"type": "add", "id": f"b{n}", "product_id": f"p-{n % 5 + 1:03d}", "quantity": 1}
            )
        acks, patches = [], []
        while len(acks) < burst:
            found = await frame(author)
            (acks if found["type"] == "ack" else patches).append(found)
        assert [a["id"] for a in acks] == [f"b{n}" for n in range(burst)]
        assert [a["version"] for a in acks] == list(range(1, burst + 1))
        assert [p["version"] for p in patches] == list(range(1, burst + 1))
        after_batches, after_writes = await commit_figures(server)
    assert after_writes - writes == burst
    assert after_batches - batches < burst
    cart = await current(server, signed)
    assert cart["version"] == burst and cart["item_count"] == burst
