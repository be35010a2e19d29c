"""The fan-out seam: how one process tells the others that a cart changed, chosen by URL.

A message carries a commit (the cart, its patch and mutation id, who sent it); a process
takes it if it is its room's next version and otherwise reads what it missed from the
store, so a lost or reordered message costs a reload, never a wrong cart.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from ..config import ConfigError
from ..metrics import Metrics

# Yielded by listen() as a channel name after the bus was cut off and is back: messages of
# any channel may have been lost meanwhile, so every room should re-read the store.
RESYNC = "*resync*"


class Bus(Protocol):
    def publish(self, channel: str, message: bytes) -> None:
        """Queue a message for every other subscriber of `channel`; never blocks."""

    def heard(self, channel: str) -> bool:
        """False only when no one else could receive `channel` now: then a message need
        not even be encoded."""

    async def subscribe(self, channel: str) -> None:
        """Receive the channel's messages from now on (once the bus is reachable)."""

    async def unsubscribe(self, channel: str) -> None: ...

    def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        """(channel, message) for subscribed channels, as they arrive; (RESYNC, b"")
        after a reconnection."""

    async def ping(self) -> None:
        """Raise if messages cannot currently be sent and received."""

    async def close(self) -> None: ...


async def open_bus(url: str | None, metrics: Metrics | None = None, verify_tls: bool = True) -> Bus:
    """In-process fan-out by default (one process holds every tab of a cart); Redis
    pub/sub for several processes."""
    if not url or url == "memory://":
        from .local import LocalBroker

        return LocalBroker().connect()
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisBus

        return await RedisBus.open(url, metrics or Metrics(), verify_tls)
    scheme = url.split(":", 1)[0]
    raise ConfigError(
        f"REDIS_URL scheme {scheme!r} is not supported (expected redis:// or rediss://)"
    )
