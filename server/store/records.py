"""The statements of the outbox and of the records kept for a while after the fact."""

from __future__ import annotations

from datetime import datetime, timedelta

from ..clock import iso
from . import CartEvent
from .sql import Plan, Rows, Run

EVENT_COLUMNS = "id, cart_id, type, payload, created_at, delivered_at, attempts"
# Rows another sender is claiming right now are skipped (PostgreSQL), not waited for.
CLAIM = (
    f"SELECT {EVENT_COLUMNS} FROM cart_events WHERE delivered_at IS NULL"
    " AND next_attempt_at <= :now ORDER BY id LIMIT :limit{skip_locked}"
)
LEASE = "UPDATE cart_events SET next_attempt_at = :until WHERE id {in_ids}"
DELIVERED = "UPDATE cart_events SET delivered_at = :at, attempts = attempts + 1 WHERE id = :id"
RETRY = "UPDATE cart_events SET next_attempt_at = :at, attempts = attempts + 1 WHERE id = :id"
EVENTS = f"SELECT {EVENT_COLUMNS} FROM cart_events ORDER BY id LIMIT :limit"
UNDELIVERED = (
    f"SELECT {EVENT_COLUMNS} FROM cart_events WHERE delivered_at IS NULL ORDER BY id LIMIT :limit"
)
# Records kept for a while after the fact (EVENTS_TTL), oldest first, in short batches.
# Released checkouts only: a paid one is the order's record.
RECORD_PURGES = (
    "DELETE FROM cart_events WHERE id IN (SELECT id FROM cart_events WHERE created_at < :before"
    " AND (delivered_at IS NOT NULL OR :undelivered_too) ORDER BY id LIMIT :limit)",
    "DELETE FROM payment_events WHERE event_id IN (SELECT event_id FROM payment_events"
    " WHERE received_at < :before LIMIT :limit)",
    "DELETE FROM checkouts WHERE id IN (SELECT id FROM checkouts"
    " WHERE status = 'released' AND updated_at < :before LIMIT :limit)",
)
# What an operator watches, beside the size: both counts are served by partial indexes
# (pending events, reserved checkouts).
FIGURES = (
    "(SELECT count(*) FROM cart_events WHERE delivered_at IS NULL),"
    " (SELECT min(created_at) FROM cart_events WHERE delivered_at IS NULL),"
    " (SELECT count(*) FROM checkouts WHERE status = 'reserved' AND expires_at > '')"
)


def claim_events(now: datetime, lease: float, limit: int) -> Plan[list[CartEvent]]:
    """Undelivered events due for a try, leased for `lease` seconds."""
    rows = yield Rows(CLAIM, {"now": iso(now), "limit": limit})
    # The lease: another sender (another process) skips these until it runs out.
    until = iso(now + timedelta(seconds=lease))
    yield Run(LEASE, {"until": until, "ids": [row[0] for row in rows]})
    return [CartEvent(*row) for row in rows]
