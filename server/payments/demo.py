"""The demo provider: a local page with Pay and Cancel buttons stands in for Stripe, and
drives the same checkout handlers a webhook would. Works with no configuration."""

from __future__ import annotations

from . import PaymentRequest, PaymentSession, SessionState


class DemoProvider:
    name = "demo"

    async def create(self, request: PaymentRequest) -> PaymentSession:
        checkout = request.checkout
        return PaymentSession(
            id=checkout.id, url=f"{request.public_url}/checkout/demo/{checkout.id}"
        )

    async def expire(self, session_id: str) -> bool:
        # The page pays only a checkout still reserved, and a cancel releases only one
        # not paid, each decided under the cart's lock: whichever comes second finds it
        # settled. Nothing to stop.
        return True

    async def state(self, session_id: str) -> SessionState:
        # A demo session is only ever paid by its own page; once past due it is over.
        return SessionState(status="expired")

    async def close(self) -> None:
        return None
