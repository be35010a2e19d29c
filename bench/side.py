"""side: this server and the floor (bench/floor.py: in memory, same stack) measured in
one run, figure by figure, alternating, --reps rounds on the same load generator; each
figure's median for both and their ratio. Noise on a shared machine moves both alike,
so the ratio is the figure to compare between runs.

  WebSocket saturated (closed loop, 4 mutations in flight per cart), 100 carts x 3 tabs
  and 30 x 10: mutations/s; fan-out latency at 1,000 mutations/s offered, 100 x 3: p50
  and p99 until every tab has the patch; REST add-item with 16 clients: requests/s.

Each round ends with the disk alone (bench/disk.py), in the server's data directory for
as long as one figure: the floor never waits for a disk and the server waits for one at
every commit, so a p99 ratio is read beside what the disk's own syncs did in that run."""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import uvloop

from . import disk, fanout
from . import rest as rest_mode
from .harness import FloorServer, LocalServer, products, report
from .http import open_carts
from .pool import Pool

OWN_SERVER = True
WINDOW = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reps", type=int, default=3, help="rounds (the median is shown)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per figure")
    parser.add_argument("--warmup", type=float, default=1.0)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (0 < args.reps <= 10 and 0 < args.seconds <= 60 and 0 <= args.warmup <= 10):
        parser.error("bounded: --reps 1..10, --seconds up to 60, --warmup up to 10")


def _tabs(
    url: str, pid: int | None, carts: int, tabs: int, rate: float, window: int, args: Any
) -> dict[str, Any]:
    ids = products(url, fanout.PRODUCTS)
    signed = uvloop.run(open_carts(url, carts))
    with Pool([url], signed, tabs, 1, ids) as pool:
        opened = pool.open()
        if opened["failed"]:
            raise RuntimeError(f"{opened['failed']} tabs did not open: {opened['error']}")
        raw = pool.run(rate, args.seconds, args.warmup, carts, pid, window)
    result = fanout.summarize(raw, rate, tabs)
    if result["errors"] or result["gaps"] or result["duplicates"] or result["out_of_order"]:
        raise RuntimeError(f"{url}: errors, gaps or reordering: {result}")
    return result


def _saturated(carts: int, tabs: int) -> Callable[[str, int | None, Any], dict[str, float]]:
    def run(url: str, pid: int | None, args: Any) -> dict[str, float]:
        result = _tabs(url, pid, carts, tabs, 0.0, WINDOW, args)
        return {f"ws saturated {carts}x{tabs} mut/s": result["achieved_rate"]}

    return run


def _latency(url: str, pid: int | None, args: Any) -> dict[str, float]:
    lat = _tabs(url, pid, 100, 3, 1000.0, 0, args)["latency_ms"]
    return {"ws 1,000/s 100x3 p50 ms": lat["p50"], "ws 1,000/s 100x3 p99 ms": lat["p99"]}


def _rest(url: str, pid: int | None, args: Any) -> dict[str, float]:
    ids = products(url, rest_mode.PRODUCTS)
    part = rest_mode._process(url, ids, 16, args.warmup, args.seconds, pid)
    ok = part["statuses"].get("200", 0)
    if ok != sum(part["statuses"].values()):
        raise RuntimeError(f"{url}: REST answers other than 200: {part['statuses']}")
    return {"rest 16 clients req/s": ok / args.seconds}


FIGURES = (_saturated(100, 3), _saturated(30, 10), _latency, _rest)


def main(args: argparse.Namespace, target: None) -> None:
    samples: defaultdict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    disks: list[dict[str, Any]] = []
    servers: dict[str, LocalServer | FloorServer] = {}
    try:
        own = servers["server"] = LocalServer().start()
        servers["floor"] = FloorServer().start()
        for rep in range(args.reps):
            for who, server in servers.items():
                pid = server.proc.pid if server.proc is not None else None
                for figure in FIGURES:
                    for name, value in figure(server.url, pid, args).items():
                        samples[name][who].append(value)
                print(f"  round {rep + 1} of {args.reps}: {who} done", flush=True)
            disks.append(disk.probe(str(own.dir), args.seconds))
            print(f"  round {rep + 1} of {args.reps}: disk {disk.line(disks[-1])}", flush=True)
    finally:
        for server in servers.values():
            server.remove()
    rows, result = [], {}
    for name, by in samples.items():
        ours, floor = statistics.median(by["server"]), statistics.median(by["floor"])
        ratio = ours / floor if floor else float("nan")
        rows.append((name, f"server {ours:9.2f}   floor {floor:9.2f}   ratio {ratio:5.2f}"))
        result[name] = {"server": ours, "floor": floor, "ratio": ratio, "samples": by}
    rows.extend((f"disk, round {n}", disk.line(run)) for n, run in enumerate(disks, 1))
    report(
        "side",
        rows,
        {"reps": args.reps, "seconds": args.seconds, "figures": result, "disk": disks},
    )
