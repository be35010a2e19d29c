"""Checkout: lock the cart and reserve its stock in one transaction, open a payment
session, and settle it (order or release) exactly once, whoever reports the outcome first:
webhook, the demo page, a cancel, or the sweeper. Every transition runs in a transaction of
the cart's room and records what it did in the same commit as its effect. The payment
provider is never asked inside one: a slow answer would hold up every tab of the cart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import timedelta

from msgspec import Struct, structs

from . import errors
from .cart import Cart, SetStatus, StartCheckout, Status
from .catalog import Catalog
from .clock import utcnow
from .config import Settings
from .hub import Hub
from .metrics import Metrics
from .payments import PaymentProvider, PaymentRequest
from .room import Room
from .store import (
    Archived,
    AttachSession,
    Checkout,
    CheckoutLine,
    CheckoutMoved,
    CreateCart,
    DuplicateEvent,
    Effect,
    Fulfil,
    Order,
    OrderLine,
    RecordEvent,
    Release,
    Reserve,
    ShortStock,
    Store,
    TooManyHolds,
)
from .transaction import Transaction

log = logging.getLogger("server.checkout")
SWEEP_BATCH = 100
ATTEMPTS = 5  # a cancel waits for a session being opened, then looks again


class Started(Struct, frozen=True):
    checkout_url: str
    session_id: str


class Outcome(Struct, frozen=True):
    """A provider's word on a session: paid (with what it says was charged) or expired."""

    event_id: str  # de-duplicates redeliveries
    paid: bool
    amount_total: int | None = None
    payment_intent: str | None = None


def success_url(public: str, session_id: str) -> str:
    return f"{public}/?checkout=success&session_id={session_id}"


def cancel_url(public: str) -> str:
    return f"{public}/?checkout=cancelled"


