"""UTC timestamps and their one text form, shared by the wire and the store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache

# Added to every reading of the clock. The server never moves it; tests do, to reach a
# deadline at once instead of sleeping until it passes.
offset = timedelta(0)


def utcnow() -> datetime:
    """Now, to the millisecond: the precision the store keeps, so memory matches a reload."""
    # One datetime made, not three: read on every mutation.
    now = datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)
    return now + offset if offset else now


@lru_cache(maxsize=1024)  # one mutation formats the same few moments for its doc and its row
def iso(moment: datetime) -> str:
    """'2026-11-26T10:00:00.000Z': fixed width, so text order is time order."""
    if moment.tzinfo is not UTC:  # every moment this server makes is UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)
