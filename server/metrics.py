"""Counters, gauges and histograms rendered as Prometheus text; no dependency, no locks
(everything runs on one event loop)."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Awaitable, Callable

Labels = tuple[tuple[str, str], ...]

_HELP = {
    "cart_mutations_total": ("counter", "Mutations by source and result (ok or error code)."),
    "cart_patches_sent_total": ("counter", "Patch frames queued to tabs."),
    "cart_ws_closed_total": ("counter", "WebSocket closes initiated by the server, by code."),
    "cart_commit_batches_total": ("counter", "Store transactions (group commits)."),
    "cart_commit_writes_total": ("counter", "Writes committed inside those transactions."),
    "cart_commit_seconds": ("histogram", "Time from a write's submission to its commit."),
    "cart_store_writes_pending": ("gauge", "Writes submitted to the store, not yet committed."),
    "cart_ws_connections": ("gauge", "Open WebSocket tabs."),
    "cart_rooms_loaded": ("gauge", "Cart rooms held in memory."),
    "cart_long_lived_connections": (
        "gauge",
        "Open WebSockets and long-polls (counted per address for MAX_CONNECTIONS_PER_IP).",
    ),
    "cart_bus_published_total": ("counter", "Messages published to the other processes."),
    "cart_bus_dropped_total": ("counter", "Messages dropped: the bus was out of reach."),
    "cart_bus_reconnects_total": ("counter", "Reconnections of the bus subscription."),
    "cart_bus_applied_total": ("counter", "Other processes' commits taken from the bus."),
    "cart_room_repairs_total": ("counter", "Rooms re-read from the store: a message lost."),
    "cart_purged_rows_total": ("counter", "Rows deleted by the background purge."),
    "cart_database_bytes": ("gauge", "Database size: SQLite file and WAL, or the schema's tables."),
    "cart_outbox_pending": ("gauge", "Lifecycle events not delivered yet (the outbox backlog)."),
    "cart_outbox_oldest_seconds": ("gauge", "Age of the oldest undelivered event (0: none)."),
    "cart_checkouts_reserved": ("gauge", "Checkouts holding stock (reserved, not settled)."),
    "cart_event_loop_lag_seconds": (
        "gauge",
        "Longest event-loop delay in the last 30-60 s (probed every 0.1 s).",
    ),
    "cart_gc_pause_seconds": ("gauge", "Longest garbage-collector pass in the last 30-60 s."),
    "cart_catalog_frames_total": ("counter", "Catalog messages queued to tabs (products changed)."),
    "cart_admin_requests_total": ("counter", "Admin API requests by result (ok or error code)."),
}
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Histogram:
    def __init__(self) -> None:
        self.counts = [0] * (len(_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(_BUCKETS, value)] += 1
        self.total += value


class Metrics:
    def __init__(self) -> None:
        self.counters: defaultdict[tuple[str, Labels], float] = defaultdict(float)
        self.histograms: defaultdict[str, Histogram] = defaultdict(Histogram)
        self.gauges: dict[str, Callable[[], float]] = {}
        self.collectors: list[Callable[[], Awaitable[None]]] = []

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value

    def observe(self, name: str, value: float) -> None:
        self.histograms[name].observe(value)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self.gauges[name] = read

    def collector(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run before each render: gauges whose source must be awaited (the store)."""
        self.collectors.append(refresh)

    async def collect(self) -> None:
        for refresh in self.collectors:
            await refresh()

    def render(self) -> str:
        lines: list[str] = []
        by_name: defaultdict[str, list[tuple[Labels, float]]] = defaultdict(list)
        for (name, labels), value in sorted(self.counters.items()):
            by_name[name].append((labels, value))
        for name, samples in by_name.items():
            _header(lines, name)
            lines.extend(f"{name}{_labels(labels)} {_num(value)}" for labels, value in samples)
        for name, read in sorted(self.gauges.items()):
            _header(lines, name)
            lines.append(f"{name} {_num(read())}")
        for name, hist in sorted(self.histograms.items()):
            _header(lines, name)
            running = 0
            for bound, count in zip((*_BUCKETS, float("inf")), hist.counts, strict=True):
                running += count
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{le="{le}"}} {running}')
            lines.append(f"{name}_sum {hist.total:.6f}")
            lines.append(f"{name}_count {running}")
        return "\n".join(lines) + "\n"


def _header(lines: list[str], name: str) -> None:
    kind, text = _HELP.get(name, ("untyped", name))
    lines.append(f"# HELP {name} {text}")
    lines.append(f"# TYPE {name} {kind}")


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)
