"""End to end against a real server: many tabs, many carts, interleaved, resumed."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

from tests.support import ServerProcess, Tab, apply_patch, rest, same_items

PRODUCTS = [f"p-{n:03d}" for n in range(1, 9)]


async def new_cart(server: ServerProcess) -> str:
    async with rest(server) as client:
        response = await client.get("/api/cart")
        assert response.status_code == 200
        return response.headers["x-cart-id"]


async def follow(tab: Tab, until: int, timeout: float = 60.0) -> tuple[dict[str, Any], list[int]]:
    """Apply a tab's frames from its snapshot until version `until`: (cart, versions seen)."""
    cart = (await tab.next("snapshot"))["cart"]
    versions: list[int] = []
    async with asyncio.timeout(timeout):
        while cart["version"] < until:
            frame = await tab.next("patch")
            versions.append(frame["version"])
            cart = apply_patch(cart, frame)
    return cart, versions


async def test_ten_tabs_and_two_rest_clients_see_one_order(server: ServerProcess) -> None:
    signed = await new_cart(server)
    tabs = [await Tab.open(server, signed, client_id=f"tab{n}") for n in range(10)]
    rng = random.Random(7)
    ws_plan = {n: [rng.choice(PRODUCTS) for _ in range(40)] for n in range(10)}
    rest_plan = {n: [rng.choice(PRODUCTS) for _ in range(50)] for n in range(2)}
    total = sum(map(len, ws_plan.values())) + sum(map(len, rest_plan.values()))
    assert total == 500

    followers = [asyncio.create_task(follow(tab, total)) for tab in tabs]
    rest_acked: list[int] = []

    async def tab_sends(n: int) -> None:
        for i, product in enumerate(ws_plan[n]):  # pipelined: no waiting for acks
            await tabs[n].send({"type": "add", "id": f"m{i}", "product_id": product, "quantity": 1})
            if i % 8 == 0:
                await asyncio.sleep(0)  # let REST and other tabs interleave

    async def rest_sends(n: int) -> None:
        async with rest(server, signed) as client:
            for product in rest_plan[n]:
                response = await client.post(
                    "/api/cart/items", json={"product_id": product, "quantity": 1}
                )
                assert response.status_code == 200, response.text
                rest_acked.append(response.json()["version"])

    await asyncio.gather(*(tab_sends(n) for n in range(10)), *(rest_sends(n) for n in range(2)))
    results = await asyncio.gather(*followers)

    everything = list(range(1, total + 1))
    for _, versions in results:
        assert versions == everything  # every version exactly once, in order, no gap
    finals = [cart for cart, _ in results]
    assert all(same_items(finals[0], cart) for cart in finals[1:])

    expected = Counter(p for plan in (*ws_plan.values(), *rest_plan.values()) for p in plan)
    async with rest(server, signed) as client:
        stored = (await client.get("/api/cart")).json()
    assert stored["version"] == total
    assert {i["product_id"]: i["quantity"] for i in stored["items"]} == dict(expected)
    assert same_items(stored, finals[0])
    assert stored["item_count"] == total == finals[0]["item_count"]
    assert len(set(rest_acked)) == 100  # each REST answer names its own version

    for n, tab in enumerate(tabs):  # every tab got one ack per message, after its patch
        acks = {f["id"]: f["version"] for f in tab.log if f["type"] == "ack"}
        assert set(acks) == {f"m{i}" for i in range(40)}, n
        patched = [f["version"] for f in tab.log if f["type"] == "patch"]
        for version in acks.values():
            assert version in patched
        await tab.close()


async def test_two_hundred_carts_do_not_cross_talk(server: ServerProcess) -> None:
    carts = await asyncio.gather(*(new_cart(server) for _ in range(200)))
    tabs = await asyncio.gather(
        *(Tab.open(server, s, client_id=f"c{n}") for n, s in enumerate(carts))
    )
    plans = [[(PRODUCTS[(n + k) % 8], n % 7 + 1) for k in range(5)] for n in range(200)]

    async def drive(n: int) -> tuple[dict[str, Any], list[int]]:
        follower = asyncio.create_task(follow(tabs[n], 5))
        for k, (product, qty) in enumerate(plans[n]):
            await tabs[n].send(
                {"type": "add", "id": f"{n}-{k}", "product_id": product, "quantity": qty}
            )
        return await follower

    results = await asyncio.gather(*(drive(n) for n in range(200)))
    async with rest(server) as client:
        for n, (cart, versions) in enumerate(results):
            assert versions == [1, 2, 3, 4, 5]
            expected: Counter[str] = Counter()
            for product, qty in plans[n]:
                expected[product] += qty
            assert {i["product_id"]: i["quantity"] for i in cart["items"]} == dict(expected)
            stored = (await client.get("/api/cart", headers={"X-Cart-Id": carts[n]})).json()
            assert stored["version"] == 5 and same_items(stored, cart)
    for n, tab in enumerate(tabs):  # nothing from another cart arrived, before or after
        assert [f["origin"] for f in tab.log if f["type"] == "patch"] == [f"c{n}"] * 5
        await tab.close()


async def test_resume_with_since_gets_exactly_the_missed_patches(server: ServerProcess) -> None:
    signed = await new_cart(server)
    async with rest(server, signed) as client:
        await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 1})
        tab = await Tab.open(server, signed)
        seen = (await tab.next("snapshot"))["cart"]
        await tab.close()
        for product in PRODUCTS[:5]:
            response = await client.post("/api/cart/items", json={"product_id": product})
            assert response.status_code == 200

    tab = await Tab.open(server, signed, since=seen["version"])
    frames = [await tab.next() for _ in range(6)]
    assert [f["type"] for f in frames] == ["patch"] * 5 + ["presence"]
    assert [f["version"] for f in frames[:5]] == [2, 3, 4, 5, 6]
    cart = seen
    for frame in frames[:5]:
        cart = apply_patch(cart, frame)
    async with rest(server, signed) as client:
        assert same_items(cart, (await client.get("/api/cart")).json())
    await tab.close()

    current = await Tab.open(server, signed, since=6)  # already current: nothing to send
    assert (await current.next())["type"] == "presence"
    await current.close()


async def test_resume_from_too_old_or_unknown_version_gets_a_snapshot(
    server: ServerProcess,
) -> None:
    signed = await new_cart(server)
    async with rest(server, signed) as client:
        for n in range(103):  # history keeps 100 patches
            product = PRODUCTS[n % 8]
            response = await client.post("/api/cart/items", json={"product_id": product})
            assert response.status_code == 200
    for since in (1, 500):
        tab = await Tab.open(server, signed, since=since)
        first = await tab.next()
        assert first["type"] == "snapshot" and first["cart"]["version"] == 103
        await tab.close()
    tab = await Tab.open(server, signed, since=3)  # 4..103 are exactly the 100 kept
    assert [(await tab.next())["version"] for _ in range(100)] == list(range(4, 104))
    await tab.close()


async def test_presence_counts_open_tabs(server: ServerProcess) -> None:
    signed = await new_cart(server)
    first = await Tab.open(server, signed)
    assert (await first.next("presence"))["tabs"] == 1
    second = await Tab.open(server, signed)
    assert (await second.next("presence"))["tabs"] == 2
    assert (await first.next("presence"))["tabs"] == 2
    await second.close()
    assert (await first.next("presence"))["tabs"] == 1
    await first.close()
