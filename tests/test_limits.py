"""Every limit, configured small, against a real server: frame and body size, tabs per cart,
connections per address, mutations per second per cart (shared by its tabs and REST) and
per connection. A refusal changes nothing; a connection that keeps going is closed (1008).

Lines per cart (100) and quantity per line (999) are protocol constants, pinned in
test_e2e_api.py (`too_many_lines`, `quantity_limit`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import websockets

from server import errors
from server.limits import TokenBucket, admit
from tests.support import ServerProcess, Tab, rest

LIMITS = {
    "MAX_FRAME_BYTES": "256",
    "WS_MAX_SIZE": "1024",
    "MAX_BODY_BYTES": "512",
    "MAX_TABS_PER_CART": "3",
    "CART_RATE_LIMIT": "0.5",
    "CART_RATE_BURST": "12",
    "CONNECTION_RATE_LIMIT": "0.5",
    "CONNECTION_RATE_BURST": "8",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("limited"), LIMITS).start()
    yield proc
    proc.stop()


async def new_cart(server: ServerProcess) -> str:
    async with rest(server) as client:
        signed: str = (await client.get("/api/cart")).headers["x-cart-id"]
    return signed


async def cart(server: ServerProcess, signed: str) -> dict[str, Any]:
    async with rest(server, signed) as client:
        doc: dict[str, Any] = (await client.get("/api/cart")).json()
    return doc


async def opened(server: ServerProcess, signed: str | None, **kw: Any) -> Tab:
    tab = await Tab.open(server, signed, **kw)
    assert (await tab.next())["type"] == "snapshot"
    return tab


def add(n: int, product: str = "p-001") -> dict[str, Any]:
    return {"type": "add", "id": f"a{n}", "product_id": product, "quantity": 1}


async def answers(tab: Tab, count: int) -> list[dict[str, Any]]:
    """The next `count` acks and errors, skipping patches and presence."""
    found = []
    while len(found) < count:
        frame = await tab.next()
        if frame["type"] in ("ack", "error"):
            found.append(frame)
    return found


# --- sizes -----------------------------------------------------------------------------


async def test_a_text_frame_over_max_frame_bytes_is_invalid_and_over_ws_max_size_closes(
    limited: ServerProcess,
) -> None:
    signed = await new_cart(limited)
    tab = await opened(limited, signed)
    await tab.send(json.dumps({**add(1), "pad": "x" * 300}))  # 300 > 256
    error = await tab.next("error")
    assert error["code"] == "invalid_message" and "256 bytes" in error["message"]
    await tab.send(json.dumps({**add(2), "pad": "x" * 2000}))  # 2000 > 1024
    assert await tab.closed() == 1009
    assert (await cart(limited, signed))["version"] == 0


async def test_a_body_over_max_body_bytes_is_413(limited: ServerProcess) -> None:
    signed = await new_cart(limited)
    async with rest(limited, signed) as client:
        body = {"product_id": "p-001", "quantity": 1, "pad": "x" * 600}
        response = await client.post("/api/cart/items", json=body)
        assert response.status_code == 413
        assert response.json()["error"] == {
            "code": "payload_too_large", "message": "the body is over 512 bytes", "limit": 512,
        }  # fmt: skip
        small = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 1})
        assert small.status_code == 200 and small.json()["version"] == 1


# --- tabs per cart ---------------------------------------------------------------------


async def test_a_tab_past_max_tabs_per_cart_is_closed_with_1008_and_a_reason(
    limited: ServerProcess,
) -> None:
    signed = await new_cart(limited)
    tabs = [await opened(limited, signed) for _ in range(3)]
    extra = await Tab.open(limited, signed)
    assert await extra.closed() == 1008
    assert extra.close_reason == "too many tabs on this cart"
    assert extra.log == []  # not even a snapshot of the cart
    other = await opened(limited, await new_cart(limited))  # the limit is per cart

    await tabs[0].close()
    while (await tabs[1].next("presence"))["tabs"] != 2:
        pass  # the server has let the closed tab go
    again = await opened(limited, signed)  # room again
    for tab in (*tabs[1:], other, again):
        await tab.close()


# --- mutations per second --------------------------------------------------------------


async def test_one_connection_gets_its_burst_then_rate_limited_errors(
    limited: ServerProcess,
) -> None:
    signed = await new_cart(limited)
    tab = await opened(limited, signed)
    for n in range(12):  # all at once: 8 fit the connection's burst
        await tab.send(add(n))
    found = await answers(tab, 12)
    acked = [f for f in found if f["type"] == "ack"]
    limited_ = [f for f in found if f["type"] == "error"]
    assert 8 <= len(acked) <= 9  # the burst, plus what refilled meanwhile at 0.5/s
    assert {f["code"] for f in limited_} == {"rate_limited"}
    assert all(0 < f["retry_after"] <= 2 for f in limited_)
    assert (await cart(limited, signed))["version"] == len(acked)  # refusals changed nothing

    # The cart's own allowance (12) is not used up: another tab of it may still add.
    second = await opened(limited, signed)
    await second.send(add(100, "p-002"))
    assert (await answers(second, 1))[0]["type"] == "ack"
    await tab.close()
    await second.close()


async def test_more_tabs_do_not_multiply_a_carts_allowance_and_rest_shares_it(
    limited: ServerProcess,
) -> None:
    signed = await new_cart(limited)
    tabs = [await opened(limited, signed) for _ in range(3)]
    for n in range(6):  # 18 in all, each tab within its own burst of 8
        for t, tab in enumerate(tabs):
            await tab.send(add(n, f"p-00{t + 1}"))
    found = [frame for tab in tabs for frame in await answers(tab, 6)]
    acked = sum(1 for f in found if f["type"] == "ack")
    assert 12 <= acked <= 13  # the cart's burst, not three tabs' worth
    assert {f["code"] for f in found if f["type"] == "error"} == {"rate_limited"}

    async with rest(limited, signed) as client:
        response = await client.post("/api/cart/items", json={"product_id": "p-009"})
    assert response.status_code == 429
    assert response.headers["retry-after"].isdigit()
    assert 1 <= int(response.headers["retry-after"]) <= 2
    error = response.json()["error"]
    assert error["code"] == "rate_limited" and 0 < error["retry_after"] <= 2
    doc = await cart(limited, signed)
    assert doc["version"] == acked
    assert "p-009" not in {i["product_id"] for i in doc["items"]}
    for tab in tabs:
        await tab.close()


async def test_a_connection_that_keeps_going_past_the_limit_is_closed_with_1008(
    limited: ServerProcess,
) -> None:
    signed = await new_cart(limited)
    tab = await opened(limited, signed)
    with contextlib.suppress(websockets.ConnectionClosed):
        for n in range(40):
            await tab.send(add(n))
    assert await tab.closed() == 1008
    acked = [f for f in tab.log if f["type"] == "ack"]
    refused = [f for f in tab.log if f["type"] == "error"]
    assert 8 <= len(acked) <= 9
    assert 10 <= len(refused) <= 11  # a burst of strikes is answered, then the close
    assert {f["code"] for f in refused} == {"rate_limited"}
    assert (await cart(limited, signed))["version"] == len(acked)


# --- connections per address -----------------------------------------------------------


@contextlib.asynccontextmanager
async def tabs_open(server: ServerProcess, count: int, **kw: Any) -> Any:
    tabs = [await opened(server, None, **kw) for _ in range(count)]
    try:
        yield tabs
    finally:
        for tab in tabs:
            await tab.close()


async def test_connections_past_the_per_address_limit_are_refused(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"MAX_CONNECTIONS_PER_IP": "4"}).start()
    async with tabs_open(server, 4):
        extra = await Tab.open(server)
        assert await extra.closed() == 1008
        assert extra.close_reason == "too many connections from this address"
        async with rest(server) as client:  # a long-poll holds a connection too
            poll = await client.get("/api/cart/changes", params={"since": 0, "wait": 5})
            assert poll.status_code == 429
            assert poll.json()["error"]["code"] == "too_many_connections"
            assert poll.headers["retry-after"].isdigit()
            # Short requests are not counted.
            assert (await client.get("/api/cart")).status_code == 200
    # All closed: room for new ones (the server counts down as each handler ends).
    async with asyncio.timeout(10):
        while True:
            tab = await Tab.open(server)
            if (await tab.next())["type"] == "snapshot":
                break
    await tab.close()


async def test_the_address_is_the_one_the_server_trusts_not_any_x_forwarded_for(
    make_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    # 127.0.0.1 is a trusted proxy by default (FORWARDED_ALLOW_IPS): behind it, each
    # forwarded client address has its own allowance.
    proxied = make_server({"MAX_CONNECTIONS_PER_IP": "2"}).start()
    async with tabs_open(proxied, 2, headers={"X-Forwarded-For": "198.51.100.7"}):
        other = await opened(proxied, None, headers={"X-Forwarded-For": "198.51.100.8"})
        same = await Tab.open(proxied, None, headers={"X-Forwarded-For": "198.51.100.7"})
        assert await same.closed() == 1008
        await other.close()
    proxied.stop()

    # Not a trusted proxy: the header is the client's own claim and changes nothing.
    (tmp_path / "direct").mkdir()
    direct = ServerProcess(
        tmp_path / "direct", {"MAX_CONNECTIONS_PER_IP": "2", "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    )
    direct.start()
    try:
        async with tabs_open(direct, 2, headers={"X-Forwarded-For": "198.51.100.7"}):
            spoofed = await Tab.open(direct, None, headers={"X-Forwarded-For": "198.51.100.8"})
            assert await spoofed.closed() == 1008
    finally:
        direct.stop()


def test_admit_takes_from_every_bucket_or_from_none() -> None:
    tab, cart = TokenBucket(rate=1.0, burst=3), TokenBucket(rate=0.5, burst=1)
    admit(tab, None, cart)
    assert tab.tokens == pytest.approx(2, abs=0.01) and cart.tokens == pytest.approx(0, abs=0.01)
    with pytest.raises(errors.RateLimited) as refused:
        admit(tab, None, cart)  # the cart's is empty: the tab's keeps its tokens
    assert tab.tokens == pytest.approx(2, abs=0.01)
    assert 1.9 <= refused.value.details["retry_after"] <= 2.0  # a token at 0.5 a second


class _Sink:
    held = False

    def hold_reading(self, held: bool) -> None:
        self.held = held


async def test_past_16_mutations_in_flight_a_tab_is_not_read_until_one_is_answered() -> None:
    from server import ws

    answers: dict[str, asyncio.Future[None]] = {}
    sent: list[dict[str, Any]] = []

    async def submit(op: Any, *, key: str, **_: Any) -> Any:
        answers[key] = asyncio.get_running_loop().create_future()
        await answers[key]
        return SimpleNamespace(version=len(sent) + 1)

    room = SimpleNamespace(rate=None, cart=SimpleNamespace(id="cart"), submit=submit)
    tab = SimpleNamespace(
        client_id="tab", close_code=None, send=lambda payload: sent.append(json.loads(payload))
    )
    settings = SimpleNamespace(connection_rate=1e6, connection_burst=1e6, max_frame_bytes=4096)
    hub = SimpleNamespace(draining=asyncio.Event())
    svc = SimpleNamespace(
        settings=settings, hub=hub, metrics=SimpleNamespace(inc=lambda *a, **k: 0)
    )
    sink = _Sink()
    reader = ws._Reader(room, tab, svc, sink)  # type: ignore[arg-type]
    for n in range(40):  # one read of the socket can hold many messages
        reader(json.dumps({"type": "add", "id": f"m{n}", "product_id": "p-001", "quantity": 1}))
    while len(answers) < ws.IN_FLIGHT:
        await asyncio.sleep(0)
    assert sink.held and len(reader.waiting) == 40 - ws.IN_FLIGHT
    answers["ws:tab:m0"].set_result(None)
    while len(answers) < ws.IN_FLIGHT + 1:
        await asyncio.sleep(0)
    assert sink.held and list(answers) == [f"ws:tab:m{n}" for n in range(ws.IN_FLIGHT + 1)]
    for n in range(40):
        while f"ws:tab:m{n}" not in answers:
            await asyncio.sleep(0)
        if not answers[f"ws:tab:m{n}"].done():
            answers[f"ws:tab:m{n}"].set_result(None)
    while reader.flying:  # answered, and each one's done callback run
        await asyncio.sleep(0)
    assert [frame["id"] for frame in sent] == [f"m{n}" for n in range(40)]  # in order
    assert not sink.held and not reader.waiting and not reader.flying
