"""The outside attack's findings, each tried again the way it was found: a stale cart id,
one address doing what a thousand shoppers would, a client-written Host header, inputs
that once answered 500, and hardening of the Origin check, validation and /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server import settlement as settlement_module
from server.auth import make_user_token
from server.bus.local import LocalBroker
from server.cart import AddItem, Product
from server.catalog import Catalog
from server.checkout import Checkouts
from server.clock import utcnow
from server.config import ConfigError, Settings
from server.hub import Hub
from server.metrics import Metrics
from server.payments.demo import DemoProvider
from server.store import ANSWERS_PER_CART, open_store
from tests.checkout_support import rows, stock
from tests.lifecycle_support import cookie, device, query, unsign
from tests.support import ServerProcess, Tab, rest

AUTH = "cart-auth-secret-for-tests"


def lines(doc: dict[str, Any]) -> list[tuple[str, int]]:
    return [(i["product_id"], i["quantity"]) for i in doc["items"]]


async def add(client: httpx.AsyncClient, product_id: str, quantity: int = 1) -> dict[str, Any]:
    response = await client.post(
        "/api/cart/items", json={"product_id": product_id, "quantity": quantity}
    )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def login(client: httpx.AsyncClient, user: str) -> httpx.Response:
    return await client.post("/api/cart/login", json={"token": make_user_token(user, AUTH)})


# --- 1. a signed cart id opens its own cart and nothing else ----------------------------


async def test_a_stolen_anonymous_id_signed_into_another_account_leads_the_shopper_nowhere(
    make_server: Callable[..., ServerProcess],
) -> None:
    """The attack: someone holding a shopper's anonymous id logs it into their own
    account. The shopper's open tab must not follow into the attacker's cart, their later
    requests must not land there, and their order must not be recorded under the attacker."""
    server = make_server({"CART_AUTH_SECRET": AUTH}).start()
    async with device(server) as shopper, rest(server) as attacker_client:
        mine = await add(shopper, "p-001", 2)
        stolen = cookie(shopper)
        tab = await Tab.open(server, cookie=stolen)
        await tab.next("snapshot")

        attacker_client.headers["X-Cart-Id"] = stolen
        taken = await login(attacker_client, "attacker")
        assert taken.status_code == 200
        attackers_cart = taken.json()
        assert lines(attackers_cart) == [("p-001", 2)]  # whoever holds an id holds that cart

        assert (await tab.next("moved")) == {"type": "moved", "cart_id": None}
        await tab.close()
        # The shopper's tab reconnects with what it holds: a fresh cart, not the attacker's.
        again = await Tab.open(server, cookie=stolen)
        fresh = (await again.next("snapshot"))["cart"]
        assert fresh["id"] not in (mine["id"], attackers_cart["id"]) and fresh["items"] == []
        await again.close()

        # The shopper goes on shopping and pays: nothing of it reaches the attacker.
        later = await add(shopper, "p-002", 1)
        assert later["id"] not in (mine["id"], attackers_cart["id"])
        started = await shopper.post("/api/cart/checkout")
        assert started.status_code == 200, started.text
        paid = await shopper.post(f"{started.json()['checkout_url']}/pay")
        assert paid.status_code == 303
    [(user_id,)] = rows(server, "SELECT user_id FROM orders WHERE cart_id = ?", (later["id"],))
    assert user_id is None
    async with rest(server) as attacker_view:
        attacker_view.headers["X-Cart-Id"] = taken.headers["x-cart-id"]
        assert lines((await attacker_view.get("/api/cart")).json()) == [("p-001", 2)]


async def test_after_a_paid_checkout_only_the_paying_request_and_open_tabs_learn_the_next_cart(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"CART_AUTH_SECRET": AUTH}).start()
    async with device(server) as laptop:
        assert (await login(laptop, "paying-user")).status_code == 200
        users = await add(laptop, "p-003", 1)
        old = cookie(laptop)
        tab = await Tab.open(server, cookie=old)
        await tab.next("snapshot")
        started = await laptop.post("/api/cart/checkout")
        assert started.status_code == 200, started.text
        paid = await laptop.post(f"{started.json()['checkout_url']}/pay")
        assert paid.status_code == 303
        moved = await tab.next("moved")
        await tab.close()
        successor = unsign(moved["cart_id"])
        # The paying browser's cookie went on to the user's next cart, as did the tab.
        assert unsign(cookie(laptop)) == successor != users["id"]
        [(owner,)] = query(server.db, "SELECT user_id FROM cart_sessions WHERE id = ?", successor)
        assert owner == "paying-user"
    # A copy of the old id, used later anywhere: a fresh anonymous cart, each time anew.
    seen = set()
    for _ in range(2):
        async with rest(server, old) as copy:
            doc = (await copy.get("/api/cart")).json()
        assert doc["id"] not in (users["id"], successor) and doc["items"] == []
        seen.add(doc["id"])
    assert len(seen) == 2
    late = await Tab.open(server, old)
    assert (await late.next("snapshot"))["cart"]["id"] not in (users["id"], successor)
    await late.close()


# --- 2 and 9. one address cannot hoard stock or mint carts ------------------------------


async def test_one_address_holds_at_most_its_share_of_checkouts(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"MAX_CHECKOUTS_PER_IP": "3"}).start()
    clients = [rest(server) for _ in range(6)]
    try:
        for client in clients:
            doc = await add(client, "p-001", 1)
            client.headers["X-Cart-Id"] = (await client.get("/api/cart")).headers["x-cart-id"]
            assert doc["items"]
        before = stock(server, "p-001")
        answers = await asyncio.gather(*(c.post("/api/cart/checkout") for c in clients))
        codes = sorted(a.status_code for a in answers)
        assert codes == [200] * 3 + [429] * 3, [a.text for a in answers]
        refused = [a for a in answers if a.status_code == 429]
        for answer in refused:
            assert answer.json()["error"]["code"] == "too_many_checkouts"
            assert int(answer.headers["retry-after"]) > 0
        assert stock(server, "p-001") == before - 3  # the refused reserved nothing
        # Giving one back makes room for one more.
        holder = clients[[a.status_code for a in answers].index(200)]
        assert (await holder.post("/api/cart/checkout/cancel")).status_code == 200
        waiting = clients[[a.status_code for a in answers].index(429)]
        assert (await waiting.post("/api/cart/checkout")).status_code == 200
        assert (await waiting.post("/api/cart/checkout")).status_code == 200  # its own retry
    finally:
        for client in clients:
            await client.aclose()


async def test_new_carts_from_one_address_are_rate_limited(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"NEW_CART_RATE": "0.01", "NEW_CART_BURST": "4"}).start()
    async with rest(server) as client:
        answers = []
        for _ in range(6):
            client.cookies.clear()  # a script that sends no cookie: a new cart each time
            answers.append(await client.post("/api/cart/items", json={"product_id": "p-001"}))
        assert [a.status_code for a in answers] == [200] * 4 + [429] * 2
        refused = answers[-1]
        assert refused.json()["error"]["code"] == "rate_limited"
        assert int(refused.headers["retry-after"]) >= 1
        assert "x-cart-id" not in refused.headers  # no cart was made for it
        # Nor for a request refused before a cart is made (it would be one for later).
        client.cookies.clear()
        broken = await client.post("/api/cart/items", content=b"{not json")
        assert broken.status_code == 400
        assert "x-cart-id" not in broken.headers and "set-cookie" not in broken.headers
        # A shopper who has a cart keeps using it.
        client.headers["X-Cart-Id"] = answers[0].headers["x-cart-id"]
        assert (await client.post("/api/cart/items", json={"product_id": "p-002"})).is_success
    stored = query(server.db, "SELECT count(*) FROM cart_sessions")
    assert stored == [(4,)]
    tab = await Tab.open(server)  # a socket with no cart would make one: refused too
    assert await tab.closed() == 1013
    assert "new carts" in tab.close_reason


async def test_one_sweep_releases_every_due_reservation(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood of holds comes back in one pass of the sweeper, batch after batch."""
    monkeypatch.setattr(settlement_module, "SWEEP_BATCH", 3)
    settings = Settings(database_url=database_url, max_checkouts_per_ip=100)
    store = await open_store(settings)
    await store.upsert_products([Product("p-1", "SKU-1", "One", 100, 50)])
    bus = LocalBroker().connect()
    hub = Hub(store, bus, Catalog(), settings, Metrics())
    await hub.start()
    checkouts = Checkouts(hub, store, DemoProvider(), settings, Metrics())
    try:
        for n in range(8):
            async with hub.use(f"sweep-{n}") as room:
                await room.submit(AddItem("p-1", 2))
                await checkouts.start(room, None, "203.0.113.7")
        later = utcnow() + timedelta(seconds=settings.checkout_expires_seconds + 1)
        monkeypatch.setattr(settlement_module, "utcnow", lambda: later)
        assert await checkouts.sweep() == 8
        assert await store.due_checkouts(later, 100) == []
        products, _ = await store.load_products()
        assert [p.stock for p in products] == [50]
    finally:
        await hub.close()
        await bus.close()
        await store.close()


