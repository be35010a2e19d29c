"""Samples of a long-running server, for churn and soak: its RSS and open descriptors
(from /proc), and the figures it reports in /metrics (database size, outbox backlog,
event-loop lag, tabs); for churn also the row count of every table that grows."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .harness import Probe

# Tables a stream of anonymous shoppers fills; each must level off.
TABLES = (
    "cart_sessions",
    "cart_items",
    "cart_patches",
    "applied_mutations",
    "cart_events",
    "checkouts",
    "checkout_items",
    "payment_events",
)
GAUGES = (
    "cart_database_bytes",
    "cart_outbox_pending",
    "cart_outbox_oldest_seconds",
    "cart_event_loop_lag_seconds",
    "cart_gc_pause_seconds",
    "cart_ws_connections",
    "cart_rooms_loaded",
)


@dataclass
class Sample:
    at: float  # seconds since the run began
    rss: int
    fds: int
    gauges: dict[str, float]
    rows: dict[str, int] = field(default_factory=dict)


def gauges(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in GAUGES:
            found[name] = float(value)
    return found


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def row_counts(db: Path) -> dict[str, int]:
    # Read-only, one short read transaction: beside the server's writer in WAL mode.
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


async def sample(url: str, pid: int, started: float, db: Path | None = None) -> Sample:
    # A connection of its own for each sample: one kept alive between samples spaced like
    # the server's keep-alive timeout (5 s) races its closing, and the sample is lost.
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=30) as client:
        metrics = (await client.get("/metrics")).raise_for_status().text
    return Sample(
        at=time.monotonic() - started,
        rss=Probe(pid).rss_bytes(),
        fds=open_fds(pid),
        gauges=gauges(metrics),
        rows=row_counts(db) if db is not None else {},
    )


def mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def growth(samples: list[Sample], since: float, read: str) -> float:
    """How much `read` (rss or fds) grew from the samples at `since` to the last ones, as a
    fraction of the former. Each end is the median of three samples: a descriptor count
    moves by a few as sockets open and close."""
    later = [getattr(s, read) for s in samples if s.at >= since]
    if len(later) < 2:
        return 0.0
    ends = min(3, len(later) // 2)
    first, last = statistics.median(later[:ends]), statistics.median(later[-ends:])
    return float((last - first) / first) if first else 0.0
