"""Who is asking: the signed cart id in the `cart_id` cookie, `X-Cart-Id` or `?cart=`."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from pathlib import Path

from itsdangerous import BadSignature, Signer
from msgspec import Struct

from .config import ConfigError, Settings, sqlite_path

log = logging.getLogger("server.identity")

COOKIE = "cart_id"
HEADER = "x-cart-id"
COOKIE_MAX_AGE = 30 * 86400
# Signed ids already verified, kept so a shopper's every request does not pay for an HMAC
# and a UUID parse again; a signature stays valid for the life of the secret.
VERIFIED_KEPT = 50_000


class CartRef(Struct, frozen=True):
    cart_id: str
    signed: str
    issued: bool  # a fresh cart, new to this client: send the cookie / header
    renewed: bool = False  # its id came signed with a previous secret: send the new one


class CartIds:
    """Signs cart ids and reads them back; anything tampered reads as absent. Ids signed
    with a `previous` secret (a rotation under way) still read, and are signed anew."""

    def __init__(self, secret: str, previous: tuple[str, ...] = ()) -> None:
        self._secret = secret
        self._signer = _signer(secret)
        # (signer, current): the current key first, then the previous ones, read only.
        self._readers = [(self._signer, True)]
        self._readers += [(_signer(old), False) for old in previous if old and old != secret]
        self._verified: dict[str, tuple[str, bool]] = {}  # signed -> (cart id, current)

    def derive(self, purpose: str) -> str:
        """A key for another purpose, from the same secret (HMAC keeps them apart)."""
        return hmac.new(self._secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()

    def sign(self, cart_id: str) -> str:
        return self._signer.sign(cart_id).decode()

    def unsign(self, value: str | None) -> str | None:
        found = self._read(value)
        return found[0] if found is not None else None

    def _read(self, value: str | None) -> tuple[str, bool] | None:
        """(cart id, signed with the current secret), or None for anything not ours."""
        if not value or len(value) > 200:
            return None
        known = self._verified.get(value)
        if known is not None:
            return known
        for signer, current in self._readers:
            try:
                cart_id = signer.unsign(value).decode()
                cart_id = str(uuid.UUID(cart_id, version=4)) if cart_id else ""
            except (BadSignature, ValueError):
                continue
            if not cart_id:
                return None
            # Base64's last character carries padding bits that decoding ignores: only
            # the one spelling we issue is ours, so a cart id has one signed form.
            if not hmac.compare_digest(signer.sign(cart_id), value.encode()):
                return None
            if len(self._verified) >= VERIFIED_KEPT:
                self._verified.clear()  # the next requests verify again; memory stays bounded
            self._verified[value] = (cart_id, current)
            return cart_id, current
        return None

    def new(self) -> CartRef:
        cart_id = str(uuid.uuid4())
        return CartRef(cart_id, self.sign(cart_id), issued=True)

    def resolve(self, *candidates: str | None) -> CartRef:
        """The first validly signed candidate, else a fresh cart."""
        for value in candidates:
            found = self._read(value)
            if found is None:
                continue
            cart_id, current = found
            if current:
                return CartRef(cart_id, value or "", issued=False)
            return CartRef(cart_id, self.sign(cart_id), issued=False, renewed=True)
        return self.new()


def _signer(secret: str) -> Signer:
    return Signer(secret, salt="cart-id", digest_method=hashlib.sha256)


def set_cookie_header(signed: str, secure: bool, cross_site: bool = False, path: str = "/") -> str:
    """The cart cookie. Lax, not Strict: the cart must survive the top-level navigation
    back from a payment page. A page on another site (the shop's own domain, embedding
    the client) gets one only over HTTPS: `SameSite=None; Secure`, and `Partitioned` so
    that browsers blocking third-party cookies keep it too, under that shop's site."""
    if cross_site and secure:
        same_site, tail = "None", "; Secure; Partitioned"
    else:
        same_site, tail = "Lax", "; Secure" if secure else ""
    flags = f"; HttpOnly; SameSite={same_site}; Path={path}; Max-Age={COOKIE_MAX_AGE}"
    return f"{COOKIE}={signed}{flags}{tail}"


def cart_ids(settings: Settings) -> CartIds:
    """The signer of this server's cart ids: CART_SECRET, and CART_SECRET_PREVIOUS read."""
    previous = tuple(x.strip() for x in settings.previous_secrets.split(",") if x.strip())
    return CartIds(load_secret(settings), previous)


def load_secret(settings: Settings) -> str:
    """CART_SECRET, or one generated once and kept (mode 0600) next to the SQLite file."""
    if settings.secret:
        return settings.secret
    if not settings.database_url.startswith("sqlite:"):
        raise ConfigError("CART_SECRET must be set when DATABASE_URL is not SQLite")
    path = Path(sqlite_path(settings.database_url) + ".secret")
    try:
        secret = path.read_text().strip()
        if secret:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_urlsafe(32)
    try:  # O_EXCL: of two processes starting at once, one writes and both read it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip() or secret
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    log.warning("CART_SECRET is not set: generated one and saved it in %s", path)
    return secret