async def test_idempotent_answers_are_kept_for_the_last_versions_only_and_never_reapplied(
    server: ServerProcess,
) -> None:
    async with rest(server) as client:
        first = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"Idempotency-Key": "k-0"}
        )
        client.headers["X-Cart-Id"] = first.headers["x-cart-id"]
        cart_id = first.json()["id"]
        for n in range(1, ANSWERS_PER_CART + 10):
            answer = await client.post(
                "/api/cart/items",
                json={"product_id": "p-002"},
                headers={"Idempotency-Key": f"k-{n}"},
            )
            assert answer.status_code == 200
        kept = query(
            server.db,
            "SELECT count(*) FROM applied_mutations WHERE cart_id = ? AND response IS NOT NULL",
            cart_id,
        )
        assert kept == [(ANSWERS_PER_CART,)]
        now = (await client.get("/api/cart")).json()
        # The oldest key: its answer is gone, yet it is not applied again.
        replay = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"Idempotency-Key": "k-0"}
        )
        assert replay.status_code == 200 and replay.json() == now
        assert replay.headers["etag"] == f'"{now["version"]}"'
        # A recent key still gets its own first answer.
        last = ANSWERS_PER_CART + 9
        recent = await client.post(
            "/api/cart/items",
            json={"product_id": "p-002"},
            headers={"Idempotency-Key": f"k-{last}"},
        )
        assert recent.json() == answer.json()
        assert (await client.get("/api/cart")).json() == now


