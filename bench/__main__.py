"""Load generator: `python -m bench MODE [options]`, modes fanout, max, rest, tabs, cold,
catalog; the crash test, `python -m bench crash --kills 1000`; `attack`, half-open
connections and a huge header from one address; the long runs, churn and soak; and
`counters`, the cost of a metrics increment; `disk`, what the disk's syncs cost a commit;
`writer`, what the SQLite writer's statement costs a batch of edits.

Starts its own server (SQLite in a temp dir) unless given --url. Every run is bounded in
count and time, and prints a human table and one JSON line (with the machine)."""

from __future__ import annotations

import argparse
import sys

from . import (
    attack,
    catalog,
    churn,
    cold,
    counters,
    crash,
    disk,
    fanout,
    floor,
    max,
    rest,
    side,
    soak,
    tabs,
    writer,
)
from .harness import FloorServer, LocalServer, Target, raise_nofile

MODES = {
    "fanout": (fanout, "K carts x T tabs at a fixed offered rate"),
    "max": (max, "raise the offered rate until p99 passes a bound"),
    "rest": (rest, "C concurrent REST clients adding items in a closed loop"),
    "tabs": (tabs, "N idle WebSockets: server RSS per tab, then fan-out beside them"),
    "cold": (cold, "time to the first snapshot of carts not in memory"),
    "crash": (crash, "SIGKILL under load, restart, check every acknowledged mutation"),
    "catalog": (catalog, "a large catalog: listing sizes and times, change -> tabs latency"),
    "attack": (attack, "half-open connections and a huge header: what others see meanwhile"),
    "floor": (floor, "serve the floor: the leanest in-memory server of the protocol"),
    "side": (side, "the issue's figures for this server and the floor, alternating: ratios"),
    "soak": (soak, "a steady mix of everything for N minutes: nothing lost, nothing grows"),
    "churn": (churn, "anonymous shoppers come and go for weeks (TTLs shortened): rows level off"),
    "counters": (counters, "the hot path's metrics.inc beside the dict it replaced: ns per call"),
    "disk": (disk, "the disk alone: write and sync as commits do; how long, how often stalled"),
    "writer": (writer, "the writer's statement alone: WAL frames and CPU per batch of edits"),
}
# Modes that can measure the floor (--floor) instead of this server.
FLOOR_MODES = {"fanout", "max", "rest", "tabs"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--url",
        action="append",
        help="measure this server instead of starting one; repeat it for several processes"
        " of one deployment (each cart's tabs are spread over them)",
    )
    parser.add_argument(
        "--pid", type=int, help="with --url: the server's pid on this machine, to read CPU and RSS"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment for the server this run starts (repeatable)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="measure the floor (bench/floor.py, in memory) instead of this server",
    )
    subparsers = parser.add_subparsers(dest="mode", required=True)
    for name, (module, summary) in MODES.items():
        module.add_arguments(subparsers.add_parser(name, help=summary, description=summary))
    args = parser.parse_args(argv)
    module = MODES[args.mode][0]
    module.check(parser, args)
    if args.floor and (args.mode not in FLOOR_MODES or args.url):
        parser.error(f"--floor goes with {', '.join(sorted(FLOOR_MODES))}, and not with --url")
    if any("=" not in item for item in args.server_env):
        parser.error("--server-env takes NAME=VALUE")
    # A mode's own server settings (the admin token), then the caller's.
    env = {**getattr(module, "SERVER_ENV", {})}
    env |= dict(item.split("=", 1) for item in args.server_env)

    raise_nofile()
    if getattr(module, "OWN_SERVER", False):
        module.main(args, None)
        return 0
    server: LocalServer | FloorServer | None = None
    if not args.url:
        server = FloorServer().start() if args.floor else LocalServer(env).start()
    try:
        module.main(args, Target(args.url or [server.url], server, args.pid))  # type: ignore[union-attr]
    finally:
        if server is not None:
            server.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
