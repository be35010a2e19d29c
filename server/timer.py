"""The prompt path to a cart's abandonment deadline: one timer per room in memory, armed
for the cart's stored abandon_at. The hub's sweeper covers carts whose room is not in
memory, so a timer that is lost or fails costs lateness, never the event."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from .cart import Cart, Status
from .clock import utcnow

log = logging.getLogger("server.room")

# Event loops may run a timer slightly before the wall clock reaches its deadline (uvloop
# rounds to milliseconds); a timer a few milliseconds late finds the cart due.
SLACK = 0.005


class AbandonTimer:
    def __init__(self, cart: Callable[[], Cart], run_due: Callable[[], Awaitable[bool]]) -> None:
        self._cart = cart  # the cart as it is now
        self._run_due = run_due  # expire or abandon it if due, in the cart's order
        self.handle: asyncio.TimerHandle | None = None
        self.armed_for: datetime | None = None  # the abandon_at the handle was armed for
        self.task: asyncio.Task[None] | None = None
        self._closed = False  # left memory: arms no timer any more

    def arm(self) -> None:
        """(Re)start the timer for the cart's abandon_at, or stop it if it has none."""
        cart = self._cart()
        at = cart.abandon_at
        if self._closed or at is None or cart.status is not Status.ACTIVE or not cart.lines:
            self.disarm()
            return
        if self.handle is not None and self.armed_for is not None and self.armed_for <= at:
            # Every edit moves the deadline later: the armed timer fires first and looks
            # again, rather than a timer being replaced on every mutation.
            return
        self.disarm()
        delay = max(0.0, (at - utcnow()).total_seconds()) + SLACK
        self.armed_for = at
        self.handle = asyncio.get_running_loop().call_later(delay, self.fire)

    def disarm(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def fire(self) -> None:
        self.handle = None
        at = self._cart().abandon_at
        if at is not None and self.armed_for is not None and at > self.armed_for:
            self.arm()  # edited since it was armed: not due yet
            return
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            await self._run_due()
        except Exception:  # not re-armed: the sweeper tries again on its next round
            log.exception("abandonment timer of cart %s failed", self._cart().id)

    def close(self) -> None:
        """Stop for good: the room is leaving memory (the sweeper takes over)."""
        self._closed = True
        self.disarm()
