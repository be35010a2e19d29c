"""Delivery of outbox events to CART_EVENTS_WEBHOOK_URL: signed JSON POSTs, retried with
capped exponential backoff until the receiver answers 2xx.

Each POST carries `Cart-Event-Id: <id>` and `Cart-Signature: t=<unix>,v1=<hex>` where
v1 = HMAC-SHA256(CART_EVENTS_SECRET, "<t>.<body>"): the receiver recomputes it, compares in
constant time, and refuses old timestamps. Delivery is at least once (a receiver that
times out after storing sees the event again): de-duplicate by the event id.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from .clock import utcnow
from .config import Settings
from .metrics import Metrics
from .store import CartEvent, Store

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("server.outbox")

BATCH = 50
LEASE = 30.0  # seconds a claimed event is left alone by other senders
FIRST_RETRY = 0.5
MAX_RETRY = 300.0
TIMEOUT = 10.0


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The Cart-Signature header value for `body` sent at `timestamp`."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def retry_delay(attempts: int) -> float:
    """Seconds before the next try after `attempts` failed ones: 0.5, 1, 2, … 300."""
    return min(MAX_RETRY, FIRST_RETRY * 2.0 ** max(0, attempts - 1))


class Outbox:
    def __init__(self, store: Store, settings: Settings, metrics: Metrics) -> None:
        self.store = store
        self.url = settings.events_webhook_url
        self.secret = settings.events_secret
        self.metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._failed: type[Exception] = Exception  # the client's errors, once there is one

    def start(self) -> None:
        if self.url:
            # Imported only by a server that sends events: httpx is a tenth of a start.
            import httpx

            self._client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)
            self._failed = httpx.HTTPError
            self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                sent = await self.deliver()
            except Exception:  # the store may be back next round
                log.exception("event delivery round failed")
                sent = 0
            if sent < BATCH:
                await asyncio.sleep(FIRST_RETRY / 2)

    async def deliver(self) -> int:
        """Try every due event once; how many were tried."""
        events = await self.store.claim_events(utcnow(), LEASE, BATCH)
        if events:
            await asyncio.gather(*(self._send(event) for event in events))
        self.metrics.inc("cart_outbox_polls_total")
        return len(events)

    async def _send(self, event: CartEvent) -> None:
        assert self._client is not None
        body = event.payload.encode()
        headers = {
            "content-type": "application/json",
            "cart-event-id": str(event.id),
            "cart-event-type": event.type,
            "cart-signature": signature(self.secret, int(time.time()), body),
        }
        try:
            response = await self._client.post(self.url, content=body, headers=headers)
            delivered = 200 <= response.status_code < 300
            reason = f"HTTP {response.status_code}"
        except self._failed as exc:
            delivered, reason = False, type(exc).__name__
        attempts = event.attempts + 1
        retry_at = utcnow() + timedelta(seconds=retry_delay(attempts))
        await self.store.event_sent(event.id, delivered, retry_at)
        self.metrics.inc("cart_events_sent_total", result="ok" if delivered else "failed")
        if not delivered:
            log.warning(
                "event %d (%s) not delivered: %s; try %d", event.id, event.type, reason, attempts
            )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
