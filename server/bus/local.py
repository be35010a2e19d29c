"""In-process bus. One process alone has no one to tell, so publishing costs nothing;
several hubs sharing one broker behave like processes sharing Redis (used by tests)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator


class LocalBroker:
    def __init__(self) -> None:
        self._subscribers: defaultdict[str, set[LocalBus]] = defaultdict(set)

    def connect(self) -> LocalBus:
        return LocalBus(self)


class LocalBus:
    def __init__(self, broker: LocalBroker) -> None:
        self._broker = broker
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._channels: set[str] = set()

    def publish(self, channel: str, message: bytes) -> None:
        for bus in self._broker._subscribers.get(channel, ()):
            if bus is not self:  # a process never needs its own news
                bus._inbox.put_nowait((channel, message))

    def heard(self, channel: str) -> bool:
        return any(bus is not self for bus in self._broker._subscribers.get(channel, ()))

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        self._broker._subscribers[channel].add(self)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        subscribers = self._broker._subscribers.get(channel)
        if subscribers is not None:
            subscribers.discard(self)
            if not subscribers:
                del self._broker._subscribers[channel]

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            yield await self._inbox.get()

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        for channel in list(self._channels):
            await self.unsubscribe(channel)
