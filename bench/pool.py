"""Tabs spread over several load-generator processes, each a Rig on its own share of the
carts (all tabs of one cart in one process, so it alone can time "every tab has it").
One process cannot hold 20,000 sockets under a 20,000-fd limit, nor read much more than
30,000 frames a second; several can, on whatever cores the server leaves free."""

from __future__ import annotations

import multiprocessing
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from .harness import raise_nofile

# How long a worker may take to answer a command beyond the work itself.
GRACE_SECONDS = 60.0


def _worker(
    conn: Connection,
    progress: Synchronized,  # type: ignore[type-arg]
    urls: list[str],
    signed: list[str],
    tabs_per_cart: int,
    concurrency: int,
    open_seconds: float,
    products: list[str],
    seed: int,
) -> None:
    import asyncio

    import uvloop

    from .rig import Rig

    raise_nofile()

    async def serve() -> None:
        rig = Rig(urls, products, seed)
        loop = asyncio.get_running_loop()

        async def report_progress() -> None:
            while True:
                progress.value = rig.opened + rig.failed
                await asyncio.sleep(0.2)

        reporter = asyncio.create_task(report_progress())
        await rig.open(signed, tabs_per_cart, concurrency, open_seconds)
        reporter.cancel()
        progress.value = rig.opened + rig.failed
        conn.send(("opened", rig.opened, rig.failed, rig.open_error, len(rig.complete_carts())))
        while True:
            command, *params = await loop.run_in_executor(None, conn.recv)
            if command == "run":
                conn.send(("ran", await rig.run(*params)))
            else:
                await rig.close()
                conn.send(("closed",))
                return

    uvloop.run(serve())


class Pool:
    def __init__(
        self,
        urls: list[str],
        signed: list[str],
        tabs_per_cart: int,
        procs: int,
        products: list[str],
        concurrency: int = 64,
        open_seconds: float = 120.0,
    ) -> None:
        self.urls = urls
        self.tabs_per_cart = tabs_per_cart
        self.open_seconds = open_seconds
        ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no inherited loop
        procs = max(1, min(procs, len(signed)))
        shares = [signed[n::procs] for n in range(procs)]
        self.conns: list[Connection] = []
        self.progress: list[Synchronized] = []  # type: ignore[type-arg]
        self.procs: list[Any] = []
        self.complete: list[int] = []
        for n, share in enumerate(shares):
            parent, child = ctx.Pipe()
            done = ctx.Value("i", 0)
            proc = ctx.Process(
                target=_worker,
                args=(
                    child,
                    done,
                    urls,
                    share,
                    tabs_per_cart,
                    concurrency,
                    open_seconds,
                    products,
                    1000 + n,
                ),
                daemon=True,
            )
            self.conns.append(parent)
            self.progress.append(done)
            self.procs.append(proc)
        self.total = len(signed) * tabs_per_cart

    def _expect(self, conn: Connection, seconds: float, kind: str) -> tuple[Any, ...]:
        if not conn.poll(seconds):
            raise RuntimeError(f"a load-generator process did not answer ({kind}) in {seconds:g} s")
        message: tuple[Any, ...] = conn.recv()
        if message[0] != kind:
            raise RuntimeError(f"a load-generator process answered {message[0]!r}, not {kind!r}")
        return message

    def open(self, show_progress: bool = False) -> dict[str, Any]:
        """Start the processes and open every tab: opened, failed, seconds taken."""
        started = time.perf_counter()
        for proc in self.procs:
            proc.start()
        deadline = started + self.open_seconds + GRACE_SECONDS

        tty = sys.stderr.isatty()  # a terminal gets one line redrawn, a log a line each 5 s
        shown = 0.0

        def show(end: str) -> None:
            done = sum(p.value for p in self.progress)
            rate = done / (time.perf_counter() - started)
            line = f"  opening tabs: {done:,} / {self.total:,} ({rate:,.0f}/s)"
            sys.stderr.write(("\r" + line + "  " + end) if tty else line + "\n")
            sys.stderr.flush()

        while not all(conn.poll() for conn in self.conns) and time.perf_counter() < deadline:
            if show_progress and (tty or time.perf_counter() - shown >= 5):
                show("")
                shown = time.perf_counter()
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        if show_progress:
            show("\n")
        opened = failed = 0
        first_error = ""
        for conn in self.conns:
            _, ok, bad, error, complete = self._expect(conn, 1.0, "opened")
            opened, failed = opened + ok, failed + bad
            first_error = first_error or error
            self.complete.append(complete)
        return {"opened": opened, "failed": failed, "seconds": seconds, "error": first_error}

    def run(
        self,
        rate: float,
        seconds: float,
        warmup: float,
        active: int,
        server_pid: int | None,
        window: int = 0,
    ) -> dict[str, Any]:
        """One fan-out run over `active` carts in all: each process offers its share of the
        rate (or keeps `window` in flight per cart) on its share of the carts; samples and
        counts merged."""
        shares = [0] * len(self.conns)
        left = min(active, sum(self.complete))
        while left:
            for n, complete in enumerate(self.complete):
                if left and shares[n] < complete:
                    shares[n] += 1
                    left -= 1
        total = sum(shares)
        busy = [n for n, share in enumerate(shares) if share]
        for k, n in enumerate(busy):
            pid = server_pid if k == 0 else None  # one process reads the server's CPU
            share = rate * shares[n] / total
            self.conns[n].send(("run", share, seconds, warmup, shares[n], pid, window))
        parts = [
            self._expect(self.conns[n], warmup + seconds + GRACE_SECONDS, "ran")[1] for n in busy
        ]
        counts = ("offered", "unfinished", "errors", "gaps", "duplicates", "out_of_order")
        merged: dict[str, Any] = {"latencies": [], "carts": total, "client_cpu": 0.0}
        merged.update(dict.fromkeys(counts, 0))
        for part in parts:
            merged["latencies"] += part["latencies"]
            for key in (*counts, "client_cpu"):
                merged[key] += part[key]
        merged["elapsed"] = max((p["elapsed"] for p in parts), default=0.0)
        for key in ("server_cpu", "server_loop_cpu"):  # only the first process reads them
            merged[key] = parts[0][key] if parts else None
        return merged

    def close(self) -> None:
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive():
                try:
                    conn.send(("close",))
                except OSError:
                    pass
        for conn, proc in zip(self.conns, self.procs, strict=True):
            if proc.is_alive() and conn.poll(GRACE_SECONDS):
                conn.recv()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
