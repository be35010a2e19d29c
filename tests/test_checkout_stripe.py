"""Checkout through the official stripe library, pointed by STRIPE_API_BASE at a local
stand-in that records every request (localstripe has no Checkout Sessions), and Stripe's
signed webhooks computed here with the webhook secret."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.checkout_support import (
    cart_with,
    checkouts_of,
    eventually,
    order_lines,
    orders_of,
    product,
    product_stock,
    rows,
    server_with,
    stock,
)
from tests.stripe_standin import StandIn, event, signature
from tests.support import ServerProcess, Tab, rest

KEY = "sk_test_standin"
WEBHOOK_SECRET = "whsec_test"
PUBLIC = "https://shop.example.test"
EXPIRES = 3600
SCARCE = [product(f"s-{n}", 5 if n != 4 else 10, 250 * n, f"Scarce {n}") for n in range(1, 21)]


def stripe_env(standin: StandIn, **extra: str) -> dict[str, str]:
    return {
        "STRIPE_SECRET_KEY": KEY,
        "STRIPE_API_BASE": standin.base,
        "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PUBLIC_URL": PUBLIC,
        **extra,
    }


@pytest.fixture(scope="module")
def standin() -> Iterator[StandIn]:
    running = StandIn().start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def server(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = stripe_env(standin, CHECKOUT_EXPIRES=f"{EXPIRES}s")
    proc = server_with(tmp_path_factory.mktemp("stripe"), env, SCARCE).start()
    yield proc
    proc.stop()


@pytest.fixture
def servers() -> Iterator[list[ServerProcess]]:
    """Servers a test starts itself; stopped at its end."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


@pytest.fixture(autouse=True)
def clean_standin(standin: StandIn) -> None:
    standin.create_failures.clear()
    standin.create_delay = 0.0
    standin.expire_delay = 0.0
    standin.clock_skew = 0.0
    standin.outage = False


