"""attack: what one address can do to the connection layer, and what others see meanwhile.

1. Half-open: N connections from 127.0.0.1 that send half a request line and stop. How
   many the server holds, how many it refuses, /healthz from 127.0.0.2 meanwhile, and when
   the held ones are closed (HEADER_TIMEOUT).
2. One huge header: a request with an X-Pad header of M MiB, sent as fast as the server
   takes it. Its answer and how long it took, and /healthz from another client meanwhile.

Starts its own server, with the default limits and loopback not a trusted proxy (so each
127.0.0.x is a client of its own); --server-env adds to that."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop

from .harness import LocalServer, latency_line, percentiles, report

OWN_SERVER = True
HALF = b"GET /healthz HT"
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--half-open", type=int, default=1100, help="connections that stall")
    parser.add_argument("--header-mib", type=int, default=100, help="size of the huge header")
    parser.add_argument("--probes", type=int, default=50, help="/healthz requests after stage 1")
    parser.add_argument("--timeout", type=float, default=60.0, help="bound on each stage")


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (0 < args.half_open <= 20_000 and 0 < args.header_mib <= 1024):
        parser.error("--half-open 1..20000, --header-mib 1..1024")
    if not (0 < args.probes <= 10_000 and 0 < args.timeout <= 600):
        parser.error("--probes 1..10000, --timeout up to 600 s")


async def _connect(port: int, source: str) -> Conn:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _healthz(port: int, source: str) -> tuple[int, float]:
    """(status or 0 if refused or no answer, seconds)."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(10):
            reader, writer = await _connect(port, source)
            writer.write(HEALTHZ)
            data = await reader.read()
            writer.close()
        status = int(data.split(b" ", 2)[1]) if data else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        status = 0
    return status, time.perf_counter() - started


async def _closed(conn: Conn) -> bytes:
    try:
        return await conn[0].read()
    except OSError:
        return b""


async def half_open(port: int, args: argparse.Namespace) -> dict[str, Any]:
    conns: list[Conn] = []
    async with asyncio.timeout(args.timeout):
        for _ in range(args.half_open):
            try:
                conn = await _connect(port, "127.0.0.1")
            except OSError:
                continue  # the backlog is full: refused at the door
            conn[1].write(HALF)
            conns.append(conn)
    opened = time.perf_counter()
    probes = [await _healthz(port, "127.0.0.2") for _ in range(args.probes)]
    waits = [asyncio.ensure_future(_closed(conn)) for conn in conns]
    done, pending = await asyncio.wait(waits, timeout=args.timeout)
    closed_at = time.perf_counter()
    for task in pending:
        task.cancel()
    for _, writer in conns:
        writer.close()
    # Refused: answered 429 as it was accepted (or reset). Held: answered 408 at the
    # header timeout, or still open when the run stopped waiting.
    answers = [task.result() for task in done]
    timed_out = sum(1 for a in answers if a.startswith(b"HTTP/1.1 408"))
    return {
        "attempted": args.half_open,
        "connected": len(conns),
        "held": timed_out + len(pending),
        "refused": len(answers) - timed_out,
        "held_answers_408": timed_out,
        "held_closed_after_s": round(closed_at - opened, 2) if not pending else None,
        "held_still_open": len(pending),
        "healthz_ok": sum(1 for status, _ in probes if status == 200),
        "healthz_probes": len(probes),
        "healthz_ms": percentiles([seconds for status, seconds in probes if status == 200]),
    }


async def huge_header(port: int, args: argparse.Namespace) -> dict[str, Any]:
    size = args.header_mib * 1024 * 1024
    reader, writer = await _connect(port, "127.0.0.1")
    started = time.perf_counter()

    async def attack() -> tuple[bytes, float]:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: ")
        chunk = b"a" * (1024 * 1024)
        try:
            for _ in range(args.header_mib):
                writer.write(chunk)
                await writer.drain()
            writer.write(b"\r\n\r\n")
            await writer.drain()
        except OSError:
            pass  # the server stopped taking it
        try:
            answer = await reader.read()
        except OSError:
            answer = b""
        return answer, time.perf_counter() - started

    sending = asyncio.ensure_future(attack())
    probes = []
    async with asyncio.timeout(args.timeout):
        while not sending.done():
            probes.append(await _healthz(port, "127.0.0.3"))
        answer, seconds = await sending
    writer.close()
    status = answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "(closed, no answer)"
    return {
        "header_bytes": size,
        "answer": status,
        "answer_after_s": round(seconds, 3),
        "healthz_ok": sum(1 for s, _ in probes if s == 200),
        "healthz_probes": len(probes),
        "healthz_ms": percentiles([t for s, t in probes if s == 200]),
    }


def main(args: argparse.Namespace, _: object) -> None:
    env = {"FORWARDED_ALLOW_IPS": "192.0.2.1", "MAX_CONNECTIONS_PER_IP": "100"}
    env.update(item.split("=", 1) for item in args.server_env)
    server = LocalServer(env).start()
    try:
        stall = uvloop.run(half_open(server.port, args))
        huge = uvloop.run(huge_header(server.port, args))
    finally:
        server.remove()
    table = [
        ("half-open connections", f"{stall['connected']:,} of {stall['attempted']:,}"),
        ("held by the server", f"{stall['held']:,} (refused {stall['refused']:,})"),
        ("  answered 408", f"{stall['held_answers_408']:,}"),
        ("  all closed after", f"{stall['held_closed_after_s']} s (from the last connect)"),
        ("  still open at the bound", f"{stall['held_still_open']:,} ({args.timeout:g} s)"),
        ("healthz from 127.0.0.2", f"{stall['healthz_ok']}/{stall['healthz_probes']} ok"),
        ("  latency", latency_line(stall["healthz_ms"])),
        ("huge header", f"{huge['header_bytes']:,} bytes"),
        ("  answer", f"{huge['answer']} after {huge['answer_after_s']} s"),
        ("healthz meanwhile", f"{huge['healthz_ok']}/{huge['healthz_probes']} ok"),
        ("  latency", latency_line(huge["healthz_ms"])),
    ]
    report("attack", table, {"half_open": stall, "huge_header": huge})
