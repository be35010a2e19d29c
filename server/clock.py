"""UTC timestamps and their one text form, shared by the wire and the store."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache


def utcnow() -> datetime:
    """Now, to the millisecond: the precision the store keeps, so memory matches a reload."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@lru_cache(maxsize=1024)  # one mutation formats the same few moments for its doc and its row
def iso(moment: datetime) -> str:
    """'2026-11-26T10:00:00.000Z': fixed width, so text order is time order."""
    if moment.tzinfo is not UTC:  # every moment this server makes is UTC already
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds")[:-6] + "Z"


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text)
