"""The registry of rooms: load on first use, evict when idle, and the only reader of the bus."""

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

from .bus import Bus
from .catalog import Catalog
from .clock import utcnow
from .config import Settings
from .errors import CLOSE_SERVICE_RESTART
from .metrics import Metrics
from .room import Room, RoomContext
from .store import Store

log = logging.getLogger("server.hub")
SWEEP_BATCH = 500
SWEEP_CONCURRENCY = 50


class BusMessage(msgspec.Struct, frozen=True, array_like=True):
    origin: str  # the publishing hub: a process drops its own echoes
    cart_id: str
    version: int


_bus_decoder = msgspec.msgpack.Decoder(BusMessage)
_bus_encode = msgspec.msgpack.Encoder().encode


def channel(cart_id: str) -> str:
    return f"cart:{cart_id}"


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
        self.draining = asyncio.Event()
        self._context = RoomContext(
            store, catalog, settings, metrics, self._published, sign, self.draining
        )
        self._tasks: set[asyncio.Task[None]] = set()
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
            keys_since = utcnow() - timedelta(seconds=self.settings.idempotency_ttl)
            stored = await self.store.load_cart(cart_id, keys_since)
            room = Room(cart_id, stored, self._context)
            self.rooms[cart_id] = room
            future.set_result(room)
            return room
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters, if any, get it too
            if cart_id not in self.rooms:
                await self.bus.unsubscribe(channel(cart_id))
            raise
        finally:
            del self._loading[cart_id]

    async def evict_idle(self) -> int:
        """Drop rooms nobody uses, with no tab, idle for ROOM_IDLE; memory stays bounded."""
        cutoff = time.monotonic() - self.settings.room_idle_seconds
        idle = [
            cart_id
            for cart_id, room in self.rooms.items()
            if room.refs == 0
            and not room.tabs
            and not room.lock.locked()
            and room.last_used < cutoff
        ]
        for cart_id in idle:
            self.rooms.pop(cart_id).close()
        for cart_id in idle:
            if cart_id not in self.rooms and cart_id not in self._loading:  # not back already
                await self.bus.unsubscribe(channel(cart_id))
        return len(idle)

    # --- other processes -------------------------------------------------------------

    def _published(self, cart_id: str, version: int) -> None:
        self.bus.publish(channel(cart_id), _bus_encode(BusMessage(self.id, cart_id, version)))

    async def _listen(self) -> None:
        async for _, data in self.bus.listen():
            try:
                message = _bus_decoder.decode(data)
            except msgspec.DecodeError:
                log.warning("ignored an undecodable bus message")
                continue
            room = self.rooms.get(message.cart_id)
            if message.origin != self.id and room is not None and message.version > room.version:
                self._spawn(room.catch_up())

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
        shortest = min(self.settings.abandon_after, self.settings.cart_ttl)
        return min(60.0, max(0.25, shortest / 4))

    # --- background work -------------------------------------------------------------

    async def start(self) -> None:
        await self.catalog.refresh(self.store)
        self._spawn(self._listen())
        self._spawn(self._sweep_now_and_every(self.sweep_period()))
        self._spawn(self._every(max(1.0, self.settings.room_idle_seconds / 4), self.evict_idle))
        self._spawn(self._every(self.settings.catalog_refresh_seconds, self._refresh_catalog))
        self._spawn(self._every(3600.0, self._prune))

    async def _refresh_catalog(self) -> None:
        await self.catalog.refresh(self.store)

    async def _prune(self) -> None:
        before = utcnow() - timedelta(seconds=self.settings.idempotency_ttl)
        await self.store.prune(before)
        await self.store.purge_expired(utcnow() - timedelta(seconds=self.settings.cart_ttl), 500)

    async def _sweep_now_and_every(self, seconds: float) -> None:
        # At once on start: deadlines that passed while the server was down fire soon.
        try:
            await self.sweep()
        except Exception:
            log.exception("the first timer sweep failed")
        await self._every(seconds, self.sweep)

    async def _every(self, seconds: float, work: Callable[[], Awaitable[object]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception:  # keep the loop alive; the next round may succeed
                log.exception("background task %s failed", getattr(work, "__name__", work))

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
        for room in rooms:
            async with room.lock:  # FIFO: every mutation already waiting goes first
                pass
        tabs = [tab for room in rooms for tab in room.tabs]
        for tab in tabs:
            tab.close(CLOSE_SERVICE_RESTART, flush=True)
        await asyncio.gather(*(tab.done.wait() for tab in tabs))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
