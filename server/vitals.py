"""The store's figures an operator alerts on, read when /metrics is scraped (three indexed
counts); the last good reading is kept while the store is away."""

from __future__ import annotations

import logging

from . import errors
from .clock import parse_iso, utcnow
from .metrics import Metrics
from .store import Store, StoreStats

log = logging.getLogger("server.vitals")


class Vitals:
    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.stats = StoreStats(0, 0, None, 0)
        metrics.gauge("cart_database_bytes", lambda: self.stats.size_bytes)
        metrics.gauge("cart_outbox_pending", lambda: self.stats.outbox_pending)
        metrics.gauge("cart_outbox_oldest_seconds", self.oldest_age)
        metrics.gauge("cart_checkouts_reserved", lambda: self.stats.checkouts_reserved)
        metrics.collector(self.refresh)

    async def refresh(self) -> None:
        try:
            self.stats = await self.store.stats()
        except errors.Unavailable as exc:  # /readyz says so; the figures stay as last read
            log.warning("store figures not refreshed: %s", exc.message)

    def oldest_age(self) -> float:
        oldest = self.stats.outbox_oldest
        if oldest is None:
            return 0.0
        return round(max(0.0, (utcnow() - parse_iso(oldest)).total_seconds()), 3)
