"""One error hierarchy: protocol data (code, message, details), made a response at the edge."""

from __future__ import annotations

import math
from typing import Any, ClassVar

# WebSocket close codes the protocol uses (RFC 6455 section 7.4.1).
CLOSE_POLICY_VIOLATION = 1008  # foreign Origin, too many tabs or connections, invalid frames
# or refused mutations past the rate limit
CLOSE_MESSAGE_TOO_BIG = 1009  # sent by uvicorn for frames over WS_MAX_SIZE
CLOSE_INTERNAL_ERROR = 1011  # the server cannot serve WebSockets as it is run
CLOSE_SERVICE_RESTART = 1012  # sent by uvicorn on shutdown; clients reconnect with ?since=
CLOSE_TRY_AGAIN_LATER = 1013  # tab too slow to keep up; it reconnects and resyncs
REASON_FOR_CLOSE = {
    CLOSE_POLICY_VIOLATION: "too many invalid or rate-limited messages",
    CLOSE_SERVICE_RESTART: "server restarting",
    CLOSE_TRY_AGAIN_LATER: "too slow to keep up; reconnect with since",
}


class CartError(Exception):
    """A refused request. Nothing changed; `code` and `details` go on the wire as they are."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 400

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def headers(self) -> dict[str, str]:
        """Extra response headers for REST (Retry-After)."""
        return {}

    def body(self) -> dict[str, Any]:
        """The REST error body: {"error": {"code", "message", ...details}}."""
        return {"error": {"code": self.code, "message": self.message, **self.details}}


class InvalidJson(CartError):
    code = "invalid_json"
    status = 400


class InvalidRequest(CartError):
    code = "invalid_request"
    status = 422


class InvalidMessage(CartError):
    """A WebSocket frame that is not a valid client message."""

    code = "invalid_message"
    status = 400


class PayloadTooLarge(CartError):
    code = "payload_too_large"
    status = 413


class ForbiddenOrigin(CartError):
    code = "forbidden_origin"
    status = 403


class UnknownProduct(CartError):
    code = "unknown_product"
    status = 404


class ProductUnavailable(CartError):
    """The product is archived (`active: false`): not addable, not checked out."""

    code = "product_unavailable"
    status = 409


class UnknownOrder(CartError):
    code = "unknown_order"
    status = 404


class NotInCart(CartError):
    code = "not_in_cart"
    status = 404


class InsufficientStock(CartError):
    code = "insufficient_stock"
    status = 409


class CartLocked(CartError):
    code = "cart_locked"
    status = 409


class EmptyCart(CartError):
    code = "empty_cart"
    status = 409


class CheckoutCompleted(CartError):
    """Cancel came after the payment went through: the order stands."""

    code = "checkout_completed"
    status = 409


class BadSignature(CartError):
    """A webhook whose signature does not verify (or no webhook secret is configured)."""

    code = "bad_signature"
    status = 400


class IdempotencyKeyReused(CartError):
    """An Idempotency-Key already used for another request (route or body) of this cart."""

    code = "idempotency_key_reused"
    status = 422


class PaymentsUnavailable(CartError):
    """No payment provider is configured (no Stripe key, demo payments off)."""

    code = "payments_unavailable"
    status = 503


class PaymentProviderError(CartError):
    """The payment provider refused or did not answer; the reservation was released."""

    code = "payment_provider_error"
    status = 502


class TooManyLines(CartError):
    code = "too_many_lines"
    status = 409


class QuantityLimit(CartError):
    code = "quantity_limit"
    status = 409


class VersionConflict(CartError):
    """If-Match / base_version names a version the cart has moved past."""

    code = "version_conflict"
    status = 412


class RateLimited(CartError):
    """Over a mutation rate limit (per cart or per connection); `retry_after` seconds."""

    code = "rate_limited"
    status = 429

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(math.ceil(self.details.get("retry_after", 1)))}


class TooManyConnections(CartError):
    """This client address holds as many long-lived connections as it may."""

    code = "too_many_connections"
    status = 429

    def headers(self) -> dict[str, str]:
        return {"retry-after": "5"}


class Unauthorized(CartError):
    """A route that asks for a bearer token got none, or another."""

    code = "unauthorized"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": "Bearer"}


class TooManyCheckouts(CartError):
    """This client address holds as many stock reservations (open checkouts) as it may."""

    code = "too_many_checkouts"
    status = 429

    def headers(self) -> dict[str, str]:
        return {"retry-after": "60"}


class NotDue(CartError):
    """A timer found nothing to do: the cart changed since it was armed. Never sent."""

    code = "not_due"
    status = 409


class InvalidToken(CartError):
    code = "invalid_token"
    status = 401


class Unavailable(CartError):
    """The store could not commit; nothing was acknowledged."""

    code = "unavailable"
    status = 503


class InternalError(CartError):
    code = "internal_error"
    status = 500


class NotFound(CartError):
    code = "not_found"
    status = 404


class MethodNotAllowed(CartError):
    code = "method_not_allowed"
    status = 405
