"""fanout: K carts x T tabs; mutations offered at a fixed rate (open loop) from random tabs,
or with --window, as fast as they are answered (closed loop: the saturated throughput);
latency from send until every tab of that cart holds the patch."""

from __future__ import annotations

import argparse
from typing import Any

import uvloop

from .harness import Target, cpu_line, latency_line, per, percentiles, products, report
from .http import metric_samples, open_carts
from .pool import Pool

PRODUCTS = 20  # lines a fan-out cart grows to: patches stay one line, carts stay realistic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carts", type=int, default=100)
    parser.add_argument("--tabs", type=int, default=3, help="tabs per cart")
    parser.add_argument("--rate", type=float, default=2000.0, help="mutations offered per second")
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="closed loop instead: this many mutations in flight per cart (--rate unused)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    procs_argument(parser)


def procs_argument(parser: argparse.ArgumentParser, default: int = 1) -> None:
    parser.add_argument(
        "--procs", type=int, default=default, help="load-generator processes sharing the tabs"
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.seconds <= 300 or args.rate * args.seconds > 5_000_000:
        parser.error("a run is bounded: at most 300 s and 5,000,000 mutations")
    if not 0 <= args.window <= 64:
        parser.error("--window 0..64")
    if not (0 < args.carts <= 50_000 and 0 < args.tabs <= 64 and 0 < args.procs <= 32):
        parser.error("--carts 1..50000, --tabs 1..64, --procs 1..32")


def summarize(raw: dict[str, Any], rate: float, tabs_per_cart: int) -> dict[str, Any]:
    """The figures of one merged Pool.run."""
    done, elapsed, offered = len(raw["latencies"]), raw["elapsed"] or 1e-9, raw["offered"]
    server_cpu = raw["server_cpu"]
    return {
        "offered_rate": rate,
        "achieved_rate": done / elapsed,
        "mutations": offered,
        "completed": done,
        "unfinished": raw["unfinished"],
        "errors": raw["errors"],
        "gaps": raw["gaps"],
        "duplicates": raw["duplicates"],
        "out_of_order": raw["out_of_order"],
        "latency_ms": percentiles(raw["latencies"]),
        "deliveries_per_s": done * tabs_per_cart / elapsed,
        "server_cpu_ms_per_mutation": per(server_cpu, offered),
        "server_loop_cpu_ms_per_mutation": per(raw["server_loop_cpu"], offered),
        # Near 1.0 per process means the generator, not the server, may be the limit.
        "client_cpu_cores": raw["client_cpu"] / elapsed,
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    cpu = result["server_cpu_ms_per_mutation"]
    return [
        (
            "offered",
            f"closed loop, {result['window']} in flight per cart ({result['mutations']:,} sent)"
            if result.get("window")
            else f"{result['offered_rate']:,.0f} mutations/s ({result['mutations']:,} mutations)",
        ),
        (
            "achieved",
            f"{result['achieved_rate']:,.0f} mutations/s"
            f" ({result['deliveries_per_s']:,.0f} patch deliveries/s)",
        ),
        ("latency to all tabs", latency_line(result["latency_ms"])),
        ("server CPU", cpu_line(cpu, result["server_loop_cpu_ms_per_mutation"], "mutation")),
        ("generator CPU", f"{result['client_cpu_cores']:.2f} cores"),
        ("errors / unfinished", f"{result['errors']} / {result['unfinished']}"),
        (
            "gaps / dups / out of order",
            f"{result['gaps']} / {result['duplicates']} / {result['out_of_order']}",
        ),
    ]


def main(args: argparse.Namespace, target: Target) -> None:
    ids = products(target.url, PRODUCTS)
    signed = uvloop.run(open_carts(target.url, args.carts))
    with Pool(target.urls, signed, args.tabs, args.procs, ids) as pool:
        opened = pool.open()
        before = uvloop.run(scrape(target.urls))
        raw = pool.run(args.rate, args.seconds, args.warmup, args.carts, target.pid, args.window)
        after = uvloop.run(scrape(target.urls))
    result = {
        "carts": args.carts,
        "tabs_per_cart": args.tabs,
        "seconds": args.seconds,
        "procs": args.procs,
        "tabs_failed": opened["failed"],
        "window": args.window,
        **summarize(raw, 0.0 if args.window else args.rate, args.tabs),
        "commits": commits(before, after),
    }
    table = [("carts x tabs", f"{args.carts} x {args.tabs} ({args.procs} generator procs)")]
    if opened["failed"]:
        table.append(("tabs failed to open", f"{opened['failed']}: {opened['error']}"))
    table += rows(result)
    if result["commits"] is not None:
        table.append(("server commits", commit_line(result["commits"])))
    report("fanout", table, result)


async def scrape(urls: list[str]) -> dict[str, float] | None:
    """The samples of every process's /metrics, added up; None without them (the floor)."""
    total: dict[str, float] = {}
    for url in urls:
        samples = await metric_samples(url)
        if samples is None:
            return None
        for key, value in samples.items():
            total[key] = total.get(key, 0.0) + value
    return total


def commits(
    before: dict[str, float] | None, after: dict[str, float] | None
) -> dict[str, Any] | None:
    """What the server's commits did over the run (with its warm-up), from its histograms:
    the wait from a write's submission to its commit, and the transaction's own part."""
    if before is None or after is None:
        return None

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    writes = grew("cart_commit_seconds_count")
    transactions = grew("cart_commit_transaction_seconds_count")
    if not writes or not transactions:
        return None
    return {
        "transactions": int(transactions),
        "writes_per_transaction": writes / transactions,
        "commit_ms_mean": grew("cart_commit_seconds_sum") / writes * 1000,
        "transaction_ms_mean": grew("cart_commit_transaction_seconds_sum") / transactions * 1000,
        "writes_over_5_ms": 1 - grew('cart_commit_seconds_bucket{le="0.005"}') / writes,
    }


def commit_line(figures: dict[str, Any]) -> str:
    return (
        f"{figures['transactions']:,} transactions of {figures['writes_per_transaction']:.1f}"
        f" writes; a write waited {figures['commit_ms_mean']:.2f} ms for its commit on"
        f" average, a transaction took {figures['transaction_ms_mean']:.2f} ms;"
        f" {figures['writes_over_5_ms']:.0%} of writes waited over 5 ms"
    )