class Checkouts:
    def __init__(
        self,
        hub: Hub,
        store: Store,
        provider: PaymentProvider,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self.hub = hub
        self.store = store
        self.catalog: Catalog = hub.catalog
        self.provider = provider
        self.settings = settings
        self.metrics = metrics
        self._sweeper: asyncio.Task[None] | None = None
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

    async def confirm(self, room: Room) -> None:
        """The shopper is back from paying: settle now if the provider says it is paid,
        rather than wait for the webhook (whichever comes second changes nothing)."""
        checkout = await self.store.open_checkout(room.cart.id)
        if checkout is None or checkout.session_id is None:
            return
        try:
            state = await self.provider.state(checkout.session_id)
        except Exception as exc:  # the webhook (or the sweeper) settles it later
            log.warning(
                "could not ask the provider about a checkout of cart %s: %s", checkout.cart_id, exc
            )
            return
        if state.status == "complete":
            outcome = Outcome(
                f"confirm:{checkout.id}",
                paid=True,
                amount_total=state.amount_total,
                payment_intent=state.payment_intent,
            )
            await self.settle(checkout.id, outcome, "confirm")

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

    # --- the provider ----------------------------------------------------------------

    async def settle(
        self,
        checkout_id: str,
        outcome: Outcome,
        kind: str,
        *,
        reserved_only: bool = False,
        provider: str | None = None,
    ) -> str | None:
        """Apply a provider's outcome once: a redelivery, or an `expired` after a
        `completed`, changes nothing; a payment after a release still makes an order
        (money was taken), unless `reserved_only`: the demo page, which is the provider,
        refuses to take money for a released checkout. With `provider`, only a checkout
        that provider opened is settled (a Stripe event never pays a demo checkout).
        The checkout's status after."""
        checkout = await self.store.load_checkout(checkout_id)
        event = RecordEvent(outcome.event_id, kind)
        if checkout is None or provider not in (None, checkout.provider):
            log.warning("payment event %s names no checkout of its provider", kind)
            await self._record(event)
            return None
        async with self.hub.use(checkout.cart_id) as room, room.transaction() as tx:
            checkout = await self.store.load_checkout(checkout_id)  # as of now, locked
            assert checkout is not None
            try:
                if checkout.status == "paid" or (
                    checkout.status == "released" and (reserved_only or not outcome.paid)
                ):
                    await self._record(event)  # nothing left to do
                    return checkout.status
                if outcome.paid:
                    await self._fulfil(tx, checkout, outcome, event)
                    return "paid"
                await self._release(tx, checkout, event)
                return "released"
            except DuplicateEvent:
                return checkout.status

    async def _fulfil(
        self, tx: Transaction, checkout: Checkout, outcome: Outcome, event: RecordEvent
    ) -> None:
        products = self.catalog.products
        order = Order(
            id=str(uuid.uuid4()),
            checkout_id=checkout.id,
            cart_id=checkout.cart_id,
            user_id=tx.cart.user_id,
            session_id=checkout.session_id,
            payment_intent=outcome.payment_intent,
            amount_total_cents=(
                outcome.amount_total if outcome.amount_total is not None else checkout.amount_cents
            ),
            currency=checkout.currency,
            lines=tuple(
                OrderLine(
                    x.product_id,
                    products[x.product_id].sku if x.product_id in products else "",
                    products[x.product_id].name if x.product_id in products else x.product_id,
                    x.quantity,
                    x.unit_price_cents,
                )
                for x in checkout.lines
            ),
        )
        effects: tuple[Effect, ...] = (Fulfil(order), event)
        if checkout.status == "reserved" and tx.cart.status is Status.CHECKING_OUT:
            # Every tab moves on to the same fresh cart (the room sends `moved`); a user's
            # is stored now so that their next login finds it.
            successor = str(uuid.uuid4())
            if tx.cart.user_id is not None:
                expires = utcnow() + timedelta(seconds=self.settings.cart_ttl_seconds)
                effects += (CreateCart(successor, tx.cart.user_id, expires),)
            await tx.apply(SetStatus(Status.CHECKED_OUT, successor), effects=lambda _: effects)
        else:
            # Paid after the reservation went back (cancel or expiry raced the payment):
            # the money is taken, so the order stands; the cart has moved on already.
            log.warning("cart %s was paid for after its stock was released", checkout.cart_id)
            await self.store.record(*effects)
            if checkout.status == "released":  # Fulfil took the stock again
                self._adjust(checkout.lines, -1)
        self.metrics.inc("cart_checkouts_total", result="paid")

    async def _release(
        self, tx: Transaction, checkout: Checkout, event: RecordEvent | None
    ) -> bool:
        """Give a reserved checkout's stock back; False if it was settled already."""
        effects: tuple[Effect, ...] = (Release(checkout.id),) + ((event,) if event else ())
        try:
            if tx.cart.status is Status.CHECKING_OUT:
                await tx.apply(SetStatus(Status.ACTIVE), effects=lambda _: effects)
            else:
                await self.store.record(*effects)
        except CheckoutMoved:
            return False
        self._adjust(checkout.lines, +1)
        if event is not None:
            self.metrics.inc("cart_checkouts_total", result="expired")
        return True

    async def _record(self, event: RecordEvent) -> None:
        try:
            await self.store.record(event)
        except DuplicateEvent:
            pass

    def _adjust(self, lines: tuple[CheckoutLine, ...], sign: int) -> None:
        """Show reserved or returned stock at once (here, and to the tabs of every cart
        holding these products); other processes re-read it from the store."""
        products = self.catalog.products
        self.hub.catalog_changed(
            [
                structs.replace(
                    products[x.product_id],
                    stock=max(0, products[x.product_id].stock + sign * x.quantity),
                )
                for x in lines
                if x.product_id in products
            ]
        )

    # --- the sweeper -----------------------------------------------------------------

    async def sweep(self) -> int:
        """Settle reservations past their expiry that no webhook settled: ask the
        provider how each ended (a lost `completed` still becomes an order), and close a
        session it still holds open (Stripe keeps one open for 30 minutes at least)."""
        seen: set[str] = set()
        while True:  # everything due, in batches: a flood of holds is released in one pass
            # One that could not be settled stays due (oldest first): each round asks for
            # those too and skips them, so every round gets to new ones or ends.
            limit = SWEEP_BATCH + len(seen)
            batch = await self.store.due_checkouts(utcnow(), limit)
            for checkout in batch:
                if checkout.id in seen:
                    continue
                seen.add(checkout.id)
                try:
                    await self.settle(checkout.id, await self._ended(checkout), "sweep")
                except Exception:  # one session the provider cannot answer blocks no other
                    log.exception("could not settle a checkout of cart %s", checkout.cart_id)
            if len(batch) < limit:
                return len(seen)

    async def _ended(self, checkout: Checkout) -> Outcome:
        event_id = f"sweep:{checkout.id}"
        if checkout.session_id is None:
            return Outcome(event_id, paid=False)
        state = await self.provider.state(checkout.session_id)
        if state.status == "open":
            if await self.provider.expire(checkout.session_id):
                return Outcome(event_id, paid=False)
            state = await self.provider.state(checkout.session_id)  # paid just now
        return Outcome(
            event_id,
            paid=state.status == "complete",
            amount_total=state.amount_total,
            payment_intent=state.payment_intent,
        )

    def start_sweeper(self) -> None:
        period = min(30.0, max(0.25, self.settings.checkout_expires_seconds / 4))
        self._sweeper = asyncio.create_task(self._sweep_every(period))

    async def _sweep_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.sweep()
            except Exception:  # the next round may succeed
                log.exception("checkout sweep failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        # Sessions still opening for shoppers who went away: recorded (or released)
        # before the provider's client closes under them.
        await asyncio.gather(*self._opening.values(), return_exceptions=True)
        await self.provider.close()
