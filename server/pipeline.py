"""A cart's writes in flight: the next mutation of a cart is applied on top of the ones
still being committed, so it joins the same group commit instead of waiting a whole
commit for its turn. Each write is taken into the room (memory, tabs, other processes)
only once it is stored, and strictly in version order. A write that failed takes down
the ones applied on top of it (the store's compare-and-set on the version refuses them),
and their callers apply them again on what is stored. Nothing is sent before a commit,
so a failure only drops memory: the pending state the later writes were applied on."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Container

from . import errors
from .cart import Cart
from .store import CartWrite, StaleVersion

log = logging.getLogger("server.room")


class _InFlight:
    __slots__ = ("write", "commit", "done")

    def __init__(self, write: CartWrite, commit: asyncio.Future[None]) -> None:
        self.write = write
        self.commit = commit
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Pipeline:
    """The writes of one cart submitted to the store and not yet taken into the room:
    `take` takes a stored write into the room, called in version order; `version` is
    the version the room holds."""

    def __init__(
        self, take: Callable[[CartWrite], object], version: Callable[[], int], ordered: bool
    ) -> None:
        self._take = take
        self._version = version
        self._ordered = ordered  # the store commits in the order commits start
        self._queue: deque[_InFlight] = deque()

    @property
    def busy(self) -> bool:
        return bool(self._queue)

    def tip(self, committed: Cart) -> Cart:
        """The cart as it will be once every write in flight is stored."""
        return self._queue[-1].write.cart if self._queue else committed

    def takes(self, key: str | None, applied: Container[str]) -> bool:
        """A write with this idempotency key may go in flight now: not a key to replay,
        which needs every write before it stored (and the store keeps the order)."""
        if not self._ordered:
            return False
        return key is None or (key not in applied and all(e.write.key != key for e in self._queue))

    def push(self, write: CartWrite, commit: asyncio.Future[None]) -> asyncio.Future[None]:
        """Follow `write`, whose commit (Store.start_commit) has begun; the future returned
        is done once it is stored and taken, or failed."""
        entry = _InFlight(write, commit)
        self._queue.append(entry)
        entry.commit.add_done_callback(self._settle)
        return entry.done

    def _settle(self, _: object) -> None:
        # The queue's head decides: writes are taken in version order, whatever order
        # their commits finish in.
        while self._queue and self._queue[0].commit.done():
            entry = self._queue.popleft()
            failure: BaseException | None
            if entry.commit.cancelled():
                failure = errors.Unavailable("the change could not be stored; nothing changed")
            else:
                failure = entry.commit.exception()
            if failure is None and entry.write.base_version != self._version():
                # Not the next version of what the room holds (another process's commit
                # was taken meanwhile): the caller's retry reads the store again.
                failure = StaleVersion(entry.write.cart.id)
            if failure is None:
                # Its caller wakes before the tabs' writes of this turn run, so the
                # author's ack leaves in the same write as the patch.
                if not entry.done.done():
                    entry.done.set_result(None)
                try:
                    self._take(entry.write)  # the caller may be gone: taken all the same
                except Exception:  # a bug; the writes behind it must still be settled
                    log.exception(
                        "taking %s v%d failed", entry.write.cart.id, entry.write.cart.version
                    )
            elif not entry.done.done():
                entry.done.set_exception(failure)

    async def drain(self) -> None:
        """Return once every write in flight is stored or failed, and taken."""
        while self._queue:
            await asyncio.wait([self._queue[-1].commit])  # then _settle has taken it
