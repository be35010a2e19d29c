"""Checkout, the shopper's half: lock the cart and reserve its stock in one transaction,
open a payment session, or cancel. Settling it (order or release) exactly once, whoever
reports the outcome first, is settlement.py's. Every transition runs in a transaction of
the cart's room and records what it did in the same commit as its effect. The payment
provider is never asked inside one: a slow answer would hold up every tab of the cart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from msgspec import Struct

from . import errors
from .cart import Cart, SetStatus, StartCheckout, Status
from .clock import utcnow
from .config import Settings
from .hub import Hub
from .metrics import Metrics
from .payments import PaymentProvider, PaymentRequest
from .room import Room
from .settlement import Settlement
from .store import (
    Archived,
    AttachSession,
    Checkout,
    CheckoutLine,
    Effect,
    Reserve,
    ShortStock,
    Store,
    TooManyHolds,
)
from .transaction import Transaction

log = logging.getLogger("server.checkout")
ATTEMPTS = 5  # a cancel waits for a session being opened, then looks again


class Started(Struct, frozen=True):
    checkout_url: str
    session_id: str


def success_url(public: str, session_id: str) -> str:
    return f"{public}/?checkout=success&session_id={session_id}"


def cancel_url(public: str) -> str:
    return f"{public}/?checkout=cancelled"


class Checkouts(Settlement):
    """Checkout as the shopper sees it: start (reserve, then a payment session) and
    cancel; settling one is the `Settlement` it extends."""

    def __init__(
        self,
        hub: Hub,
        store: Store,
        provider: PaymentProvider,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        super().__init__(hub, store, provider, settings, metrics)
        # Sessions being opened here, by checkout id: a second press waits for the first.
        self._opening: dict[str, asyncio.Future[Started]] = {}

    # --- the shopper -----------------------------------------------------------------

    async def start(
        self, room: Room, base_version: int | None = None, address: str | None = None
    ) -> Started:
        """Lock the cart, reserve every line's stock, open a payment session. A retry
        while the cart is checking out returns the session already opened. With
        `base_version` (If-Match), only the cart the shopper saw is checked out; with the
        client's `address`, only while it holds fewer than MAX_CHECKOUTS_PER_IP."""
        if self.provider.name == "none":
            raise errors.PaymentsUnavailable(
                "this shop takes no payments yet: set STRIPE_SECRET_KEY (or DEMO_PAYMENTS=1)"
            )
        async with room.transaction() as tx:
            checkout = None
            if tx.cart.status is Status.CHECKING_OUT:
                checkout = await self.store.open_checkout(tx.cart.id)
            if checkout is None:
                checkout = await self._reserve(tx, base_version, address)
        # The provider is asked with the cart unlocked: it stays checking_out, so the
        # other tabs' edits are refused at once (cart_locked) rather than kept waiting.
        return await self._session(checkout)

    async def _reserve(
        self, tx: Transaction, base_version: int | None, address: str | None
    ) -> Checkout:
        checkout_id = str(uuid.uuid4())
        reserved: list[Checkout] = []

        def reserve(new: Cart) -> tuple[Effect, ...]:
            reserved[:] = [self._checkout(checkout_id, new)]
            return (Reserve(reserved[0], address, self.settings.max_checkouts_per_ip),)

        try:
            await tx.apply(StartCheckout(), base_version=base_version, effects=reserve)
        except Archived as archived:
            # Archived in another process a moment ago: this one's catalog follows.
            self.catalog.reread(self.store, archived.product_ids)
            raise errors.ProductUnavailable(
                "some lines hold products that are no longer available; remove them first",
                lines=[{"product_id": product_id} for product_id in archived.product_ids],
            ) from None
        except ShortStock as short:
            self.metrics.inc("cart_checkouts_total", result="insufficient_stock")
            raise errors.InsufficientStock(
                "some lines are no longer in stock", lines=short.lines
            ) from None
        except TooManyHolds:
            self.metrics.inc("cart_checkouts_total", result="too_many_checkouts")
            raise errors.TooManyCheckouts(
                "this address holds as many checkouts as it may; pay for or cancel one"
            ) from None
        self._adjust(reserved[0].lines, -1)
        self.metrics.inc("cart_checkouts_total", result="reserved")
        return reserved[0]

    def _checkout(self, checkout_id: str, cart: Cart) -> Checkout:
        products = self.catalog.products
        current = self.settings.checkout_price == "current"
        lines = tuple(
            CheckoutLine(
                line.product_id,
                line.quantity,
                products[line.product_id].price_cents
                if current and line.product_id in products
                else line.unit_price_cents,
            )
            for line in cart.lines
        )
        return Checkout(
            id=checkout_id,
            cart_id=cart.id,
            cart_version=cart.version,
            provider=self.provider.name,
            status="reserved",
            lines=lines,
            amount_cents=sum(x.quantity * x.unit_price_cents for x in lines),
            currency=self.settings.currency,
            expires_at=utcnow() + timedelta(seconds=self.settings.checkout_expires_seconds),
        )

    async def _session(self, checkout: Checkout) -> Started:
        """The checkout's payment session: the one recorded, the one this process is
        opening (two tabs pressing together wait for the same answer), or a new one."""
        if checkout.session_id is not None and checkout.url is not None:
            return Started(checkout.url, checkout.session_id)
        opening = self._opening.get(checkout.id)
        if opening is None:
            opening = asyncio.ensure_future(self._open_session(checkout))
            self._opening[checkout.id] = opening
            opening.add_done_callback(lambda done: self._opened(checkout.id, done))
        # Shielded: a shopper who goes away mid-request leaves no hold without a session.
        return await asyncio.shield(opening)

    def _opened(self, checkout_id: str, done: asyncio.Future[Started]) -> None:
        del self._opening[checkout_id]
        if not done.cancelled():
            done.exception()  # retrieved: a caller that went away is not told

    async def _open_session(self, checkout: Checkout) -> Started:
        public = self.public_url
        request = PaymentRequest(
            checkout=checkout,
            public_url=public,
            names={
                p: self.catalog.products[p].name
                for p in (x.product_id for x in checkout.lines)
                if p in self.catalog.products
            },
            success_url=success_url(public, "{CHECKOUT_SESSION_ID}"),
            cancel_url=cancel_url(public),
            # One key per locked cart version: a retried checkout (even from another
            # process, or after a crash) gets the session Stripe already made.
            idempotency_key=f"cart-{checkout.cart_id}-v{checkout.cart_version}",
        )
        try:
            session = await self.provider.create(request)
        except Exception as exc:  # nothing was charged: give the stock back, unlock
            log.warning("payment provider refused a checkout of cart %s: %s", checkout.cart_id, exc)
            async with self.hub.use(checkout.cart_id) as room, room.transaction() as tx:
                await self._release(tx, checkout, None)
            self.metrics.inc("cart_checkouts_total", result="provider_error")
            raise errors.PaymentProviderError(
                "the payment provider could not start a payment; nothing was charged"
            ) from None
        async with self.hub.use(checkout.cart_id) as room, room.transaction():
            now = await self.store.load_checkout(checkout.id)
            await self.store.record(AttachSession(checkout.id, session.id, session.url))
        if now is not None and now.status != "released":
            return Started(session.url, session.id)
        # Cancelled through another process while the provider answered: the session
        # must not take money for stock that went back.
        log.warning("checkout of cart %s was cancelled while it opened", checkout.cart_id)
        with contextlib.suppress(Exception):
            await self.provider.expire(session.id)
        raise errors.PaymentProviderError(
            "the checkout was cancelled while the payment opened; nothing was charged"
        )

    @property
    def public_url(self) -> str:
        """PUBLIC_URL, or ROOT_PATH for URLs relative to this server: never the request's
        Host, which the client writes (a stored checkout URL must not point elsewhere)."""
        return self.settings.public_url or self.settings.root_path

    async def cancel(self, room: Room, checkout_id: str | None = None) -> None:
        """Give the stock back and unlock the cart, unless the payment went through.
        With `checkout_id`, only if that checkout is still the cart's open one (a page
        left open on an older checkout must not cancel a newer one)."""
        for _ in range(ATTEMPTS):
            async with room.transaction() as tx:
                if tx.cart.status is not Status.CHECKING_OUT:
                    return  # nothing to cancel: asking twice is not an error
                checkout = await self.store.open_checkout(tx.cart.id)
                if checkout is None:  # cannot happen (one transaction), but never stay locked
                    await tx.apply(SetStatus(Status.ACTIVE))
                    return
                if checkout_id is not None and checkout.id != checkout_id:
                    return
                opening = self._opening.get(checkout.id)
                if opening is None and checkout.session_id is None:  # no session to close
                    await self._release(tx, checkout, None)
                    self.metrics.inc("cart_checkouts_total", result="cancelled")
                    return
            if opening is None:
                break
            # Its session is being opened: cancel that session once it exists.
            await asyncio.wait([opening])
        else:
            raise errors.Unavailable("the checkout kept changing while cancelling; try again")
        # Asked with the cart unlocked (it stays checking_out, so edits are refused
        # meanwhile), then settled under the lock again: whoever got there first wins.
        assert checkout.session_id is not None
        if not await self._expire(checkout):
            raise errors.CheckoutCompleted("the payment went through; the order stands")
        async with room.transaction() as tx:
            # Settled meanwhile (a webhook, the sweeper, the demo page's Pay): as if this
            # cancel had come second, nothing is left to do.
            if not await self._release(tx, checkout, None):
                return
        self.metrics.inc("cart_checkouts_total", result="cancelled")

    async def _expire(self, checkout: Checkout) -> bool:
        assert checkout.session_id is not None
        try:
            return await self.provider.expire(checkout.session_id)
        except Exception as exc:  # unknown whether it can still be paid: keep the hold
            log.warning(
                "payment provider could not expire the checkout of cart %s: %s",
                checkout.cart_id,
                exc,
            )
            raise errors.PaymentProviderError(
                "the payment provider could not be reached to cancel; try again"
            ) from None

    async def close(self) -> None:
        await self.stop_sweeper()
        # Sessions still opening for shoppers who went away: recorded (or released)
        # before the provider's client closes under them.
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        await self.provider.close()
