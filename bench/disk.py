"""disk: what the disk under the databases does to a durable commit, with no server.
--size bytes are written and synced (fdatasync) --rate times a second for --seconds, in a
temporary file in --dir (by default where the bench servers keep their databases), as
the SQLite writer does for each commit. Every acknowledgement waits for its commit's
sync, so a sync that stalls holds back every fan-out behind it: the syncs' p50, p99 and
longest, and the share of the time spent in syncs of STALL_MS or more, bound the
server's latency on this machine. The floor keeps nothing and never waits for a disk.
`side` runs it in each round, between the server and the floor."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

from .harness import percentiles, report

OWN_SERVER = True
STALL_MS = 10.0
# What the server's commits write at 1,000 mutations/s on 100 x 3: about 500 commits a
# second of about 14 WAL pages of 4 KiB each (README, ninth round).
RATE = 500.0
SIZE = 14 * 4096
RING = 64  # writes go round a file of RING * size bytes, as a WAL that starts over


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=8.0, help="how long it writes")
    parser.add_argument("--rate", type=float, default=RATE, help="syncs per second")
    parser.add_argument("--size", type=int, default=SIZE, help="bytes written before each")
    parser.add_argument(
        "--dir",
        default=tempfile.gettempdir(),
        help="where its file goes (default: where the bench servers' databases go)",
    )


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (0 < args.seconds <= 60 and 0 < args.rate <= 10_000 and 0 < args.size <= 1 << 20):
        parser.error("bounded: --seconds up to 60, --rate up to 10000, --size up to 1 MiB")
    if not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir}: no such directory")


def probe(
    directory: str,
    seconds: float,
    rate: float = RATE,
    size: int = SIZE,
    *,
    sync: Callable[[int], None] = os.fdatasync,
    clock: Callable[[], float] = time.perf_counter,
    pause: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Write and sync on schedule for `seconds`; a sync that runs late is not made up for
    with a burst (the server's commits would have joined one batch meanwhile)."""
    fd, path = tempfile.mkstemp(prefix="cart-disk-", dir=directory)
    block = os.urandom(size)
    took: list[float] = []
    try:
        start = due = clock()
        end = start + seconds
        while (now := clock()) < end and due < end:
            if due > now:
                pause(due - now)
            os.pwrite(fd, block, len(took) % RING * size)
            before = clock()
            sync(fd)
            after = clock()
            took.append(after - before)
            due = max(due + 1 / rate, after)
        elapsed = clock() - start
    finally:
        os.close(fd)
        os.unlink(path)
    stalled = [t for t in took if t * 1000 >= STALL_MS]
    return {
        "syncs": len(took),
        "rate": rate,
        "size": size,
        "sync_ms": percentiles(took),
        "stalls": len(stalled),
        "stalled_share": sum(stalled) / elapsed if elapsed > 0 else 0.0,
    }


def line(result: dict[str, Any]) -> str:
    ms = result["sync_ms"]
    return (
        f"{result['syncs']} syncs of {result['size'] // 1024} KiB: p50 {ms['p50']:.2f} ms"
        f"  p99 {ms['p99']:.2f} ms  max {ms['max']:.1f} ms; {result['stalls']} of"
        f" {STALL_MS:.0f} ms or more, {result['stalled_share']:.1%} of the time"
    )


def main(args: argparse.Namespace, _target: Any) -> None:
    result = probe(args.dir, args.seconds, args.rate, args.size)
    report("disk", [("fdatasync", line(result))], {**result, "dir": args.dir})
