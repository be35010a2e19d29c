"""The server's Prometheus metrics: each declared once below with its help, rendered by
prometheus-client into a registry of the app's own (several apps in one test process
must not share counts), beside the client's process and garbage-collector figures."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "cart_mutations_total": (
        "Mutations by source and result (ok or error code).",
        ("source", "result"),
    ),
    "cart_patches_sent_total": ("Patch frames queued to tabs.", ()),
    "cart_ws_closed_total": ("WebSocket closes initiated by the server, by code.", ("code",)),
    "cart_commit_batches_total": ("Store transactions (group commits).", ()),
    "cart_commit_writes_total": ("Writes committed inside those transactions.", ()),
    "cart_bus_published_total": ("Messages published to the other processes.", ()),
    "cart_bus_dropped_total": ("Messages dropped: the bus was out of reach.", ()),
    "cart_bus_reconnects_total": ("Reconnections of the bus subscription.", ()),
    "cart_bus_applied_total": ("Other processes' commits taken from the bus.", ()),
    "cart_room_repairs_total": ("Rooms re-read from the store: a message lost.", ()),
    "cart_purged_rows_total": ("Rows deleted by the background purge.", ()),
    "cart_sweeps_total": ("Passes of the timer sweeper (due carts not in memory).", ()),
    "cart_outbox_polls_total": ("Looks of the event outbox for due events.", ()),
    "cart_catalog_frames_total": ("Catalog messages queued to tabs (products changed).", ()),
    "cart_admin_requests_total": (
        "Admin API requests by result (ok or error code).",
        ("result",),
    ),
    "cart_checkouts_total": (
        "Checkout steps by result: reserved, refused (insufficient_stock, too_many_checkouts,"
        " provider_error), paid, cancelled, expired.",
        ("result",),
    ),
    "cart_events_sent_total": (
        "Lifecycle event deliveries to the webhook, by result (ok or failed).",
        ("result",),
    ),
}
GAUGES: dict[str, str] = {
    "cart_store_writes_pending": "Writes submitted to the store, not yet committed.",
    "cart_ws_connections": "Open WebSocket tabs.",
    "cart_rooms_loaded": "Cart rooms held in memory.",
    "cart_long_lived_connections": (
        "Open WebSockets and long-polls (counted per address for MAX_CONNECTIONS_PER_IP)."
    ),
    "cart_database_bytes": "Database size: SQLite file and WAL, or the schema's tables.",
    "cart_outbox_pending": "Lifecycle events not delivered yet (the outbox backlog).",
    "cart_outbox_oldest_seconds": "Age of the oldest undelivered event (0: none).",
    "cart_checkouts_reserved": "Checkouts holding stock (reserved, not settled).",
    "cart_event_loop_lag_seconds": (
        "Longest event-loop delay in the last 30-60 s (probed every 0.1 s)."
    ),
    "cart_gc_pause_seconds": "Longest garbage-collector pass in the last 30-60 s.",
}
HISTOGRAMS: dict[str, str] = {
    "cart_commit_seconds": "Time from a write's submission to its commit.",
    "cart_commit_transaction_seconds": (
        "Time a store transaction (one group commit) takes, from its first statement to its"
        " commit: the part of cart_commit_seconds that is not waiting in line."
    ),
}
_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    """Counts in a dict on the hot path, turned into prometheus-client's metric families at
    each scrape: `inc` runs per mutation, and a prometheus-client Counter's own increment
    (validation, then a lock) measured slower than that dict (`python -m bench counters`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_Families(self))
        self._histograms = {
            name: Histogram(name, text, registry=self.registry, buckets=_BUCKETS)
            for name, text in HISTOGRAMS.items()
        }
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        # Keyed by the name and the labels in the order given: no sorting per call.
        self.counts: dict[tuple[Any, ...], float] = {
            (name,): 0.0 for name, (_, labels) in COUNTERS.items() if not labels
        }
        # A gauge is exported once something reads it: a store without a write queue shows
        # no pending writes rather than a zero that looks measured.
        self.reads: dict[str, Callable[[], float]] = {}
        self.collectors: list[Callable[[], Awaitable[None]]] = []

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        key = (name, *labels.items())
        try:
            self.counts[key] += value
        except KeyError:
            _check(name, labels)
            self.counts[key] = value

    def observe(self, name: str, value: float) -> None:
        self._histograms[name].observe(value)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        if name not in GAUGES:
            raise KeyError(f"{name} is not declared in server/metrics.py")
        self.reads[name] = read

    def value(self, name: str, **labels: str) -> float:
        """A sample's current value (0 if it has none yet), for tests and benches."""
        return self.registry.get_sample_value(name, labels) or 0.0

    def collector(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run before each render: gauges whose source must be awaited (the store)."""
        self.collectors.append(refresh)

    async def collect(self) -> None:
        for refresh in self.collectors:
            await refresh()

    def render(self) -> str:
        return generate_latest(self.registry).decode()


def _check(name: str, labels: dict[str, str]) -> None:
    """A counter's first increment with these labels: declared, with its label names."""
    if name not in COUNTERS:
        raise KeyError(f"{name} is not declared in server/metrics.py")
    if set(labels) != set(COUNTERS[name][1]):
        raise ValueError(f"{name} takes the labels {COUNTERS[name][1]}, not {tuple(labels)}")


class _Families(Collector):
    """The counters and gauges as prometheus-client metric families, at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        by_name: dict[str, dict[tuple[str, ...], float]] = {name: {} for name in COUNTERS}
        for (name, *pairs), value in self.metrics.counts.items():
            given = dict(pairs)
            values = tuple(given[label] for label in COUNTERS[name][1])
            # Two call sites naming the labels in another order count the same series.
            by_name[name][values] = by_name[name].get(values, 0.0) + value
        for name, samples in by_name.items():
            text, labels = COUNTERS[name]
            family = CounterMetricFamily(name, text, labels=labels)
            for values, value in samples.items():
                family.add_metric(values, value)
            yield family
        for name, read in self.metrics.reads.items():
            yield GaugeMetricFamily(name, GAUGES[name], value=read())