# --- 6. absolute URLs never come from the Host header -----------------------------------


async def test_a_forged_host_header_reaches_no_stored_or_returned_url(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server().start()
    async with rest(server) as client:
        client.headers["Host"] = "evil.test"
        await add(client, "p-001")
        client.headers["X-Cart-Id"] = (await client.get("/api/cart")).headers["x-cart-id"]
        started = (await client.post("/api/cart/checkout")).json()
        assert started["checkout_url"].startswith("/checkout/demo/")
        again = (await client.post("/api/cart/checkout")).json()  # the stored one
        assert again == started
        cancelled = await client.post(f"{started['checkout_url']}/cancel")
        assert cancelled.headers["location"] == "/?checkout=cancelled"
    assert "evil.test" not in str(rows(server, "SELECT * FROM checkouts"))


async def test_allowed_hosts_refuses_any_other_host(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"ALLOWED_HOSTS": "127.0.0.1"}).start()
    async with rest(server) as client:
        assert (await client.get("/api/cart")).status_code == 200
        refused = await client.get("/api/cart", headers={"Host": "evil.test"})
        assert refused.status_code == 400
        assert "set-cookie" not in refused.headers
    with pytest.raises(websockets.InvalidStatus) as refused_socket:
        url = f"ws://evil.test:{server.port}/api/cart/ws"  # the Host header it sends
        await websockets.connect(url, host="127.0.0.1", port=server.port, proxy=None)
    assert refused_socket.value.response.status_code == 400


def test_stripe_mode_needs_a_public_url() -> None:
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        Settings.from_env({"STRIPE_SECRET_KEY": "sk_test_x"})
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        Settings.from_env({"PUBLIC_URL": "javascript:alert(1)"})
    ok = Settings.from_env({"STRIPE_SECRET_KEY": "sk_test_x", "PUBLIC_URL": "https://shop.test/"})
    assert ok.public_url == "https://shop.test"


# --- 7. inputs that once answered 500 ---------------------------------------------------


