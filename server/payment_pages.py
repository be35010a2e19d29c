"""The payment provider's side of checkout: Stripe's signed webhook, and the demo
provider's payment page whose buttons call the same handler the webhook does."""

from __future__ import annotations

import html
import logging

import msgspec
from msgspec import Struct
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from . import errors
from .checkout import cancel_url, success_url
from .identity import COOKIE
from .render import format_money
from .settlement import Outcome
from .store import Checkout
from .web import cart_cookie, error_response, origin_allowed, services

log = logging.getLogger("server.payments")

WEBHOOK_MAX_BYTES = 256 * 1024
WEBHOOK_TOLERANCE = 300  # seconds: an older signed timestamp is a replay


class SessionObject(Struct, frozen=True):
    id: str
    metadata: dict[str, str] = {}
    payment_status: str | None = None
    amount_total: int | None = None
    payment_intent: str | None = None


class EventData(Struct, frozen=True):
    object: msgspec.Raw


class StripeEvent(Struct, frozen=True):
    id: str
    type: str
    data: EventData


_event_decoder = msgspec.json.Decoder(StripeEvent)
_session_decoder = msgspec.json.Decoder(SessionObject)

PAID = {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
UNPAID = {"checkout.session.expired", "checkout.session.async_payment_failed"}


async def stripe_webhook(request: Request) -> Response:
    """Verify Stripe-Signature, then settle the checkout the event names (once)."""
    svc = services(request)
    try:
        payload = await _read(request)
        secret = svc.settings.stripe_webhook_secret
        if not secret:
            raise errors.BadSignature("no STRIPE_WEBHOOK_SECRET is configured; nothing verified")
        # Here, not at the top: the stripe package is a third of a start's time, and a
        # server with a webhook secret has it loaded at start (open_provider).
        from .payments.stripe import signed_by_stripe

        signature = request.headers.get("stripe-signature", "")
        if not signed_by_stripe(payload, signature, secret, WEBHOOK_TOLERANCE):
            raise errors.BadSignature("the Stripe-Signature header does not verify")
        try:
            event = _event_decoder.decode(payload)
            session = (
                _session_decoder.decode(event.data.object)
                if event.type.startswith("checkout.")
                else None
            )
        except msgspec.DecodeError as exc:  # signed by Stripe, yet not an event we understand
            log.warning("ignored a signed Stripe event we could not read: %s", exc)
            return _received()
        checkout_id = session.metadata.get("checkout_id") if session else None
        if session is None or checkout_id is None or event.type not in PAID | UNPAID:
            return _received()
        if event.type == "checkout.session.completed" and session.payment_status not in (
            "paid",
            "no_payment_required",
        ):
            return _received()  # a delayed payment method: async_payment_succeeded follows
        outcome = Outcome(
            event.id,
            paid=event.type in PAID,
            amount_total=session.amount_total,
            payment_intent=session.payment_intent,
        )
        await svc.checkouts.settle(checkout_id, outcome, event.type, provider="stripe")
    except errors.CartError as exc:  # 4xx: Stripe shows it; 503: Stripe retries later
        return error_response(exc, request, None)
    return _received()


def _received() -> Response:
    return Response(b'{"received":true}', media_type="application/json")


async def _read(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > WEBHOOK_MAX_BYTES:
            raise errors.PayloadTooLarge(f"the body is over {WEBHOOK_MAX_BYTES} bytes")
    return bytes(body)


# --- the demo provider's payment page -------------------------------------------------

PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


async def demo_page(request: Request) -> Response:
    """Pay or cancel a demo checkout: the stand-in for Stripe's hosted page."""
    try:
        checkout = await _demo_checkout(request)
    except errors.CartError as exc:
        return error_response(exc, request, None)
    svc = services(request)
    products = svc.hub.catalog.products
    currency = checkout.currency
    root = html.escape(svc.settings.root_path)

    def name(product_id: str) -> str:
        return html.escape(products[product_id].name if product_id in products else product_id)

    rows = "".join(
        f"<tr><td>{name(x.product_id)}</td><td>{x.quantity}</td>"
        f"<td>{format_money(x.quantity * x.unit_price_cents, currency)}</td></tr>"
        for x in checkout.lines
    )
    open_ = checkout.status == "reserved"
    action = f"{root}/checkout/demo/{html.escape(checkout.id)}"
    buttons = (
        f'<form method="post" action="{action}/pay"><button id="pay" type="submit">'
        f"Pay {format_money(checkout.amount_cents, currency)}</button></form>"
        f'<form method="post" action="{action}/cancel">'
        '<button id="cancel" class="secondary" type="submit">'
        "Cancel and return to the shop</button></form>"
        if open_
        else f'<p id="closed">This checkout is {checkout.status}.</p>'
        f'<p><a href="{root}/">Back to the shop</a></p>'
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>Demo payment</title><link rel="stylesheet" href="{root}/static/style.css">'
        f'<link rel="icon" href="{root}/static/img/tote-bag.svg" type="image/svg+xml"></head>'
        '<body class="pay"><main><h1>Demo payment</h1>'
        "<p>No card is charged: this page stands in for Stripe Checkout.</p>"
        f"<table><thead><tr><th>Item</th><th>Qty</th><th>Amount</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
        f'<p class="total">Total <strong>{format_money(checkout.amount_cents, currency)}'
        "</strong></p>"
        f"{buttons}</main></body></html>"
    )
    return HTMLResponse(page, headers=PAGE_HEADERS)


async def demo_pay(request: Request) -> Response:
    svc = services(request)
    public = svc.checkouts.public_url
    try:
        checkout = await _demo_checkout(request, post=True)
        outcome = Outcome(f"demo:{checkout.id}", paid=True)
        # Decided under the cart's lock: a cancel or expiry that got there first wins.
        status = await svc.checkouts.settle(checkout.id, outcome, "demo.paid", reserved_only=True)
    except errors.CartError as exc:
        return error_response(exc, request, None)
    if status != "paid":  # cancelled or expired meanwhile: nothing was taken
        return RedirectResponse(cancel_url(public), 303)
    response = RedirectResponse(success_url(public, checkout.id), 303)
    if svc.ids.unsign(request.cookies.get(COOKIE)) == checkout.cart_id:
        # The shopper's own browser paid: its cookie goes on to the cart that comes next.
        async with svc.hub.use(checkout.cart_id) as room:
            successor = room.cart.merged_into
        if successor is not None:
            response.headers.append("set-cookie", cart_cookie(request, svc.ids.sign(successor)))
    return response


async def demo_cancel(request: Request) -> Response:
    svc = services(request)
    try:
        checkout = await _demo_checkout(request, post=True)
        if checkout.status == "reserved":
            async with svc.hub.use(checkout.cart_id) as room:
                await svc.checkouts.cancel(room, checkout.id)
    except errors.CartError as exc:
        return error_response(exc, request, None)
    return RedirectResponse(cancel_url(svc.checkouts.public_url), 303)


async def _demo_checkout(request: Request, *, post: bool = False) -> Checkout:
    svc = services(request)
    if svc.checkouts.provider.name != "demo":
        raise errors.NotFound("the demo payment page is off: Stripe is configured")
    if post and not origin_allowed(request, svc.settings):
        raise errors.ForbiddenOrigin("the demo payment page posts from this server only")
    found = await svc.store.load_checkout(request.path_params["checkout_id"])
    if found is None or found.provider != "demo":
        raise errors.NotFound("no such demo checkout")
    return found
