"""One room per cart in memory: the authoritative cart, the lock that puts every mutation
of it in one order, and the recent patches for ?since= resume. Who has it open lives in
presence.py, the abandonment timer in timer.py.

Every mutation takes the same path: lock -> apply (pure) -> commit (durable) -> accept
(memory, tabs, other processes) -> answer. Nothing is sent before the commit returns.
The lock is let go while the commit runs, so the next mutation is applied on top and
joins the same group commit; acceptance stays in version order (pipeline.py).
The lock is taken in this module only (and by transaction.together() for two rooms):
callers that need several steps in one order use Room.transaction().
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime, timedelta
from functools import partial

from msgspec import Raw, Struct

from . import cart as domain
from . import errors, render
from .cart import FINISHED, Abandon, Cart, Expire, Op, Product, Status
from .catalog import Catalog
from .clock import utcnow
from .config import Settings
from .documents import Documents
from .frames import Tab, broadcast
from .history import History
from .limits import TokenBucket
from .metrics import Metrics
from .pipeline import Pipeline
from .presence import Presence
from .protocol import CatalogItem, CatalogMsg, MovedMsg, SnapshotMsg, encode
from .store import AlreadyApplied, CartWrite, Effect, Emit, StaleVersion, Store, StoredCart
from .timer import AbandonTimer
from .transaction import Transaction

# Mutation ids kept in memory per room for the fast path; older ones are still refused
# by the store's primary key, so the cap costs a round trip, never a double apply.
MEMORY_KEYS = 1000
COMMIT_ATTEMPTS = 10


class Outcome(Struct, frozen=True):
    version: int
    body: bytes | None = None  # the cart document, when the caller asked for it
    replayed: bool = False  # an already applied mutation id: nothing was applied now


class RoomContext(Struct, frozen=True):
    store: Store
    catalog: Catalog
    settings: Settings
    metrics: Metrics
    published: Callable[[Cart, str, str | None], None]  # after each commit: cart, patch, key
    present: Callable[[str, int, int], None]  # tabs came or went: cart id, version, tabs here
    sign: Callable[[str], str]  # a cart id as the signed value clients hold
    draining: asyncio.Event  # the server is shutting down: long-polls answer at once


class Room:
    def __init__(self, cart_id: str, stored: StoredCart | None, ctx: RoomContext) -> None:
        self.ctx = ctx
        self._lock = asyncio.Lock()  # see the module docstring: taken here only
        self.presence = Presence(ctx.metrics)
        self.refs = 0  # requests and sockets using the room; it is never evicted while > 0
        self.last_used = time.monotonic()
        self.history = History(ctx.settings.patch_history)
        self.keys: dict[str, int] = {}
        self.docs = Documents(ctx.catalog, ctx.settings.currency)
        self._pipe = Pipeline(self.accept, lambda: self.cart.version, ctx.store.ordered_commits)
        # Shared by every tab and REST caller of the cart: more tabs, no more allowance.
        self.rate = TokenBucket(ctx.settings.cart_rate, ctx.settings.cart_burst)
        self.cart = Cart(id=cart_id, updated_at=utcnow())
        self.timer = AbandonTimer(lambda: self.cart, self.run_due)
        if stored is not None:
            self._load(stored)

    def _load(self, stored: StoredCart) -> None:
        self.cart = stored.cart
        self.history.reset(stored.patches)
        self.keys = dict(list(stored.keys.items())[-MEMORY_KEYS:])
        self.timer.arm()

    @property
    def version(self) -> int:
        return self.cart.version

    @property
    def waiting(self) -> bool:
        """A mutation waits for the cart's lock."""
        return bool(getattr(self._lock, "_waiters", None))

    @property
    def held(self) -> bool:
        """A mutation holds the cart (seen from another task: across an await)."""
        return self._lock.locked()

    @property
    def busy(self) -> bool:
        """A mutation holds the cart, or its writes are in flight."""
        return self.held or self._pipe.busy

    # --- reading ---------------------------------------------------------------------

    def document(self) -> bytes:
        """The cart document, encoded once per version and catalog revision."""
        return self.docs.of(self.cart)

    def snapshot_frame(self) -> str:
        return encode(SnapshotMsg(cart=Raw(self.document()))).decode()

    def patches_after(self, since: int) -> list[str] | None:
        """The patch frames after `since`, or None if they are not all held any more."""
        return self.history.after(since, self.cart.version)

    async def wait_past(self, version: int, timeout: float) -> None:
        """Return once the cart is past `version`, or after `timeout` seconds."""
        if self.cart.version != version or timeout <= 0 or self.ctx.draining.is_set():
            return
        await self.history.wait(timeout)

    # --- tabs ------------------------------------------------------------------------

    @property
    def tabs(self) -> set[Tab]:
        """The tabs of this cart open in this process."""
        return self.presence.tabs

    def join(self, tab: Tab, since: int | None) -> None:
        """Register a tab and queue what it lacks: the patches after `since`, or a snapshot.
        Synchronous, so no patch can slip between what it is sent and its registration."""
        frames = self.patches_after(since) if since is not None else None
        if frames is None:
            tab.send(self.snapshot_frame().encode())
        else:
            for frame in frames:
                tab.send(frame.encode())
        self.presence.add(tab)
        self.ctx.present(self.cart.id, self.cart.version, len(self.tabs))

    def leave(self, tab: Tab) -> None:
        self.presence.remove(tab)
        self.last_used = time.monotonic()
        self.ctx.present(self.cart.id, self.cart.version, len(self.tabs))

    def catalog_changed(self, changed: Mapping[str, Product]) -> None:
        """Tell the tabs about changed products this cart holds (price, stock, name,
        archived): no new version; the next document carries the same values."""
        if not self.tabs:
            return
        held = [changed[x.product_id] for x in self.cart.lines if x.product_id in changed]
        if held:
            items = [CatalogItem(p.id, p.name, p.price_cents, p.stock, p.active) for p in held]
            broadcast(self.tabs, encode(CatalogMsg(products=items)))
            self.ctx.metrics.inc("cart_catalog_frames_total", len(self.tabs))

    def broadcast(self, message: str | bytes) -> None:
        """One message to every tab: encoded and framed once, the same bytes for all."""
        self.presence.broadcast(message.encode() if isinstance(message, str) else message)

    # --- mutating --------------------------------------------------------------------

    async def submit(
        self,
        op: Op,
        *,
        origin: str | None = None,
        key: str | None = None,
        base_version: int | None = None,
        respond: bool = False,
        request: str | None = None,
    ) -> Outcome:
        """Apply one mutation in this cart's order; returns once it is durably committed
        and broadcast. Raises CartError (nothing changed) or Unavailable (nothing stored).
        `request`, a digest of what was asked, refuses a key reused for something else."""
        apply = partial(self._apply, op, origin=origin, key=key, respond=respond, request=request)
        async with self._lock:
            if base_version is not None or not self._pipe.takes(key, self.keys):
                await self._pipe.drain()
                return await apply(base_version=base_version)
            # Applied on top of the writes in flight, so it joins their group commit.
            write = self.prepare(op, origin=origin, key=key, respond=respond, request=request)
            stored = self._pipe.push(write, self.ctx.store.start_commit(write))
        try:
            await stored
        except (StaleVersion, AlreadyApplied) as exc:
            # Another process wrote first, or a write before this one failed: again, in
            # this cart's order, on what the store holds.
            if isinstance(exc, AlreadyApplied) and key is not None:
                self.keys[key] = exc.version
            async with self._lock:
                await self._pipe.drain()
                return await apply()
        return Outcome(write.cart.version, write.response)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """This cart to itself for the block: several steps (read, apply, store) with no
        other mutation between them. Keep network calls out: every tab waits meanwhile."""
        async with self._lock:
            await self._pipe.drain()
            yield Transaction(self)

    async def _apply(
        self,
        op: Op,
        *,
        origin: str | None = None,
        key: str | None = None,
        base_version: int | None = None,
        respond: bool = False,
        effects: Callable[[Cart], tuple[Effect, ...]] | None = None,
        request: str | None = None,
    ) -> Outcome:
        """submit() for a caller holding the lock. `effects` gives the rows to write in
        the same transaction, from the cart as it will be (asked again after a catch-up)."""
        prepare = partial(
            self.prepare,
            op,
            origin=origin,
            key=key,
            respond=respond,
            effects=effects,
            request=request,
        )
        hold = False
        for _ in range(COMMIT_ATTEMPTS):
            if key is not None and key in self.keys:
                return await self._replay(key, respond, request)
            try:
                if not hold:  # a compare-and-set on the version this room holds
                    self._check_base(base_version)
                    write = prepare()
                    await self.ctx.store.commit(write)
                else:
                    # Another process (or a write whose caller was cancelled) got there
                    # first: hold the cart in the store, read what it holds and apply on
                    # top, so a busy process cannot win every race for this cart.
                    async with self.ctx.store.hold(self.cart.id) as held:
                        self._adopt(await held.load(self._keys_since()))
                        if key is not None and key in self.keys:
                            continue  # it was applied meanwhile: replayed above
                        self._check_base(base_version)
                        write = prepare()
                        await held.commit(write)
            except StaleVersion:
                hold = True
                continue
            except AlreadyApplied as done:  # an id older than the ones kept in memory
                assert key is not None  # only a write with a key can have been applied
                self.keys[key] = done.version
                continue
            return self.accept(write)
        raise errors.Unavailable("the cart kept changing while this change was stored; try again")

    def _check_base(self, base_version: int | None) -> None:
        if base_version is not None and base_version != self.cart.version:
            raise errors.VersionConflict(
                f"the cart is at version {self.cart.version}, not {base_version}",
                version=self.cart.version,
                cart=Raw(self.document()),
            )

    def prepare(
        self,
        op: Op,
        *,
        origin: str | None = None,
        key: str | None = None,
        respond: bool = False,
        effects: Callable[[Cart], tuple[Effect, ...]] | None = None,
        request: str | None = None,
    ) -> CartWrite:
        """The write that applying `op` now would commit (CartError if refused)."""
        abandon_after = self.ctx.settings.abandon_after_seconds
        products = self.ctx.catalog.products
        tip = self._pipe.tip(self.cart)  # the cart as the writes in flight leave it
        new, change = domain.apply(tip, op, products, utcnow(), abandon_after)
        patch = encode(render.patch_msg(new, change, products, origin)).decode()
        body = self.docs.render(new) if respond else None
        extra = effects(new) if effects is not None else ()
        return CartWrite(new, tip.version, change, patch, key, body, extra, request)

    def accept(self, write: CartWrite) -> Outcome:
        """Take a committed write into memory and tell the tabs and other processes."""
        self._accept(write.cart, write.patch, write.key)
        self.ctx.published(write.cart, write.patch, write.key)
        if write.response is not None:
            self.docs.keep(write.cart.version, write.response)
        return Outcome(write.cart.version, write.response)

    async def _replay(self, key: str, respond: bool, request: str | None) -> Outcome:
        version = self.keys[key]
        body: bytes | None = None
        if respond or request is not None:
            body, asked = await self.ctx.store.replay(self.cart.id, key)
            if request is not None and asked is not None and asked != request:
                raise errors.IdempotencyKeyReused(
                    "this Idempotency-Key was used for another request; nothing changed"
                )
        if respond and body is None:  # its answer is no longer kept: the cart as it is now
            return Outcome(self.cart.version, self.document(), replayed=True)
        return Outcome(version, body, replayed=True)

    def _accept(self, new: Cart, patch: str, key: str | None) -> None:
        self.cart = new
        self.history.add(new.version, patch)
        if key is not None:
            self.keys[key] = new.version
            if len(self.keys) > MEMORY_KEYS:
                del self.keys[next(iter(self.keys))]
        self.last_used = time.monotonic()
        self.broadcast(patch)
        self.wake()
        self.timer.arm()
        self._moved()

    def _moved(self) -> None:
        """A finished cart's tabs, open now, move on to its successor; after a merge they
        only learn that it is over (see MovedMsg)."""
        successor = self.cart.merged_into
        if self.cart.status is Status.MERGED:
            self.broadcast(encode(MovedMsg(cart_id=None)))
        elif self.cart.status in FINISHED and successor:
            self.broadcast(encode(MovedMsg(cart_id=self.ctx.sign(successor))))

    # --- deadlines -------------------------------------------------------------------

    async def run_due(self) -> bool:
        """Expire or abandon the cart if it is due (in this cart's order, like any other
        mutation; checked again after a catch-up, so it fires once per idle period even
        with several processes); True if it did."""
        settings = self.ctx.settings
        async with self._lock:
            await self._pipe.drain()
            for op in (Expire(settings.cart_ttl_seconds, str(uuid.uuid4())), Abandon()):
                try:
                    await self._apply(op, effects=self._event)
                except errors.NotDue:
                    continue
                return True
            # Not due (yet): if the wall clock was set back, wait for the deadline again
            # rather than leave the cart to the next sweep.
            self.timer.arm()
        return False

    def _event(self, new: Cart) -> tuple[Effect, ...]:
        """The outbox event a timer's status change emits."""
        payload = render.cart_event(new, self.ctx.settings.currency)
        return (Emit(new.id, new.status.value, payload),)

    def close(self) -> None:
        """Stop the timer: the room is leaving memory (the sweeper takes over)."""
        self.timer.close()

    def receive(self, cart: Cart, patch: str, key: str | None) -> bool:
        """A commit another process made and published: taken if it is the next version.
        False otherwise (a message lost or overtaken): the caller reads the store."""
        if cart.version != self.cart.version + 1:
            return False
        self._accept(cart, patch, key)
        return True

    def wake(self) -> None:
        """Return every wait_past() now: the cart changed, or the server is shutting down."""
        self.history.wake()

    async def catch_up(self) -> None:
        """Bring the room up to what the store holds (another process committed)."""
        async with self._lock:
            await self._pipe.drain()
            await self._catch_up()

    async def _catch_up(self) -> None:
        self._adopt(await self.ctx.store.load_cart(self.cart.id, self._keys_since()))

    def _keys_since(self) -> datetime:
        return utcnow() - timedelta(seconds=self.ctx.settings.idempotency_ttl_seconds)

    def _adopt(self, stored: StoredCart | None) -> None:
        """Take what the store holds if it is newer, and send the tabs what they missed."""
        if stored is None or stored.cart.version <= self.cart.version:
            return
        behind, was_finished = self.cart.version, self.cart.status in FINISHED
        self._load(stored)
        frames = self.patches_after(behind)
        if frames is None:  # too far behind for patches: every tab starts over
            frames = [self.snapshot_frame()]
        for frame in frames:
            self.broadcast(frame)
        self.wake()
        if not was_finished:
            self._moved()  # finished in another process: these tabs follow too
