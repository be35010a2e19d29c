"""Bounds on what grows with traffic: one background purge, in short batches, for every
table a busy shop fills. Patches beyond PATCH_HISTORY go in the commits that add them,
eight at a time (carts.TRIM_STEP)."""

from __future__ import annotations

from datetime import datetime, timedelta

from .config import Settings
from .store import Store

BATCH = 500  # rows per transaction: each purge step holds the writer only briefly


async def purge(store: Store, settings: Settings, now: datetime) -> int:
    """Delete what is past its time as of `now`; how many rows went."""
    keys = await store.prune(now - timedelta(seconds=settings.idempotency_ttl_seconds))
    carts = await store.purge_expired(now - timedelta(seconds=settings.cart_ttl_seconds), BATCH)
    # Without a webhook nothing is ever delivered: events stay listable for EVENTS_TTL.
    records = await store.purge_records(
        now - timedelta(seconds=settings.events_ttl_seconds), not settings.events_webhook_url, BATCH
    )
    return keys + carts + records


def period(settings: Settings) -> float:
    """How often to purge: hourly, or a quarter of the shortest time to keep, 1 s at least."""
    shortest = min(
        settings.idempotency_ttl_seconds, settings.cart_ttl_seconds, settings.events_ttl_seconds
    )
    return min(3600.0, max(1.0, shortest / 4))
