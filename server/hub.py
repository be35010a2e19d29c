"""The registry of rooms: load on first use, evict when idle, and the only reader of the
bus (what goes over it: news.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any

import msgspec

from . import errors, retention
from .bus import RESYNC, Bus
from .cart import Cart, Product
from .catalog import Catalog
from .clock import utcnow
from .config import Settings
from .errors import CLOSE_SERVICE_RESTART
from .metrics import Metrics
from .news import (
    CATALOG_CHANNEL,
    BusMessage,
    bus_decoder,
    bus_encode,
    catalog_news,
    channel,
    news_decoder,
)
from .room import Room, RoomContext
from .store import Store

log = logging.getLogger("server.hub")
SWEEP_BATCH = 500
SWEEP_CONCURRENCY = 50


class Hub:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        catalog: Catalog,
        settings: Settings,
        metrics: Metrics,
        sign: Callable[[str], str] = str,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.store = store
        self.bus = bus
        self.catalog = catalog
        self.settings = settings
        self.metrics = metrics
        self.rooms: dict[str, Room] = {}
        self._loading: dict[str, asyncio.Future[Room]] = {}
        # Versions heard on the bus for rooms being loaded: the load may have read older.
        self._heard_while_loading: dict[str, int] = {}
        # Rooms reading the store to catch up, and the version each should reach.
        self._repairing: dict[Room, int] = {}
        self.draining = asyncio.Event()
        self._context = RoomContext(
            store,
            catalog,
            settings,
            metrics,
            self._published,
            self._present,
            sign,
            self.draining,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        catalog.listeners.append(self._tell_rooms)
        metrics.gauge("cart_rooms_loaded", lambda: len(self.rooms))
        metrics.gauge("cart_ws_connections", lambda: sum(len(r.tabs) for r in self.rooms.values()))

    # --- rooms -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def use(self, cart_id: str) -> AsyncIterator[Room]:
        """The cart's room, held in memory for as long as the block runs."""
        room = self.rooms.get(cart_id) or await self._load(cart_id)
        room.refs += 1
        try:
            yield room
        finally:
            room.refs -= 1
            room.last_used = time.monotonic()

    async def _load(self, cart_id: str) -> Room:
        pending = self._loading.get(cart_id)
        if pending is not None:  # someone else is loading it: share their room
            return await asyncio.shield(pending)
        future: asyncio.Future[Room] = asyncio.get_running_loop().create_future()
        self._loading[cart_id] = future
        try:
            # Subscribe first: news of a commit made while we read is then not missed.
            await self.bus.subscribe(channel(cart_id))
            keys_since = utcnow() - timedelta(seconds=self.settings.idempotency_ttl_seconds)
            stored = await self.store.load_cart(cart_id, keys_since)
            room = Room(cart_id, stored, self._context)
            self.rooms[cart_id] = room
            future.set_result(room)
            heard = self._heard_while_loading.pop(cart_id, 0)
            if heard > room.version:
                self._repair(room, heard)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it too
            if cart_id not in self.rooms:
                await self.bus.unsubscribe(channel(cart_id))
            raise
        finally:
            del self._loading[cart_id]
            self._heard_while_loading.pop(cart_id, None)

    async def evict_idle(self) -> int:
        """Drop rooms nobody uses, with no tab, idle for ROOM_IDLE; memory stays bounded."""
        cutoff = time.monotonic() - self.settings.room_idle_seconds
        idle = [
            cart_id
            for cart_id, room in self.rooms.items()
            if room.refs == 0 and not room.tabs and not room.busy and room.last_used < cutoff
        ]
        for cart_id in idle:
            self.rooms.pop(cart_id).close()
        for cart_id in idle:
            if cart_id not in self.rooms and cart_id not in self._loading:  # not back already
                await self.bus.unsubscribe(channel(cart_id))
        return len(idle)

    # --- other processes -------------------------------------------------------------

    def _published(self, cart: Cart, patch: str, key: str | None) -> None:
        name = channel(cart.id)
        if self.bus.heard(name):  # one process alone: no cart to encode per mutation
            message = BusMessage(self.id, cart.id, cart.version, cart, patch, key)
            self.bus.publish(name, bus_encode(message))

    def _present(self, cart_id: str, version: int, tabs: int) -> None:
        name = channel(cart_id)
        if self.bus.heard(name):
            message = BusMessage(self.id, cart_id, version, tabs=tabs)
            self.bus.publish(name, bus_encode(message))

    async def _listen(self) -> None:
        async for name, data in self.bus.listen():
            if name == RESYNC:
                self._resync()
                self.catalog.reread(self.store)
                continue
            if name == CATALOG_CHANNEL:
                try:
                    news = news_decoder.decode(data)
                except msgspec.DecodeError:
                    log.warning("ignored an undecodable catalog message")
                    continue
                if news.origin != self.id:
                    self.catalog.reread(self.store, news.product_ids)
                continue
            try:
                message = bus_decoder.decode(data)
            except msgspec.DecodeError:
                log.warning("ignored an undecodable bus message")
                continue
            if message.origin != self.id:
                self._heard(message)

    def _heard(self, message: BusMessage) -> None:
        room = self.rooms.get(message.cart_id)
        if room is None:
            if message.cart_id in self._loading:
                seen = self._heard_while_loading.get(message.cart_id, 0)
                self._heard_while_loading[message.cart_id] = max(seen, message.version)
            return
        if message.tabs is not None:
            if room.presence.heard(message.origin, message.tabs, time.monotonic()) and room.tabs:
                self._present(room.cart.id, room.version, len(room.tabs))  # meet the newcomer
        if message.version <= room.version:
            return
        if message.cart is not None and message.patch is not None:
            if room.receive(message.cart, message.patch, message.key):
                self.metrics.inc("cart_bus_applied_total")
                return
        self._repair(room, message.version)  # a message was lost or overtaken

    def _repair(self, room: Room, version: int) -> None:
        """Bring the room up to `version` from the store: one reader per room at a time."""
        wanted = self._repairing.get(room)
        if wanted is not None:
            self._repairing[room] = max(wanted, version)
            return
        self._repairing[room] = version
        self._spawn(self._catch_up(room))

    async def _catch_up(self, room: Room) -> None:
        try:
            while room.version < self._repairing[room]:
                before = room.version
                await room.catch_up()
                self.metrics.inc("cart_room_repairs_total")
                if room.version == before:
                    break  # the store holds nothing newer: an echo of an old message
        except Exception as exc:  # the periodic check tries again
            log.warning("could not catch cart %s up: %s", room.cart.id, exc)
        finally:
            del self._repairing[room]

    def _resync(self) -> None:
        """The bus was cut off and is back: any message may have been lost meanwhile, so
        compare every room with the store now, and tell the others what is open here."""
        self._spawn(self._every(0, self.check_versions, once=True))
        for room in list(self.rooms.values()):
            if room.tabs:
                self._present(room.cart.id, room.version, len(room.tabs))

    async def check_versions(self) -> int:
        """Compare every loaded room with the store in one query and repair those behind:
        the last message of a burst may have been lost, and nothing would follow it."""
        if not self.rooms:
            return 0
        stored = await self.store.versions(list(self.rooms))
        behind = 0
        for cart_id, version in stored.items():
            room = self.rooms.get(cart_id)
            if room is not None and version > room.version:
                self._repair(room, version)
                behind += 1
        return behind

    async def refresh_presence(self) -> None:
        """Tell the others what this process holds, and forget processes gone quiet."""
        ttl = self.settings.presence_ttl_seconds
        cutoff = time.monotonic() - ttl
        for room in list(self.rooms.values()):
            if room.tabs:
                self._present(room.cart.id, room.version, len(room.tabs))
            if room.presence.elsewhere:
                room.presence.forget_before(cutoff)

    # --- the catalog -----------------------------------------------------------------

    def catalog_changed(self, products: list[Product]) -> None:
        """This process wrote these products to the store: take them now, and have every
        other process re-read the store."""
        self.catalog.update(products)
        self.bus.publish(*catalog_news(self.id, [p.id for p in products]))

    def _tell_rooms(self, changed: list[Product]) -> None:
        """The catalog changed (here, in the store, or through another process): the tabs
        of every cart holding one of these products hear of it."""
        by_id = {product.id: product for product in changed}
        for room in self.rooms.values():
            room.catalog_changed(by_id)

    # --- timers of carts not in memory ------------------------------------------------

    async def sweep(self) -> int:
        """Expire and abandon the carts that are due, through their rooms like any
        mutation: rooms evicted from memory, and deadlines that passed while the server
        was down, fire here (once: the room re-checks under its lock)."""
        fired = 0
        while True:
            due = await self.store.due_carts(utcnow(), SWEEP_BATCH)
            results: list[bool] = []
            for start in range(0, len(due), SWEEP_CONCURRENCY):
                chunk = due[start : start + SWEEP_CONCURRENCY]
                results += await asyncio.gather(*(self._run_due(c) for c in chunk))
            fired += sum(results)
            if len(due) < SWEEP_BATCH or not any(results):
                # Counted once it is over: a test can wait for passes instead of time.
                self.metrics.inc("cart_sweeps_total")
                return fired

    async def _run_due(self, cart_id: str) -> bool:
        try:
            async with self.use(cart_id) as room:
                return await room.run_due()
        except Exception:  # one cart's failure must not stop the others
            log.exception("timer of cart %s failed", cart_id)
            return False

    def sweep_period(self) -> float:
        """A quarter of the shorter deadline, 0.25 s to 60 s: late by at most that much."""
        shortest = min(self.settings.abandon_after_seconds, self.settings.cart_ttl_seconds)
        return min(60.0, max(0.25, shortest / 4))

    # --- background work -------------------------------------------------------------

    async def start(self) -> None:
        await self.bus.subscribe(CATALOG_CHANNEL)
        await self.catalog.refresh(self.store)
        self._spawn(self._listen())
        self._spawn(self._sweep_now_and_every(self.sweep_period()))
        self._spawn(self._every(max(1.0, self.settings.room_idle_seconds / 4), self.evict_idle))
        self._spawn(self._every(self.settings.catalog_refresh_seconds, self._refresh_catalog))
        self._spawn(self._every(retention.period(self.settings), self.purge))
        self._spawn(self._every(max(0.1, self.settings.bus_check_seconds), self.check_versions))
        presence = max(0.1, self.settings.presence_ttl_seconds / 3)
        self._spawn(self._every(presence, self.refresh_presence))

    async def _refresh_catalog(self) -> None:
        await self.catalog.refresh(self.store)

    async def purge(self) -> None:
        purged = await retention.purge(self.store, self.settings, utcnow())
        self.metrics.inc("cart_purged_rows_total", purged)

    async def _sweep_now_and_every(self, seconds: float) -> None:
        # At once on start: deadlines that passed while the server was down fire soon.
        try:
            await self.sweep()
        except Exception:
            log.exception("the first timer sweep failed")
        await self._every(seconds, self.sweep)

    async def _every(
        self, seconds: float, work: Callable[[], Awaitable[object]], once: bool = False
    ) -> None:
        name = getattr(work, "__name__", work)
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except errors.Unavailable as exc:  # the store is away; said once per failure
                log.warning("background task %s: %s", name, exc.message)
            except Exception:  # keep the loop alive; the next round may succeed
                log.exception("background task %s failed", name)
            if once:
                return

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Shutdown, before uvicorn closes the connections: long-polls answer now, tabs
        start no new mutation, the ones in flight commit, and every tab is sent what it
        is owed (acks, patches) and then closed with 1012 so it reconnects elsewhere."""
        self.draining.set()
        rooms = list(self.rooms.values())
        for room in rooms:
            room.wake()
        while True:
            for room in rooms:
                async with room.transaction():  # FIFO: every mutation waiting goes first
                    pass
            # A write stored and taken has woken its author, whose next step sends the
            # ack: one turn of the loop lets those steps run before the tabs are closed
            # (a room with nothing in flight is passed without a turn at all). One that
            # holds or waits for a room now is applying its change again (its commit was
            # refused): another pass. REST writes in flight do not count: their answers
            # go back over HTTP, and REST clients may keep writing until the server stops.
            await asyncio.sleep(0)
            if not any(room.held or room.waiting for room in rooms):
                break
        tabs = [tab for room in rooms for tab in room.tabs]
        for tab in tabs:
            tab.close(CLOSE_SERVICE_RESTART, flush=True)
        await asyncio.gather(*(tab.closed() for tab in tabs))

    async def close(self) -> None:
        await self.catalog.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # No timer may fire once the store is closed; one already running is a mutation
        # like any other and finishes.
        for room in self.rooms.values():
            room.close()
        running = [room.timer.task for room in self.rooms.values() if room.timer.task]
        await asyncio.gather(*running, return_exceptions=True)
