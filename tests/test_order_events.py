"""Order events: a demo payment writes the order and its `order_paid` event in one
transaction; the event reaches CART_EVENTS_WEBHOOK_URL signed like every cart event, with
the order document the admin API serves, and `python -m server events` lists it."""

from __future__ import annotations

import json
from collections.abc import Callable

import httpx

from tests.lifecycle_support import until
from tests.support import ServerProcess, rest
from tests.test_admin import BEARER, TOKEN, buy
from tests.test_outbox import EVENTS_SECRET, Receiver, verify


async def test_a_demo_payment_sends_a_signed_order_paid_event(
    make_server: Callable[..., ServerProcess],
) -> None:
    receiver = Receiver(failures=1)  # the first try fails: retried like any event
    try:
        server = make_server(
            {
                "CART_EVENTS_WEBHOOK_URL": receiver.url,
                "CART_EVENTS_SECRET": EVENTS_SECRET,
                "ADMIN_TOKEN": TOKEN,
            }
        ).start()
        cart_id = await buy(server, [("p-030", 2), ("p-031", 1)])

        def delivered() -> list[dict[str, object]] | None:
            ok = [call for call in receiver.calls if call["status"] == 200]
            return ok or None

        [call] = await until(delivered, 10, "the order event to be delivered")
        headers = {k.lower(): v for k, v in call["headers"].items()}
        assert headers["cart-event-type"] == "order_paid"
        assert verify(EVENTS_SECRET, headers["cart-signature"], call["body"])
        assert not verify("another secret", headers["cart-signature"], call["body"])
        event = json.loads(call["body"])
        async with httpx.AsyncClient(base_url=server.url, headers=BEARER) as admin:
            orders = (await admin.get("/api/admin/orders")).json()["orders"]
        [order] = orders
        assert event == {**order, "type": "order_paid", "at": order["created_at"]}
        assert order["cart_id"] == cart_id and order["status"] == "paid"
        assert [(i["product_id"], i["quantity"]) for i in order["items"]] == [
            ("p-030", 2),
            ("p-031", 1),
        ]
        assert order["amount_cents"] == 2 * 3099 + 3199
        assert len(receiver.calls) == 2  # one failure, one delivery, no more
        assert receiver.calls[0]["body"] == call["body"]

        listed = server.cli("events")
        assert listed.returncode == 0, listed.stderr
        [line] = [json.loads(x) for x in listed.stdout.splitlines()]
        assert (line["type"], line["cart_id"], line["attempts"]) == ("order_paid", cart_id, 2)
        assert line["payload"] == event and line["delivered_at"] is not None
        async with rest(server) as client:  # the cart moved on; the order stays
            assert (await client.get("/api/cart")).json()["items"] == []
    finally:
        receiver.close()
