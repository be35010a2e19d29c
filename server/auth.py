"""User tokens: how the embedding shop tells the cart server who a shopper is.

A token is `<payload>.<signature>`, both unpadded base64url:
  payload   = JSON {"sub": "<user id>", "exp": <unix seconds>}
  signature = HMAC-SHA256(CART_AUTH_SECRET, payload as sent)
The shop mints one with make_user_token(user_id) (or any language's HMAC) after its own
login, and the page posts it to /api/cart/login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time
from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from . import errors

DEFAULT_TTL = 3600.0
MAX_TOKEN = 2048
MAX_USER_ID = 128


class Claims(Struct, frozen=True):
    sub: Annotated[str, Meta(min_length=1, max_length=MAX_USER_ID)]
    exp: int


_claims = msgspec.json.Decoder(Claims)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, payload: str) -> str:
    return _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())


def make_user_token(
    user_id: str, secret: str | None = None, ttl: float = DEFAULT_TTL, now: float | None = None
) -> str:
    """A token for `user_id`, valid for `ttl` seconds; the secret defaults to
    $CART_AUTH_SECRET."""
    key = secret if secret is not None else os.environ.get("CART_AUTH_SECRET", "")
    if not key:
        raise ValueError("no secret: pass one or set CART_AUTH_SECRET")
    if not 1 <= len(user_id) <= MAX_USER_ID:
        # verify_user_token would refuse it: fail where the mistake is made.
        raise ValueError(f"a user id is 1 to {MAX_USER_ID} characters, got {len(user_id)}")
    issued = time.time() if now is None else now
    payload = _b64(msgspec.json.encode(Claims(sub=user_id, exp=int(issued + ttl))))
    return f"{payload}.{_sign(key, payload)}"


def verify_user_token(token: str, secret: str, now: float | None = None) -> str:
    """The user id a valid, unexpired token names; InvalidToken otherwise."""
    if not secret:
        raise errors.InvalidToken("logging in is not configured on this server")
    payload, _, signature = token.partition(".")
    if len(token) > MAX_TOKEN or not payload or not signature:
        raise errors.InvalidToken("the token is not of the form payload.signature")
    # Bytes, not str: compare_digest refuses non-ASCII strings with a TypeError.
    if not hmac.compare_digest(signature.encode(), _sign(secret, payload).encode()):
        raise errors.InvalidToken("the token's signature does not verify")
    try:
        claims = _claims.decode(_unb64(payload))
    except (ValueError, msgspec.DecodeError):
        raise errors.InvalidToken("the token's payload is not valid") from None
    if claims.exp <= (time.time() if now is None else now):
        raise errors.InvalidToken("the token has expired")
    return claims.sub
