"""tabs: N idle WebSockets across carts; the server's RSS before and after, per tab; its
CPU while they idle; then the fan-out on some of those carts with all of them connected
(latency until every one of the cart's tabs has the patch). All along, a probe tab pings
every 10 ms: its longest round trip bounds the longest stop of the server's event loop
(with this many tabs, a full garbage collection)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import uvloop

from . import fanout
from .harness import Target, latency_line, products, raise_nofile, report
from .http import metric_samples, open_carts
from .pause import PauseProbe
from .pool import Pool

# Descriptors a server needs besides its sockets (database, WAL, listener, epoll, pipes):
# it keeps 128 of its limit back from clients (server/sockets.py FD_MARGIN), and more.
SERVER_FDS = 160
# Half of a common fd limit; one process opens them about as fast as one server accepts.
TABS_PER_PROC = 10_000
MiB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--carts", type=int, default=5000)
    parser.add_argument("--tabs", type=int, default=4, help="tabs per cart")
    parser.add_argument("--active", type=int, default=100, help="carts the fan-out mutates")
    parser.add_argument("--rate", type=float, default=500.0, help="fan-out mutations per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="fan-out measured time")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=5.0, help="seconds to watch idle CPU")
    parser.add_argument("--open-seconds", type=float, default=180.0, help="bound on opening")
    parser.add_argument("--concurrency", type=int, default=64, help="handshakes in flight/proc")
    parser.add_argument("--procs", type=int, default=0, help=f"0: one per {TABS_PER_PROC} tabs")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    tabs = args.carts * args.tabs
    if not (0 < args.carts <= 100_000 and 0 < args.tabs <= 64 and tabs <= 200_000):
        parser.error("--carts 1..100000, --tabs 1..64, at most 200,000 tabs")
    if not (0 < args.seconds <= 300 and 0 <= args.idle <= 60 and 0 < args.open_seconds <= 600):
        parser.error("bounded: --seconds 300, --idle 60, --open-seconds 600 at most")
    if not (0 < args.active <= args.carts and 0 <= args.procs <= 32 and args.rate > 0):
        parser.error("--active 1..--carts, --procs 0..32, --rate > 0")


def fit(args: argparse.Namespace, target: Target) -> tuple[int, int, str]:
    """(carts, processes, why the carts were capped): what the fd limits allow."""
    _, own_limit = raise_nofile()
    carts, capped = args.carts, ""
    probe = target.probe
    if probe is not None:
        limit = probe.nofile()
        if carts * args.tabs + SERVER_FDS > limit:
            carts = max(1, (limit - SERVER_FDS) // args.tabs)
            capped = (
                f"the server may open {limit:,} files (RLIMIT_NOFILE, raised to its hard limit),"
                f" so {carts * args.tabs:,} tabs, not {args.carts * args.tabs:,}:"
                " raise the hard limit (ulimit -Hn, or LimitNOFILE=) to go further"
            )
    tabs = carts * args.tabs
    procs = args.procs or math.ceil(tabs / TABS_PER_PROC)
    per_proc = min(own_limit - SERVER_FDS, TABS_PER_PROC * 2)
    procs = max(procs, math.ceil(tabs / per_proc), 1)
    return carts, min(procs, carts), capped


def _mib(value: float | None) -> str:
    return f"{value / MiB:,.1f} MiB" if value is not None else "n/a (no --pid)"


def main(args: argparse.Namespace, target: Target) -> None:
    carts, procs, capped = fit(args, target)
    if capped:
        print(f"NOTE: {capped}", file=sys.stderr, flush=True)
    probe = target.probe
    ids = products(target.url, fanout.PRODUCTS)
    rss_start = probe.rss_bytes() if probe else None
    signed = uvloop.run(open_carts(target.url, carts))
    rss_carts = probe.rss_bytes() if probe else None
    with (
        PauseProbe(target.url, signed[0]) as pause,
        Pool(
            target.urls, signed, args.tabs, procs, ids, args.concurrency, args.open_seconds
        ) as pool,
    ):
        cpu = probe.cpu_seconds() if probe else None
        opened = pool.open(show_progress=True)
        open_cpu = probe.cpu_seconds() - cpu if probe and cpu is not None else None
        gc_open = uvloop.run(gc_pause_ms(target.url))  # the window covers the opening
        time.sleep(1.0)  # let the last handshakes' garbage settle before reading RSS
        rss_tabs = probe.rss_bytes() if probe else None
        cpu = probe.cpu_seconds() if probe else None
        time.sleep(args.idle)
        idle_cpu = (probe.cpu_seconds() - cpu) / args.idle if probe and cpu is not None else None
        raw = pool.run(args.rate, args.seconds, args.warmup, args.active, target.pid)
        rss_after = probe.rss_bytes() if probe else None
        gc_run = uvloop.run(gc_pause_ms(target.url))
    n = opened["opened"] or 1
    rss = {"start": rss_start, "carts": rss_carts, "tabs": rss_tabs, "after_fanout": rss_after}
    per_tab = (rss_tabs - rss_carts) / n if rss_tabs is not None and rss_carts is not None else None
    per_tab_all = (
        (rss_tabs - rss_start) / n if rss_tabs is not None and rss_start is not None else None
    )
    pauses = [ms for ms in (gc_open, gc_run) if ms is not None]
    result: dict[str, Any] = {
        "carts": carts,
        "tabs_per_cart": args.tabs,
        "requested_tabs": args.carts * args.tabs,
        "capped": capped or None,
        "procs": procs,
        "opened": opened["opened"],
        "failed": opened["failed"],
        "open_error": opened["error"] or None,
        "open_seconds": opened["seconds"],
        # Near 1.0: the server's handshakes, not the generator, set the opening pace.
        "open_server_cpu_cores": open_cpu / opened["seconds"] if open_cpu is not None else None,
        **{f"rss_{name}_bytes": value for name, value in rss.items()},
        "rss_per_tab_bytes": per_tab,
        "rss_per_tab_with_room_bytes": per_tab_all,
        "idle_server_cpu_cores": idle_cpu,
        "ping_rtt_ms": pause.result(),
        "gc_pause_max_ms": max(pauses) if pauses else None,
        "fanout": {"active_carts": raw["carts"], **fanout.summarize(raw, args.rate, args.tabs)},
    }
    report("tabs", _table(result, args.rate), result)


def _table(result: dict[str, Any], rate: float) -> list[tuple[str, str]]:
    tabs, fan, stalls = (
        result["carts"] * result["tabs_per_cart"],
        result["fanout"],
        result["ping_rtt_ms"],
    )
    cores, per_tab = result["open_server_cpu_cores"], result["rss_per_tab_bytes"]
    idle, gc_ms = result["idle_server_cpu_cores"], result["gc_pause_max_ms"]
    table = [
        (
            "tabs",
            f"{result['opened']:,} open of {tabs:,} ({result['carts']:,} carts x"
            f" {result['tabs_per_cart']}), in {result['open_seconds']:.1f} s by"
            f" {result['procs']} procs",
        ),
        ("server CPU opening", f"{cores:.2f} cores" if cores is not None else "n/a"),
    ]
    if result["capped"]:
        table.append(("capped", result["capped"]))
    if result["failed"]:
        table.append(("failed to open", f"{result['failed']:,}: {result['open_error']}"))
    table += [
        (
            "server RSS",
            f"{_mib(result['rss_start_bytes'])} at start, {_mib(result['rss_carts_bytes'])}"
            f" with the carts loaded, {_mib(result['rss_tabs_bytes'])} with the tabs,"
            f" {_mib(result['rss_after_fanout_bytes'])} after the fan-out",
        ),
        (
            "RSS per tab",
            f"{per_tab / 1024:.1f} KiB (with its share of the rooms"
            f" {result['rss_per_tab_with_room_bytes'] / 1024:.1f} KiB)"
            if per_tab and result["rss_per_tab_with_room_bytes"]
            else "n/a",
        ),
        ("idle server CPU", f"{idle:.3f} cores" if idle is not None else "n/a"),
        (
            "ping every 10 ms",
            f"{stalls['pings']:,} round trips: p99 {stalls['p99']:.1f} ms, longest"
            f" {stalls['max']:.1f} ms (bounds the longest stop of the server's loop)"
            + (f"; {stalls['error']}" if stalls["error"] else ""),
        ),
        (
            "longest GC pass",
            f"{gc_ms:.1f} ms (the server's own timing, /metrics cart_gc_pause_seconds)"
            if gc_ms is not None
            else "n/a (no /metrics)",
        ),
        (
            "fan-out",
            f"{fan['active_carts']} carts x {result['tabs_per_cart']} tabs at {rate:,.0f}/s",
        ),
        ("fan-out latency", latency_line(fan["latency_ms"])),
        ("errors / unfinished", f"{fan['errors']} / {fan['unfinished']}"),
        (
            "gaps / dups / out of order",
            f"{fan['gaps']} / {fan['duplicates']} / {fan['out_of_order']}",
        ),
    ]
    return table


async def gc_pause_ms(url: str) -> float | None:
    """The server's longest garbage-collector pass of the last 30-60 s, from /metrics (a
    server without it, the floor, gives None)."""
    samples = await metric_samples(url)
    pause = None if samples is None else samples.get("cart_gc_pause_seconds")
    return None if pause is None else pause * 1000
