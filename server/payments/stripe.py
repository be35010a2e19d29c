"""Stripe Checkout through the official library (async, over httpx)."""

from __future__ import annotations

from datetime import datetime, timedelta

import stripe

from ..config import Settings
from . import PaymentRequest, PaymentSession, SessionState

# Stripe takes an expires_at 30 minutes to 24 hours after it creates the session, by its
# own clock. The reservation still ends at the checkout's expires_at whatever Stripe is
# told (the sweeper expires a session left open then), so a hold outside that window asks
# Stripe for the nearest bound, with a margin for clock skew and request latency.
STRIPE_MIN_EXPIRY = timedelta(minutes=30)
STRIPE_MAX_EXPIRY = timedelta(hours=24)
CLOCK_MARGIN = timedelta(minutes=2)


def stripe_expires_at(expires_at: datetime, hold: float) -> int:
    """The expires_at to send for a reservation ending at `expires_at` that began `hold`
    seconds before it. Derived from the reservation alone, so a retried create sends the
    same parameters and Stripe replays the first session for the idempotency key."""
    started = expires_at - timedelta(seconds=hold)
    low = started + STRIPE_MIN_EXPIRY + CLOCK_MARGIN
    high = started + STRIPE_MAX_EXPIRY - CLOCK_MARGIN
    return int(min(max(expires_at, low), high).timestamp())


def signed_by_stripe(payload: bytes, signature: str, secret: str, tolerance: int) -> bool:
    """Whether the Stripe-Signature header signs this payload with the webhook secret, at
    a timestamp no more than `tolerance` seconds old."""
    try:
        stripe.WebhookSignature.verify_header(payload.decode(), signature, secret, tolerance)
    except (stripe.SignatureVerificationError, UnicodeDecodeError):
        return False
    return True


class StripeProvider:
    name = "stripe"

    def __init__(self, settings: Settings) -> None:
        self.currency = settings.currency
        self.hold = settings.checkout_expires_seconds
        self.http = stripe.HTTPXClient(timeout=15)
        self.client = stripe.StripeClient(
            settings.stripe_secret_key,
            base_addresses={"api": settings.stripe_api_base} if settings.stripe_api_base else {},
            http_client=self.http,
            max_network_retries=2,  # retried with the same idempotency key
        )

    async def create(self, request: PaymentRequest) -> PaymentSession:
        checkout = request.checkout
        metadata = {
            "cart_id": checkout.cart_id,
            "cart_version": str(checkout.cart_version),
            "checkout_id": checkout.id,
        }
        session = await self.client.v1.checkout.sessions.create_async(
            {
                "mode": "payment",
                "line_items": [
                    {
                        "quantity": line.quantity,
                        "price_data": {
                            "currency": checkout.currency,
                            "unit_amount": line.unit_price_cents,
                            "product_data": {
                                "name": request.names.get(line.product_id, line.product_id),
                                "metadata": {"product_id": line.product_id},
                            },
                        },
                    }
                    for line in checkout.lines
                ],
                "client_reference_id": checkout.cart_id,
                "metadata": metadata,
                "success_url": request.success_url,
                "cancel_url": request.cancel_url,
                "expires_at": stripe_expires_at(checkout.expires_at, self.hold),
            },
            {"idempotency_key": request.idempotency_key},
        )
        if not session.url:
            raise RuntimeError(f"Stripe returned session {session.id} without a URL")
        return PaymentSession(id=session.id, url=session.url)

    async def expire(self, session_id: str) -> bool:
        state = await self.state(session_id)
        if state.status == "complete":
            return False
        if state.status == "open":
            try:
                await self.client.v1.checkout.sessions.expire_async(session_id)
            except stripe.InvalidRequestError:
                # Paid between the two calls: only a completed session refuses to expire.
                return (await self.state(session_id)).status != "complete"
        return True

    async def state(self, session_id: str) -> SessionState:
        session = await self.client.v1.checkout.sessions.retrieve_async(session_id)
        intent = session.payment_intent
        return SessionState(
            status=session.status or "open",
            amount_total=session.amount_total,
            payment_intent=intent if isinstance(intent, str) or intent is None else intent.id,
        )

    async def close(self) -> None:
        await self.http.close_async()  # type: ignore[no-untyped-call]
