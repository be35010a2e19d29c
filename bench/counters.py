"""counters: the cost of one `Metrics.inc`, the call the hot path makes per mutation, beside
two others: the dict of floats the server counted in before prometheus-client (kept below
as it was), and prometheus-client Counters found by name, a child per label set cached
(the design Metrics.inc measured faster than). In-process, no server: nanoseconds per
call, the best of --repeat runs of --calls calls each."""

from __future__ import annotations

import argparse
import timeit
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from server.metrics import COUNTERS, Metrics

from .harness import report

OWN_SERVER = True


class DictCounters:
    """The counting the server did before prometheus-client, as it was."""

    def __init__(self) -> None:
        self.counters: defaultdict[tuple[str, tuple[tuple[str, str], ...]], float]
        self.counters = defaultdict(float)

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        self.counters[(name, tuple(sorted(labels.items())))] += value


class PrometheusCounters:
    """Metrics.inc as it would be over prometheus-client Counters: validation, then a lock."""

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self.counters = {
            name: Counter(name, text, labels, registry=registry)
            for name, (text, labels) in COUNTERS.items()
        }
        self.children: dict[tuple[Any, ...], Any] = {}

    def inc(self, name: str, value: float = 1, **labels: str) -> None:
        if not labels:
            self.counters[name].inc(value)
            return
        key = (name, *labels.items())
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = self.counters[name].labels(**labels)
        child.inc(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--calls", type=int, default=200_000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the fastest counts")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (0 < args.calls <= 10_000_000 and 0 < args.repeat <= 100):
        parser.error("--calls 1..10000000, --repeat 1..100")


def _ns_per_call(
    calls: dict[str, Callable[..., Any]], args: argparse.Namespace
) -> dict[str, float]:
    """Each way's best run, the ways taking turns run by run: a load that comes and goes
    on the machine falls on all of them alike."""
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(args.repeat):
        for way, call in calls.items():
            best[way] = min(best[way], timeit.timeit(call, number=args.calls))
    return {way: seconds / args.calls * 1e9 for way, seconds in best.items()}


def main(args: argparse.Namespace, _target: Any) -> None:
    metrics = Metrics()
    ways: dict[str, Any] = {"dict": DictCounters(), "counter": PrometheusCounters()}
    ways["metrics"] = metrics
    cases = {
        "labelled": ("cart_mutations_total", {"source": "ws", "result": "ok"}),
        "unlabelled": ("cart_commit_batches_total", {}),
    }
    result: dict[str, Any] = {"calls": args.calls, "repeat": args.repeat}
    table: list[tuple[str, str]] = []
    for case, (name, labels) in cases.items():
        # As the server calls it: keywords written at the call site, no partial in between.
        calls = {
            way: lambda c=counts: c.inc(name, **labels)  # noqa: B023 - timed in this turn
            for way, counts in ways.items()
        }
        ns = _ns_per_call(calls, args)
        counted = metrics.value(name, **labels)
        result[case] = {f"{way}_ns": value for way, value in ns.items()} | {
            "metrics_over_dict": ns["metrics"] / ns["dict"],
            "counted": counted,
        }
        table.append((f"{case} {name}", ", ".join(f"{k} {v:.0f} ns" for k, v in ns.items())))
    report("counters", table, result)
