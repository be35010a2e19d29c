"""Rotating CART_SECRET: with the old key in CART_SECRET_PREVIOUS, every shopper keeps the
cart and is handed an id signed with the new key; once the old key is gone, only the
renewed ids open carts."""

from __future__ import annotations

from collections.abc import Callable

from server.identity import CartIds
from tests.support import ServerProcess, Tab, rest

OLD, NEW = "the-old-cart-secret-0123456789", "the-new-cart-secret-9876543210"


def test_an_id_signed_with_a_previous_secret_reads_and_is_signed_anew() -> None:
    old = CartIds(OLD).new()
    ids = CartIds(NEW, (OLD,))
    ref = ids.resolve(old.signed)
    assert ref.cart_id == old.cart_id and ref.renewed and not ref.issued
    assert ref.signed == ids.sign(old.cart_id) != old.signed
    again = ids.resolve(ref.signed)  # the renewed id is current: nothing to renew
    assert again.cart_id == old.cart_id and not again.renewed
    assert CartIds(NEW).resolve(old.signed).issued  # without the old key: a fresh cart
    assert CartIds(NEW, ("another",)).unsign(old.signed) is None  # only the keys given


async def test_a_rotation_keeps_every_cart_and_hands_out_renewed_ids(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"CART_SECRET": OLD}).start()
    async with rest(server) as client:
        old_id = (await client.get("/api/cart")).headers["x-cart-id"]
    async with rest(server, old_id) as client:
        response = await client.post("/api/cart/items", json={"product_id": "p-001", "quantity": 2})
        assert response.status_code == 200
    server.stop()

    server.env.update({"CART_SECRET": NEW, "CART_SECRET_PREVIOUS": f"{OLD}, spare-key"})
    server.start()
    async with rest(server, old_id) as client:
        response = await client.get("/api/cart")
    new_id = response.headers["x-cart-id"]
    assert response.json()["items"][0]["quantity"] == 2  # the same cart
    assert new_id != old_id and new_id.split(".")[0] == old_id.split(".")[0]
    assert f"cart_id={new_id};" in response.headers["set-cookie"]
    # A tab that still holds the old id gets the same cart, and the new cookie with it.
    tab = await Tab.open(server, old_id)
    assert (await tab.next("snapshot"))["cart"]["items"][0]["quantity"] == 2
    assert f"cart_id={new_id};" in (tab.ws.response.headers.get("set-cookie") or "")
    await tab.close()
    server.stop()

    server.env.pop("CART_SECRET_PREVIOUS")  # the rotation is over
    server.start()
    async with rest(server, new_id) as client:
        assert (await client.get("/api/cart")).json()["items"][0]["quantity"] == 2
    async with rest(server, old_id) as client:
        stale = await client.get("/api/cart")
    assert stale.json()["items"] == [] and stale.headers["x-cart-id"] != new_id