async def checkout(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/api/cart/checkout", json={})


async def deliver(
    client: httpx.AsyncClient, payload: bytes, header: str | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if header is not None:
        headers["stripe-signature"] = header
    return await client.post("/api/webhooks/stripe", content=payload, headers=headers)


async def signed(client: httpx.AsyncClient, payload: bytes) -> httpx.Response:
    return await deliver(client, payload, signature(WEBHOOK_SECRET, payload))


def cart_row(server: ServerProcess, cart_id: str) -> tuple[str, int]:
    status, version = rows(
        server, "SELECT status, version FROM cart_sessions WHERE id = ?", (cart_id,)
    )[0]
    return status, version


# --- creating the session ----------------------------------------------------------------


async def test_the_session_is_created_with_the_snapshot_lines_and_one_idempotency_key(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-1", 2), ("p-003", 1)])
    async with client:
        before = len(standin.creates())
        sent_at = time.time()
        response = await checkout(client)
        assert response.status_code == 200, response.text
        started = response.json()
        assert set(started) == {"checkout_url", "session_id"}
        creates = standin.creates()[before:]
        assert len(creates) == 1
        create = creates[0]
        session = standin.sessions[started["session_id"]]
        assert started == {"checkout_url": session["url"], "session_id": session["id"]}
        assert session["id"].startswith("cs_test_")

        cart = (await client.get("/api/cart")).json()
        assert cart["status"] == "checking_out" and cart["version"] == doc["version"] + 1
        (checkout_id, status, session_id), *_ = checkouts_of(server, doc["id"])
        assert (status, session_id) == ("reserved", session["id"])

        form = dict(create.form)
        expires_at = int(form.pop("expires_at"))
        assert abs(expires_at - (sent_at + EXPIRES)) <= 5
        assert form == {
            "mode": "payment",
            "line_items[0][quantity]": "2",
            "line_items[0][price_data][currency]": "usd",
            "line_items[0][price_data][unit_amount]": "250",
            "line_items[0][price_data][product_data][name]": "Scarce 1",
            "line_items[0][price_data][product_data][metadata][product_id]": "s-1",
            "line_items[1][quantity]": "1",
            "line_items[1][price_data][currency]": "usd",
            "line_items[1][price_data][unit_amount]": "399",
            "line_items[1][price_data][product_data][name]": "Product 3",
            "line_items[1][price_data][product_data][metadata][product_id]": "p-003",
            "client_reference_id": doc["id"],
            "metadata[cart_id]": doc["id"],
            "metadata[cart_version]": str(cart["version"]),
            "metadata[checkout_id]": checkout_id,
            "success_url": f"{PUBLIC}/?checkout=success&session_id={{CHECKOUT_SESSION_ID}}",
            "cancel_url": f"{PUBLIC}/?checkout=cancelled",
        }
        assert create.headers["authorization"] == f"Bearer {KEY}"
        assert create.headers["idempotency-key"] == f"cart-{doc['id']}-v{cart['version']}"
        assert session["amount_total"] == 2 * 250 + 399

        # Asking again while the cart is checking out: the same session, nothing created.
        again = await checkout(client)
        assert again.status_code == 200 and again.json() == started
        assert len(standin.creates()) == before + 1
        assert stock(server, "s-1") == 3  # reserved once, not twice


async def test_two_tabs_pressing_checkout_together_open_one_session(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-10", 2)])
    async with client:
        before = len(standin.creates())
        standin.create_delay = 0.3  # the second press arrives while Stripe is answering
        answers = await asyncio.gather(*(checkout(client) for _ in range(4)))
        assert [a.status_code for a in answers] == [200] * 4
        assert len({a.json()["session_id"] for a in answers}) == 1
        assert len(standin.creates()) == before + 1
        assert len(checkouts_of(server, doc["id"])) == 1
        assert stock(server, "s-10") == 3


@pytest.mark.parametrize("failure", ["500", "drop", "drop_after_create"])
async def test_a_failed_create_is_retried_with_the_same_key_and_makes_one_session(
    server: ServerProcess, standin: StandIn, failure: str
) -> None:
    client, _, doc = await cart_with(server, [("p-010", 1)])
    async with client:
        before = len(standin.creates())
        standin.create_failures.append(failure)
        response = await checkout(client)
        assert response.status_code == 200, response.text
        creates = standin.creates()[before:]
        assert len(creates) == 2  # the library's retry
        keys = {c.headers["idempotency-key"] for c in creates}
        assert keys == {f"cart-{doc['id']}-v{doc['version'] + 1}"}
        assert creates[0].form == creates[1].form
        mine = [s for s in standin.sessions.values() if s["client_reference_id"] == doc["id"]]
        assert [s["id"] for s in mine] == [response.json()["session_id"]]


async def test_a_refused_create_releases_the_stock_and_unlocks_the_cart(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-2", 4)])
    async with client:
        standin.create_failures.append("400")
        response = await checkout(client)
        assert response.status_code == 502, response.text
        assert response.json()["error"]["code"] == "payment_provider_error"
        cart = (await client.get("/api/cart")).json()
        assert cart["status"] == "active" and cart["items"] == doc["items"]
        assert stock(server, "s-2") == 5
        assert await product_stock(client, "s-2") == 5
        assert [c[1] for c in checkouts_of(server, doc["id"])] == ["released"]
        # The shopper can try again: a new version, so a new key and a new session.
        retry = await checkout(client)
        assert retry.status_code == 200, retry.text
        assert standin.creates()[-1].headers["idempotency-key"] == (
            f"cart-{doc['id']}-v{cart['version'] + 1}"
        )
        assert stock(server, "s-2") == 1


async def test_a_stripe_clock_ahead_of_ours_still_accepts_the_default_expiry(
    standin: StandIn, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    """Stripe wants expires_at at least 30 minutes after *its* creation time; the default
    CHECKOUT_EXPIRES is exactly 30 minutes from ours."""
    server = server_with(tmp_path, stripe_env(standin))
    servers.append(server.start())
    standin.clock_skew = 3.0
    client, _, _ = await cart_with(server, [("p-011", 1)])
    async with client:
        response = await checkout(client)
        assert response.status_code == 200, response.text
        session = standin.sessions[response.json()["session_id"]]
        assert session["expires_at"] - session["created"] >= 30 * 60


# --- webhooks ----------------------------------------------------------------------------


async def paid_session(
    server: ServerProcess, standin: StandIn, lines: list[tuple[str, int]]
) -> tuple[httpx.AsyncClient, dict[str, Any], dict[str, Any]]:
    """A cart checked out at Stripe and paid there; (client, cart doc, paid session)."""
    client, signed_id, doc = await cart_with(server, lines)
    async with client:
        response = await checkout(client)
    assert response.status_code == 200, response.text
    return rest(server, signed_id), doc, standin.pay(response.json()["session_id"])


async def test_a_signed_completed_event_makes_one_order_with_the_paid_amounts(
    server: ServerProcess, standin: StandIn
) -> None:
    client, doc, session = await paid_session(server, standin, [("s-3", 2), ("p-004", 3)])
    async with client:
        # A coupon at Stripe: the order carries what was paid, the lines what was sold.
        payload = event("checkout.session.completed", session, amount_total=1000)
        answer = await signed(client, payload)
        assert answer.status_code == 200 and answer.json() == {"received": True}
        (order,) = orders_of(server, doc["id"])
        (checkout_id, status, _), *_ = checkouts_of(server, doc["id"])
        assert status == "paid"
        assert order["checkout_id"] == checkout_id
        assert order["session_id"] == session["id"]
        assert order["payment_intent"] == session["payment_intent"]
        assert (order["amount_total_cents"], order["currency"], order["status"]) == (
            1000,
            "usd",
            "paid",
        )
        assert order_lines(server, order["id"]) == [
            ("p-004", "SKU-004", "Product 4", 3, 499, 1497),
            ("s-3", "SKU-S-3", "Scarce 3", 2, 750, 1500),
        ]
        assert cart_row(server, doc["id"])[0] == "checked_out"
        assert stock(server, "s-3") == 3  # sold: the reservation is not given back

        # The shopper's next request gets a fresh, empty cart.
        fresh = await client.get("/api/cart")
        assert fresh.json()["id"] != doc["id"] and fresh.json()["items"] == []

        # Redelivered (same event id): 200, nothing new.
        again = await signed(client, payload)
        assert again.status_code == 200
        assert len(orders_of(server, doc["id"])) == 1
        # The same payment told again under another event id: still one order.
        other = event("checkout.session.async_payment_succeeded", session)
        assert (await signed(client, other)).status_code == 200
        assert len(orders_of(server, doc["id"])) == 1

        # Out of order: `expired` after `completed` keeps the order and the stock sold.
        late = event("checkout.session.expired", {**session, "status": "expired"})
        assert (await signed(client, late)).status_code == 200
        assert len(orders_of(server, doc["id"])) == 1
        assert checkouts_of(server, doc["id"])[0][1] == "paid"
        assert stock(server, "s-3") == 3
        events = {r[0] for r in rows(server, "SELECT event_id FROM payment_events")}
        for sent in (payload, other, late):
            assert json.loads(sent)["id"] in events


@pytest.mark.parametrize("case", ["tampered", "stale", "missing", "wrong_secret", "garbage"])
async def test_a_webhook_that_does_not_verify_changes_nothing(
    server: ServerProcess, standin: StandIn, case: str
) -> None:
    client, doc, session = await paid_session(server, standin, [("s-4", 1)])
    async with client:
        payload = event("checkout.session.completed", session)
        header: str | None = signature(WEBHOOK_SECRET, payload)
        if case == "tampered":
            payload = payload.replace(b'"amount_total": 1000', b'"amount_total": 1')
            payload = payload.replace(b'"livemode": false', b'"livemode": true')
        elif case == "stale":
            header = signature(WEBHOOK_SECRET, payload, int(time.time()) - 301)
        elif case == "missing":
            header = None
        elif case == "wrong_secret":
            header = signature("whsec_other", payload)
        else:
            header = "t=1,v1=nothex"
        before = cart_row(server, doc["id"])
        reserved = stock(server, "s-4")
        answer = await deliver(client, payload, header)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["code"] == "bad_signature"
        assert orders_of(server, doc["id"]) == []
        assert cart_row(server, doc["id"]) == before == ("checking_out", doc["version"] + 1)
        assert checkouts_of(server, doc["id"])[0][1] == "reserved"
        assert stock(server, "s-4") == reserved
        event_id = json.loads(payload)["id"]
        assert not rows(server, "SELECT 1 FROM payment_events WHERE event_id = ?", (event_id,))
        # Within the tolerance, the same event verifies and settles.
        assert (
            await signed(client, event("checkout.session.completed", session))
        ).status_code == 200
        assert len(orders_of(server, doc["id"])) == 1
        assert stock(server, "s-4") == reserved


async def test_an_unpaid_completed_event_waits_for_the_async_payment(
    server: ServerProcess, standin: StandIn
) -> None:
    client, doc, session = await paid_session(server, standin, [("p-005", 1)])
    async with client:
        pending = event("checkout.session.completed", {**session, "payment_status": "unpaid"})
        assert (await signed(client, pending)).status_code == 200
        assert orders_of(server, doc["id"]) == []
        assert cart_row(server, doc["id"])[0] == "checking_out"
        failed = event("checkout.session.async_payment_failed", session)
        assert (await signed(client, failed)).status_code == 200
        assert orders_of(server, doc["id"]) == []
        assert cart_row(server, doc["id"])[0] == "active"


async def test_an_expired_event_releases_the_stock_and_unlocks_the_cart(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-5", 3)])
    async with client:
        started = (await checkout(client)).json()
        assert stock(server, "s-5") == 2
        session = dict(standin.sessions[started["session_id"]], status="expired")
        payload = event("checkout.session.expired", session)
        assert (await signed(client, payload)).status_code == 200
        assert stock(server, "s-5") == 5
        assert cart_row(server, doc["id"])[0] == "active"
        assert (await client.get("/api/cart")).json()["status"] == "active"
        assert (await signed(client, payload)).status_code == 200  # redelivered
        assert stock(server, "s-5") == 5


async def test_paid_after_expiry_keeps_the_order_and_flags_it_when_stock_ran_out(
    server: ServerProcess, standin: StandIn
) -> None:
    """Stripe took the money for a session our side had already released (the expired
    event won the race): the order stands; it needs review if the stock went meanwhile."""
    first, _, doc = await cart_with(server, [("s-6", 4), ("s-7", 1)])
    async with first:
        started = (await checkout(first)).json()
        session = standin.sessions[started["session_id"]]
        expired = event("checkout.session.expired", {**session, "status": "expired"})
        assert (await signed(first, expired)).status_code == 200
        assert (stock(server, "s-6"), stock(server, "s-7")) == (5, 5)
        # Someone else buys two of s-6 meanwhile.
        second, _, _ = await cart_with(server, [("s-6", 2)])
        async with second:
            assert (await checkout(second)).status_code == 200
        assert stock(server, "s-6") == 3
        paid = {**standin.pay(session["id"])}
        assert (await signed(first, event("checkout.session.completed", paid))).status_code == 200
        (order,) = orders_of(server, doc["id"])
        assert order["status"] == "needs_review"
        # s-7 was there and is taken again; s-6 (4 wanted, 3 left) is not, never below zero.
        assert (stock(server, "s-6"), stock(server, "s-7")) == (3, 4)
        assert cart_row(server, doc["id"])[0] == "active"  # it had moved on already


async def test_the_success_redirect_racing_the_webhook_makes_exactly_one_order(
    server: ServerProcess, standin: StandIn
) -> None:
    for _ in range(6):
        client, doc, session = await paid_session(server, standin, [("p-006", 1)])
        async with client:
            payload = event("checkout.session.completed", session)
            confirm, hook = await asyncio.gather(
                client.post("/api/cart/checkout/confirm"), signed(client, payload)
            )
            assert confirm.status_code == 200, confirm.text
            assert hook.status_code == 200, hook.text
            # Whoever came first, the shopper is answered with the fresh cart.
            assert confirm.json()["id"] != doc["id"] and confirm.json()["items"] == []
            (order,) = orders_of(server, doc["id"])
            assert order["amount_total_cents"] == session["amount_total"]
            event_id = json.loads(payload)["id"]
            assert rows(server, "SELECT 1 FROM payment_events WHERE event_id = ?", (event_id,))


async def test_confirm_before_payment_changes_nothing(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("p-007", 1)])
    async with client:
        assert (await checkout(client)).status_code == 200
        response = await client.post("/api/cart/checkout/confirm")
        assert response.status_code == 200
        assert response.json()["id"] == doc["id"]
        assert response.json()["status"] == "checking_out"
        assert orders_of(server, doc["id"]) == []


# --- cancel ------------------------------------------------------------------------------


async def test_cancel_expires_the_session_releases_and_unlocks(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-8", 5)])
    async with client:
        started = (await checkout(client)).json()
        assert stock(server, "s-8") == 0
        response = await client.post("/api/cart/checkout/cancel")
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "active"
        assert standin.sessions[started["session_id"]]["status"] == "expired"
        assert stock(server, "s-8") == 5
        assert (await client.post("/api/cart/checkout/cancel")).status_code == 200  # twice: fine


async def test_cancel_after_the_payment_went_through_keeps_the_order(
    server: ServerProcess, standin: StandIn
) -> None:
    client, doc, session = await paid_session(server, standin, [("s-9", 1)])
    async with client:
        response = await client.post("/api/cart/checkout/cancel")
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "checkout_completed"
        assert stock(server, "s-9") == 4
        assert (
            await signed(client, event("checkout.session.completed", session))
        ).status_code == 200
        assert len(orders_of(server, doc["id"])) == 1


async def test_stripe_unreachable_keeps_the_hold_and_says_so(
    server: ServerProcess, standin: StandIn
) -> None:
    client, _, doc = await cart_with(server, [("s-11", 2)])
    async with client:
        assert (await checkout(client)).status_code == 200
        standin.outage = True
        cancel = await client.post("/api/cart/checkout/cancel")
        assert cancel.status_code == 502, cancel.text
        assert cancel.json()["error"]["code"] == "payment_provider_error"
        # Not knowing whether it can still be paid, the stock stays held.
        assert cart_row(server, doc["id"])[0] == "checking_out"
        assert stock(server, "s-11") == 3
        confirm = await client.post("/api/cart/checkout/confirm")
        assert confirm.status_code == 200 and confirm.json()["status"] == "checking_out"
        standin.outage = False
        assert (await client.post("/api/cart/checkout/cancel")).status_code == 200
        assert stock(server, "s-11") == 5


# --- a slow Stripe holds up no other tab ------------------------------------------------

SLOW = 3.0  # seconds the stand-in takes to answer: far past what another tab may wait
ANSWERED_WITHIN = 0.1  # a bound on blocking, not a speed figure: the lock is not held


async def test_a_slow_create_holds_up_no_other_tab_of_the_cart(
    server: ServerProcess, standin: StandIn
) -> None:
    client, signed_id, _ = await cart_with(server, [("s-12", 1)])
    other = rest(server, signed_id)
    tab = await Tab.open(server, signed_id)
    async with client, other:
        try:
            assert (await tab.next())["type"] == "snapshot"
            assert (await other.get("/api/cart")).status_code == 200  # connected beforehand
            before = len(standin.creates())
            standin.create_delay = SLOW
            pressing = asyncio.create_task(checkout(client))
            # Stripe has the request (the stock is reserved and committed by then).
            await eventually(lambda: len(standin.creates()), lambda n: n > before)
            async with asyncio.timeout(ANSWERED_WITHIN):
                edit = await other.post("/api/cart/items", json={"product_id": "p-001"})
            assert edit.status_code == 409 and edit.json()["error"]["code"] == "cart_locked"
            async with asyncio.timeout(ANSWERED_WITHIN):
                await tab.send({"type": "add", "id": "m1", "product_id": "p-001", "quantity": 1})
                error = await tab.next("error")
            assert (error["id"], error["code"]) == ("m1", "cart_locked")
            async with asyncio.timeout(ANSWERED_WITHIN):
                read = await other.get("/api/cart")
            assert read.json()["status"] == "checking_out"
            assert not pressing.done()  # all the while, Stripe had not answered
            response = await pressing
            assert response.status_code == 200, response.text
            assert response.json()["session_id"] in standin.sessions
            assert len(standin.creates()) == before + 1
            assert stock(server, "s-12") == 4
        finally:
            await tab.close()


async def test_a_slow_expire_on_cancel_holds_up_no_other_tab_of_the_cart(
    server: ServerProcess, standin: StandIn
) -> None:
    client, signed_id, doc = await cart_with(server, [("s-13", 2)])
    other = rest(server, signed_id)
    async with client, other:
        started = (await checkout(client)).json()
        assert (await other.get("/api/cart")).status_code == 200  # connected beforehand
        before = len(standin.expires())
        standin.expire_delay = SLOW
        cancelling = asyncio.create_task(client.post("/api/cart/checkout/cancel"))
        await eventually(lambda: len(standin.expires()), lambda n: n > before)
        async with asyncio.timeout(ANSWERED_WITHIN):
            edit = await other.patch("/api/cart/items/s-13", json={"quantity": 1})
        # Still checking out until Stripe says the session can no longer be paid.
        assert edit.status_code == 409 and edit.json()["error"]["code"] == "cart_locked"
        assert stock(server, "s-13") == 3
        assert not cancelling.done()
        cancelled = await cancelling
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "active"
        assert standin.sessions[started["session_id"]]["status"] == "expired"
        assert stock(server, "s-13") == 5
        assert [c[1] for c in checkouts_of(server, doc["id"])] == ["released"]
        edit = await other.patch("/api/cart/items/s-13", json={"quantity": 1})
        assert edit.status_code == 200, edit.text


async def test_a_cancel_while_the_session_opens_closes_that_session(
    server: ServerProcess, standin: StandIn
) -> None:
    """Cancel from another tab while Stripe is still making the session: the cancel
    waits for that session and expires it, so it can never take money for stock that
    went back; the press that opened it is answered with it."""
    client, signed_id, doc = await cart_with(server, [("s-14", 1)])
    other = rest(server, signed_id)
    async with client, other:
        before = len(standin.creates())
        standin.create_delay = 1.0
        pressing = asyncio.create_task(checkout(client))
        await eventually(lambda: len(standin.creates()), lambda n: n > before)
        cancelled = await other.post("/api/cart/checkout/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "active"
        response = await pressing
        assert response.status_code == 200, response.text
        assert len(standin.creates()) == before + 1
        assert standin.sessions[response.json()["session_id"]]["status"] == "expired"
        assert [c[1] for c in checkouts_of(server, doc["id"])] == ["released"]
        assert stock(server, "s-14") == 5


# --- the sweeper asks Stripe ----------------------------------------------------------


async def test_the_sweeper_expires_open_sessions_and_recovers_lost_payments(
    standin: StandIn, tmp_path: Path, servers: list[ServerProcess]
) -> None:
    env = stripe_env(standin, CHECKOUT_EXPIRES="1s")
    server = server_with(tmp_path, env, [product("sw-1", 3)])
    servers.append(server.start())
    unpaid, _, unpaid_doc = await cart_with(server, [("sw-1", 1)])
    lost, _, lost_doc = await cart_with(server, [("sw-1", 1)])
    async with unpaid, lost:
        open_session = (await checkout(unpaid)).json()["session_id"]
        paid_session_id = (await checkout(lost)).json()["session_id"]
        standin.pay(paid_session_id)  # its `completed` webhook never arrives
        assert stock(server, "sw-1") == 1

        await eventually(lambda: cart_row(server, unpaid_doc["id"])[0], lambda s: s == "active")
        await eventually(lambda: len(orders_of(server, lost_doc["id"])), lambda n: n == 1)
        assert standin.sessions[open_session]["status"] == "expired"
        assert cart_row(server, lost_doc["id"])[0] == "checked_out"
        assert stock(server, "sw-1") == 2


def test_the_signature_check_refuses_what_stripe_did_not_sign() -> None:
    from server.payments.stripe import signed_by_stripe

    payload = '{"id": "evt_1", "type": "checkout.session.completed", "note": "caf\u00e9"}'.encode()
    assert signed_by_stripe(payload, signature("whsec_a", payload), "whsec_a", 300)
    assert not signed_by_stripe(payload, signature("whsec_b", payload), "whsec_a", 300)
    assert not signed_by_stripe(payload + b" ", signature("whsec_a", payload), "whsec_a", 300)
    stale = signature("whsec_a", payload, int(time.time()) - 301)
    assert not signed_by_stripe(payload, stale, "whsec_a", 300)
    assert not signed_by_stripe(payload, "", "whsec_a", 300)
    # Signed, yet not UTF-8: refused like any unsigned body, never a server error.
    broken = b'{"id": "evt_1\xff"}'
    assert not signed_by_stripe(broken, signature("whsec_a", broken), "whsec_a", 300)


# --- what a start loads ------------------------------------------------------------------

LOADED = """
import sys
import server.app
from server.config import Settings
from server.payments import open_provider

open_provider(Settings.from_env())
print(",".join(sorted(name for name in ("stripe", "httpx") if name in sys.modules)))
"""


@pytest.mark.parametrize(
    ("env", "loaded"),
    [
        ({}, ""),  # no Stripe, no events: a start skips both packages (a third of its time)
        # Loaded at start, not on the first event (stripe talks over httpx)
        ({"STRIPE_WEBHOOK_SECRET": "whsec_x"}, "httpx,stripe"),
        ({"STRIPE_SECRET_KEY": "sk_test_x", "PUBLIC_URL": "https://shop.test"}, "httpx,stripe"),
    ],
)
def test_a_start_loads_the_stripe_package_only_when_stripe_is_configured(
    env: dict[str, str], loaded: str
) -> None:
    base = {"PATH": "/usr/bin:/bin", "CART_SECRET": "s", "DEMO_CATALOG": "0"}
    done = subprocess.run(
        [sys.executable, "-c", LOADED], env=base | env, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == loaded
