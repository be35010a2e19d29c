"""rest: C concurrent clients, each on its own cart (X-Cart-Id), POST /api/cart/items in a
closed loop (the next request when the answer came) for a bounded time."""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from . import fanout
from .harness import (
    Probe,
    Target,
    cpu_line,
    cpu_spent,
    latency_line,
    per,
    percentiles,
    products,
    report,
)
from .http import Conn, HttpError

PRODUCTS = 10
# Adds before a client moves to a fresh cart: no line ever reaches the 999-per-line cap.
ADDS_PER_CART = PRODUCTS * 900


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    fanout.procs_argument(parser)


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 0 < args.seconds <= 300 or not 0 <= args.warmup <= 60:
        parser.error("a run is bounded: at most 300 s (and a warmup of at most 60 s)")
    if not (0 < args.clients <= 4096 and 0 < args.procs <= min(32, args.clients)):
        parser.error("--clients 1..4096, --procs 1..32 and at most --clients")


async def _client(
    url: str,
    ids: list[str],
    first: int,
    measure_from: float,
    stop_at: float,
    latencies: list[float],
    statuses: Counter[str],
) -> None:
    conn: Conn | None = None
    signed: str | None = None
    n = first
    while time.perf_counter() < stop_at:
        headers = {"content-type": "application/json"}
        if signed is not None:
            headers["x-cart-id"] = signed
        body = f'{{"product_id":"{ids[n % len(ids)]}","quantity":1}}'.encode()
        started = time.perf_counter()
        try:
            conn = conn or await Conn.open(url)
            status, answer, _ = await conn.request("POST", "/api/cart/items", headers, body)
        except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
            statuses[type(exc).__name__] += 1
            if conn is not None:
                await conn.close()
            conn = None
            await asyncio.sleep(0.05)  # a refused connection must not spin the loop
            continue
        if started >= measure_from:
            latencies.append(time.perf_counter() - started)
            statuses[str(status)] += 1
        signed = answer.get("x-cart-id", signed)
        n += 1
        if (n - first) % ADDS_PER_CART == 0:
            signed = None
    if conn is not None:
        await conn.close()


def _process(
    url: str, ids: list[str], clients: int, warmup: float, seconds: float, pid: int | None
) -> dict[str, Any]:
    """One generator process: `clients` clients; its samples, statuses and CPU."""
    import uvloop

    from .rig import cpu_seconds

    async def run() -> dict[str, Any]:
        latencies: list[float] = []
        statuses: Counter[str] = Counter()
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds
        tasks = [
            asyncio.create_task(_client(url, ids, n, measure_from, stop_at, latencies, statuses))
            for n in range(clients)
        ]
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        probe = Probe(pid) if pid else None
        server_before, client_cpu = probe.cpu_split() if probe else None, cpu_seconds()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        client_cpu = cpu_seconds() - client_cpu
        server_cpu, loop_cpu = cpu_spent(probe, server_before)
        await asyncio.gather(*tasks)
        return {
            "latencies": latencies,
            "statuses": dict(statuses),
            "client_cpu": client_cpu,
            "server_cpu": server_cpu,
            "server_loop_cpu": loop_cpu,
        }

    return uvloop.run(run())


def main(args: argparse.Namespace, target: Target) -> None:
    ids = products(target.url, PRODUCTS)
    base, extra = divmod(args.clients, args.procs)
    shares = [base + (n < extra) for n in range(args.procs)]
    if args.procs == 1:
        parts = [_process(target.url, ids, args.clients, args.warmup, args.seconds, target.pid)]
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.procs, mp_context=ctx) as pool:
            futures = [
                pool.submit(
                    _process,
                    target.url,
                    ids,
                    share,
                    args.warmup,
                    args.seconds,
                    target.pid if n == 0 else None,
                )
                for n, share in enumerate(shares)
            ]
            parts = [f.result(timeout=args.warmup + args.seconds + 120) for f in futures]
    latencies = [x for part in parts for x in part["latencies"]]
    statuses: Counter[str] = Counter()
    for part in parts:
        statuses.update(part["statuses"])
    ok = statuses.get("200", 0)
    server_cpu = parts[0]["server_cpu"]
    result = {
        "clients": args.clients,
        "procs": args.procs,
        "seconds": args.seconds,
        "requests": len(latencies),
        "ok": ok,
        "errors": sum(statuses.values()) - ok,
        "statuses": dict(statuses),
        "requests_per_s": ok / args.seconds,
        "latency_ms": percentiles(latencies),
        "server_cpu_ms_per_request": per(server_cpu, ok),
        "server_loop_cpu_ms_per_request": per(parts[0]["server_loop_cpu"], ok),
        "client_cpu_cores": sum(p["client_cpu"] for p in parts) / args.seconds,
    }
    cpu = result["server_cpu_ms_per_request"]
    report(
        "rest",
        [
            ("clients", f"{args.clients}, each its own cart ({args.procs} generator procs)"),
            ("request", "POST /api/cart/items (add one), closed loop"),
            ("throughput", f"{result['requests_per_s']:,.0f} req/s over {args.seconds:g} s"),
            ("latency", latency_line(result["latency_ms"])),
            ("server CPU", cpu_line(cpu, result["server_loop_cpu_ms_per_request"], "request")),
            ("generator CPU", f"{result['client_cpu_cores']:.2f} cores"),
            ("errors", f"{result['errors']} {dict(statuses) if result['errors'] else ''}"),
        ],
        result,
    )
