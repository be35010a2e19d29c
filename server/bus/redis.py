"""Redis pub/sub bus: the processes of one deployment tell each other about commits.

One connection holds the subscriptions (a channel per loaded cart, plus a control channel
that keeps it open and tells when it is usable); publishing goes through the client's pool
from one task, which sends whatever queued up meanwhile in one round trip, in order.

Redis pub/sub delivers at most once: what is published while a process is cut off is lost
to it. So the subscriber reconnects with capped backoff, subscribes to everything again and
then yields RESYNC, on which every room re-reads the store. Messages are hints; the store
is the truth, so a lost message costs a read, never a wrong cart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from ..metrics import Metrics
from . import RESYNC

log = logging.getLogger("server.bus")

CONTROL = "cartsync:control"
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0  # seconds between reconnection attempts
CONNECT_TIMEOUT = 3.0
SOCKET_TIMEOUT = 5.0  # a publish or ping Redis does not answer within this failed
SILENCE = 5.0  # the subscription pings Redis after this long without a message...
DEAD_AFTER = 3 * SILENCE  # ...and is dropped and reopened after this long without answer
CONFIRM_TIMEOUT = 2.0  # subscribe waits this long for Redis to confirm
OUTBOX_LIMIT = 10_000  # messages queued while Redis is slow; the oldest go first
PUBLISH_BATCH = 500
CLOSE_FLUSH = 1.0  # seconds a closing bus gives queued messages (tab counts) to go out
BUS_ERRORS = (RedisError, OSError)


class RedisBus:
    def __init__(self, url: str, metrics: Metrics, verify_tls: bool = True) -> None:
        self._metrics = metrics
        options: dict[str, Any] = {
            "retry": Retry(NoBackoff(), 0),  # this bus reconnects itself, and knows it did
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_keepalive": True,
        }
        if url.startswith("rediss:") and not verify_tls:
            options["ssl_cert_reqs"] = "none"
        self._client = Redis.from_url(url, **options)
        self._channels: set[str] = set()
        self._pubsub: PubSub | None = None  # the live subscription; None while cut off
        self._confirmations: dict[str, asyncio.Future[None]] = {}
        self._connected = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wake = asyncio.Event()
        self._sending = 0  # messages taken from the outbox, not yet answered by Redis
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(cls, url: str, metrics: Metrics, verify_tls: bool = True) -> RedisBus:
        bus = cls(url, metrics, verify_tls)
        bus._tasks = [asyncio.create_task(bus._subscriber()), asyncio.create_task(bus._sender())]
        try:
            await asyncio.wait_for(bus._connected.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            log.warning("Redis is not reachable: starting anyway, not ready until it is")
        return bus

    # --- receiving -------------------------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)
        pubsub = self._pubsub
        if pubsub is None:
            return  # cut off: subscribed with the rest on reconnection, then RESYNC
        confirmed = self._confirmations.get(channel)
        if confirmed is None:
            confirmed = asyncio.get_running_loop().create_future()
            self._confirmations[channel] = confirmed
        # Wait for Redis to confirm: a commit published after that is not missed, and the
        # caller reads the store only then.
        with contextlib.suppress(*BUS_ERRORS, TimeoutError):
            await pubsub.subscribe(channel)
            await asyncio.wait_for(asyncio.shield(confirmed), CONFIRM_TIMEOUT)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(*BUS_ERRORS):
                await pubsub.unsubscribe(channel)

    async def listen(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            yield await self._inbox.get()

    async def _subscriber(self) -> None:
        delay = BACKOFF_MIN
        first = True
        quiet = False  # a failure already logged, not yet followed by a connection
        while True:
            pubsub = self._client.pubsub()
            try:
                await self._open(pubsub)
                loop = asyncio.get_running_loop()
                heard = loop.time()
                while True:
                    message = await pubsub.get_message(timeout=SILENCE)
                    now = loop.time()
                    if message is None:
                        if now - heard > DEAD_AFTER:
                            raise ConnectionError(f"Redis did not answer for {DEAD_AFTER:g} s")
                        await pubsub.ping()
                        continue
                    heard = now
                    kind = message["type"]
                    if kind == "message":
                        self._inbox.put_nowait((message["channel"].decode(), message["data"]))
                    elif kind == "subscribe":
                        name = message["channel"].decode()
                        if name == CONTROL:  # every channel is subscribed from here on
                            self._connected.set()
                            delay, quiet = BACKOFF_MIN, False
                            if not first:
                                log.warning("Redis is back: every room re-reads the store")
                                self._metrics.inc("cart_bus_reconnects_total")
                                self._inbox.put_nowait((RESYNC, b""))
                            first = False
                        waiter = self._confirmations.pop(name, None)
                        if waiter is not None and not waiter.done():
                            waiter.set_result(None)
            except BUS_ERRORS as exc:
                if not quiet:
                    log.warning("Redis subscription lost (%s); reconnecting", _describe(exc))
                    quiet = True
            finally:
                self._pubsub = None
                self._connected.clear()
                for waiter in self._confirmations.values():
                    if not waiter.done():
                        waiter.set_result(None)  # do not keep loads waiting: RESYNC follows
                self._confirmations.clear()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), CONNECT_TIMEOUT)  # type: ignore[no-untyped-call]
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _open(self, pubsub: PubSub) -> None:
        """Subscribe to the control channel and every channel wanted, in one command."""
        sent = set(self._channels)
        await pubsub.subscribe(CONTROL, *sent)
        # Rooms loaded or evicted while that was on its way.
        while sent != self._channels:
            missing, extra = self._channels - sent, sent - self._channels
            sent = set(self._channels)
            if missing:
                await pubsub.subscribe(*missing)
            if extra:
                await pubsub.unsubscribe(*extra)
        self._pubsub = pubsub

    # --- sending ---------------------------------------------------------------------

    def publish(self, channel: str, message: bytes) -> None:
        if len(self._outbox) >= OUTBOX_LIMIT:
            self._outbox.popleft()
            self._metrics.inc("cart_bus_dropped_total")
        self._outbox.append((channel, message))
        self._wake.set()

    def heard(self, channel: str) -> bool:
        return True  # other processes' subscriptions are Redis's to know

    async def _sender(self) -> None:
        delay = BACKOFF_MIN
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outbox:
                count = min(len(self._outbox), PUBLISH_BATCH)
                batch = [self._outbox.popleft() for _ in range(count)]
                self._sending = count
                try:
                    if count == 1:
                        await self._client.publish(*batch[0])
                    else:
                        async with self._client.pipeline(transaction=False) as pipe:
                            for channel, message in batch:
                                pipe.publish(channel, message)
                            await pipe.execute()
                except BUS_ERRORS as exc:
                    # Lost for good: receivers catch up on RESYNC or at their next check.
                    dropped = count + len(self._outbox)
                    self._outbox.clear()
                    self._metrics.inc("cart_bus_dropped_total", dropped)
                    if delay == BACKOFF_MIN:
                        log.warning("Redis publish failed (%s): dropped", _describe(exc))
                    self._sending = 0
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
                    break
                self._sending = 0
                delay = BACKOFF_MIN
                self._metrics.inc("cart_bus_published_total", count)

    # --- the rest --------------------------------------------------------------------

    async def ping(self) -> None:
        if not self._connected.is_set():
            raise ConnectionError("the Redis subscription is down")
        await self._client.ping()

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_FLUSH):
                # Also the batch on its way: cancelling the sender mid-publish loses it.
                while (self._outbox or self._sending) and self._connected.is_set():
                    await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(*BUS_ERRORS):
            await self._client.aclose()


def _describe(exc: BaseException) -> str:
    # redis-py names host and port in its messages, never the password of the URL.
    return f"{type(exc).__name__}: {exc}"