async def test_invalid_utf8_in_a_json_string_is_400_and_logs_nothing(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"CART_AUTH_SECRET": AUTH, "DEMO_LOGIN": "1"}).start()
    bodies = {
        "/api/cart/items": b'{"product_id":"p-\xff\xfe"}',
        "/api/cart/login": b'{"token":"\xc3\x28"}',
        "/api/demo/login": b'{"user":"\xed\xa0\x80"}',
    }
    async with rest(server) as client:
        for path, body in bodies.items():
            answer = await client.post(
                path, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"]["code"] == "invalid_json"
    server.stop()
    assert "Traceback" not in server.log() and "unhandled" not in server.log()


async def test_a_since_of_thousands_of_digits_gets_a_snapshot(server: ServerProcess) -> None:
    async with rest(server) as client:
        signed = (await client.post("/api/cart/items", json={"product_id": "p-001"})).headers[
            "x-cart-id"
        ]
    # Past 4,300 digits int() refuses the text: the query is written out by hand.
    tab = await Tab.open(server, signed, client_id=f"huge&since={'9' * 5000}")
    snapshot = await tab.next("snapshot")
    assert lines(snapshot["cart"]) == [("p-001", 1)]
    await tab.close()
    async with rest(server, signed) as client:
        answer = await client.get("/api/cart/changes", params={"since": "9" * 5000, "wait": 0})
        assert answer.status_code == 422


# --- 10. the Origin check, full matches, /metrics and the server header ------------------


async def test_the_origin_must_match_scheme_host_and_port(server: ServerProcess) -> None:
    host = f"127.0.0.1:{server.port}"
    foreign = [f"HTTP://{host.upper()}", f"https://{host}", f"evil://{host}", f"ws://{host}"]
    async with rest(server) as client:
        for origin in foreign:
            answer = await client.post(
                "/api/cart/items", json={"product_id": "p-001"}, headers={"Origin": origin}
            )
            assert answer.status_code == 403, origin
        own = await client.post(
            "/api/cart/items", json={"product_id": "p-001"}, headers={"Origin": f"http://{host}"}
        )
        assert own.status_code == 200
    for origin in foreign:
        tab = await Tab.open(server, origin=origin)
        assert await tab.closed() == 1008, origin


async def test_a_cross_site_request_without_origin_is_refused(server: ServerProcess) -> None:
    async with rest(server) as client:
        cross = await client.post(
            "/api/cart/items",
            json={"product_id": "p-001"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert cross.status_code == 403
        for site in ("same-origin", "none"):
            answer = await client.post(
                "/api/cart/items", json={"product_id": "p-001"}, headers={"Sec-Fetch-Site": site}
            )
            assert answer.status_code == 200, site
    tab = await Tab.open(server, headers={"Sec-Fetch-Site": "cross-site"})
    assert await tab.closed() == 1008


async def test_values_with_a_trailing_newline_are_not_accepted(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"DEMO_LOGIN": "1"}).start()
    async with rest(server) as client:
        assert (await client.post("/api/demo/login", json={"user": "alice"})).status_code == 200
        answer = await client.post("/api/demo/login", json={"user": "alice\n"})
        assert answer.status_code == 422
    tab = await Tab.open(server, client_id="abc%0A")
    await tab.next("snapshot")
    await tab.send({"type": "add", "id": "m1", "product_id": "p-001", "quantity": 1})
    patch = await tab.next("patch")
    assert patch["origin"] not in ("abc\n", "abc") and len(patch["origin"]) == 32
    await tab.close()


async def test_metrics_can_ask_for_a_token_and_no_server_header_is_sent(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"METRICS_TOKEN": "metrics-token-for-tests"}).start()
    async with rest(server) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "x"}):
            refused = await client.get("/metrics", headers=headers)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"] == "Bearer"
        allowed = await client.get(
            "/metrics", headers={"Authorization": "Bearer metrics-token-for-tests"}
        )
        assert allowed.status_code == 200 and "cart_" in allowed.text
        assert "server" not in allowed.headers
    # The raw answer too: no `server:` line naming the software.
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        head = b""
        while chunk := raw.recv(4096):
            head += chunk
    assert b"200 OK" in head and b"\r\nserver:" not in head.lower()


# --- the fuzzers' share: invalid UTF-8 and huge numbers, on REST and the socket's query ---


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    path=st.sampled_from(["/api/cart/items", "/api/cart/login"]),
    before=st.binary(max_size=20),
    bad=st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]),
    after=st.binary(max_size=20),
)
def test_bodies_with_broken_utf8_never_get_a_server_error(
    server: ServerProcess, path: str, before: bytes, bad: bytes, after: bytes
) -> None:
    body = b'{"product_id":"' + before.replace(b'"', b"") + bad + after.replace(b'"', b"") + b'"}'
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code < 500, answer.text
    assert answer.json()["error"]["code"] in {"invalid_json", "invalid_request"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Up to the request line's 8 KiB: past it the socket's handshake answers 414 before the app.
@given(digits=st.integers(1, 7_000), lead=st.sampled_from("123456789"))
def test_any_length_of_since_is_answered(server: ServerProcess, digits: int, lead: str) -> None:
    since = lead + "9" * (digits - 1)
    url = f"{server.ws_url}?since={since}"
    with httpx.Client(base_url=server.url, trust_env=False) as client:
        polled = client.get("/api/cart/changes", params={"since": since, "wait": 0})
    assert polled.status_code in (200, 422), polled.text

    async def first_frame() -> str:
        async with websockets.connect(url, proxy=None, max_size=2**22) as ws:
            return str(json.loads(await ws.recv())["type"])

    assert asyncio.run(first_frame()) == "snapshot"
