"""Settling a checkout exactly once, whoever reports the outcome first: the provider's
webhook, the shopper back from paying (confirm), the demo page, or the sweeper of expired
holds. A payment makes an order and moves the cart's tabs to a fresh cart; anything else
gives the stock back and unlocks the cart. Each runs in a transaction of the cart's room
and records the event it settled in the same commit as its effect; the provider is never
asked inside one."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta

from msgspec import Struct, structs

from .cart import SetStatus, Status
from .catalog import Catalog
from .clock import utcnow
from .config import Settings
from .hub import Hub
from .metrics import Metrics
from .payments import PaymentProvider
from .room import Room
from .store import (
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
    Store,
)
from .transaction import Transaction

log = logging.getLogger("server.checkout")  # both halves of checkout log as one
SWEEP_BATCH = 100


class Outcome(Struct, frozen=True):
    """A provider's word on a session: paid (with what it says was charged) or expired."""

    event_id: str  # de-duplicates redeliveries
    paid: bool
    amount_total: int | None = None
    payment_intent: str | None = None


class Settlement:
    """The half of checkout that ends one: an order, or the stock given back.
    `checkout.Checkouts` adds the shopper's half (start, cancel) to it."""

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

    # --- the shopper back from paying --------------------------------------------------

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

    async def stop_sweeper(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
