"""The fan-out seam: how one process tells the others that a cart changed, chosen by URL.

A message only says "cart C reached version V" (plus who sent it); the receiving process
reads what it missed from the store, so a lost or reordered message costs a reload, never
a wrong cart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ..config import ConfigError


class Bus(Protocol):
    def publish(self, channel: str, message: bytes) -> None:
        """Queue a message for every other subscriber of `channel`; never blocks."""

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        """(channel, message) for subscribed channels, as they arrive."""

    async def close(self) -> None: ...


def open_bus(url: str | None) -> Bus:
    """In-process fan-out by default (one process holds every tab of a cart)."""
    if not url or url == "memory://":
        from .local import LocalBroker

        return LocalBroker().connect()
    scheme = url.split(":", 1)[0]
    raise ConfigError(f"REDIS_URL scheme {scheme!r} is not supported (expected redis://)")
