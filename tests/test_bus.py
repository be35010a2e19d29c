"""The Redis bus against a real Redis: delivery, subscriptions, and Redis going away."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.bus import RESYNC, Bus, open_bus
from server.bus.local import LocalBroker, LocalBus
from server.bus.redis import RedisBus
from server.config import ConfigError
from tests.support import REDIS_URL, RedisServer, require_redis


async def receive(bus: Bus, timeout: float = 5.0) -> tuple[str, bytes]:
    return await asyncio.wait_for(anext(aiter(bus.listen())), timeout)


def name() -> str:
    return f"test:{uuid.uuid4().hex}"  # Redis channels are global: names of their own


@pytest.fixture
async def buses() -> AsyncIterator[tuple[Bus, Bus]]:
    await require_redis()
    a, b = await open_bus(REDIS_URL), await open_bus(REDIS_URL)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_open_bus_picks_by_url() -> None:
    local = await open_bus(None)
    assert isinstance(local, LocalBus)
    await local.close()
    with pytest.raises(ConfigError, match="'amqp' is not supported"):
        await open_bus("amqp://localhost")


async def test_a_local_bus_is_heard_only_by_another_subscriber() -> None:
    broker = LocalBroker()
    a, b = broker.connect(), broker.connect()
    await a.subscribe("c")
    assert not a.heard("c")  # its own subscription does not count
    assert b.heard("c") and not b.heard("d")
    await b.subscribe("c")
    assert a.heard("c") and not a.heard("d")
    await b.unsubscribe("c")
    assert not a.heard("c")


async def test_messages_reach_subscribers_in_order(buses: tuple[Bus, Bus]) -> None:
    a, b = buses
    wanted, other = name(), name()
    await b.subscribe(wanted)
    await a.ping()
    await b.ping()
    for n in range(20):
        a.publish(other, b"not subscribed")
        a.publish(wanted, str(n).encode())
    got = [await receive(b) for _ in range(20)]
    # One sender's messages arrive in the order sent, and only from subscribed channels.
    assert got == [(wanted, str(n).encode()) for n in range(20)]


async def test_unsubscribed_channels_are_not_delivered(buses: tuple[Bus, Bus]) -> None:
    a, b = buses
    left, kept = name(), name()
    await b.subscribe(left)
    await b.subscribe(kept)
    await b.unsubscribe(left)
    a.publish(left, b"gone")
    a.publish(kept, b"here")  # sent after: had the first been delivered, it came first
    assert await receive(b) == (kept, b"here")


async def test_redis_restart_reconnects_resubscribes_and_says_resync(tmp_path: Path) -> None:
    await require_redis()
    redis = RedisServer(tmp_path).start()
    a = b = None
    try:
        a, b = await open_bus(redis.url), await open_bus(redis.url)
        channel = name()
        await b.subscribe(channel)
        a.publish(channel, b"before")
        assert await receive(b) == (channel, b"before")

        redis.kill()
        async with asyncio.timeout(10):
            while True:  # the subscription notices the closed socket at once
                try:
                    await b.ping()
                except Exception:
                    break
                await asyncio.sleep(0.05)
        a.publish(channel, b"lost")  # never blocks, never raises: dropped
        assert isinstance(b, RedisBus)

        redis.start()  # the same port
        assert await receive(b, timeout=15) == (RESYNC, b"")
        await b.ping()
        async with asyncio.timeout(15):
            while True:  # a's own connection comes back at its next publish
                a.publish(channel, b"after")
                try:
                    got = await receive(b, timeout=0.5)
                except TimeoutError:
                    continue
                break
        assert got == (channel, b"after")
    finally:
        for bus in (a, b):
            if bus is not None:
                await bus.close()
        redis.kill()
