"""Load generator: `python -m bench fanout --carts 100 --tabs 3 --rate 2000 --seconds 10`;
crash test: `python -m bench crash --kills 1000`.

Starts its own server (SQLite in a temp dir) unless given --url. Bounded in count and time.
Prints a human table and one JSON line."""

from __future__ import annotations

import argparse
import sys

import uvloop

from .crash import crash_loop
from .fanout import fanout
from .harness import LocalServer, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--url",
        action="append",
        help="measure this server instead of starting one; repeat it for several processes"
        " of one deployment (each cart's tabs are spread over them)",
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    fan = modes.add_parser("fanout", help="K carts x T tabs at a fixed offered rate")
    fan.add_argument("--carts", type=int, default=100)
    fan.add_argument("--tabs", type=int, default=3)
    fan.add_argument("--rate", type=float, default=2000.0, help="mutations offered per second")
    fan.add_argument("--seconds", type=float, default=10.0)
    fan.add_argument("--warmup", type=float, default=1.0)
    crash = modes.add_parser("crash", help="SIGKILL under load, restart, check every ack")
    crash.add_argument("--kills", type=int, default=1000)
    crash.add_argument("--max-seconds", type=float, default=3600.0)
    crash.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.mode == "crash":
        return _crash(args)
    if args.seconds > 300 or args.rate * args.seconds > 5_000_000:
        parser.error("a run is bounded: at most 300 s and 5,000,000 mutations")

    server = None if args.url else LocalServer().start()
    urls = args.url or [server.url]  # type: ignore[union-attr]
    try:
        result = uvloop.run(
            fanout(server, urls, args.carts, args.tabs, args.rate, args.seconds, args.warmup)
        )
    finally:
        if server is not None:
            server.stop()
    lat = result["latency_ms"]
    report(
        "fanout",
        [
            ("carts x tabs", f"{args.carts} x {args.tabs} over {len(urls)} process(es)"),
            ("offered", f"{args.rate:,.0f} mutations/s for {args.seconds:g} s"),
            (
                "achieved",
                f"{result['achieved_rate']:,.0f} mutations/s"
                f" ({result['deliveries_per_s']:,.0f} patch deliveries/s)",
            ),
            (
                "latency to all tabs",
                f"p50 {lat['p50']:.2f} ms  p90 {lat['p90']:.2f} ms"
                f"  p99 {lat['p99']:.2f} ms  max {lat['max']:.2f} ms",
            ),
            ("server CPU", f"{result['server_cpu_ms_per_mutation']:.3f} ms per mutation"),
            ("errors / unfinished", f"{result['errors']} / {result['unfinished']}"),
            (
                "gaps / dups / out of order",
                f"{result['gaps']} / {result['duplicates']} / {result['out_of_order']}",
            ),
        ],
        result,
    )
    return 0


def _crash(args: argparse.Namespace) -> int:
    if args.url:
        print("crash starts (and kills) its own server; --url does not apply", file=sys.stderr)
        return 2
    result = uvloop.run(
        crash_loop(args.kills, args.max_seconds, args.seed, progress=lambda s: print(s, flush=True))
    )
    start = result["startup_ms"]
    report(
        "crash",
        [
            ("kills survived", f"{result['kills']:,} in {result['seconds']:,.0f} s"),
            (
                "mutations",
                f"{result['sent']:,} sent, {result['acknowledged']:,} acknowledged,"
                f" {result['refused']:,} refused",
            ),
            (
                "in the store",
                f"{result['applied']:,} applied, of which {result['applied_unacknowledged']:,}"
                " committed but killed before the answer",
            ),
            ("lost or half-applied", "0 (every check passed)"),
            ("server startup", f"p50 {start['p50']:.0f} ms  max {start['max']:.0f} ms"),
        ],
        result,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
