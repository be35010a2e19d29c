"""The payment provider seam: Stripe Checkout when a key is configured, else the demo."""

from __future__ import annotations

from typing import Protocol

from msgspec import Struct

from ..config import Settings
from ..store import Checkout


class PaymentRequest(Struct, frozen=True):
    checkout: Checkout
    public_url: str  # where this server is reached by shoppers
    names: dict[str, str]  # product id -> name shown on the payment page
    success_url: str
    cancel_url: str
    idempotency_key: str  # the same for every retry of one checkout: one session only


class PaymentSession(Struct, frozen=True):
    id: str
    url: str


class SessionState(Struct, frozen=True):
    status: str  # open | complete | expired
    amount_total: int | None = None
    payment_intent: str | None = None


class PaymentProvider(Protocol):
    name: str

    async def create(self, request: PaymentRequest) -> PaymentSession:
        """Open a payment session; raises on any failure (nothing was charged)."""

    async def expire(self, session_id: str) -> bool:
        """Stop the session from being paid; False if it was paid already."""

    async def state(self, session_id: str) -> SessionState:
        """Ask the provider where a session stands (the sweeper's reconciliation)."""

    async def close(self) -> None: ...


class NoProvider:
    """Neither Stripe nor demo payments: checkout answers 503 payments_unavailable before
    anything is reserved."""

    name = "none"

    async def create(self, request: PaymentRequest) -> PaymentSession:
        raise RuntimeError("no payment provider is configured")

    async def expire(self, session_id: str) -> bool:
        return True

    async def state(self, session_id: str) -> SessionState:
        return SessionState(status="expired")

    async def close(self) -> None:
        return None


def open_provider(settings: Settings) -> PaymentProvider:
    if settings.stripe_secret_key or settings.stripe_webhook_secret:
        # Loaded now, not on the first webhook or checkout: importing the stripe package
        # takes long enough (0.1 to 0.2 s) to stall every tab if it happened on a request.
        from . import stripe as _  # noqa: F401
    if settings.stripe_secret_key:
        from .stripe import StripeProvider

        return StripeProvider(settings)
    if settings.demo_payments:
        from .demo import DemoProvider

        return DemoProvider()
    return NoProvider()
