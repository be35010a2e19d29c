"""One user on several devices (separate cookie jars, the same user token): one cart, one
room, each device's edits pushed to the others. Tokens come from the demo login here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.lifecycle_support import cookie, device, query, unsign
from tests.support import ServerProcess, Tab


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # DEMO_LOGIN without CART_AUTH_SECRET: tokens signed with a key derived from CART_SECRET.
    proc = ServerProcess(tmp_path_factory.mktemp("devices"), {"DEMO_LOGIN": "1"}).start()
    yield proc
    proc.stop()


async def demo_token(server: ServerProcess, user: str) -> str:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        response = await client.post("/api/demo/login", json={"user": user})
    assert response.status_code == 200, response.text
    body: dict[str, str] = response.json()
    assert body["user_id"] == f"demo:{user}"
    return body["token"]


async def login(client: httpx.AsyncClient, token: str) -> dict[str, Any]:
    response = await client.post("/api/cart/login", json={"token": token})
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


async def test_the_demo_login_refuses_bad_names(server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=server.url, trust_env=False) as client:
        for body in ({"user": "no spaces"}, {"user": "x" * 33}, {}):
            response = await client.post("/api/demo/login", json=body)
            assert response.status_code == 422, body


async def test_two_devices_of_one_user_share_one_room(server: ServerProcess) -> None:
    token = await demo_token(server, "alice")
    async with device(server) as phone, device(server) as laptop:
        await laptop.post("/api/cart/items", json={"product_id": "p-001"})  # before login
        on_phone = await login(phone, token)
        on_laptop = await login(laptop, token)
        assert on_phone["id"] == on_laptop["id"]
        assert cookie(phone) == cookie(laptop)
        phone_tab = await Tab.open(server, cookie=cookie(phone), client_id="phone")
        laptop_tab = await Tab.open(server, cookie=cookie(laptop), client_id="laptop")
        start = (await phone_tab.next("snapshot"))["cart"]
        assert (await laptop_tab.next("snapshot"))["cart"]["version"] == start["version"]
        assert [i["product_id"] for i in start["items"]] == ["p-001"]  # the laptop's, merged

        # An edit on one device is the very next patch on the other.
        await phone_tab.send({"type": "add", "id": "1", "product_id": "p-002", "quantity": 2})
        seen = await laptop_tab.next("patch")
        assert (seen["version"], seen["origin"]) == (start["version"] + 1, "phone")
        assert seen["ops"][0]["item"]["product_id"] == "p-002"
        await laptop_tab.send({"type": "set", "id": "1", "product_id": "p-001", "quantity": 5})
        await phone_tab.next("patch")  # its own add
        seen = await phone_tab.next("patch")
        assert (seen["version"], seen["origin"]) == (start["version"] + 2, "laptop")
        assert seen["ops"][0]["item"]["quantity"] == 5
        # REST from either device lands in the same cart.
        doc = (await laptop.get("/api/cart")).json()
        assert (doc["id"], doc["version"], doc["item_count"]) == (
            start["id"],
            start["version"] + 2,
            7,
        )
        for tab in (phone_tab, laptop_tab):
            await tab.close()


async def test_devices_logging_in_at_once_end_up_in_one_new_cart(server: ServerProcess) -> None:
    for round_ in range(5):
        user = f"new-{round_}"
        token = await demo_token(server, user)
        devices = [device(server) for _ in range(3)]
        try:
            for n, client in enumerate(devices):  # each brings an anonymous cart of its own
                await client.post("/api/cart/items", json={"product_id": f"p-{40 + n:03d}"})
            async with asyncio.timeout(20):
                carts = await asyncio.gather(*(login(client, token) for client in devices))
            final = (await devices[0].get("/api/cart")).json()
            cookies = {unsign(cookie(client)) for client in devices}
        finally:
            for client in devices:
                await client.aclose()
        # The first to store the user's cart won; the others found it and merged into it.
        assert len({cart["id"] for cart in carts}) == 1
        assert cookies == {final["id"]}
        assert sorted(i["product_id"] for i in final["items"]) == ["p-040", "p-041", "p-042"]
        assert final["version"] == 3  # one merge each, nothing lost, nothing twice
        open_carts = query(
            server.db,
            "SELECT id FROM cart_sessions WHERE user_id = ?"
            " AND status IN ('active', 'checking_out', 'abandoned')",
            f"demo:{user}",
        )
        assert open_carts == [(final["id"],)]
